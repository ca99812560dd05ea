"""Engine command encoding (ARCHITECTURE.md contract 2), version 1.

A command is one 64-bit little-endian word. The RTL engines receive the decoded fields on their ``cmd``
stream (same names, same widths); the Program format of the compiler is a sequence of these words.

=======  =======  ==========================================================
bits     field    meaning
=======  =======  ==========================================================
7:0      opcode   1 = TLMM (table-lookup ternary matmul)
15:8     tokens   M - 1: tokens sharing each weight beat (M in 1..tlmm.tokens)
31:16    k_chunks KC: number of G·T activation chunks (>= 1)
47:32    n_blocks NB: number of Q-column output blocks (>= 1)
63:48    -        reserved, must be 0
=======  =======  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ISA_VERSION", "OP_TLMM", "TlmmCommand", "decode"]

ISA_VERSION = 1
OP_TLMM = 1

# (name, lsb, width) for every field of a TLMM command word
TLMM_FIELDS = (("opcode", 0, 8), ("tokens_minus_one", 8, 8), ("k_chunks", 16, 16), ("n_blocks", 32, 16))


@dataclass(frozen=True)
class TlmmCommand:
    tokens: int
    k_chunks: int
    n_blocks: int

    def __post_init__(self) -> None:
        if not 1 <= self.tokens <= 256:
            raise ValueError(f"TLMM command: tokens={self.tokens} outside 1..256")
        for name in ("k_chunks", "n_blocks"):
            v = getattr(self, name)
            if not 1 <= v < 1 << 16:
                raise ValueError(f"TLMM command: {name}={v} outside 1..65535")

    def engine_payload(self) -> int:
        """The fields as the engine's ``cmd`` stream carries them: the word without its opcode."""
        return self.encode() >> TLMM_FIELDS[0][2]

    def encode(self) -> int:
        fields = {"opcode": OP_TLMM, "tokens_minus_one": self.tokens - 1,
                  "k_chunks": self.k_chunks, "n_blocks": self.n_blocks}
        return sum(fields[name] << lsb for name, lsb, _ in TLMM_FIELDS)


def decode(word: int) -> TlmmCommand:
    """Decode a 64-bit command word; ValueError names the bad field."""
    if not 0 <= word < 1 << 64:
        raise ValueError(f"command word {word:#x} is not a 64-bit value")
    f = {name: (word >> lsb) & ((1 << w) - 1) for name, lsb, w in TLMM_FIELDS}
    if f["opcode"] != OP_TLMM:
        raise ValueError(f"command word {word:#018x}: unknown opcode {f['opcode']}")
    if word >> 48:
        raise ValueError(f"command word {word:#018x}: reserved bits 63:48 must be 0")
    return TlmmCommand(f["tokens_minus_one"] + 1, f["k_chunks"], f["n_blocks"])
