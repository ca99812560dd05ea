"""Engine command encoding (ARCHITECTURE.md contract 2), version 5.

A command is one or more 64-bit little-endian words; the opcode (bits 7:0 of the first word) says how many.
The RTL engines receive their *engine fields* on their ``cmd`` stream (same names, same widths, in the order
listed here, the first field at bit 0); the Program format (hw.program) is a sequence of these words.

TLMM (opcode 1), three words. Word 0 holds the engine fields; words 1-2 tell the top level's DMA where the
engine's streams live in memory (beat addresses; layouts in hw.program):

=========  ================  ==========================================================
word:bits  field             meaning
=========  ================  ==========================================================
0:7:0      opcode            1 = TLMM (table-lookup ternary matmul)
0:15:8     tokens_minus_one  M - 1: tokens sharing each weight beat (M in 1..tlmm.tokens)
0:31:16    k_chunks          KC: number of G·T activation chunks (>= 1)
0:47:32    n_blocks          NB: number of Q-column output blocks (>= 1)
0:49:48    wbuf              weight source (DMA): 0 stream from DRAM; 1 stream from DRAM and write the
                             KC·NB weight beats into the top level's weight buffer (from word 0 of it);
                             2 read them from the buffer (no weight reads from DRAM). 1 and 2 need
                             tlmm.weight_buffer_beats >= KC·NB; a 2 must reuse the run of the last 1
                             before it in the Program (same wgt_base, KC, NB: hw.program checks)
0:63:50    -                 reserved, must be 0
1:31:0     act_base          activation stream (DMA)
1:63:32    wgt_base          packed weight stream (DMA)
2:31:0     res_base          result stream (DMA)
2:63:32    -                 reserved, must be 0
=========  ================  ==========================================================

HOST (opcode 3), one word: bits 31:16 ``op``, the index of a host operation in the Program's host-op table;
the accelerator waits until the host reports it done (the CPU of a Zynq-class SoC runs it). Other bits 0.

SYNC (opcode 4), one word: bits 10:8 ``mask``, the engine classes (bit 0 TLMM, bit 1 GEMM, bit 2 HOST) that
must be idle before the decoder fetches on (mask >= 1; other bits 0). With ``system.overlap`` the decoder
dispatches a command as soon as its own engine is free (TLMM and GEMM share the memory port, so each also
waits for the other); SYNC is how a Program states a data dependency between classes. Without overlap every
command waits for all engines and SYNC changes nothing.

GEMM (opcode 2), three words (addresses are in bus beats of ``memory.bus_bytes``):

=========  ============  ==================================================================
word:bits  field         meaning
=========  ============  ==================================================================
0:7:0      opcode        2 = GEMM (temporal int8 GEMM, C = A·B)
0:8        requant       1: write int8 (requantized with ``shift``), 0: write int32
0:13:9     shift         requantization right shift (0..31)
0:15:14    -             reserved, must be 0
0:31:16    m_tiles       MT = ceil(M / gemm.rows) (>= 1)
0:47:32    n_tiles       NT = ceil(N / gemm.cols) (>= 1)
0:63:48    k_tiles       KT = ceil(K / gemm.k_tile) (>= 1)
1:31:0     a_base        beat address of A's packed panels
1:63:32    b_base        beat address of B's packed panels
2:31:0     c_base        beat address where the output tiles are written
2:63:32    b_stride      beats from one column tile's B panels to the next; 0: KT·b_beats (the
                         packed order of hw.gemm_layout). Lets one command read N > gemm.cols
                         columns of a B whose column panels are laid out for a longer K (a KV
                         cache sized for max_seq), A loaded once per row tile and column tile
=========  ============  ==================================================================

KVR (opcode 5), three words: one KV retrieval step of one stream (a layer's attention group; docs/design.md,
"KV retrieval in the loop"): the queries first, then the inserts; writes the stream's list block at
``list_base`` (header, tile entries, insert results).

=========  ============  ==================================================================
word:bits  field         meaning
=========  ============  ==================================================================
0:7:0      opcode        5 = KVR
0:15:8     inserts       keys inserted after the queries (0..255)
0:19:16    queries       query rows (0..15; 0 = insert only)
0:21:20    win_tiles     window tiles after tile 0 put in the list (0..2)
0:31:22    -             reserved, must be 0
0:47:32    table         stream index (on-chip tables: the table slot)
0:63:48    win_tile      first window tile (token-major tile index)
1:31:0     vec_base      key rows then query rows (int8, each ceil(dim/bus_bytes) beats)
1:63:32    list_base     the stream's list block (written)
2:31:0     tab_base      the stream's table in DRAM (0 with on-chip tables)
2:47:32    page_tile     tile index of cluster 0's page
2:63:48    -             reserved, must be 0
=========  ============  ==================================================================

GEMM_LIST (opcode 6), four words: words 0-2 exactly as GEMM (opcode 2, with opcode 6), word 3 ``list_base``
(31:0) and ``mode`` (33:32: 1 = B column tiles through the list (Q·Kᵀ), 2 = B k-tiles through the list
(P·V)); the list's entry count replaces ``n_tiles`` (mode 1) or ``k_tiles`` (mode 2), which hold its capacity.

Version history: 1 = TLMM only (one word); 2 adds GEMM; 3 adds TLMM stream addresses (words 1-2) and HOST;
4 adds the GEMM ``b_stride``; 5 adds SYNC (opcode 4, explicit dependencies for overlapped dispatch), KVR
(opcode 5), GEMM_LIST (opcode 6) and the TLMM ``wbuf`` (prefill weight reuse across token groups).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

__all__ = [
    "ISA_VERSION",
    "OP_TLMM",
    "OP_GEMM",
    "OP_HOST",
    "OP_KVR",
    "OP_GEMM_LIST",
    "KVR_FIELDS",
    "GEMM_LIST_FIELDS",
    "KvrCommand",
    "GemmListCommand",
    "OP_SYNC",
    "SYNC_TLMM",
    "SYNC_GEMM",
    "SYNC_HOST",
    "WBUF_STREAM",
    "WBUF_FILL",
    "WBUF_REUSE",
    "TLMM_FIELDS",
    "GEMM_FIELDS",
    "HOST_FIELDS",
    "SYNC_FIELDS",
    "TlmmCommand",
    "GemmCommand",
    "HostCommand",
    "SyncCommand",
    "Command",
    "decode",
    "decode_program",
    "encode_program",
    "payload_fields",
    "command_words",
]

ISA_VERSION = 5
OP_TLMM = 1
OP_GEMM = 2
OP_HOST = 3
OP_KVR = 5
OP_GEMM_LIST = 6
OP_SYNC = 4
SYNC_TLMM, SYNC_GEMM, SYNC_HOST = 1, 2, 4  # SYNC mask bits: the engine classes

# (name, word, lsb, width) for every field; fields named "-" do not exist (reserved zeros)
TLMM_FIELDS = (
    ("opcode", 0, 0, 8),
    ("tokens_minus_one", 0, 8, 8),
    ("k_chunks", 0, 16, 16),
    ("n_blocks", 0, 32, 16),
    ("wbuf", 0, 48, 2),
    ("act_base", 1, 0, 32),
    ("wgt_base", 1, 32, 32),
    ("res_base", 2, 0, 32),
)
GEMM_FIELDS = (
    ("opcode", 0, 0, 8),
    ("requant", 0, 8, 1),
    ("shift", 0, 9, 5),
    ("m_tiles", 0, 16, 16),
    ("n_tiles", 0, 32, 16),
    ("k_tiles", 0, 48, 16),
    ("a_base", 1, 0, 32),
    ("b_base", 1, 32, 32),
    ("c_base", 2, 0, 32),
    ("b_stride", 2, 32, 32),
)
HOST_FIELDS = (("opcode", 0, 0, 8), ("op", 0, 16, 16))
KVR_FIELDS = (
    ("opcode", 0, 0, 8),
    ("inserts", 0, 8, 8),
    ("queries", 0, 16, 4),
    ("win_tiles", 0, 20, 2),
    ("table", 0, 32, 16),
    ("win_tile", 0, 48, 16),
    ("vec_base", 1, 0, 32),
    ("list_base", 1, 32, 32),
    ("tab_base", 2, 0, 32),
    ("page_tile", 2, 32, 16),
)
GEMM_LIST_FIELDS = GEMM_FIELDS + (("list_base", 3, 0, 32), ("mode", 3, 32, 2))
SYNC_FIELDS = (("opcode", 0, 0, 8), ("mask", 0, 8, 3))
_WORDS = {OP_TLMM: 3, OP_GEMM: 3, OP_HOST: 1, OP_SYNC: 1, OP_KVR: 3, OP_GEMM_LIST: 4}
_FIELDS = {
    OP_TLMM: TLMM_FIELDS,
    OP_GEMM: GEMM_FIELDS,
    OP_HOST: HOST_FIELDS,
    OP_SYNC: SYNC_FIELDS,
    OP_KVR: KVR_FIELDS,
    OP_GEMM_LIST: GEMM_LIST_FIELDS,
}
# fields the top level consumes (DMA addresses) rather than the engine
_DMA_ONLY = {
    OP_TLMM: {"wbuf", "act_base", "wgt_base", "res_base"},
    OP_KVR: {"vec_base", "list_base", "tab_base"},
    OP_GEMM_LIST: {"list_base"},
}
#: TLMM ``wbuf`` values: weights from DRAM; from DRAM and written into the weight buffer; from the buffer.
WBUF_STREAM, WBUF_FILL, WBUF_REUSE = 0, 1, 2


def command_words(opcode: int) -> int:
    """Number of 64-bit words of a command with this opcode."""
    return _WORDS[opcode]


def payload_fields(opcode: int) -> tuple[tuple[str, int], ...]:
    """(name, width) of the fields an engine's ``cmd`` stream carries: every field but the opcode and the
    DMA-only addresses."""
    return tuple(
        (name, width) for name, _, _, width in _FIELDS[opcode][1:] if name not in _DMA_ONLY.get(opcode, ())
    )


def _encode(opcode: int, values: dict) -> list[int]:
    words = [0] * _WORDS[opcode]
    for name, word, lsb, width in _FIELDS[opcode]:
        v = opcode if name == "opcode" else values[name]
        assert 0 <= v < 1 << width, (name, v)
        words[word] |= v << lsb
    return words


def _payload(opcode: int, values: dict) -> int:
    out, pos = 0, 0
    for name, width in payload_fields(opcode):
        out |= values[name] << pos
        pos += width
    return out


def _check_range(cmd: str, name: str, v: int, lo: int, hi: int) -> None:
    if not lo <= v <= hi:
        raise ValueError(f"{cmd} command: {name}={v} outside {lo}..{hi}")


class _Encoded:
    """What the three commands share: each field of the opcode's table is read from the attribute of that name."""

    OPCODE: ClassVar[int]

    def _values(self) -> dict:
        return {name: getattr(self, name) for name, _, _, _ in _FIELDS[self.OPCODE][1:]}

    def engine_payload(self) -> int:
        """The engine fields as the engine's ``cmd`` stream carries them."""
        return _payload(self.OPCODE, self._values())

    def words(self) -> list[int]:
        return _encode(self.OPCODE, self._values())


@dataclass(frozen=True)
class TlmmCommand(_Encoded):
    OPCODE: ClassVar[int] = OP_TLMM
    tokens: int
    k_chunks: int
    n_blocks: int
    act_base: int = 0
    wgt_base: int = 0
    res_base: int = 0
    wbuf: int = 0  # WBUF_STREAM / WBUF_FILL / WBUF_REUSE

    def __post_init__(self) -> None:
        _check_range("TLMM", "tokens", self.tokens, 1, 256)
        _check_range("TLMM", "wbuf", self.wbuf, 0, 2)
        for name in ("k_chunks", "n_blocks"):
            _check_range("TLMM", name, getattr(self, name), 1, (1 << 16) - 1)
        for name in ("act_base", "wgt_base", "res_base"):
            _check_range("TLMM", name, getattr(self, name), 0, (1 << 32) - 1)

    @property
    def tokens_minus_one(self) -> int:
        return self.tokens - 1


@dataclass(frozen=True)
class HostCommand(_Encoded):
    OPCODE: ClassVar[int] = OP_HOST
    op: int

    def __post_init__(self) -> None:
        _check_range("HOST", "op", self.op, 0, (1 << 16) - 1)


@dataclass(frozen=True)
class SyncCommand(_Encoded):
    """Wait until the engine classes in ``mask`` (SYNC_TLMM | SYNC_GEMM | SYNC_HOST) are idle."""

    OPCODE: ClassVar[int] = OP_SYNC
    mask: int

    def __post_init__(self) -> None:
        _check_range("SYNC", "mask", self.mask, 1, 7)


@dataclass(frozen=True)
class GemmCommand(_Encoded):
    OPCODE: ClassVar[int] = OP_GEMM
    m_tiles: int
    n_tiles: int
    k_tiles: int
    a_base: int = 0
    b_base: int = 0
    c_base: int = 0
    requant: bool = False
    shift: int = 0
    b_stride: int = 0  # beats between column tiles' B panels; 0 = k_tiles · b_beats (packed)

    def __post_init__(self) -> None:
        for name in ("m_tiles", "n_tiles", "k_tiles"):
            _check_range("GEMM", name, getattr(self, name), 1, (1 << 16) - 1)
        for name in ("a_base", "b_base", "c_base", "b_stride"):
            _check_range("GEMM", name, getattr(self, name), 0, (1 << 32) - 1)
        _check_range("GEMM", "shift", self.shift, 0, 31)

    @property
    def steps(self) -> int:
        """Tile steps (one A tile and one B tile loaded and multiplied each)."""
        return self.m_tiles * self.n_tiles * self.k_tiles

    def b_span(self, b_beats: int) -> int:
        """Beats from ``b_base`` to the end of the last B tile the command reads."""
        if self.b_stride == 0:
            return self.n_tiles * self.k_tiles * b_beats
        return (self.n_tiles - 1) * self.b_stride + self.k_tiles * b_beats


@dataclass(frozen=True)
class GemmListCommand(GemmCommand):
    """A GEMM whose B column tiles (``mode`` 1) or k-tiles (``mode`` 2) come from a tile list at ``list_base``
    (written by a KVR command); ``n_tiles`` / ``k_tiles`` hold the list's capacity."""

    OPCODE: ClassVar[int] = OP_GEMM_LIST
    list_base: int = 0
    mode: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("GEMM_LIST", "list_base", self.list_base, 0, (1 << 32) - 1)
        _check_range("GEMM_LIST", "mode", self.mode, 1, 2)

    def with_count(self, n: int) -> GemmCommand:
        """The opcode-2 GEMM this command runs when its list holds ``n`` entries (timing and shape)."""
        _check_range("GEMM_LIST", "list entries", n, 1, self.n_tiles if self.mode == 1 else self.k_tiles)
        tiles = {"n_tiles": n} if self.mode == 1 else {"k_tiles": n}
        f = {x.name: getattr(self, x.name) for x in fields(GemmCommand)} | tiles
        return GemmCommand(**f)


@dataclass(frozen=True)
class KvrCommand(_Encoded):
    """One KV retrieval step of one stream (docs/design.md, "KV retrieval in the loop")."""

    OPCODE: ClassVar[int] = OP_KVR
    table: int
    inserts: int = 0
    queries: int = 0
    win_tiles: int = 0
    win_tile: int = 0
    vec_base: int = 0
    list_base: int = 0
    tab_base: int = 0
    page_tile: int = 0

    def __post_init__(self) -> None:
        _check_range("KVR", "inserts", self.inserts, 0, 255)
        _check_range("KVR", "queries", self.queries, 0, 15)
        _check_range("KVR", "win_tiles", self.win_tiles, 0, 2)
        for name in ("table", "win_tile", "page_tile"):
            _check_range("KVR", name, getattr(self, name), 0, (1 << 16) - 1)
        for name in ("vec_base", "list_base", "tab_base"):
            _check_range("KVR", name, getattr(self, name), 0, (1 << 32) - 1)
        if self.inserts == 0 and self.queries == 0:
            raise ValueError("KVR command: inserts=0 and queries=0 (it would do nothing)")


Command = TlmmCommand | GemmCommand | HostCommand | SyncCommand | KvrCommand
_COMMANDS = {
    OP_TLMM: TlmmCommand,
    OP_GEMM: GemmCommand,
    OP_HOST: HostCommand,
    OP_SYNC: SyncCommand,
    OP_KVR: KvrCommand,
    OP_GEMM_LIST: GemmListCommand,
}


def _decode_one(words: list[int], at: int) -> tuple[Command, int]:
    first = words[at]
    if not 0 <= first < 1 << 64:
        raise ValueError(f"word {at}: {first:#x} is not a 64-bit value")
    op = first & 0xFF
    if op not in _WORDS:
        raise ValueError(f"word {at} ({first:#018x}): unknown opcode {op}")
    n = _WORDS[op]
    if at + n > len(words):
        raise ValueError(f"word {at}: opcode {op} needs {n} words, only {len(words) - at} left")
    ws = words[at : at + n]
    used = [0] * n
    f = {}
    for name, word, lsb, width in _FIELDS[op]:
        f[name] = (ws[word] >> lsb) & ((1 << width) - 1)
        used[word] |= ((1 << width) - 1) << lsb
    for i, (w, u) in enumerate(zip(ws, used, strict=True)):
        if w & ~u & ((1 << 64) - 1) or not 0 <= w < 1 << 64:
            raise ValueError(f"word {at + i} ({w:#018x}): reserved bits must be 0")
    del f["opcode"]
    if op == OP_TLMM:
        f["tokens"] = f.pop("tokens_minus_one") + 1
    if op in (OP_GEMM, OP_GEMM_LIST):
        f["requant"] = bool(f["requant"])
    return _COMMANDS[op](**f), n


def decode(words: list[int]) -> Command:
    """Decode exactly one command from its words; ValueError names the bad word or field."""
    cmd, n = _decode_one(list(words), 0)
    if n != len(words):
        raise ValueError(f"word {n}: {len(words) - n} extra word(s) after a {n}-word command")
    return cmd


def encode_program(commands: list[Command]) -> list[int]:
    return [w for c in commands for w in c.words()]


def decode_program(words: list[int]) -> list[Command]:
    """Decode a sequence of command words; ValueError names the word and what is wrong."""
    out, at = [], 0
    while at < len(words):
        cmd, n = _decode_one(words, at)
        out.append(cmd)
        at += n
    return out
