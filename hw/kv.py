"""KV-cache retrieval engine (V-Rex ReSV-style): the controller that sequences its units.

Numerics are those of :class:`models.resv.ClusterTable` (the golden reference); the cycle schedule below is
mirrored state for state by :mod:`sim.kv_model` and documented in docs/design.md ("KV retrieval engine").

Units (``lib.wiring`` components, one file each; the controller here owns the state machine, the vector
register and the INSERT decision/key-sum update):

- :class:`hw.kv_signature.SignatureUnit` (projection accumulators → signature) and
  :class:`hw.kv_signature.NearestSearch` (the three-stage nearest non-full cluster search, ``SCAN``);
- :class:`hw.kv_table.ClusterTableUnit`: signature/count banks, key sums, cluster and key counts;
- :class:`hw.kv_score.ScorePipeline`: the ``SCORE`` pipeline, the score memory, min/max and Σ score·count;
- :class:`hw.kv_threshold.ThresholdWalk`: ``TH``/``TH2``/``LINK``/``WSTART``/``WALK`` (threshold, bucket
  lists, weights, the walk with early exit).

Interfaces (``lib.stream``, valid/ready):

- ``cmd``: one op per command — ``RESET`` (0, empties the table), ``INSERT`` (1, a key follows on ``vec``),
  ``QUERY`` (2, a query follows on ``vec``).
- ``vec``: ``kv.beats`` beats of ``kv.lanes`` int8 values (lane i of beat b = element b·lanes + i).
- ``out``: ``{kind, id, new}`` — INSERT answers one ``ASSIGN`` (cluster id, ``new`` = opened it) or
  ``FULL`` (every cluster full: key dropped); QUERY answers one ``SEL`` per selected cluster, in walk order,
  then ``END`` with ``id`` = number selected.

Schedule (states; one cycle each unless a count is given; stalls only where a stream handshake waits):

- ``IDLE`` takes a command. RESET stays in IDLE (the table is emptied at the clock edge).
- ``LOAD``: one ``vec`` beat per cycle into the vector register; for INSERT each beat also adds its lanes,
  signed by the hyperplane bits, into ``hyperplanes`` projection accumulators.
- INSERT: ``SCAN`` max(1, ceil(clusters/lanes)) + 2 cycles: ``lanes`` cluster signatures per cycle, XOR +
  popcount against the key's signature (signs of the accumulators) into registers, a compare tree into
  registers, then the running nearest non-full cluster (the + 2 drain those stages);
  ``DECIDE``: join / open / force-join / full, signature and count written; ``UPDATE`` ``beats`` cycles:
  key sums read-add-write one beat per cycle (sync-read block RAM, address issued a cycle ahead);
  ``OUT``: the answer beat.
- QUERY: ``SCORE`` clusters·beats + 5 cycles (1 with no clusters): a 6-stage pipeline — address, lane
  products, adder tree accumulated over beats, count + reciprocal ROM, score = (dot · R[count]) >> 16, then
  store with running min/max and Σ score·count; ``TH`` and ``TH2``: row sum and span, then threshold and
  bucket shift; ``LINK`` clusters + 2 cycles: score − min and count, then push the cluster on its bucket's list
  and compute its weight, then store the weight; ``WSTART``: highest non-empty bucket; ``WALK`` one cycle per selected cluster: emit
  it, subtract its weight from the remaining threshold, stop as soon as that reaches 0 (the early exit), else
  follow the list or drop to the next non-empty bucket; ``END``: the count beat.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import KvConfig
from hw.kv_numerics import KIND_ASSIGN, KIND_END, KIND_FULL, KIND_SEL, OP_INSERT, OP_QUERY, OP_RESET
from hw.kv_score import ScorePipeline
from hw.kv_signature import NearestSearch, SignatureUnit
from hw.kv_table import ClusterTableUnit, sums_addr_bits
from hw.kv_threshold import ThresholdWalk

# the command and output codes are hw.kv_numerics's (imported above for the controller, not re-exported)
__all__ = ["KvRetrieval", "State", "out_layout", "STATES"]


class State(enum.Enum, shape=unsigned(4)):
    """Controller states; the encoding (and order) is the one sim/kv_model.py's S_IDLE.. integers use."""

    IDLE = 0
    LOAD = 1
    SCAN = 2
    DECIDE = 3
    UPDATE = 4
    OUT = 5
    SCORE = 6
    TH = 7
    LINK = 8
    WSTART = 9
    WALK = 10
    END = 11
    TH2 = 12


STATES = tuple(s.name for s in State)


def out_layout(kv: KvConfig) -> data.StructLayout:
    """Layout of an ``out`` beat: kind (KIND_*), cluster id or count, opened-a-cluster flag."""
    return data.StructLayout({"kind": 2, "id": kv.max_clusters.bit_length(), "new": 1})


@dataclass
class _Units:
    """The engine's sub-components and the controller's own registers, shared by the state handlers."""

    state: Signal
    signature: SignatureUnit
    search: NearestSearch
    table: ClusterTableUnit
    score: ScorePipeline
    threshold: ThresholdWalk
    is_query: Signal
    load_beat: Signal  # next vec beat to load
    vector: Array  # the key or query, one register per beat
    answer: data.View  # the INSERT answer
    update_beat: Signal  # key-sum beat written this cycle


class KvRetrieval(wiring.Component):
    """ReSV retrieval engine for one head (see module docstring)."""

    def __init__(self, kv: KvConfig, slots: int = 1, top: bool = False, dma: bool = False):
        """``slots`` cluster tables (:class:`hw.kv_table.ClusterTableUnit`); ``top``: the ports the top level's
        KVR sequencer uses — ``slot`` (with ``slots`` > 1: the table every command addresses, held while it
        runs) and ``count`` (the count of the cluster on ``out``: a SEL's, or an ASSIGN's after the insert).
        ``dma`` (with ``top``; ``system.kv_tables: dram``): the port ``tab``, the top's table DMA into the table
        while the engine is IDLE (:meth:`tab_signature`). The standalone engine (slots 1, no top ports)
        elaborates exactly as before."""
        self.kv, self.slots, self.top, self.dma = kv, slots, top, dma
        extra = {}
        if top:
            extra["count"] = Out(kv.count_bits)
            if slots > 1:
                extra["slot"] = In(range(slots))
            if dma:
                extra["tab"] = In(self.tab_signature(kv))
        super().__init__(
            {
                "cmd": In(stream.Signature(unsigned(2))),
                "vec": In(stream.Signature(data.ArrayLayout(signed(8), kv.lanes))),
                "out": Out(stream.Signature(out_layout(kv))),
                "busy": Out(1),
                **extra,
            }
        )

    @staticmethod
    def tab_signature(kv: KvConfig) -> wiring.Signature:
        """The table DMA port (the DMA's side drives the ``Out`` members): ``id`` = the cluster whose ``sig`` and
        ``count`` read (combinationally) and which ``wen`` writes (``wsig``, ``wcount``); ``set`` sets the
        cluster and key counts (``n``/``ntok`` read them); key sums: ``sums_addr`` (cluster above beat) reads
        ``sums_rdata`` one cycle later, ``sums_wen`` writes ``sums_wdata`` there."""
        lanes = data.ArrayLayout(signed(kv.sum_bits), kv.lanes)
        nt = range(kv.max_clusters * kv.max_cluster_size + 1)
        return wiring.Signature(
            {
                "id": Out(kv.id_bits),
                "sig": In(kv.hyperplanes),
                "count": In(kv.count_bits),
                "wen": Out(1),
                "wsig": Out(kv.hyperplanes),
                "wcount": Out(kv.count_bits),
                "n": In(range(kv.max_clusters + 1)),
                "ntok": In(nt),
                "set": Out(1),
                "set_n": Out(range(kv.max_clusters + 1)),
                "set_ntok": Out(nt),
                "sums_addr": Out(sums_addr_bits(kv)),
                "sums_rdata": In(lanes),
                "sums_wen": Out(1),
                "sums_wdata": Out(lanes),
            }
        )

    def _wire_dma(self, m: Module, u: _Units) -> None:
        """The table DMA on the table's ports while the engine is IDLE (after the states: it takes precedence)."""
        tab, table = self.tab, u.table
        lg_l = (self.kv.lanes - 1).bit_length()
        m.d.comb += [
            tab.sig.eq(table.sig),
            tab.count.eq(table.count),
            tab.n.eq(table.n),
            tab.ntok.eq(table.ntok),
            tab.sums_rdata.eq(table.sums_read.data),
            table.load.en.eq(tab.wen),
            table.load.id.eq(tab.id),
            table.load.sig.eq(tab.wsig),
            table.load.count.eq(tab.wcount),
            table.set.en.eq(tab.set),
            table.set.n.eq(tab.set_n),
            table.set.ntok.eq(tab.set_ntok),
        ]
        with m.If(u.state == State.IDLE):
            m.d.comb += [
                table.row.eq(tab.id >> lg_l),
                table.id.eq(tab.id),
                table.sums_read.addr.eq(tab.sums_addr),
                table.sums_write.addr.eq(tab.sums_addr),
                table.sums_write.en.eq(tab.sums_wen),
                table.sums_write.data.eq(tab.sums_wdata),
            ]

    def elaborate(self, platform) -> Module:
        kv = self.kv
        m = Module()
        beat_shape = range(max(2, kv.beats))
        u = _Units(
            state=Signal(State),
            signature=SignatureUnit(kv),
            search=NearestSearch(kv),
            table=ClusterTableUnit(kv, self.slots, dma=self.dma),
            score=ScorePipeline(kv),
            threshold=ThresholdWalk(kv),
            is_query=Signal(),
            load_beat=Signal(beat_shape),
            vector=Array(Signal(8 * kv.lanes, name=f"vec_beat{b}") for b in range(kv.beats)),
            answer=Signal(data.StructLayout({"kind": 2, "id": kv.id_bits, "new": 1})),
            update_beat=Signal(beat_shape),
        )
        m.submodules.signature, m.submodules.search, m.submodules.table = u.signature, u.search, u.table
        m.submodules.score, m.submodules.threshold = u.score, u.threshold
        m.d.comb += self.busy.eq(u.state != State.IDLE)
        if self.top:
            m.d.comb += self.count.eq(u.table.count)
            if self.slots > 1:
                m.d.comb += u.table.slot.eq(self.slot)
        self._wire(m, u)
        with m.Switch(u.state):
            self._insert_states(m, u)
            self._query_states(m, u)
        if self.dma:
            self._wire_dma(m, u)
        return m

    def _wire(self, m: Module, u: _Units) -> None:
        """Unit-to-unit connections that do not depend on the state."""
        sig, search, table, score, th = u.signature, u.search, u.table, u.score, u.threshold
        m.d.comb += [
            sig.beat.eq(u.load_beat),
            sig.lanes.eq(self.vec.payload),
            search.sig.eq(sig.sig),
            search.n.eq(table.n),
            search.row_sigs.eq(table.row_sigs),
            search.row_counts.eq(table.row_counts),
            score.n.eq(table.n),
            score.sums.eq(table.sums_read.data),
            score.count.eq(table.count),
            score.query.eq(u.vector[score.query_beat]),
            score.score_id.eq(th.score_id),
            th.n.eq(table.n),
            th.ntok.eq(table.ntok),
            th.lo.eq(score.lo),
            th.hi.eq(score.hi),
            th.score_count_sum.eq(score.score_count_sum),
            th.score.eq(score.score),
            th.count.eq(table.count),
        ]

    def _read_cluster(self, m: Module, u: _Units, cid) -> None:
        """Point the table's count read at cluster ``cid`` (its bank row and lane)."""
        lg_l = (self.kv.lanes - 1).bit_length()
        m.d.comb += [u.table.row.eq(cid >> lg_l), u.table.id.eq(cid)]

    def _over_clusters(self, m: Module, u: _Units, en, count_id, done, then: State) -> None:
        """A unit's pass over the clusters: enable it, point the count read at the cluster it asks for, go to
        ``then`` when it is done."""
        m.d.comb += en.eq(1)
        self._read_cluster(m, u, count_id)
        with m.If(done):
            m.d.sync += u.state.eq(then)

    def _offer(self, m: Module, kind, ident, new=0) -> Value:
        """Offer an ``out`` beat (kind, id, new); the condition that it is taken."""
        out = self.out.payload
        m.d.comb += [self.out.valid.eq(1), out.kind.eq(kind), out.id.eq(ident), out.new.eq(new)]
        return self.out.ready

    def _insert_states(self, m: Module, u: _Units) -> None:
        """IDLE, LOAD (shared with QUERY), SCAN, DECIDE, UPDATE, OUT."""
        kv = self.kv
        table, search = u.table, u.search
        with m.Case(State.IDLE):
            m.d.comb += self.cmd.ready.eq(1)
            with m.If(self.cmd.valid):
                with m.If(self.cmd.payload == OP_RESET):
                    m.d.comb += table.reset.eq(1)
                with m.Elif((self.cmd.payload == OP_INSERT) | (self.cmd.payload == OP_QUERY)):
                    m.d.comb += u.signature.clear.eq(1)
                    m.d.sync += [
                        u.is_query.eq(self.cmd.payload == OP_QUERY),
                        u.load_beat.eq(0),
                        u.state.eq(State.LOAD),
                    ]

        with m.Case(State.LOAD):
            m.d.comb += self.vec.ready.eq(1)
            with m.If(self.vec.valid):
                m.d.comb += u.signature.en.eq(~u.is_query)
                m.d.sync += [
                    u.vector[u.load_beat].eq(self.vec.payload.as_value()),
                    u.load_beat.eq(u.load_beat + 1),
                ]
                with m.If(u.load_beat == kv.beats - 1):
                    with m.If(u.is_query):
                        m.d.comb += u.score.start.eq(1)
                        m.d.sync += u.state.eq(State.SCORE)
                    with m.Else():
                        m.d.comb += search.start.eq(1)
                        m.d.sync += u.state.eq(State.SCAN)

        with m.Case(State.SCAN):
            m.d.comb += [search.en.eq(1), table.row.eq(search.row)]
            with m.If(search.done):
                m.d.sync += u.state.eq(State.DECIDE)

        with m.Case(State.DECIDE):
            self._decide(m, u)

        with m.Case(State.UPDATE):
            # key sums += key, one beat per cycle (read issued a cycle ahead; a new cluster starts from 0)
            key, kb = u.vector[u.update_beat], sums_addr_bits(kv) - kv.id_bits
            m.d.comb += [
                table.sums_write.addr.eq(Cat(u.update_beat[:kb], u.answer.id)),
                table.sums_write.en.eq(1),
                table.sums_read.addr.eq(Cat((u.update_beat + 1)[:kb], u.answer.id)),
            ]
            m.d.comb += [
                table.sums_write.data[i].eq(
                    Mux(u.answer.new, 0, table.sums_read.data[i]) + key[8 * i : 8 * i + 8].as_signed()
                )
                for i in range(kv.lanes)
            ]
            m.d.sync += u.update_beat.eq(u.update_beat + 1)
            with m.If(u.update_beat == kv.beats - 1):
                m.d.sync += u.state.eq(State.OUT)

        with m.Case(State.OUT):
            if self.top:  # ``count``: the cluster's count after the insert
                self._read_cluster(m, u, u.answer.id)
            with m.If(self._offer(m, u.answer.kind, u.answer.id, u.answer.new)):
                m.d.sync += u.state.eq(State.IDLE)

    def _decide(self, m: Module, u: _Units) -> None:
        """DECIDE: join the nearest cluster within ``hamming``, else open one, else force-join the nearest
        non-full one, else drop the key (FULL); write signature and count, prefetch the first key-sum beat."""
        kv = self.kv
        search, table = u.search, u.table
        cid, new, kind = Signal(kv.id_bits), Signal(), Signal(2)
        self._read_cluster(m, u, search.best_id)
        with m.If(search.best_valid & (search.best_dist <= kv.hamming)):
            m.d.comb += [cid.eq(search.best_id), new.eq(0), kind.eq(KIND_ASSIGN)]
        with m.Elif(table.n < kv.max_clusters):
            m.d.comb += [cid.eq(table.n), new.eq(1), kind.eq(KIND_ASSIGN)]
        with m.Elif(search.best_valid):
            m.d.comb += [cid.eq(search.best_id), new.eq(0), kind.eq(KIND_ASSIGN)]
        with m.Else():
            m.d.comb += kind.eq(KIND_FULL)
        m.d.sync += [u.answer.kind.eq(kind), u.answer.id.eq(cid), u.answer.new.eq(new)]
        with m.If(kind == KIND_FULL):
            m.d.sync += u.state.eq(State.OUT)
        with m.Else():
            kb = sums_addr_bits(kv) - kv.id_bits
            m.d.comb += [
                table.write.en.eq(1),
                table.write.id.eq(cid),
                table.write.new.eq(new),
                table.write.sig.eq(u.signature.sig),
                table.write.count.eq(Mux(new, 1, table.count + 1)),
                table.sums_read.addr.eq(Cat(Const(0, kb), cid)),
            ]
            m.d.sync += [u.update_beat.eq(0), u.state.eq(State.UPDATE)]

    def _query_states(self, m: Module, u: _Units) -> None:
        """SCORE, TH, TH2, LINK, WSTART, WALK, END."""
        score, th = u.score, u.threshold
        with m.Case(State.SCORE):
            m.d.comb += u.table.sums_read.addr.eq(score.sums_addr)
            self._over_clusters(m, u, score.en, score.count_id, score.done, State.TH)

        with m.Case(State.TH):
            m.d.comb += th.row_sum_en.eq(1)
            m.d.sync += u.state.eq(State.TH2)

        with m.Case(State.TH2):
            m.d.comb += th.threshold_en.eq(1)
            with m.If(u.table.n == 0):
                m.d.sync += u.state.eq(State.END)
            with m.Else():
                m.d.sync += u.state.eq(State.LINK)

        with m.Case(State.LINK):
            self._over_clusters(m, u, th.link_en, th.count_id, th.link_done, State.WSTART)

        with m.Case(State.WSTART):
            m.d.comb += th.walk_start.eq(1)
            m.d.sync += u.state.eq(State.WALK)

        with m.Case(State.WALK):
            if self.top:  # ``count``: the selected cluster's count
                self._read_cluster(m, u, th.selected)
            with m.If(self._offer(m, KIND_SEL, th.selected)):
                m.d.comb += th.walk_step.eq(1)
                with m.If(th.walk_done):
                    m.d.sync += u.state.eq(State.END)

        with m.Case(State.END):
            with m.If(self._offer(m, KIND_END, th.visited)):
                m.d.sync += u.state.eq(State.IDLE)
