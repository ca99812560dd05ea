"""TLMM/GEMM tiling and device-memory allocation rules: the one definition the compiler's lowering
(:mod:`compiler.lower`) and the design-space exploration's fast evaluator (:mod:`tritium.dse`) both call.

* :func:`tlmm_slices`, :func:`tlmm_tiles`: a ``tlmm`` op (K × N weights, T tokens) → slices of ≤ ``tlmm.max_k``
  (multiples of G·T) × ≤ ``tlmm.max_n`` (multiples of Q) and token chunks of ≤ ``tlmm.tokens`` → commands.
* :func:`attention_group`, :func:`attention_gemms`: how many KV heads share one GEMM command (a *group*:
  block-diagonal queries, stacked K and V, chosen so a decode query neither pads head_dim nor wastes the
  block), the group's ``Q·Kᵀ`` and ``P·V`` shapes and the commands they are cut into
  (:func:`attention_bands`: a causal prefill's bands of query rows over only the keys they attend).
* :func:`lm_head_gemms`, :func:`lm_head_weight_beats`: the ``acc_int8`` LM head (rows × d_model × vocab) →
  GEMM commands over slices of whole column tiles of one int8 B-panel weight tensor.
* :class:`Allocator` (first fit over beat addresses) and :func:`slot_beats`, the beats it reserves for a
  tensor; the persistent region (packed weights, KV cache) is allocated first, in op order, never freed, so
  its size is :func:`persistent_beats`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from compiler.ir import CompileError
from hw.config import AcceleratorConfig, GemmGeometry, TlmmConfig
from hw.program import tlmm_wgt_beat_bytes

__all__ = [
    "Allocator",
    "Tile",
    "ceil_div",
    "beats",
    "slot_beats",
    "softmax_band_attrs",
    "tlmm_slices",
    "tlmm_tiles",
    "tlmm_weight_bytes",
    "tlmm_fits_fields",
    "kv_cache_tensors",
    "attention_group",
    "AttentionBand",
    "attention_bands",
    "attention_gemms",
    "GemmCost",
    "gemm_cost",
    "lm_head_weight_beats",
    "lm_head_gemms",
    "persistent_beats",
    "RetrievalGeometry",
    "retrieval_geometry",
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
    """K slices (multiples of G·T) and N slices (multiples of Q) that fit ``tlmm.max_k`` / ``max_n`` and,
    with a weight buffer (``tlmm.weight_buffer_beats`` = D > 0), whose KC×NB weight beats fit it: K slices
    of at most D chunks, then N slices of at most ``D // KC`` blocks (KC of the longest K slice), so every
    slice's weights can be filled once and reused by every token group (:func:`tlmm_tiles`)."""
    ks = max(t.chunk_k, t.max_k // t.chunk_k * t.chunk_k)
    ns = max(t.columns, t.max_n // t.columns * t.columns)
    D = t.weight_buffer_beats
    if D:
        ks = min(ks, D * t.chunk_k)
        kc = ceil_div(min(k, ks), t.chunk_k)
        ns = min(ns, D // kc * t.columns)
    return ([(a, min(k, a + ks)) for a in range(0, k, ks)], [(a, min(n, a + ns)) for a in range(0, n, ns)])


def tlmm_fits_fields(t: TlmmConfig, slices: Slices) -> bool:
    """Whether every slice's chunk and block counts fit the 16-bit TLMM command fields."""
    kss, nss = slices
    kl = max((k1 - k0 for k0, k1 in kss), default=0)
    nl = max((n1 - n0 for n0, n1 in nss), default=0)
    return ceil_div(kl, t.chunk_k) < 1 << 16 and ceil_div(nl, t.columns) < 1 << 16


class Tile(NamedTuple):
    """One TLMM command of a ``tlmm`` op: token chunk ``c`` (``m`` tokens from ``m0``) × K slice ``si`` ×
    N slice ``ni``; ``kc`` chunks of G·T and ``nb`` blocks of Q columns; ``wbuf`` its weight source
    (hw.isa: 0 DRAM, 1 DRAM + fill the weight buffer, 2 the buffer)."""

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
    wbuf: int = 0


def tlmm_tiles(t: TlmmConfig, tokens: int, slices: Slices, largest_last: bool = False) -> Iterator[Tile]:
    """The op's commands in emission order. Without a weight buffer, or with one token chunk: token chunks,
    then K slices, then N slices, weights from DRAM. With a weight buffer and several token chunks: K
    slices, then N slices, then token chunks — the first chunk streams the slice's weights from DRAM and
    fills the buffer (``wbuf`` 1), the others read them from the buffer (``wbuf`` 2), so a prompt reads
    each weight once (:func:`tlmm_slices` makes every slice fit the buffer). ``largest_last``: with a weight
    buffer, K and N slices in order of size, the largest last (ties in slice order; the lowering chooses
    it, ``Lowering._largest_last_ops``) — the same commands, their results bit for bit the same."""
    kss, nss = slices
    chunks = [(c, m0, min(t.tokens, tokens - m0)) for c, m0 in enumerate(range(0, tokens, t.tokens))]
    reuse = t.weight_buffer_beats > 0 and len(chunks) > 1

    def tile(c, m0, m, si, ni, wbuf):
        (k0, k1), (n0, n1) = kss[si], nss[ni]
        return Tile(
            c, m0, m, si, k0, k1, ceil_div(k1 - k0, t.chunk_k), ni, n0, n1, ceil_div(n1 - n0, t.columns), wbuf
        )

    if not reuse:
        for c, m0, m in chunks:
            for si in range(len(kss)):
                for ni in range(len(nss)):
                    yield tile(c, m0, m, si, ni, 0)
        return

    def order(ss):
        idx = range(len(ss))
        return sorted(idx, key=lambda i: ss[i][1] - ss[i][0]) if largest_last else idx

    for si in order(kss):
        for ni in order(nss):
            for c, m0, m in chunks:
                yield tile(c, m0, m, si, ni, 1 if c == 0 else 2)


def tlmm_weight_bytes(t: TlmmConfig, k_len: int, n_len: int) -> tuple[int, int, int]:
    """(k_chunks, n_blocks, bytes) of one weight slice's packed stream."""
    kc, nb = ceil_div(k_len, t.chunk_k), ceil_div(n_len, t.columns)
    return kc, nb, kc * nb * tlmm_wgt_beat_bytes(t)


# ---- attention -------------------------------------------------------------------------------------


def attention_group(geo: GemmGeometry, n_heads: int, n_kv_heads: int, head_dim: int) -> int:
    """KV heads per attention GEMM command (the *group*, a divisor of ``n_kv_heads``).

    A group of g KV heads is one ``Q·Kᵀ`` command with a block-diagonal A (query rows of head j hold their
    q in contraction columns j·head_dim.., zeros elsewhere) against the g heads' keys stacked along the
    contraction, and one ``P·V`` (B strided over the cache's column panels) against the g heads' values
    side by side; the
    host keeps the diagonal blocks. A decode step is bound by reading the KV cache, so g minimizes the
    cache beats a decode query reads per KV head and key: ``ceil(g·rep/R)`` row tiles (each re-reads B)
    × (g·head_dim padded to ``k_tile`` for K + padded to ``gemm.cols`` for V) / g; ties go to the smaller
    g. E.g. head_dim 96 on a k_tile 64, 64-column block: g = 1 reads 128 + 128 bytes per key for 96 + 96
    useful, g = 2 reads 192 + 192 for 192 + 192 (no padding). The cache layout depends on g, so it is fixed
    per model and config (prefill uses the same groups; its extra MACs are the price)."""
    rep = n_heads // n_kv_heads
    R, C, TK = geo.rows, geo.cols, geo.k_tile

    def cost(g: int) -> float:
        return ceil_div(g * rep, R) * (ceil_div(g * head_dim, TK) * TK + ceil_div(g * head_dim, C) * C) / g

    return min((g for g in range(1, n_kv_heads + 1) if n_kv_heads % g == 0), key=lambda g: (cost(g), g))


def kv_cache_tensors(
    geo: GemmGeometry, bus_bytes: int, cap: int, n_heads: int, n_kv_heads: int, head_dim: int
) -> list[tuple[str, int, str, list[int], str, dict]]:
    """One layer's KV cache in allocation order: (suffix, bytes, dtype, shape, layout, attrs) — per group
    of :func:`attention_group` KV heads K (B = the stacked Kᵀ panels, g·head_dim × cap) and V (B = the V
    panels side by side, cap × g·head_dim), then the K and V scales (per KV head)."""
    C, TK = geo.cols, geo.k_tile
    g = attention_group(geo, n_heads, n_kv_heads, head_dim)
    gd = g * head_dim
    k_beats = ceil_div(cap, C) * ceil_div(gd, TK) * geo.b_beats
    v_beats = ceil_div(gd, C) * ceil_div(cap, TK) * geo.b_beats
    out = []
    for gi in range(n_kv_heads // g):
        out.append((f"k{gi}", k_beats * bus_bytes, "int8", [gd, cap], "gemm_b", {"group": g}))
        out.append(
            (
                f"v{gi}",
                v_beats * bus_bytes,
                "int8",
                [cap, gd],
                "gemm_b",
                {"group": g, "panel_beats": ceil_div(cap, TK) * geo.b_beats},
            )
        )
    out.append(("sk", n_kv_heads * cap * 4, "float32", [n_kv_heads, cap], "rows", {}))
    out.append(("sv", n_kv_heads * cap * 4, "float32", [n_kv_heads, cap], "rows", {}))
    return out


class AttentionBand(NamedTuple):
    """One GEMM command of a group's causal prefill (:func:`attention_bands`): query rows ``r0..r1`` of the
    group (token-major: row ``t·rows_per_token + i``; ``r0`` a whole row tile) against keys ``0..keys``."""

    r0: int
    r1: int
    keys: int


class AttentionGemms(NamedTuple):
    """One step's attention GEMMs per group (:func:`attention_gemms`)."""

    group: int  # KV heads per group
    n_groups: int
    qk: tuple[int, int, int]  # Q·Kᵀ (M, K, N) of one group, every key (the unbanded shape)
    pv: tuple[int, int, int]  # P·V (M, K, N) of one group, every key: B strided by the V cache's panel
    qk_bands: tuple[AttentionBand, ...] = ()  # the group's Q·Kᵀ commands (one band: the whole qk)
    pv_bands: tuple[AttentionBand, ...] = ()  # the group's P·V commands

    def shapes(self) -> list[tuple[int, int, int]]:
        """(M, K, N) of one group's GEMM commands: its Q·Kᵀ bands, then its P·V bands."""
        gd = self.qk[1]
        return [(b.r1 - b.r0, gd, b.keys) for b in self.qk_bands] + [
            (b.r1 - b.r0, b.keys, gd) for b in self.pv_bands
        ]


def softmax_band_attrs(qk_bands, pv_bands) -> dict:
    """The attention softmax host op's band attributes for a group's Q·Kᵀ and P·V bands (none when each is
    one band): the executor reads and writes the bands' tensors, compiler.hostcost costs the bands' scores.
    The lowering and the DSE's fast evaluator (a point's own geometry) both take them from here."""
    if len(qk_bands) > 1 or len(pv_bands) > 1:
        return {"qk_bands": [list(b) for b in qk_bands], "pv_bands": [list(b) for b in pv_bands]}
    return {}


class GemmCost(NamedTuple):
    """A GEMM command's cycles as the banding rule counts them: ``startup + steps × step``
    (:func:`gemm_cost`)."""

    step: int  # cycles per step (one R×C×k_tile tile product) once the loads run ahead
    startup: int  # cycles a command adds beyond its steps (the first load, the last drain)


def gemm_cost(acfg: AcceleratorConfig) -> GemmCost:
    """The GEMM engine's cost per step and per command on ``acfg`` (closed form of the cycle definition in
    docs/design.md, "Temporal GEMM engine"; the banding rule's only cost input). A step loads n = a_beats +
    b_beats beats in r bursts of ≤ ``max_burst`` and issues ``k_tile`` k's; its period is the longest of the
    issue (k_tile), the port (n · beat_interval), the requests (r · latency + n · beat_interval over
    ``outstanding``) and the operand slots (a slot is refilled ``buffers`` steps later: latency + n + k_tile
    over ``buffers``). A command adds a first load (⌈r / outstanding⌉ · latency + n beats) and the last
    tile's issue, pipeline and drain, less one period. Against ``sim.gemm_model.gemm_fast``: exact on kv260
    (130 + 66 per step) and the default config, within a tenth of a step per step on every shipped config
    (tests/test_causal_tiles.py)."""
    geo, mem, bi = acfg.gemm_geometry, acfg.memory, acfg.memory.beat_interval
    n = geo.a_beats + geo.b_beats
    r = ceil_div(geo.a_beats, mem.max_burst) + ceil_div(geo.b_beats, mem.max_burst)
    step = max(
        geo.k_tile,
        n * bi,
        ceil_div(r * mem.latency + n * bi, mem.outstanding),
        ceil_div(mem.latency + n * bi + geo.k_tile, acfg.gemm.buffers),
    )
    first = ceil_div(r, mem.outstanding) * mem.latency + n * bi
    return GemmCost(step, max(0, first + geo.k_tile + geo.out_beats(False) + 8 - step))


@functools.lru_cache(maxsize=1024)  # every layer of a step asks the same (the DP is quadratic in runs)
def attention_bands(
    rows_per_token: int,
    tokens: int,
    pos: int,
    key_tile: int,
    row_tile: int,
    other_tiles: int,
    cost: GemmCost,
    causal: bool = True,
) -> tuple[AttentionBand, ...]:
    """A group's query rows (token-major, ``rows_per_token`` rows per token, ``tokens`` tokens at position
    ``pos``) cut into bands of whole row tiles (``row_tile`` rows), each one GEMM command over only the keys
    its last row attends (``pos`` + its token + 1 with a causal mask; every key without): the Q·Kᵀ tiles
    above the diagonal and the P·V K tiles beyond it are never computed.

    Key tiles (``key_tile`` keys: ``gemm.cols`` for Q·Kᵀ's N, ``gemm.k_tile`` for P·V's K) are the
    granularity: row tiles needing the same number of key tiles form one run, and adjacent runs are merged
    where one command's start-up costs more than the tiles the merge adds (each row tile × key tile is
    ``other_tiles`` steps: Q·Kᵀ's K tiles or P·V's N tiles). The cut is the cheapest under ``startup +
    steps × step`` per command (:func:`gemm_cost`), found exactly by dynamic programming over the runs.
    Decode (one token) and non-causal attention: one band, every key."""
    m = rows_per_token * tokens
    ctx = pos + tokens
    mt = ceil_div(m, row_tile)
    if not causal or tokens == 1:
        return (AttentionBand(0, m, ctx),)
    runs: list[list[int]] = []  # [first row tile, end row tile, key tiles, keys]
    for mi in range(mt):
        keys = pos + (min(m, (mi + 1) * row_tile) - 1) // rows_per_token + 1
        kt = ceil_div(keys, key_tile)
        if runs and runs[-1][2] == kt:
            runs[-1][1], runs[-1][3] = mi + 1, keys
        else:
            runs.append([mi, mi + 1, kt, keys])
    n = len(runs)

    def cycles(i: int, j: int) -> int:  # runs i..j-1 as one command (their last run's key tiles)
        return cost.startup + (runs[j - 1][1] - runs[i][0]) * runs[j - 1][2] * other_tiles * cost.step

    best, cut = [0] + [0] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j] = min((best[i] + cycles(i, j), i) for i in range(j))
    bands = []
    j = n
    while j:
        i = cut[j]
        bands.append(AttentionBand(runs[i][0] * row_tile, min(m, runs[j - 1][1] * row_tile), runs[j - 1][3]))
        j = i
    return tuple(reversed(bands))


def attention_gemms(
    geo: GemmGeometry,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    tokens: int,
    ctx: int,
    causal: bool = True,
    cost: GemmCost | None = None,
) -> AttentionGemms:
    """The group size, the group count, a group's ``Q·Kᵀ`` GEMM (M, K, N) and its ``P·V`` GEMM over the
    group's g·head_dim columns (B strided over the V cache's max_seq-long panels), and the commands they
    are cut into: with a causal mask and several tokens, bands of query rows over only the keys they attend
    (:func:`attention_bands` under ``cost``, the config's :func:`gemm_cost`; None: no start-up cost, a
    command per run of row tiles). A group's rows are token-major: row ``t·g·rep + j·rep + r`` is token t of query
    head r of the group's KV head j."""
    g = attention_group(geo, n_heads, n_kv_heads, head_dim)
    rpt = g * (n_heads // n_kv_heads)
    m, gd = rpt * tokens, g * head_dim
    cost = cost or GemmCost(max(geo.k_tile, geo.a_beats + geo.b_beats), 0)
    pos = ctx - tokens

    def bands(key_tile: int, other: int) -> tuple[AttentionBand, ...]:
        return attention_bands(rpt, tokens, pos, key_tile, geo.rows, other, cost, causal)

    return AttentionGemms(
        g,
        n_kv_heads // g,
        (m, gd, ctx),
        (m, ctx, gd),
        bands(geo.cols, ceil_div(gd, geo.k_tile)),
        bands(geo.k_tile, ceil_div(gd, geo.cols)),
    )


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
    for h, hkv, hd, cnt in attention:
        total += cnt * sum(
            slot_beats(x[1], bus_bytes) for x in kv_cache_tensors(geo, bus_bytes, max_seq, h, hkv, hd)
        )
    return total


# ---- KV retrieval (docs/design.md, "KV retrieval in the loop") ---------------------------------------------


class RetrievalGeometry(NamedTuple):
    """Where retrieval's pages, tables and lists sit for one model on one config (per layer and group)."""

    group: int  # KV heads per stream (= attention_group)
    streams_per_layer: int  # attention groups per layer
    dim: int  # values per stream key / query (group · head_dim) = kv.dim
    queries: int  # query rows per stream and step (n_heads / n_kv_heads)
    page: int  # P: keys per page = kv.max_cluster_size
    page_tile: int  # tile index of cluster 0's page (= token-major tiles)
    cap: int  # keys of the extended K/V cache
    table_row_bytes: int  # one cluster's signature + count + int16 key sums
    list_entries: int  # capacity of a stream's tile list (tile 0, 2 window tiles, every cluster)


def retrieval_geometry(acfg, n_heads: int, n_kv_heads: int, head_dim: int, max_seq: int) -> RetrievalGeometry:
    """Check a model against the KV engine and the retrieval policy (``system.attention = resv``); one-line
    ValueError naming the config field otherwise."""
    kv, sysc, geo = acfg.kv, acfg.system, acfg.gemm_geometry
    g = attention_group(geo, n_heads, n_kv_heads, head_dim)
    dim = g * head_dim
    p = kv.max_cluster_size
    if kv.dim != dim:
        raise ValueError(
            f"kv.dim={kv.dim}: retrieval streams are attention groups of {g} KV head(s) × head_dim {head_dim}, "
            f"so kv.dim must be {dim}"
        )
    if p % geo.cols or p % geo.k_tile:
        raise ValueError(
            f"kv.max_cluster_size={p}: a page must be whole GEMM tiles, a multiple of gemm.cols ({geo.cols}) "
            f"and gemm.k_tile ({geo.k_tile})"
        )
    for name, v in (("kv_sinks", sysc.kv_sinks), ("kv_window", sysc.kv_window)):
        if v > p:
            raise ValueError(f"system.{name}={v}: at most one page, kv.max_cluster_size ({p})")
    if kv.max_clusters * p < max_seq - sysc.kv_sinks:
        raise ValueError(
            f"kv.max_clusters={kv.max_clusters}: {kv.max_clusters} pages of {p} keys hold fewer than the "
            f"{max_seq - sysc.kv_sinks} tokens a sequence of max_seq {max_seq} inserts (keys would be dropped)"
        )
    tiles = ceil_div(max_seq, p)
    row = ceil_div(kv.hyperplanes, 8) + 1 + 2 * dim
    return RetrievalGeometry(
        g,
        n_kv_heads // g,
        dim,
        n_heads // n_kv_heads,
        p,
        tiles,
        (tiles + kv.max_clusters) * p,
        row,
        3 + kv.max_clusters,
    )
