"""The top level's KVR sequencer (ISA opcode 5 with ``system.kv_tables: onchip``): the KV retrieval engine
(:class:`hw.kv.KvRetrieval` with ``kv.slots`` table slots) on the memory port.

At ``start`` it latches the command's fields (slot = ``table``) and then runs, one engine command at a time:
the queries (rows ``inserts .. inserts + queries − 1`` at ``vec_base``), then the inserts (rows
``0 .. inserts − 1``), each row being ``ceil(dim/bus_bytes)`` bus beats:

- ``REQ``: one read request of the row's beats; ``RECV``: its beats into the row register;
- ``CMD``: the engine takes QUERY or INSERT (it is idle: the previous command's last output beat has left);
- ``FEED``: the row's ``kv.beats`` engine beats of ``kv.lanes`` int8, one per cycle (the engine never waits);
- ``WAIT``: every output beat is taken. A query's SELs join the stream's selection in union order
  (:func:`models.retrieval.union_order`), with the engine's ``count`` of the cluster (before the step's inserts,
  which come after every query); an insert's ASSIGN/FULL becomes its result word ``cluster (int16, −1 dropped) |
  slot << 16`` (slot = the count after the insert − 1), pushed into the write packer;
- ``HDR`` (after the queries, before the inserts): the list block's header and entries, one word per cycle,
  pushed into the write packer: n, three zero words, tile 0, the ``win_tiles`` window tiles (valid P), the
  selected clusters' ``page_tile + id`` with their counts, zeros up to the list capacity (with no queries: n = 0
  and every entry 0);
- ``FLUSH``: the partial last beat is written; the sequencer is done when its write is accepted.

The write packer gathers words into bus beats and writes each full beat from ``list_base`` on (a register
holds the beat being written, so packing goes on meanwhile). The cycle definition
(:func:`sim.kv_model.kvr_run_cycles`) follows these states; docs/design.md, "The RTL top".
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import AcceleratorConfig
from hw.gemm import read_request_layout, write_layout
from hw.kv import KvRetrieval
from hw.kv_numerics import (
    KIND_END,
    KIND_FULL,
    KIND_SEL,
    LIST_HEADER_BYTES,
    OP_INSERT,
    OP_QUERY,
    list_capacity,
)

__all__ = ["KvrSequencer", "kvr_fields_layout", "Phase"]


class Phase(enum.Enum, shape=unsigned(3)):
    """The sequencer's states, in the order a KVR passes them (module docstring)."""

    IDLE, REQ, RECV, CMD, FEED, WAIT, HDR, FLUSH = range(8)


def kvr_fields_layout() -> data.StructLayout:
    """The KVR command fields the sequencer uses (hw.isa.KVR_FIELDS; ``tab_base`` is for ``dram`` tables)."""
    return data.StructLayout(
        {
            "inserts": 8,
            "queries": 4,
            "win_tiles": 2,
            "table": 16,
            "win_tile": 16,
            "vec_base": 32,
            "list_base": 32,
            "page_tile": 16,
        }
    )


class KvrSequencer(wiring.Component):
    """KVR commands on the KV engine and one memory port (module docstring). ``active`` from the cycle after
    ``start`` to the cycle of the list block's last write accept, inclusive."""

    def __init__(self, acfg: AcceleratorConfig):
        self.acfg = acfg
        kv, mem = acfg.kv, acfg.memory
        self.row_beats = -(-kv.dim // mem.bus_bytes)
        if self.row_beats > mem.max_burst:
            raise ValueError(
                f"{acfg.name}: a KVR row of kv.dim {kv.dim} bytes ({self.row_beats} beats) must fit one read "
                f"burst (memory.max_burst {mem.max_burst})"
            )
        if mem.bus_bytes % 4:
            raise ValueError(
                f"{acfg.name}: memory.bus_bytes {mem.bus_bytes} must hold whole 32-bit list words"
            )
        super().__init__(
            {
                "start": In(1),
                "fields": In(kvr_fields_layout()),
                "active": Out(1),
                "rreq": Out(stream.Signature(read_request_layout(acfg))),
                "rdata": In(stream.Signature(unsigned(8 * mem.bus_bytes))),
                "wr": Out(stream.Signature(write_layout(acfg))),
            }
        )

    def elaborate(self, platform) -> Module:
        acfg = self.acfg
        kv, mem = acfg.kv, acfg.memory
        W, RB, L, P = mem.bus_bytes, self.row_beats, kv.lanes, kv.max_cluster_size
        W4 = W // 4
        NH = LIST_HEADER_BYTES // 4 + list_capacity(kv)  # header and entry words
        CM = kv.max_clusters
        m = Module()
        m.submodules.engine = eng = KvRetrieval(kv, slots=kv.slots, top=True)

        f = Signal(kvr_fields_layout())
        ph = Signal(Phase)
        m.d.comb += self.active.eq(ph != Phase.IDLE)
        if kv.slots > 1:
            m.d.comb += eng.slot.eq(f.table)

        # ---------------------------------------------------------------- engine commands and rows
        j = Signal(range(256 + 16 + 1))  # engine command index: queries first, then inserts
        jobs = Signal.like(j)
        m.d.comb += jobs.eq(f.queries + f.inserts)
        is_query = Signal()
        m.d.comb += is_query.eq(j < f.queries)
        row = Mux(is_query, f.inserts + j, j - f.queries)
        rbeat = Signal(range(RB + 1))
        rowbuf = Signal(8 * W * RB)
        fb = Signal(range(max(2, kv.beats)))

        # ---------------------------------------------------------------- selection (union order)
        seen = Signal(CM)
        sel_ids = Array(Signal(kv.id_bits, name=f"sel_id{i}") for i in range(CM))
        sel_cnts = Array(Signal(kv.count_bits, name=f"sel_cnt{i}") for i in range(CM))
        n_sel = Signal(range(CM + 1))

        # ---------------------------------------------------------------- write packer
        pk, pkn = Signal(8 * W), Signal(range(W4 + 1))
        wv, wreg, waddr = Signal(), Signal(8 * W), Signal(mem.addr_bits)
        accept = Signal()
        m.d.comb += [
            self.wr.valid.eq(wv),
            self.wr.payload.addr.eq(waddr),
            self.wr.payload.data.eq(wreg),
            accept.eq(wv & self.wr.ready),
        ]
        wfree = ~wv | accept
        want_move = (pkn == W4) | ((ph == Phase.FLUSH) & (pkn != 0))
        move = Signal()
        m.d.comb += move.eq(want_move & wfree)
        pkn_eff = Mux(move, 0, pkn)
        push_ok = Signal()
        m.d.comb += push_ok.eq(pkn_eff < W4)
        push, word = Signal(), Signal(32)
        with m.If(move):
            m.d.sync += [wreg.eq(pk), wv.eq(1)]
        with m.Elif(accept):
            m.d.sync += wv.eq(0)
        with m.If(accept):
            m.d.sync += waddr.eq(waddr + 1)
        with m.If(push):
            m.d.sync += [
                pk.eq(Mux(move, 0, pk) | (word.as_unsigned() << Cat(Const(0, 5), pkn_eff))),
                pkn.eq(pkn_eff + 1),
            ]
        with m.Elif(move):
            m.d.sync += [pk.eq(0), pkn.eq(0)]

        # ---------------------------------------------------------------- header and entry words
        hidx = Signal(range(NH + 1))
        e = Signal(range(NH + 1))
        m.d.comb += e.eq(hidx - 4)
        hword = Signal(32)
        si = Signal(range(NH + 1))
        m.d.comb += si.eq(e - 1 - f.win_tiles)
        with m.If(f.queries != 0):
            with m.If(hidx == 0):
                m.d.comb += hword.eq(1 + f.win_tiles + n_sel)
            with m.Elif(hidx >= 4):
                with m.If(e == 0):
                    m.d.comb += hword.eq(P << 16)
                with m.Elif(e <= f.win_tiles):
                    m.d.comb += hword.eq((f.win_tile + e - 1)[:16] | (P << 16))
                with m.Elif(si < n_sel):
                    k = si[: max(1, (CM - 1).bit_length())]
                    m.d.comb += hword.eq(Cat((f.page_tile + sel_ids[k])[:16], sel_cnts[k]))

        # ---------------------------------------------------------------- the phases
        after_queries = Mux(f.inserts != 0, Phase.REQ, Phase.FLUSH)
        with m.If(self.start):
            fields = self.fields
            m.d.sync += [
                f.eq(fields),
                j.eq(0),
                seen.eq(0),
                n_sel.eq(0),
                hidx.eq(0),
                pkn.eq(0),
                pk.eq(0),
                waddr.eq(fields.list_base[: mem.addr_bits]),
                ph.eq(Mux(fields.queries != 0, Phase.REQ, Phase.HDR)),
            ]
        m.d.comb += [
            self.rreq.payload.addr.eq(f.vec_base + row * RB),
            self.rreq.payload.len_minus_one.eq(RB - 1),
            self.rdata.ready.eq(1),
            eng.cmd.payload.eq(Mux(is_query, OP_QUERY, OP_INSERT)),
            eng.vec.payload.eq(rowbuf.word_select(fb, 8 * L)),
        ]
        with m.Switch(ph):
            with m.Case(Phase.REQ):
                m.d.comb += self.rreq.valid.eq(1)
                with m.If(self.rreq.ready):
                    m.d.sync += [rbeat.eq(0), ph.eq(Phase.RECV)]
            with m.Case(Phase.RECV):
                with m.If(self.rdata.valid):
                    m.d.sync += [rowbuf.word_select(rbeat, 8 * W).eq(self.rdata.payload), rbeat.eq(rbeat + 1)]
                    with m.If(rbeat == RB - 1):
                        m.d.sync += ph.eq(Phase.CMD)
            with m.Case(Phase.CMD):
                m.d.comb += eng.cmd.valid.eq(1)
                with m.If(eng.cmd.ready):
                    m.d.sync += [fb.eq(0), ph.eq(Phase.FEED)]
            with m.Case(Phase.FEED):
                m.d.comb += eng.vec.valid.eq(1)
                with m.If(eng.vec.ready):
                    m.d.sync += fb.eq(fb + 1)
                    with m.If(fb == kv.beats - 1):
                        m.d.sync += ph.eq(Phase.WAIT)
            with m.Case(Phase.WAIT):
                out = eng.out.payload
                with m.If(is_query):
                    m.d.comb += eng.out.ready.eq(1)
                    with m.If(eng.out.valid & (out.kind == KIND_SEL) & ~seen.bit_select(out.id, 1)):
                        m.d.sync += [
                            seen.bit_select(out.id, 1).eq(1),
                            sel_ids[n_sel[: max(1, (CM - 1).bit_length())]].eq(out.id),
                            sel_cnts[n_sel[: max(1, (CM - 1).bit_length())]].eq(eng.count),
                            n_sel.eq(n_sel + 1),
                        ]
                    with m.If(eng.out.valid & (out.kind == KIND_END)):
                        m.d.sync += j.eq(j + 1)
                        with m.If(j + 1 == f.queries):
                            m.d.sync += ph.eq(Phase.HDR)
                        with m.Else():
                            m.d.sync += ph.eq(Phase.REQ)
                with m.Else():  # an insert's ASSIGN or FULL: its result word
                    m.d.comb += [
                        eng.out.ready.eq(push_ok),
                        push.eq(eng.out.valid & push_ok),
                        word.eq(
                            Mux(
                                out.kind == KIND_FULL,
                                0xFFFF,
                                Cat(out.id, Const(0, 16 - len(out.id)), (eng.count - 1)[:16]),
                            )
                        ),
                    ]
                    with m.If(push):
                        m.d.sync += j.eq(j + 1)
                        with m.If(j + 1 == jobs):
                            m.d.sync += ph.eq(Phase.FLUSH)
                        with m.Else():
                            m.d.sync += ph.eq(Phase.REQ)
            with m.Case(Phase.HDR):
                m.d.comb += [push.eq(push_ok), word.eq(hword)]
                with m.If(push):
                    m.d.sync += hidx.eq(hidx + 1)
                    with m.If(hidx == NH - 1):
                        m.d.sync += ph.eq(after_queries)
            with m.Case(Phase.FLUSH):
                with m.If((pkn == 0) & accept):
                    m.d.sync += ph.eq(Phase.IDLE)
        return m
