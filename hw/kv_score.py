"""KV retrieval engine, scoring pipeline: the score of every cluster for one query, ``score_c = (q · sum_c ·
R[count_c]) >> 16`` with the reciprocal ROM R (:func:`hw.kv_numerics.reciprocal`), stored per cluster with the
running min/max and Σ score·count the threshold unit needs. A sub-component of :class:`hw.kv.KvRetrieval`;
numerics of :meth:`models.resv.ClusterTable.scores`."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import KvConfig
from hw.kv_numerics import reciprocal
from hw.kv_signature import tree_sum
from hw.kv_table import sums_addr_bits

__all__ = ["ScorePipeline", "score_count_sum_bits"]


def score_count_sum_bits(kv: KvConfig) -> int:
    """Width of Σ score·count over the table."""
    return kv.dot_bits + kv.count_bits + kv.id_bits + 2


class ScorePipeline(wiring.Component):
    """Six stages, one (cluster, beat) issued per cycle while ``en``, every cluster < ``n`` in id order:

    A. issue: key-sum address (``sums_addr``) and query beat (``query_beat``, lanes back on ``query``);
    B. lane products query · key sums (``sums``, read a cycle after A);
    C. adder tree, accumulated over the beats into the cluster's dot product;
    D. the cluster's count (``count_id`` → ``count``) and its reciprocal from the ROM;
    E. score = (dot · R[count]) >> 16;
    F. store the score (read back on ``score_id`` → ``score``), running ``lo``/``hi`` and
       ``score_count_sum`` = Σ score·count.

    ``start`` arms a query (restarts issue, clears Σ); ``done`` rises when nothing is left in stages A–E.
    """

    def __init__(self, kv: KvConfig):
        self.kv = kv
        DB = kv.dot_bits
        super().__init__(
            {
                "start": In(1),
                "en": In(1),
                "n": In(range(kv.max_clusters + 1)),
                "query_beat": Out(range(max(2, kv.beats))),
                "query": In(data.ArrayLayout(signed(8), kv.lanes)),
                "sums_addr": Out(sums_addr_bits(kv)),
                "sums": In(data.ArrayLayout(signed(kv.sum_bits), kv.lanes)),
                "count_id": Out(kv.id_bits),
                "count": In(kv.count_bits),
                "score_id": In(kv.id_bits),
                "score": Out(signed(DB)),
                "lo": Out(signed(DB)),
                "hi": Out(signed(DB)),
                "score_count_sum": Out(signed(score_count_sum_bits(kv))),
                "done": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        kv = self.kv
        m = Module()
        L, NB, IB, DB = kv.lanes, kv.beats, kv.id_bits, kv.dot_bits
        kb = sums_addr_bits(kv) - IB
        beat_shape = range(max(2, NB))

        m.submodules.scores = scores = Memory(shape=signed(DB), depth=kv.max_clusters, init=[])
        score_rp, score_wp = scores.read_port(domain="comb"), scores.write_port()
        m.d.comb += [score_rp.addr.eq(self.score_id), self.score.eq(score_rp.data)]
        recip = Memory(
            shape=unsigned(kv.recip_bits),
            depth=kv.max_cluster_size + 1,
            init=[0] + [reciprocal(c) for c in range(1, kv.max_cluster_size + 1)],
        )
        m.submodules.recip = recip
        recip_rp = recip.read_port(domain="comb")
        m.d.comb += recip_rp.addr.eq(self.count)

        # A: issue
        issue_cluster, issue_beat = Signal(range(kv.max_clusters + 1)), Signal(beat_shape)
        issuing = Signal()
        m.d.comb += [
            issuing.eq(issue_cluster < self.n),
            self.sums_addr.eq(Cat(issue_beat[:kb], issue_cluster[:IB])),
        ]
        # B: products
        prod_valid, prod_beat, prod_cluster = Signal(), Signal(beat_shape), Signal(IB)
        products = [Signal(signed(8 + kv.sum_bits), name=f"product{i}") for i in range(L)]
        m.d.comb += self.query_beat.eq(prod_beat)
        # C: accumulate over beats
        acc_valid, acc_beat, acc_cluster = Signal(), Signal(beat_shape), Signal(IB)
        dot_acc, dot_next = Signal(signed(DB)), Signal(signed(DB))
        m.d.comb += dot_next.eq(Mux(acc_beat == 0, 0, dot_acc) + tree_sum(products))
        # D: the cluster's dot product, count → reciprocal
        dot_valid, dot_cluster, dot_product = Signal(), Signal(IB), Signal(signed(DB))
        m.d.comb += self.count_id.eq(dot_cluster)
        # E: multiply by the reciprocal
        recip_valid, recip_cluster, recip_dot = Signal(), Signal(IB), Signal(signed(DB))
        recip_value, recip_count = Signal(kv.recip_bits), Signal(kv.count_bits)
        # F: store
        score_valid, score_cluster, score_value = Signal(), Signal(IB), Signal(signed(DB))
        score_count = Signal(kv.count_bits)
        m.d.comb += self.done.eq(~issuing & ~prod_valid & ~acc_valid & ~dot_valid & ~recip_valid)

        with m.If(self.start):
            m.d.sync += [
                issue_cluster.eq(0),
                issue_beat.eq(0),
                prod_valid.eq(0),
                dot_valid.eq(0),
                self.score_count_sum.eq(0),
            ]
        with m.Elif(self.en):
            m.d.sync += [
                prod_valid.eq(issuing),
                prod_beat.eq(issue_beat),
                prod_cluster.eq(issue_cluster[:IB]),
            ]
            with m.If(issuing):
                with m.If(issue_beat == NB - 1):
                    m.d.sync += [issue_beat.eq(0), issue_cluster.eq(issue_cluster + 1)]
                with m.Else():
                    m.d.sync += issue_beat.eq(issue_beat + 1)
            m.d.sync += [p.eq(self.query[i] * self.sums[i]) for i, p in enumerate(products)]
            m.d.sync += [acc_valid.eq(prod_valid), acc_beat.eq(prod_beat), acc_cluster.eq(prod_cluster)]
            m.d.sync += dot_valid.eq(acc_valid & (acc_beat == NB - 1))
            with m.If(acc_valid):
                m.d.sync += dot_acc.eq(dot_next)
                with m.If(acc_beat == NB - 1):
                    m.d.sync += [dot_product.eq(dot_next), dot_cluster.eq(acc_cluster)]
            m.d.sync += [
                recip_valid.eq(dot_valid),
                recip_cluster.eq(dot_cluster),
                recip_dot.eq(dot_product),
                recip_value.eq(recip_rp.data),
                recip_count.eq(self.count),
            ]
            m.d.sync += [
                score_valid.eq(recip_valid),
                score_cluster.eq(recip_cluster),
                score_value.eq((recip_dot * recip_value) >> 16),
                score_count.eq(recip_count),
            ]
            with m.If(score_valid):
                m.d.comb += [
                    score_wp.addr.eq(score_cluster),
                    score_wp.data.eq(score_value),
                    score_wp.en.eq(1),
                ]
                m.d.sync += self.score_count_sum.eq(self.score_count_sum + score_value * score_count)
                with m.If((score_cluster == 0) | (score_value < self.lo)):
                    m.d.sync += self.lo.eq(score_value)
                with m.If((score_cluster == 0) | (score_value > self.hi)):
                    m.d.sync += self.hi.eq(score_value)
        return m
