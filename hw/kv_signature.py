"""KV retrieval engine, INSERT front end: the signature unit (projection of a key on the ±1 hyperplanes) and
the nearest-cluster search (XOR + popcount of ``lanes`` cluster signatures per cycle, a compare tree, the
running nearest non-full cluster). Sub-components of :class:`hw.kv.KvRetrieval`; the numerics are those of
:func:`models.resv.signature` and the nearest search of :meth:`models.resv.ClusterTable.insert`."""

from __future__ import annotations

from collections.abc import Iterable

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.config import KvConfig
from hw.kv_numerics import hyperplane_bits

__all__ = ["SignatureUnit", "NearestSearch", "tree_sum"]


def tree_sum(values: Iterable[Value]) -> Value:
    """Sum as a balanced adder tree (a plain ``sum`` is a chain as deep as the operand count)."""
    values = list(values)
    while len(values) > 1:
        values = [
            values[i] + values[i + 1] if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)
        ]
    return values[0]


class SignatureUnit(wiring.Component):
    """``hyperplanes`` projection accumulators: ``clear`` zeroes them (a new key); ``en`` adds one beat
    (``lanes`` int8 values, beat index ``beat``), each lane signed by its hyperplane bit. ``sig`` bit j is 1
    while projection j ≥ 0 (combinational from the accumulators)."""

    def __init__(self, kv: KvConfig):
        self.kv = kv
        super().__init__(
            {
                "clear": In(1),
                "en": In(1),
                "beat": In(range(max(2, kv.beats))),
                "lanes": In(data.ArrayLayout(signed(8), kv.lanes)),
                "sig": Out(kv.hyperplanes),
            }
        )

    def elaborate(self, platform) -> Module:
        kv = self.kv
        m = Module()
        L, NB = kv.lanes, kv.beats
        hb = hyperplane_bits(kv.dim, kv.hyperplanes, kv.seed)
        projection = [Signal(signed(kv.proj_bits), name=f"projection{j}") for j in range(kv.hyperplanes)]
        m.d.comb += self.sig.eq(Cat(~p[-1] for p in projection))
        lanes = [self.lanes[i] for i in range(L)]
        with m.If(self.clear):
            m.d.sync += [p.eq(0) for p in projection]
        with m.Elif(self.en):
            for j, p in enumerate(projection):
                plane = Signal(L, name=f"plane{j}")  # hyperplane j's bits for this beat's lanes
                m.d.comb += plane.eq(
                    Array(Const(sum(int(hb[j, b * L + i]) << i for i in range(L)), L) for b in range(NB))[
                        self.beat
                    ]
                )
                m.d.sync += p.eq(p + tree_sum(Mux(plane[i], x, -x) for i, x in enumerate(lanes)))
        return m


class NearestSearch(wiring.Component):
    """Nearest non-full cluster to ``sig`` by Hamming distance (lowest id on ties), ``lanes`` clusters per
    cycle in three stages. ``start`` arms a search; while ``en`` it reads table row ``row`` (``row_sigs``,
    ``row_counts``: that row's lanes, combinational) and issues the next row until every one of the ``n``
    clusters was issued; ``done`` rises once the last row left the stages, with ``best_*`` the answer
    (``best_valid`` = 0: every cluster full or none).

    Stage 1 registers each lane's distance (XOR + popcount) and eligibility (id < n, count < max size);
    stage 2 reduces the registered row in a compare tree (ties: the lower lane) into registers; stage 3
    merges the row's winner into the running best (earlier rows hold lower ids, so a later row wins only with
    a strictly smaller distance)."""

    def __init__(self, kv: KvConfig):
        self.kv = kv
        rows = kv.max_clusters // kv.lanes
        super().__init__(
            {
                "start": In(1),
                "en": In(1),
                "sig": In(kv.hyperplanes),
                "n": In(range(kv.max_clusters + 1)),
                "row": Out(range(max(2, rows))),
                "row_sigs": In(data.ArrayLayout(unsigned(kv.hyperplanes), kv.lanes)),
                "row_counts": In(data.ArrayLayout(unsigned(kv.count_bits), kv.lanes)),
                "done": Out(1),
                "best_valid": Out(1),
                "best_dist": Out(range(kv.hyperplanes + 1)),
                "best_id": Out(kv.id_bits),
            }
        )

    def _lane_id(self, lane: int, row: Value) -> Value:
        lg_l = (self.kv.lanes - 1).bit_length()
        return Cat(Const(lane, lg_l), row) if lg_l else row

    def elaborate(self, platform) -> Module:
        kv = self.kv
        m = Module()
        L, HP, IB = kv.lanes, kv.hyperplanes, kv.id_bits
        lg_l = (L - 1).bit_length()
        issuing, lanes_valid = Signal(), Signal()  # a row is issued this cycle / the stage-1 row
        lanes_row = Signal(range(max(2, kv.max_clusters // L)))
        m.d.comb += self.done.eq(~issuing & ~lanes_valid)

        # stage 1: per-lane distance and eligibility of the row read this cycle
        lane_dist = [Signal(range(HP + 1), name=f"lane_dist{i}") for i in range(L)]
        lane_ok = [Signal(name=f"lane_ok{i}") for i in range(L)]
        for i in range(L):
            dist = Signal(range(HP + 1), name=f"dist{i}")
            m.d.comb += dist.eq(tree_sum((self.sig ^ self.row_sigs[i])[j] for j in range(HP)))
            m.d.sync += [
                lane_dist[i].eq(dist),
                lane_ok[i].eq(
                    (self._lane_id(i, self.row) < self.n) & (self.row_counts[i] < kv.max_cluster_size)
                ),
            ]

        # stage 2: compare tree over the registered row
        nodes = [(lane_ok[i], lane_dist[i], self._lane_id(i, lanes_row)) for i in range(L)]
        level = 0
        while len(nodes) > 1:
            nxt = []
            for k in range(0, len(nodes), 2):
                (lv, ld, li), (rv, rd, ri) = nodes[k], nodes[k + 1]
                take_r = Signal(name=f"tr{level}_{k}")
                m.d.comb += take_r.eq(rv & (~lv | (rd < ld)))
                v, d, i_ = (
                    Signal(name=f"tv{level}_{k}"),
                    Signal(range(HP + 1), name=f"td{level}_{k}"),
                    Signal(IB, name=f"ti{level}_{k}"),
                )
                m.d.comb += [v.eq(lv | rv), d.eq(Mux(take_r, rd, ld)), i_.eq(Mux(take_r, ri, li))]
                nxt.append((v, d, i_))
            nodes, level = nxt, level + 1
        row_ok, row_dist, row_id, row_valid = Signal(), Signal(range(HP + 1)), Signal(IB), Signal()
        m.d.sync += [
            row_ok.eq(nodes[0][0]),
            row_dist.eq(nodes[0][1]),
            row_id.eq(nodes[0][2]),
            row_valid.eq(lanes_valid),
        ]

        # stage 3: the row's winner merges into the running best
        take_row = Signal()
        m.d.comb += take_row.eq(row_valid & row_ok & (~self.best_valid | (row_dist < self.best_dist)))

        with m.If(self.start):
            m.d.sync += [self.row.eq(0), self.best_valid.eq(0), issuing.eq(1), lanes_valid.eq(0)]
        with m.Elif(self.en):
            m.d.sync += [lanes_valid.eq(issuing), lanes_row.eq(self.row)]
            with m.If(issuing):
                m.d.sync += self.row.eq(self.row + 1)
                with m.If(((self.row + 1) << lg_l) >= self.n):
                    m.d.sync += issuing.eq(0)
            with m.If(take_row):
                m.d.sync += [self.best_valid.eq(1), self.best_dist.eq(row_dist), self.best_id.eq(row_id)]
        return m
