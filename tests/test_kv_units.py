"""KV retrieval engine units in amaranth.sim (no Verilator, seconds each): the signature unit and the
nearest-cluster search against models.resv's signature, Hamming distance and insert rule; the scoring
pipeline against ClusterTable.scores; the threshold/bucket walk against ClusterTable.select. The testbenches
play the memories around each unit (combinational reads set after each clock edge, the key sums one cycle
late) and check the cycle counts the engine's schedule gives each unit."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import KvConfig, load_config
from hw.kv_numerics import hyperplane_matrix
from hw.kv_score import ScorePipeline
from hw.kv_signature import NearestSearch, SignatureUnit
from hw.kv_table import sums_addr_bits
from hw.kv_threshold import ThresholdWalk
from models.resv import ClusterTable, signature

SMALL = load_config("configs/kv-small.yaml").kv  # dim 12, 4 lanes, an 8x8 table that overflows, 4 buckets
CONFIGS = [pytest.param(KvConfig(), id="default"), pytest.param(SMALL, id="small")]


def _simulate(dut, testbench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


def _filled_table(kv: KvConfig, keys: int, seed: int) -> ClusterTable:
    """A reference table with clustered random keys (some clusters full once keys > max_cluster_size)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-128, 128, (6, kv.dim))
    t = ClusterTable(kv)
    for i in range(keys):
        t.insert(np.clip(base[i % len(base)] + rng.integers(-20, 21, kv.dim), -128, 127))
    return t


# ---------------------------------------------------------------- signature unit
@pytest.mark.parametrize("kv", CONFIGS)
def test_signature_unit_matches_reference(kv):
    rng = np.random.default_rng(1)
    keys = [np.full(kv.dim, -128), np.full(kv.dim, 127), np.zeros(kv.dim, np.int64)]
    keys += list(rng.integers(-128, 128, (12, kv.dim)))
    hp = hyperplane_matrix(kv)
    dut = SignatureUnit(kv)
    got = []

    async def testbench(ctx):
        for key in keys:
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            ctx.set(dut.en, 1)
            for b in range(kv.beats):
                ctx.set(dut.beat, b)
                ctx.set(dut.lanes, [int(x) for x in key[b * kv.lanes : (b + 1) * kv.lanes]])
                await ctx.tick()
            ctx.set(dut.en, 0)
            got.append(ctx.get(dut.sig))

    _simulate(dut, testbench)
    assert got == [signature(k, hp) for k in keys]


# ---------------------------------------------------------------- nearest-cluster search
def _search(kv: KvConfig, sig: int, sigs: list[int], counts: list[int]) -> tuple[tuple[int, int, int], int]:
    """Run one search over a table of ``len(sigs)`` clusters; returns ((valid, dist, id), SCAN cycles)."""
    dut = NearestSearch(kv)
    rows = kv.max_clusters // kv.lanes
    out = {}

    def row_of(field: list[int], row: int) -> list[int]:
        ids = range(row * kv.lanes, (row + 1) * kv.lanes)
        return [field[c] if c < len(field) and row < rows else 0 for c in ids]

    async def testbench(ctx):
        ctx.set(dut.sig, sig)
        ctx.set(dut.n, len(sigs))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.en, 1)
        cycle, done = 0, False
        while not done and cycle <= rows + 3:
            cycle += 1
            row = ctx.get(dut.row)
            ctx.set(dut.row_sigs, row_of(sigs, row))
            ctx.set(dut.row_counts, row_of(counts, row))
            done = ctx.get(dut.done)
            await ctx.tick()
        ctx.set(dut.en, 0)
        out["best"] = (ctx.get(dut.best_valid), ctx.get(dut.best_dist), ctx.get(dut.best_id))
        out["cycles"] = cycle

    _simulate(dut, testbench)
    return out["best"], out["cycles"]


def _reference_nearest(kv: KvConfig, sig: int, sigs: list[int], counts: list[int]) -> tuple[int, int]:
    best, best_d = -1, kv.hyperplanes + 1
    for c, (s, n) in enumerate(zip(sigs, counts, strict=True)):
        d = bin(sig ^ s).count("1")
        if n < kv.max_cluster_size and d < best_d:
            best, best_d = c, d
    return best, best_d


@pytest.mark.parametrize("kv", CONFIGS)
def test_nearest_search_matches_hamming_reference(kv):
    """Random tables of every fill level (ties are frequent with few hyperplanes): the nearest non-full
    cluster by Hamming distance, lowest id on ties, in max(1, ceil(n/lanes)) + 2 cycles."""
    rng = np.random.default_rng(2)
    hp = kv.hyperplanes
    for trial in range(12):
        n = (
            [0, 1, kv.lanes, kv.max_clusters][trial]
            if trial < 4
            else int(rng.integers(0, kv.max_clusters + 1))
        )
        sigs = [int(x) for x in rng.integers(0, 1 << hp, n, dtype=np.uint64)]
        if n and trial % 2:
            sigs = [sigs[0] ^ (1 << int(rng.integers(0, hp))) for _ in sigs]  # many equal distances
        counts = [int(x) for x in rng.integers(1, kv.max_cluster_size + 1, n)]
        sig = int(rng.integers(0, 1 << hp, dtype=np.uint64))
        (valid, dist, cid), cycles = _search(kv, sig, sigs, counts)
        best, best_d = _reference_nearest(kv, sig, sigs, counts)
        assert (valid, cid if valid else -1) == (int(best >= 0), best), (trial, n)
        assert not valid or dist == best_d
        assert cycles == max(1, -(-n // kv.lanes)) + 2


def test_nearest_search_gives_the_reference_insert():
    """On the reference table's own state: the engine's DECIDE rule on the search result is the
    reference's insert (join within hamming / open / force-join / full)."""
    kv = SMALL
    hp = hyperplane_matrix(kv)
    rng = np.random.default_rng(3)
    t = ClusterTable(kv)
    for _ in range(kv.max_clusters * kv.max_cluster_size + 4):
        key = rng.integers(-128, 128, kv.dim)
        sig = signature(key, hp)
        (valid, dist, cid), _ = _search(kv, sig, list(t.sigs), list(t.counts))
        if valid and dist <= kv.hamming:
            expect = (cid, False, False)
        elif t.n < kv.max_clusters:
            expect = (t.n, True, False)
        elif valid:
            expect = (cid, False, False)
        else:
            expect = (-1, False, True)
        assert t.insert(key) == expect


# ---------------------------------------------------------------- scoring pipeline
@pytest.mark.parametrize("kv", CONFIGS)
def test_score_pipeline_matches_reference(kv):
    t = _filled_table(kv, 3 * kv.max_clusters, seed=4)
    q = np.random.default_rng(5).integers(-128, 128, kv.dim)
    dut = ScorePipeline(kv)
    kb = sums_addr_bits(kv) - kv.id_bits
    L = kv.lanes
    out = {}

    def sums_at(addr: int) -> list[int]:
        c, b = addr >> kb, addr & ((1 << kb) - 1)
        return [int(x) for x in t.sums[c][b * L : (b + 1) * L]] if c < t.n and b < kv.beats else [0] * L

    async def testbench(ctx):
        ctx.set(dut.n, t.n)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.en, 1)
        addr, cycles = None, 0
        while True:
            cycles += 1
            ctx.set(dut.sums, sums_at(addr) if addr is not None else [0] * L)  # read issued last cycle
            qb = ctx.get(dut.query_beat)
            ctx.set(dut.query, [int(x) for x in q[qb * L : (qb + 1) * L]] if qb < kv.beats else [0] * L)
            cid = ctx.get(dut.count_id)
            ctx.set(dut.count, t.counts[cid] if cid < t.n else 0)
            addr, done = ctx.get(dut.sums_addr), ctx.get(dut.done)
            await ctx.tick()
            if done or cycles > t.n * kv.beats + 10:
                break
        ctx.set(dut.en, 0)
        scores = []
        for c in range(t.n):
            ctx.set(dut.score_id, c)
            scores.append(ctx.get(dut.score))
        out.update(
            scores=scores,
            lo=ctx.get(dut.lo),
            hi=ctx.get(dut.hi),
            sc=ctx.get(dut.score_count_sum),
            cycles=cycles,
        )

    _simulate(dut, testbench)
    ref = t.scores(q)
    assert out["scores"] == ref
    assert (out["lo"], out["hi"]) == (min(ref), max(ref))
    assert out["sc"] == sum(s * n for s, n in zip(ref, t.counts, strict=True))
    assert out["cycles"] == t.n * kv.beats + 5


# ---------------------------------------------------------------- threshold / bucket walk
def _walk(kv: KvConfig, scores: list[int], counts: list[int]) -> tuple[list[int], int]:
    """TH, TH2, LINK, WSTART, WALK over given scores and counts; returns (emitted ids, visited)."""
    dut = ThresholdWalk(kv)
    n = len(scores)
    out = {}

    def serve(ctx) -> None:  # the score memory and the count read
        ctx.set(dut.score, scores[ctx.get(dut.score_id)] if ctx.get(dut.score_id) < n else 0)
        ctx.set(dut.count, counts[ctx.get(dut.count_id)] if ctx.get(dut.count_id) < n else 0)

    async def testbench(ctx):
        lo, hi = min(scores), max(scores)
        ctx.set(dut.n, n)
        ctx.set(dut.ntok, sum(counts))
        ctx.set(dut.lo, lo)
        ctx.set(dut.hi, hi)
        ctx.set(dut.score_count_sum, sum(s * c for s, c in zip(scores, counts, strict=True)))
        for strobe in (dut.row_sum_en, dut.threshold_en):
            ctx.set(strobe, 1)
            await ctx.tick()
            ctx.set(strobe, 0)
        ctx.set(dut.link_en, 1)
        cycles, done = 0, False
        while not done and cycles <= n + 3:
            cycles += 1
            serve(ctx)
            done = ctx.get(dut.link_done)
            await ctx.tick()
        assert cycles == n + 2
        ctx.set(dut.link_en, 0)
        ctx.set(dut.walk_start, 1)
        await ctx.tick()
        ctx.set(dut.walk_start, 0)
        ctx.set(dut.walk_step, 1)
        emitted = []
        for _ in range(n):
            emitted.append(ctx.get(dut.selected))
            done = ctx.get(dut.walk_done)
            await ctx.tick()
            if done:
                break
        out.update(emitted=emitted, visited=ctx.get(dut.visited))

    _simulate(dut, testbench)
    return out["emitted"], out["visited"]


@pytest.mark.parametrize("kv", CONFIGS)
def test_threshold_walk_matches_reference_select(kv):
    """The threshold, bucket shift, bucket lists and early exit give ClusterTable.select's clusters in its
    order (random queries on a filled table, including a table of one cluster)."""
    rng = np.random.default_rng(6)
    for keys, seed in ((1, 7), (kv.max_clusters // 2, 8), (3 * kv.max_clusters, 9)):
        t = _filled_table(kv, keys, seed)
        for _ in range(3):
            q = rng.integers(-128, 128, kv.dim)
            sel = t.select(q)
            emitted, visited = _walk(kv, t.scores(q), list(t.counts))
            assert emitted == sel.clusters and visited == sel.visited


def test_threshold_walk_ties_and_spread():
    """Equal scores (span 0, one bucket, LIFO order) and a wide spread with heavy counts."""
    kv = SMALL
    ref = ClusterTable(kv)
    for scores, counts in (
        ([5, 5, 5, 5], [1, 2, 3, 4]),
        ([-900, 40000, 3, 39999, -2, 7, 0, 12], [8, 1, 8, 2, 8, 3, 8, 4]),
    ):
        ref.sigs, ref.counts = [0] * len(scores), counts
        ref.scores = lambda q, s=scores: list(s)  # noqa: B023 — select() reads scores through this
        sel = ref.select(np.zeros(kv.dim, np.int64))
        assert _walk(kv, scores, counts) == (sel.clusters, sel.visited)
