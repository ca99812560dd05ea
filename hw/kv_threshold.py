"""KV retrieval engine, threshold and bucket walk: from the scores, the threshold ``Th = (alpha_q · S) >> 8``
on the row sum ``S = Σ (score − lo)·count`` and the bucket shift; then every cluster is pushed on its bucket's
list with its weight; then the walk emits clusters from the highest non-empty bucket down and stops right
after the one that brings Σ weight to ≥ Th. A sub-component of :class:`hw.kv.KvRetrieval`; numerics and
order of :meth:`models.resv.ClusterTable.select` steps 4–5."""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import KvConfig
from hw.kv_score import score_count_sum_bits

__all__ = ["ThresholdWalk", "highest_set"]


def highest_set(m: Module, bits: Value, width: int, name: str) -> Signal:
    """Index of the highest set bit of ``bits`` (0 when none), combinational."""
    idx = Signal(range(max(2, width)), name=name)
    for i in range(width):
        with m.If(bits[i]):
            m.d.comb += idx.eq(i)
    return idx


class ThresholdWalk(wiring.Component):
    """Controlled one phase per cycle by strobes (each is one engine state):

    - ``row_sum_en``: register S = ``score_count_sum`` − ``lo``·``ntok`` and the span ``hi − lo``;
    - ``threshold_en``: threshold Th and bucket shift sh = max(0, bitlen(span) − log2(buckets)); arms LINK;
    - ``link_en``: three stages over clusters 0..n−1 (their score on ``score_id`` → ``score`` and count on
      ``count_id`` → ``count``): score − lo and count; push the cluster on bucket (score − lo) >> sh and
      compute its weight (score − lo)·count; store the weight. ``link_done`` once the last one is stored;
    - ``walk_start``: the first cluster of the highest non-empty bucket becomes ``selected``, Th the
      remaining threshold;
    - ``walk_step``: ``selected`` is emitted: its weight leaves the remaining threshold, ``visited`` += 1,
      and the next cluster is the next on its list or the head of the next non-empty bucket; ``walk_done``
      (combinational, before the step) says this emission ends the walk.
    """

    def __init__(self, kv: KvConfig):
        self.kv = kv
        DB = kv.dot_bits
        super().__init__(
            {
                "n": In(range(kv.max_clusters + 1)),
                "ntok": In(range(kv.max_clusters * kv.max_cluster_size + 1)),
                "lo": In(signed(DB)),
                "hi": In(signed(DB)),
                "score_count_sum": In(signed(score_count_sum_bits(kv))),
                "score_id": Out(kv.id_bits),
                "score": In(signed(DB)),
                "count_id": Out(kv.id_bits),
                "count": In(kv.count_bits),
                "row_sum_en": In(1),
                "threshold_en": In(1),
                "link_en": In(1),
                "link_done": Out(1),
                "walk_start": In(1),
                "walk_step": In(1),
                "walk_done": Out(1),
                "selected": Out(kv.id_bits),
                "visited": Out(range(kv.max_clusters + 1)),
            }
        )

    def elaborate(self, platform) -> Module:
        kv = self.kv
        m = Module()
        IB, DB, B, CM = kv.id_bits, kv.dot_bits, kv.buckets, kv.max_clusters
        lg_b = (B - 1).bit_length()

        # row sum and span (row_sum_en), then threshold and bucket shift (threshold_en)
        row_sum = Signal(signed(score_count_sum_bits(kv) + 1))
        m.d.comb += row_sum.eq(self.score_count_sum - self.lo * self.ntok)
        row_sum_q, span = Signal(kv.rowsum_bits), Signal(DB + 1)
        span_len = Signal(range(DB + 2))
        for i in range(DB + 1):
            with m.If(span[i]):
                m.d.comb += span_len.eq(i + 1)
        threshold, shift = Signal(kv.rowsum_bits + 9), Signal(range(DB + 2))

        # bucket lists: heads, non-empty mask, per-cluster next pointer (bit IB: valid) and weight
        head = Array(Signal(IB, name=f"head{b}") for b in range(B))
        nonempty = Signal(B)
        top = highest_set(m, nonempty, B, "top_bucket")
        m.submodules.nexts = nexts = Memory(shape=IB + 1, depth=CM, init=[])
        next_rp, next_wp = nexts.read_port(domain="comb"), nexts.write_port()
        m.submodules.weights = weights = Memory(shape=kv.weight_bits, depth=CM, init=[])
        w_rp, w_wp = weights.read_port(domain="comb"), weights.write_port()
        m.d.comb += [next_rp.addr.eq(self.selected), w_rp.addr.eq(self.selected)]

        # LINK stages: issue link_cluster; offset = score − lo (and count); weight = offset · count
        link_cluster, link_issue = Signal(range(CM + 1)), Signal()
        offset_valid, offset, offset_count, offset_cluster = (
            Signal(),
            Signal(DB + 1),
            Signal(kv.count_bits),
            Signal(IB),
        )
        weight_valid, weight, weight_cluster = Signal(), Signal(kv.weight_bits), Signal(IB)
        bucket = Signal(range(max(2, B)))
        m.d.comb += [
            self.score_id.eq(link_cluster[:IB]),
            self.count_id.eq(link_cluster[:IB]),
            bucket.eq(offset >> shift),
            self.link_done.eq(~link_issue & ~offset_valid),
        ]

        remaining = Signal(signed(kv.rowsum_bits + 11))  # threshold − weights taken so far
        remaining_next, early_exit = Signal(signed(kv.rowsum_bits + 11)), Signal()
        m.d.comb += [
            remaining_next.eq(remaining - w_rp.data),
            early_exit.eq(remaining_next[-1] | (remaining_next == 0)),  # Σ weights ≥ threshold
            self.walk_done.eq(early_exit | (~next_rp.data[IB] & (nonempty == 0))),
        ]

        with m.If(self.row_sum_en):
            m.d.sync += [row_sum_q.eq(row_sum.as_unsigned()[: kv.rowsum_bits]), span.eq(self.hi - self.lo)]
        with m.If(self.threshold_en):
            m.d.sync += [
                threshold.eq((row_sum_q * kv.alpha_q) >> 8),
                shift.eq(Mux(span_len > lg_b, span_len - lg_b, 0)),
                nonempty.eq(0),
                self.visited.eq(0),
                link_cluster.eq(0),
                link_issue.eq(1),
                offset_valid.eq(0),
                weight_valid.eq(0),
            ]
        with m.If(self.link_en):
            m.d.sync += [
                offset_valid.eq(link_issue),
                offset.eq(self.score - self.lo),
                offset_count.eq(self.count),
                offset_cluster.eq(link_cluster[:IB]),
            ]
            m.d.sync += [
                weight_valid.eq(offset_valid),
                weight.eq(offset * offset_count),
                weight_cluster.eq(offset_cluster),
            ]
            with m.If(weight_valid):
                m.d.comb += [w_wp.addr.eq(weight_cluster), w_wp.data.eq(weight), w_wp.en.eq(1)]
            with m.If(link_issue):
                m.d.sync += link_cluster.eq(link_cluster + 1)
                with m.If(link_cluster == self.n - 1):
                    m.d.sync += link_issue.eq(0)
            with m.If(offset_valid):
                m.d.comb += [
                    next_wp.addr.eq(offset_cluster),
                    next_wp.data.eq(Cat(head[bucket], nonempty.bit_select(bucket, 1))),
                    next_wp.en.eq(1),
                ]
                m.d.sync += [head[bucket].eq(offset_cluster), nonempty.bit_select(bucket, 1).eq(1)]
        with m.If(self.walk_start):
            m.d.sync += [
                self.selected.eq(head[top]),
                nonempty.bit_select(top, 1).eq(0),
                remaining.eq(threshold),
            ]
        with m.If(self.walk_step):
            m.d.sync += [remaining.eq(remaining_next), self.visited.eq(self.visited + 1)]
            with m.If(~early_exit):
                with m.If(next_rp.data[IB]):
                    m.d.sync += self.selected.eq(next_rp.data[:IB])
                with m.Elif(nonempty != 0):
                    m.d.sync += [self.selected.eq(head[top]), nonempty.bit_select(top, 1).eq(0)]
        return m
