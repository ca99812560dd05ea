"""TLMM/GEMM tiling and device-memory allocation rules: the one definition the compiler's lowering
(:mod:`compiler.lower`) and the design-space exploration's fast evaluator (:mod:`tritium.dse`) both call.

* :func:`tlmm_slices`, :func:`tlmm_tiles`: a ``tlmm`` op (K × N weights, T tokens) → slices of ≤ ``tlmm.max_k``
  (multiples of G·T) × ≤ ``tlmm.max_n`` (multiples of Q) and token chunks of ≤ ``tlmm.tokens`` → commands.
* :func:`attention_gemms`: one KV head's ``Q·Kᵀ`` and per ``gemm.cols`` block of head_dim ``P·V`` shapes.
* :func:`lm_head_gemms`, :func:`lm_head_weight_beats`: the ``acc_int8`` LM head (rows × d_model × vocab) →
  GEMM commands over slices of whole column tiles of one int8 B-panel weight tensor.
* :class:`Allocator` (first fit over beat addresses) and :func:`slot_beats`, the beats it reserves for a
  tensor; the persistent region (packed weights, KV cache) is allocated first, in op order, never freed, so
  its size is :func:`persistent_beats`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from compiler.ir import CompileError
from hw.config import GemmGeometry, TlmmConfig
from hw.program import tlmm_wgt_beat_bytes

__all__ = [
    "Allocator",
    "Tile",
    "ceil_div",
    "beats",
    "slot_beats",
    "tlmm_slices",
    "tlmm_tiles",
    "tlmm_weight_bytes",
    "tlmm_fits_fields",
    "kv_cache_tensors",
    "attention_gemms",
    "lm_head_weight_beats",
    "lm_head_gemms",
    "persistent_beats",
]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def beats(nbytes: int, bus_bytes: int) -> int:
    """Bus beats holding ``nbytes``."""
    return ceil_div(int(nbytes), bus_bytes)


def slot_beats(nbytes: int, bus_bytes: int) -> int:
    """Beats the allocator reserves for a tensor of ``nbytes`` (at least one)."""
    return max(1, beats(nbytes, bus_bytes))


class Allocator:
    """First-fit allocator over beat addresses with explicit frees; ``high`` is the high-water mark."""

    def __init__(self, base: int, limit: int):
        self.base, self.limit = base, limit
        self.free: list[tuple[int, int]] = [(base, limit - base)]
        self.high = base

    def alloc(self, beats: int, what: str) -> int:
        beats = max(1, beats)
        for i, (a, n) in enumerate(self.free):
            if n >= beats:
                self.free[i] = (a + beats, n - beats)
                if self.free[i][1] == 0:
                    self.free.pop(i)
                self.high = max(self.high, a + beats)
                return a
        raise CompileError(
            f"{what}: memory exhausted: {beats} more beats do not fit below beat {self.limit} "
            "(memory.addr_bits)"
        )

    def release(self, addr: int, beats: int) -> None:
        self.free.append((addr, max(1, beats)))
        self.free.sort()
        merged = []
        for a, n in self.free:
            if merged and merged[-1][0] + merged[-1][1] == a:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((a, n))
        self.free = merged


# ---- TLMM ------------------------------------------------------------------------------------------

Slices = tuple[list[tuple[int, int]], list[tuple[int, int]]]


def tlmm_slices(t: TlmmConfig, k: int, n: int) -> Slices:
    """K slices (multiples of G·T) and N slices (multiples of Q) that fit ``tlmm.max_k`` / ``max_n``."""
    ks = max(t.chunk_k, t.max_k // t.chunk_k * t.chunk_k)
    ns = max(t.columns, t.max_n // t.columns * t.columns)
    return ([(a, min(k, a + ks)) for a in range(0, k, ks)], [(a, min(n, a + ns)) for a in range(0, n, ns)])


def tlmm_fits_fields(t: TlmmConfig, slices: Slices) -> bool:
    """Whether every slice's chunk and block counts fit the 16-bit TLMM command fields."""
    kss, nss = slices
    kl = max((k1 - k0 for k0, k1 in kss), default=0)
    nl = max((n1 - n0 for n0, n1 in nss), default=0)
    return ceil_div(kl, t.chunk_k) < 1 << 16 and ceil_div(nl, t.columns) < 1 << 16


class Tile(NamedTuple):
    """One TLMM command of a ``tlmm`` op: token chunk ``c`` (``m`` tokens from ``m0``) × K slice ``si`` ×
    N slice ``ni``; ``kc`` chunks of G·T and ``nb`` blocks of Q columns."""

    c: int
    m0: int
    m: int
    si: int
    k0: int
    k1: int
    kc: int
    ni: int
    n0: int
    n1: int
    nb: int


def tlmm_tiles(t: TlmmConfig, tokens: int, slices: Slices) -> Iterator[Tile]:
    """The op's commands in emission order: token chunks, then K slices, then N slices."""
    kss, nss = slices
    for c, m0 in enumerate(range(0, tokens, t.tokens)):
        m = min(t.tokens, tokens - m0)
        for si, (k0, k1) in enumerate(kss):
            for ni, (n0, n1) in enumerate(nss):
                yield Tile(
                    c,
                    m0,
                    m,
                    si,
                    k0,
                    k1,
                    ceil_div(k1 - k0, t.chunk_k),
                    ni,
                    n0,
                    n1,
                    ceil_div(n1 - n0, t.columns),
                )


def tlmm_weight_bytes(t: TlmmConfig, k_len: int, n_len: int) -> tuple[int, int, int]:
    """(k_chunks, n_blocks, bytes) of one weight slice's packed stream."""
    kc, nb = ceil_div(k_len, t.chunk_k), ceil_div(n_len, t.columns)
    return kc, nb, kc * nb * tlmm_wgt_beat_bytes(t)


# ---- attention -------------------------------------------------------------------------------------


def kv_cache_tensors(
    geo: GemmGeometry, bus_bytes: int, cap: int, n_kv_heads: int, head_dim: int
) -> list[tuple[str, int, str, list[int], str, dict]]:
    """One layer's KV cache in allocation order: (suffix, bytes, dtype, shape, layout, attrs) — per KV head
    K (B = Kᵀ panels) and V (B = V panels), then the K and V scales."""
    C, TK = geo.cols, geo.k_tile
    k_beats = ceil_div(cap, C) * ceil_div(head_dim, TK) * geo.b_beats
    v_beats = ceil_div(head_dim, C) * ceil_div(cap, TK) * geo.b_beats
    out = []
    for gi in range(n_kv_heads):
        out.append((f"k{gi}", k_beats * bus_bytes, "int8", [head_dim, cap], "gemm_b", {}))
        out.append(
            (
                f"v{gi}",
                v_beats * bus_bytes,
                "int8",
                [cap, head_dim],
                "gemm_b",
                {"panel_beats": ceil_div(cap, TK) * geo.b_beats},
            )
        )
    out.append(("sk", n_kv_heads * cap * 4, "float32", [n_kv_heads, cap], "rows", {}))
    out.append(("sv", n_kv_heads * cap * 4, "float32", [n_kv_heads, cap], "rows", {}))
    return out


def attention_gemms(geo: GemmGeometry, rows: int, head_dim: int, ctx: int) -> tuple[tuple, tuple, int]:
    """Per KV head: the ``Q·Kᵀ`` GEMM (M, K, N), the ``P·V`` GEMM of one ``gemm.cols`` block of head_dim,
    and the number of such blocks."""
    return (rows, head_dim, ctx), (rows, ctx, geo.cols), ceil_div(head_dim, geo.cols)


# ---- the LM head on the GEMM engine (lm_head = acc_int8) ---------------------------------------------

MAX_TILES = (1 << 16) - 1  # a GEMM command's m/n/k tile fields are 16 bits


def lm_head_weight_beats(geo: GemmGeometry, k: int, vocab: int) -> int:
    """Beats of the LM head's int8 weights as GEMM B panels (B = Wqᵀ, K × vocab; hw.gemm_layout.pack_b)."""
    return ceil_div(vocab, geo.cols) * ceil_div(k, geo.k_tile) * geo.b_beats


def lm_head_gemms(
    geo: GemmGeometry, k: int, vocab: int, max_n_tiles: int = MAX_TILES
) -> list[tuple[int, int, int]]:
    """The LM head's GEMM commands: ``[(n0, n1, b_offset_beats)]``, vocab columns ``n0..n1`` in slices of at
    most ``max_n_tiles`` whole ``gemm.cols`` tiles; slice j reads the B panels from beat ``b_offset`` of
    the weight tensor (panels are stored in (ni, kt) order, so a run of column tiles is contiguous)."""
    if ceil_div(k, geo.k_tile) > MAX_TILES:
        raise CompileError(f"LM head: d_model={k} needs more than {MAX_TILES} GEMM K tiles")
    span = max_n_tiles * geo.cols
    per_tile = ceil_div(k, geo.k_tile) * geo.b_beats
    return [(n0, min(vocab, n0 + span), (n0 // geo.cols) * per_tile) for n0 in range(0, vocab, span)]


# ---- the persistent region -------------------------------------------------------------------------


def persistent_beats(
    t: TlmmConfig,
    geo: GemmGeometry,
    bus_bytes: int,
    tlmm_ops: Iterable[tuple[int, int, int]],
    attention: Iterable[tuple[int, int, int, int]],
    max_seq: int,
    lm_head: tuple[int, int] | None = None,
) -> int:
    """Beats of the persistent region the lowering allocates (:class:`Allocator` from 0, never freed, so
    the sum of :func:`slot_beats`): packed weights of ``tlmm_ops`` [(k, n, count)] and the KV cache of
    ``attention`` [(n_heads, n_kv_heads, head_dim, count)] at ``max_seq`` positions, and with ``lm_head =
    (d_model, vocab)`` the int8 LM-head panels of ``lm_head="acc_int8"``."""
    total = max(1, lm_head_weight_beats(geo, *lm_head)) if lm_head else 0
    for k, n, cnt in tlmm_ops:
        kss, nss = tlmm_slices(t, k, n)
        total += cnt * sum(
            slot_beats(tlmm_weight_bytes(t, k1 - k0, n1 - n0)[2], bus_bytes)
            for k0, k1 in kss
            for n0, n1 in nss
        )
    for _h, hkv, hd, cnt in attention:
        total += cnt * sum(
            slot_beats(x[1], bus_bytes) for x in kv_cache_tensors(geo, bus_bytes, max_seq, hkv, hd)
        )
    return total
