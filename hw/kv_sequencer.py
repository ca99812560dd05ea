"""The top level's KVR sequencer (ISA opcode 5): the KV retrieval engine (:class:`hw.kv.KvRetrieval`) on the
memory port, with ``kv.slots`` table slots (``system.kv_tables: onchip``) or one working table loaded from and
written back to DRAM (``dram``: :class:`hw.kv_numerics.TableLayout` at ``tab_base``; LOAD before the engine
commands, up to ``memory.outstanding`` read requests in flight; WB/WEND after the list block of a KVR with
inserts: the header and the touched clusters' entry and key-sum beats, TableLayout.dirty_beats — ``_table_dma``).

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
(:func:`sim.kv_model.kvr_run_cycles`, with ``dram`` :func:`sim.kv_model.table_dma_cycles`) follows these states;
docs/design.md, "The RTL top".
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO
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
    TABLE_ENTRY_BYTES,
    TableLayout,
    list_capacity,
)

__all__ = ["KvrSequencer", "kvr_fields_layout", "Phase"]


class Phase(enum.Enum, shape=unsigned(4)):
    """The sequencer's states, in the order a KVR passes them (module docstring; LOAD/WB/WEND: the table
    DMA of ``system.kv_tables: dram``)."""

    IDLE, REQ, RECV, CMD, FEED, WAIT, HDR, FLUSH, LOAD, WB, WEND = range(11)


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
            "tab_base": 32,
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
        self.dram = acfg.system.kv_tables == "dram"
        if self.dram:
            why = TableLayout(kv, mem.bus_bytes).rtl_fits()
            if why:
                raise ValueError(f"{acfg.name}: system.kv_tables=dram: {why}")
        #: The table load's FIFO, in beats: memory.outstanding bursts of memory.max_burst beats.
        self.table_fifo_beats = mem.outstanding * mem.max_burst
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
        dram = self.dram
        slots = 1 if dram else kv.slots  # dram: one working table, loaded and written back per KVR
        m.submodules.engine = eng = KvRetrieval(kv, slots=slots, top=True, dma=dram)

        f = Signal(kvr_fields_layout())
        ph = Signal(Phase)
        m.d.comb += self.active.eq(ph != Phase.IDLE)
        if slots > 1:
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
        wb_move, wb_data = Signal(), Signal(8 * W)  # the table write-back's beat (dram)
        dirty = Signal(CM)  # dram: the clusters this KVR's inserts touched (ASSIGN ids)
        with m.If(move):
            m.d.sync += [wreg.eq(pk), wv.eq(1)]
        with m.Elif(wb_move):
            m.d.sync += [wreg.eq(wb_data), wv.eq(1)]
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
                dirty.eq(0),
                n_sel.eq(0),
                hidx.eq(0),
                pkn.eq(0),
                pk.eq(0),
                waddr.eq(fields.list_base[: mem.addr_bits]),
                ph.eq(Mux(fields.queries != 0, Phase.REQ, Phase.HDR)),
            ]
            if dram:
                m.d.sync += ph.eq(Phase.LOAD)
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
                        with m.If(out.kind != KIND_FULL):
                            m.d.sync += dirty.bit_select(out.id, 1).eq(1)
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
                    if dram:  # a KVR with inserts writes its table back
                        with m.If(f.inserts != 0):
                            m.d.sync += ph.eq(Phase.WB)
        if dram:
            self._table_dma(m, f, ph, eng, wfree, wb_move, wb_data, accept, waddr, dirty)
        return m

    def _table_dma(self, m, f, ph, eng, wfree, wb_move, wb_data, accept, waddr, dirty) -> None:
        """``system.kv_tables: dram``: the table's load (LOAD) before the engine commands and its
        write-back (WB, WEND) after the list block (module docstring; hw.kv_numerics.TableLayout)."""
        acfg = self.acfg
        kv, mem = acfg.kv, acfg.memory
        W = mem.bus_bytes
        tl = TableLayout(kv, W)
        T, SIGB, CM, NB = tl.beats, tl.sig_beats, kv.max_clusters, kv.beats
        E = W // TABLE_ENTRY_BYTES  # entries per signature beat
        SB = tl.sum_bytes
        K = W // (kv.lanes * SB)  # engine key-sum beats per bus beat
        kb = max(1, (NB - 1).bit_length())
        tab = eng.tab
        m.submodules.tfifo = fifo = SyncFIFO(width=8 * W, depth=self.table_fifo_beats)

        lreq, lb = Signal(range(T + 1)), Signal(range(T + 1))
        ls = Signal(range(max(E, K, 1) + 1))
        CB = tl.cluster_beats
        CK = CB * K  # engine key-sum beat slots per cluster (those from NB on are padding)
        sc, sb = Signal(range(CM + 1)), Signal(range(max(2, CK)))
        subs = Signal.like(ls)
        bi = Signal.like(lb)  # the beat in hand: lb while loading, wb while writing back
        m.d.comb += subs.eq(Mux(bi == 0, 1, Mux(bi <= SIGB, E, K)))
        is_sig = Signal()
        m.d.comb += is_sig.eq((bi != 0) & (bi <= SIGB))
        cid = Signal(range(SIGB * E + E + 1))
        m.d.comb += cid.eq((bi - 1) * E + ls)

        def step_sums():
            with m.If(sb == CK - 1):
                m.d.sync += [sb.eq(0), sc.eq(sc + 1)]
            with m.Else():
                m.d.sync += sb.eq(sb + 1)

        m.d.comb += tab.sums_addr.eq(Cat(sb[:kb], sc[: kv.id_bits]))
        with m.If(self.start):
            m.d.sync += [lreq.eq(0), lb.eq(0), ls.eq(0), sc.eq(0), sb.eq(0)]

        # ---------------------------------------------------------------- load
        # Requests of max_burst beats (the last one shorter) go out while the FIFO has room for every beat
        # requested and not yet taken (credit: lreq − lb + blen ≤ its depth), as many in flight as the memory
        # accepts (memory.outstanding); beats are taken into the engine's table meanwhile.
        left = Signal(range(T + 1))
        m.d.comb += left.eq(T - lreq)
        blen = Mux(left > mem.max_burst, mem.max_burst, left)
        beat = fifo.r_data
        with m.If(ph == Phase.LOAD):
            with m.If((lreq != T) & (lreq - lb + blen <= self.table_fifo_beats)):
                m.d.comb += [
                    self.rreq.valid.eq(1),
                    self.rreq.payload.addr.eq(f.tab_base + lreq),
                    self.rreq.payload.len_minus_one.eq(blen - 1),
                ]
                with m.If(self.rreq.ready):
                    m.d.sync += lreq.eq(lreq + blen)
            m.d.comb += [bi.eq(lb), fifo.w_en.eq(self.rdata.valid), fifo.w_data.eq(self.rdata.payload)]
            with m.If(fifo.r_rdy):
                with m.If(lb == 0):  # the header: n, ntok
                    m.d.comb += [tab.set.eq(1), tab.set_n.eq(beat[:32]), tab.set_ntok.eq(beat[32:64])]
                with m.Elif(is_sig):
                    ent = beat.word_select(ls, 8 * TABLE_ENTRY_BYTES)
                    m.d.comb += [
                        tab.id.eq(cid),
                        tab.wen.eq(cid < CM),
                        tab.wsig.eq(ent[: kv.hyperplanes]),
                        tab.wcount.eq(ent[64 : 64 + kv.count_bits]),
                    ]
                with m.Else():
                    sub = beat.word_select(ls, 8 * kv.lanes * SB)
                    m.d.comb += tab.sums_wen.eq((sc < CM) & (sb < NB))
                    m.d.comb += [
                        tab.sums_wdata[i].eq(sub.word_select(i, 8 * SB)[: kv.sum_bits].as_signed())
                        for i in range(kv.lanes)
                    ]
                    step_sums()
                with m.If(ls == subs - 1):
                    m.d.comb += fifo.r_en.eq(1)
                    m.d.sync += [ls.eq(0), lb.eq(lb + 1)]
                    with m.If(lb + 1 == T):
                        m.d.sync += ph.eq(Mux(f.queries != 0, Phase.REQ, Phase.HDR))
                with m.Else():
                    m.d.sync += ls.eq(ls + 1)

        # ---------------------------------------------------------------- write-back
        wb, held = Signal(range(T + 1)), Signal()
        tb, tb_next = Signal(8 * W), Signal(8 * W)
        pe, pv = Signal(8 * TABLE_ENTRY_BYTES), Signal()  # an entry read last cycle; a key-sum read is valid
        # The beats written (TableLayout.dirty_beats): the header, the entry beats of the touched clusters
        # (pend_sig), each touched cluster's key-sum beats (pend_cl; wc the cluster, wk its beat).
        pend_sig, pend_cl = Signal(SIGB), Signal(CM)
        wc, wk = Signal(range(max(2, CM))), Signal(range(max(2, CB)))
        sig_dirty = Cat(*(dirty[b * E : min(CM, b * E + E)].any() for b in range(SIGB)))
        with m.If(accept & (ph == Phase.FLUSH)):  # entering WB: the header beat
            m.d.sync += [wb.eq(0), ls.eq(0), held.eq(0), pend_sig.eq(sig_dirty), pend_cl.eq(dirty)]
        in_sums = (wb != 0) & ~is_sig
        ps_next, pc_next = Signal(SIGB), Signal(CM)
        m.d.comb += [ps_next.eq(pend_sig), pc_next.eq(pend_cl)]
        with m.If(is_sig):
            m.d.comb += ps_next.bit_select((wb - 1)[: max(1, (SIGB - 1).bit_length())], 1).eq(0)
        with m.If(in_sums & (wk == CB - 1)):
            m.d.comb += pc_next.bit_select(wc, 1).eq(0)

        def lowest(v, n):
            idx = Signal(range(max(2, n)))
            for i in reversed(range(n)):
                with m.If(v[i]):
                    m.d.comb += idx.eq(i)
            return idx

        nsig, ncl = lowest(ps_next, SIGB), lowest(pc_next, CM)
        last_beat = Signal()
        m.d.comb += last_beat.eq(~(in_sums & (wk != CB - 1)) & ~ps_next.any() & ~pc_next.any())
        m.d.comb += tb_next.eq(tb)
        ext_lanes = [Signal(signed(8 * SB), name=f"wb_sum{i}") for i in range(kv.lanes)]
        m.d.comb += [x.eq(tab.sums_rdata[i]) for i, x in enumerate(ext_lanes)]  # sign-extended
        ext = Cat(*ext_lanes)
        with m.If(ph == Phase.WB):
            m.d.comb += bi.eq(wb)
            with m.If(ls < subs):  # issue the read of sub-beat ls
                with m.If(is_sig):
                    m.d.comb += tab.id.eq(cid)
                    m.d.sync += pe.eq(
                        Mux(cid < CM, Cat(tab.sig, Const(0, 64 - kv.hyperplanes), tab.count), 0)
                    )
                with m.Elif(wb != 0):
                    m.d.sync += pv.eq((sc < CM) & (sb < NB))
                    step_sums()
            with m.If((ls != 0) & ~held):  # collect sub-beat ls − 1
                with m.If(wb == 0):
                    m.d.comb += tb_next.eq(Cat(tab.n, Const(0, 32 - len(tab.n)), tab.ntok))
                with m.Elif(is_sig):
                    m.d.comb += tb_next.word_select((ls - 1)[: len(ls)], 8 * TABLE_ENTRY_BYTES).eq(pe)
                with m.Else():
                    m.d.comb += tb_next.word_select((ls - 1)[: len(ls)], 8 * kv.lanes * SB).eq(
                        Mux(pv, ext, 0)
                    )
                m.d.sync += tb.eq(tb_next)
            with m.If(ls == subs):
                with m.If(wfree):
                    m.d.comb += [wb_move.eq(1), wb_data.eq(tb_next)]
                    m.d.sync += [
                        waddr.eq(f.tab_base + wb),
                        ls.eq(0),
                        held.eq(0),
                        tb.eq(0),
                        pend_sig.eq(ps_next),
                        pend_cl.eq(pc_next),
                    ]
                    with m.If(in_sums & (wk != CB - 1)):  # the cluster's next key-sum beat
                        m.d.sync += [wb.eq(wb + 1), wk.eq(wk + 1)]
                    with m.Elif(~in_sums & ps_next.any()):  # the next touched entry beat
                        m.d.sync += wb.eq(1 + nsig)
                    with m.Elif(pc_next.any()):  # the next touched cluster's first key-sum beat
                        m.d.sync += [wb.eq(1 + SIGB + ncl * CB), wc.eq(ncl), wk.eq(0), sc.eq(ncl), sb.eq(0)]
                    with m.If(last_beat):
                        m.d.sync += ph.eq(Phase.WEND)
                with m.Else():
                    m.d.sync += held.eq(1)
            with m.Else():
                m.d.sync += ls.eq(ls + 1)
        with m.If((ph == Phase.WEND) & accept):
            m.d.sync += ph.eq(Phase.IDLE)
