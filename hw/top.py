"""Accelerator top level: command decoder, TLMM stream DMA, and the engines on one memory port.

The host (the CPU of a Zynq-class SoC; the co-simulation bench) pushes the Program's 64-bit command words
(hw.isa, version 5) into ``cmd``. The decoder fetches a command (one word per cycle; 3 for TLMM and GEMM, 4 for
GEMM_LIST, 1 for HOST and SYNC), waits in its dispatch cycle until the command may go, dispatches it and fetches the next
one in the following cycle — it does not wait for the command to finish. With ``system.overlap`` a command
may go when its own engine is free (TLMM and GEMM also need each other idle: they share the memory port; a
host op needs only the host idle); without, when every engine is idle. A SYNC goes when the classes of its
mask are idle. ``retire`` pulses, per class (TLMM, GEMM, HOST, SYNC), in a command's done cycle; commands of
one class finish in Program order. The command register is read through :class:`CommandFields`
(``lib.data`` views built from hw.isa's field tables):

- **TLMM**: the engine takes the command's engine fields; the DMA starts at the same edge. Its read
  sequencer walks the runs the engine consumes — for every chunk kc, the M activation beats (``act_base``
  bytes kc·M·G·T …) then the NB weight beats (``wgt_base`` bytes kc·NB·wgt_beat …) — and requests the bus
  beats each run covers, in bursts of at most ``memory.max_burst`` that never cross a run, while the beats
  requested and not yet used stay within the read FIFO (``dma_fifo`` beats). A byte gearbox
  (``TopGeometry.cap`` bytes: bus_bytes + the widest of a bus beat and the two engine beats, which may be
  wider than a bus beat by any ratio) takes FIFO beats (dropping the run's leading offset bytes), presents
  engine beats of the run's width, and discards the rest of a run's last bus beat. Results (Q int32 each) are packed into bus beats and written
  from ``res_base`` on; a partial last beat is written zero-padded. Done when every result is written.
  With a weight buffer (``tlmm.weight_buffer_beats``) the command's ``wbuf`` picks the weight source: 1
  also writes every weight beat into the buffer, 2 walks the activation runs only and feeds the engine's
  weights from the buffer (hw.top_geometry.WBUF_READ_LATENCY).
- **GEMM**: the engine gets its fields and the memory port; done when its ``busy`` falls.
- **GEMM_LIST** (4 words; elaborated with ``system.attention: resv``): the top reads the tile list at
  ``list_base`` (one request of the capacity's beats), then the engine runs the GEMM with the list's count in
  place of ``n_tiles`` (mode 1) / ``k_tiles`` (mode 2) while the top puts the listed B tiles' addresses on its
  B requests; done when its ``busy`` falls (docs/design.md, "KV retrieval in the loop", "The RTL top").
- **KVR** (3 words; elaborated with ``system.attention: resv``): the KV engine behind
  :class:`hw.kv_sequencer.KvrSequencer`, in the GEMM class (it waits for the memory port and holds it): the
  command's rows are read and run on the engine (queries, then inserts, on the slot ``table`` of ``kv.slots``
  with ``system.kv_tables: onchip``; with ``dram`` on the one working table, loaded from ``tab_base`` before and
  written back after), and its list block is written at ``list_base``; done the cycle after its last write is
  accepted.
- **HOST**: ``host`` presents the op index; the host takes it at the handshake and raises ``host_done`` for one
  cycle when it has run it (the bench: the op's modeled latency, ``attrs["cycles"]``, after the handshake).

The memory port (``rreq``/``rdata``/``wr``, the rules of sim/memory.py) belongs to the engine command in
flight (at most one). ``sim.top_model`` mirrors this state for state; docs/design.md ("Top level") has the cycle counts.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import AcceleratorConfig
from hw.gemm import TemporalGemm, read_request_layout, write_layout
from hw.gemm import command_layout as gemm_command_layout
from hw.isa import (
    GEMM_FIELDS,
    GEMM_LIST_FIELDS,
    HOST_FIELDS,
    KVR_FIELDS,
    OP_GEMM,
    OP_GEMM_LIST,
    OP_HOST,
    OP_KVR,
    OP_SYNC,
    OP_TLMM,
    SYNC_FIELDS,
    TLMM_FIELDS,
    WBUF_FILL,
    WBUF_REUSE,
    command_words,
    payload_fields,
)
from hw.kv_numerics import LIST_HEADER_BYTES, list_buffer_beats, list_capacity
from hw.kv_sequencer import KvrSequencer, kvr_fields_layout
from hw.mem_port import forward_mem_port
from hw.tlmm import TableLookupMatmul
from hw.tlmm import command_layout as tlmm_command_layout
from hw.top_geometry import WBUF_READ_LATENCY, TopGeometry, top_geometry

__all__ = [
    "AcceleratorTop",
    "CommandFields",
    "TopGeometry",
    "top_geometry",
    "command_layout",
    "MAX_COMMAND_WORDS",
]

_FIELDS = {
    OP_TLMM: TLMM_FIELDS,
    OP_GEMM: GEMM_FIELDS,
    OP_HOST: HOST_FIELDS,
    OP_SYNC: SYNC_FIELDS,
    OP_GEMM_LIST: GEMM_LIST_FIELDS,
    OP_KVR: KVR_FIELDS,
}
#: Words the decoder's command register holds (the longest command).
MAX_COMMAND_WORDS = max(command_words(op) for op in _FIELDS)


def command_layout(opcode: int) -> data.FlexibleLayout:
    """The decoder's command register (``MAX_COMMAND_WORDS`` 64-bit words, word w at bit 64·w) seen as a
    command of ``opcode``: one field per hw.isa field (reserved bits have none)."""
    return data.FlexibleLayout(
        64 * MAX_COMMAND_WORDS,
        {name: data.Field(unsigned(width), 64 * word + lsb) for name, word, lsb, width in _FIELDS[opcode]},
    )


_DMA_FIELDS = ("act_base", "wgt_base", "res_base")


class CommandFields(wiring.Component):
    """The fields of the command in the decoder's register (combinational, through :func:`command_layout`
    views): the opcode, the TLMM and GEMM engines' ``cmd`` payloads, the TLMM DMA's stream addresses and the
    HOST op index. Which of them are meaningful depends on the opcode."""

    def __init__(self):
        super().__init__(
            {
                "words": In(data.ArrayLayout(64, MAX_COMMAND_WORDS)),
                "opcode": Out(8),
                "tlmm": Out(tlmm_command_layout()),
                "tlmm_dma": Out(data.StructLayout({**{name: 32 for name in _DMA_FIELDS}, "wbuf": 2})),
                "gemm": Out(gemm_command_layout()),
                "host_op": Out(16),
                "sync_mask": Out(3),
                "glist": Out(data.StructLayout({"list_base": 32, "mode": 2})),
                "kvr": Out(kvr_fields_layout()),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        tl, gm, host, sync, gl = (
            data.View(command_layout(op), self.words.as_value())
            for op in (OP_TLMM, OP_GEMM, OP_HOST, OP_SYNC, OP_GEMM_LIST)
        )
        m.d.comb += [self.opcode.eq(tl.opcode), self.host_op.eq(host.op), self.sync_mask.eq(sync.mask)]
        m.d.comb += [self.glist.list_base.eq(gl.list_base), self.glist.mode.eq(gl.mode)]
        kr = data.View(command_layout(OP_KVR), self.words.as_value())
        m.d.comb += [self.kvr[name].eq(kr[name]) for name in kvr_fields_layout().members]
        m.d.comb += [self.tlmm[name].eq(tl[name]) for name, _ in payload_fields(OP_TLMM)]
        m.d.comb += [self.tlmm_dma[name].eq(tl[name]) for name in (*_DMA_FIELDS, "wbuf")]
        m.d.comb += [self.gemm[name].eq(gm[name]) for name, _ in payload_fields(OP_GEMM)]
        return m


class AcceleratorTop(wiring.Component):
    """Command decoder + TLMM DMA + TLMM and GEMM engines sharing one memory port (module docstring)."""

    def __init__(self, acfg: AcceleratorConfig):
        self.acfg = acfg
        self.geo = TopGeometry(acfg)
        super().__init__(
            {
                "cmd": In(stream.Signature(unsigned(64))),
                "host": Out(stream.Signature(unsigned(16))),
                "rreq": Out(stream.Signature(read_request_layout(acfg))),
                "rdata": In(stream.Signature(unsigned(8 * acfg.memory.bus_bytes))),
                "wr": Out(stream.Signature(write_layout(acfg))),
                "host_done": In(1),
                "busy": Out(1),
                "retire": Out(4),
            }
        )

    def elaborate(self, platform):
        acfg, g = self.acfg, self.geo
        t, mem = acfg.tlmm, acfg.memory
        W, EA, EW, ER, F, CAP = g.W, g.EA, g.EW, g.ER, g.fifo, g.cap
        lgW = (W - 1).bit_length()
        lgA = (g.align - 1).bit_length()  # fills and offsets are multiples of 2^lgA bytes
        AB = mem.addr_bits
        m = Module()
        m.submodules.tlmm = tlmm = TableLookupMatmul(t)
        m.submodules.gemm = gemm = TemporalGemm(acfg)

        # ---------------------------------------------------------------- decoder
        words = Signal(data.ArrayLayout(64, MAX_COMMAND_WORDS), name="command_words")
        m.submodules.fields = fields = CommandFields()
        m.d.comb += fields.words.eq(words)
        tl_cmd, tl_dma = fields.tlmm, fields.tlmm_dma
        widx = Signal(range(MAX_COMMAND_WORDS + 1))
        st = Signal()  # 0 FETCH, 1 DISPATCH (waiting until the command may go)
        opcode = fields.opcode
        tl_done = Signal()
        # engine classes in flight: TLMM (the DMA's result packer is active until the last result is written),
        # GEMM (dispatched, busy not yet seen low), HOST (handed to the host, host_done not yet seen)
        tl_busy, gm_busy, hs_busy = Signal(), Signal(), Signal()
        port_free = ~tl_busy & ~gm_busy
        if acfg.system.overlap:  # a command goes when its own engine (and the memory port) is free
            may_go = Mux(opcode == OP_HOST, ~hs_busy, port_free)
        else:  # every command waits for every engine
            may_go = port_free & ~hs_busy
        sync_go = (fields.sync_mask & Cat(tl_busy, gm_busy, hs_busy)) == 0
        is_sync, is_host = opcode == OP_SYNC, opcode == OP_HOST
        go = Signal()
        m.d.comb += go.eq((st == 1) & Mux(is_sync, sync_go, may_go & (~is_host | self.host.ready)))
        m.d.comb += self.busy.eq((st != 0) | tl_busy | gm_busy | hs_busy)
        with m.If(st == 0):
            m.d.comb += self.cmd.ready.eq(1)
            with m.If(self.cmd.valid):
                m.d.sync += words[widx].eq(self.cmd.payload)
                op = Mux(widx == 0, self.cmd.payload[:8], opcode)
                n_words = Mux(
                    (op == OP_HOST) | (op == OP_SYNC),
                    1,
                    Mux(op == OP_GEMM_LIST, command_words(OP_GEMM_LIST), command_words(OP_TLMM)),
                )
                with m.If(widx + 1 == n_words):
                    m.d.sync += [widx.eq(0), st.eq(1)]
                with m.Else():
                    m.d.sync += widx.eq(widx + 1)
        with m.If(go):
            m.d.sync += st.eq(0)

        dispatch_tlmm = go & (opcode == OP_TLMM)
        dispatch_gemm = go & (opcode == OP_GEMM)
        dispatch_list = go & (opcode == OP_GEMM_LIST)
        # KVR (opcode 5; system.attention resv, tables onchip or dram): the KV engine's sequencer, in the GEMM
        # class (it waits for the memory port and holds it until done; SYNC's GEMM bit and retire's cover it)
        has_kvr = acfg.system.attention == "resv"
        kvr_active = Signal()
        dispatch_kvr = go & (opcode == OP_KVR)
        if has_kvr:
            m.submodules.kvr = kvr = KvrSequencer(acfg)
            m.d.comb += [kvr.start.eq(dispatch_kvr), kvr.fields.eq(fields.kvr), kvr_active.eq(kvr.active)]
        lf_active = Signal()  # a GEMM_LIST from its dispatch to its GEMM's accept (the list fetch)
        lf_start = Signal()  # the list is in: the engine takes the GEMM with the list's count
        lf_cmd = Signal(gemm_command_layout())  # the GEMM_LIST's GEMM fields, count substituted
        m.d.comb += [
            tlmm.cmd.valid.eq(dispatch_tlmm),
            tlmm.cmd.payload.eq(fields.tlmm),
            gemm.cmd.valid.eq(dispatch_gemm | lf_start),
            self.host.valid.eq((st == 1) & is_host & may_go),
            self.host.payload.eq(fields.host_op),
        ]
        gm_done, hs_done = gm_busy & ~gemm.busy & ~lf_active & ~kvr_active, hs_busy & self.host_done
        with m.If(dispatch_gemm | dispatch_list | (dispatch_kvr if has_kvr else 0)):
            m.d.sync += gm_busy.eq(1)
        with m.Elif(gm_done):
            m.d.sync += gm_busy.eq(0)
        with m.If(go & is_host):
            m.d.sync += hs_busy.eq(1)
        with m.Elif(hs_done):
            m.d.sync += hs_busy.eq(0)
        m.d.comb += self.retire.eq(Cat(tl_done, gm_done, hs_done, go & is_sync))

        # ---------------------------------------------------------------- TLMM DMA: read sequencer
        M = Signal(range(t.tokens + 1))
        kc_last = Signal(16)
        NB = Signal(16)
        run_a_bytes = Signal(16 + 8)  # M·EA
        run_w_bytes = Signal(16 + 8 + 8)  # NB·EW
        byte_bits = AB + lgW + 1

        def run_beats(start, nbytes):
            return (start[:lgW] + nbytes + (W - 1)) >> lgW

        reuse = Signal()  # wbuf 2: the weights come from the weight buffer; the walks visit act runs only

        def next_run(active, kind, kc, a, w, start_w, start_a):
            """One step of a run walk, at the end of a run: chunk kc's activation run (kind 0) is followed by
            its weight run (kind 1), that by chunk kc + 1's activation run; the last chunk's weight run ends
            the walk (``reuse``: act runs only). ``a``/``w`` are the byte addresses of the current act/wgt
            runs (each advanced past its run when it ends); ``start_w`` / ``start_a(a)`` are the walker's own
            statements that begin the next weight run / the act run at byte ``a``."""
            with m.If((kind == 0) & ~reuse):
                m.d.sync += [kind.eq(1), a.eq(a + run_a_bytes), *start_w]
            with m.Elif(kc == kc_last):
                m.d.sync += active.eq(0)
            with m.Else():
                na = Mux(reuse, a + run_a_bytes, a)[: len(a)]
                m.d.sync += [kind.eq(0), kc.eq(kc + 1), w.eq(w + run_w_bytes), a.eq(na), *start_a(na)]

        # sequencer (requests) and consumer (gearbox) each walk the runs (next_run): kind 0 act, 1 wgt
        rs_active, rs_kind, rs_kc = Signal(), Signal(), Signal(16)
        rs_a, rs_w = Signal(byte_bits), Signal(byte_bits)  # byte address of the current act / wgt run
        rs_addr, rs_left = Signal(AB), Signal(byte_bits)
        inflight = Signal(range(F + 1))
        burst = Signal(range(mem.max_burst + 1))
        m.d.comb += burst.eq(Mux(rs_left > mem.max_burst, mem.max_burst, rs_left))
        rq_fire = Signal()
        tl_rreq_valid = Signal()
        m.d.comb += tl_rreq_valid.eq(rs_active & (inflight + burst <= F))

        m.submodules.rfifo = rfifo = SyncFIFO(width=8 * W, depth=F)
        gb_push = Signal()

        with m.If(rq_fire):
            m.d.sync += [rs_addr.eq(rs_addr + burst), rs_left.eq(rs_left - burst)]
            with m.If(rs_left == burst):  # run requested: next run
                next_run(
                    rs_active,
                    rs_kind,
                    rs_kc,
                    rs_a,
                    rs_w,
                    [rs_addr.eq(rs_w >> lgW), rs_left.eq(run_beats(rs_w, run_w_bytes))],
                    lambda a: [rs_addr.eq(a >> lgW), rs_left.eq(run_beats(a, run_a_bytes))],
                )
        m.d.sync += inflight.eq(inflight + Mux(rq_fire, burst, 0) - gb_push)

        # ---------------------------------------------------------------- TLMM DMA: gearbox
        gb_active, gb_kind, gb_kc, gb_first = Signal(), Signal(), Signal(16), Signal()
        gb_a, gb_w = Signal(byte_bits), Signal(byte_bits)
        gb_bb, gb_eb = Signal(byte_bits), Signal(17)
        buf = Signal(8 * CAP)
        fill = Signal(range(CAP + 1))
        E = Mux(gb_kind, EW, EA)
        out_valid = gb_active & (fill >= E) & (gb_eb != 0)
        wbits = len(tlmm.wgt.payload.as_value())
        m.d.comb += tlmm.act.valid.eq(out_valid & ~gb_kind)
        m.d.comb += tlmm.act.payload.eq(Cat(buf[8 * i : 8 * i + t.act_bits] for i in range(t.chunk_k)))
        pop = Signal()
        m.d.comb += pop.eq(out_valid & Mux(gb_kind, tlmm.wgt.ready, tlmm.act.ready))

        # ---------------------------------------------------------------- TLMM DMA: weight buffer
        # (tlmm.weight_buffer_beats words of one engine weight beat) wbuf 1: every weight beat the gearbox
        # hands the engine is also written, from word 0 on; wbuf 2: a read port with an output register
        # (hw.top_geometry.WBUF_READ_LATENCY) feeds the engine's wgt stream from word 0 on.
        if g.wbuf_beats:
            assert WBUF_READ_LATENCY == 1 and g.wbuf_bits == wbits
            D = g.wbuf_beats
            m.submodules.wbuf_mem = wmem = Memory(shape=unsigned(wbits), depth=D, init=[])
            wb_wp, wb_rp = wmem.write_port(), wmem.read_port()
            wb_fill = Signal()  # wbuf 1
            wb_waddr, wb_raddr = Signal(range(D)), Signal(range(D))
            wb_left, wb_valid = Signal(range(D + 1)), Signal()
            wb_take = wb_valid & tlmm.wgt.ready
            wb_read = (wb_left != 0) & (~wb_valid | wb_take)
            m.d.comb += [
                wb_wp.addr.eq(wb_waddr),
                wb_wp.data.eq(buf[:wbits]),
                wb_wp.en.eq(wb_fill & pop & gb_kind),
                wb_rp.addr.eq(wb_raddr),
                wb_rp.en.eq(wb_read),
                tlmm.wgt.valid.eq(Mux(reuse, wb_valid, out_valid & gb_kind)),
                tlmm.wgt.payload.eq(Mux(reuse, wb_rp.data, buf[:wbits])),
            ]
            m.d.sync += wb_valid.eq(wb_read | (wb_valid & ~wb_take))
            with m.If(wb_wp.en):
                m.d.sync += wb_waddr.eq(wb_waddr + 1)
            with m.If(wb_read):
                m.d.sync += [wb_raddr.eq(wb_raddr + 1), wb_left.eq(wb_left - 1)]
            with m.If(dispatch_tlmm):
                mode = fields.tlmm_dma.wbuf
                m.d.sync += [
                    reuse.eq(mode == WBUF_REUSE),
                    wb_fill.eq(mode == WBUF_FILL),
                    wb_waddr.eq(0),
                    wb_raddr.eq(0),
                    wb_left.eq(Mux(mode == WBUF_REUSE, tl_cmd.k_chunks * tl_cmd.n_blocks, 0)),
                ]
        else:
            m.d.comb += [tlmm.wgt.valid.eq(out_valid & gb_kind), tlmm.wgt.payload.eq(buf[:wbits])]
        # Both outcomes of ``pop`` (which depends on the engine's ready) are computed in parallel and ``pop``
        # selects at the end, so the engine's ready does not drive the byte shifters (timing). Shifts are by
        # whole ``align``-byte words (the low bits of fills and offsets are 0: TopGeometry), and the pop shift
        # is one of two constants, so no shifter is wider than it has to be.
        fill_p = Signal(range(CAP + 1))  # fill after popping an engine beat
        m.d.comb += fill_p.eq(fill - E)
        can_in = rfifo.r_rdy & (gb_bb != 0)
        push_p, push_n = Signal(), Signal()
        m.d.comb += [
            push_p.eq(can_in & (fill_p + W <= CAP)),
            push_n.eq(can_in & (fill + W <= CAP)),
            gb_push.eq(Mux(pop, push_p, push_n)),
            rfifo.r_en.eq(gb_push),
        ]
        off = Mux(gb_first, Mux(gb_kind, gb_w, gb_a)[:lgW], 0)

        def words(v, hi):  # a byte count that is a multiple of 2^lgA, as a shift amount in bits
            return Cat(Const(0, 3 + lgA), v[lgA:hi])

        incoming = Signal(8 * W)
        m.d.comb += incoming.eq(rfifo.r_data >> words(off, lgW))
        merged_p, merged_n = Signal(8 * CAP), Signal(8 * CAP)
        fb = len(fill)
        m.d.comb += [
            merged_p.eq(
                Mux(gb_kind, buf >> (8 * EW), buf >> (8 * EA)) | Mux(push_p, incoming << words(fill_p, fb), 0)
            ),
            merged_n.eq(buf | Mux(push_n, incoming << words(fill, fb), 0)),
        ]
        m.d.sync += [
            buf.eq(Mux(pop, merged_p, merged_n)),
            fill.eq(Mux(pop, fill_p + Mux(push_p, W - off, 0), fill + Mux(push_n, W - off, 0))),
        ]
        with m.If(gb_push):
            m.d.sync += [gb_bb.eq(gb_bb - 1), gb_first.eq(0)]
        with m.If(pop):
            m.d.sync += gb_eb.eq(gb_eb - 1)
            with m.If(gb_eb == 1):  # run done: drop the padding, next run
                m.d.sync += [buf.eq(0), fill.eq(0), gb_first.eq(1)]
                next_run(
                    gb_active,
                    gb_kind,
                    gb_kc,
                    gb_a,
                    gb_w,
                    [gb_bb.eq(run_beats(gb_w, run_w_bytes)), gb_eb.eq(NB)],
                    lambda a: [gb_bb.eq(run_beats(a, run_a_bytes)), gb_eb.eq(M)],
                )
        m.d.comb += rfifo.w_data.eq(self.rdata.payload)

        # ---------------------------------------------------------------- TLMM DMA: result packer
        WCAP = g.res_cap
        wbuf = Signal(8 * WCAP)
        wfill = Signal(range(WCAP + 1))
        w_addr = Signal(AB)
        res_left = Signal(33)
        w_active = Signal()
        tl_wr_valid = Signal()
        m.d.comb += [
            tl_wr_valid.eq(w_active & ((wfill >= W) | ((res_left == 0) & (wfill != 0)))),
            tlmm.res.ready.eq(w_active & (wfill <= W)),
        ]
        wr_fire = Signal()
        r_push = tlmm.res.valid & tlmm.res.ready
        w_after = Signal(range(WCAP + 1))
        m.d.comb += w_after.eq(Mux(wr_fire, Mux(wfill >= W, wfill - W, 0), wfill))
        w_shift = Signal(8 * WCAP)
        m.d.comb += w_shift.eq(Mux(wr_fire, wbuf >> (8 * W), wbuf))
        m.d.sync += [
            wbuf.eq(w_shift | Mux(r_push, tlmm.res.payload.as_value() << (w_after << 3), 0)),
            wfill.eq(w_after + Mux(r_push, ER, 0)),
        ]
        with m.If(wr_fire):
            m.d.sync += w_addr.eq(w_addr + 1)
        with m.If(r_push):
            m.d.sync += res_left.eq(res_left - 1)
        m.d.comb += [tl_done.eq(w_active & (res_left == 0) & (wfill == 0)), tl_busy.eq(w_active)]
        with m.If(tl_done):
            m.d.sync += w_active.eq(0)

        # ---------------------------------------------------------------- DMA start (at the dispatch edge)
        with m.If(dispatch_tlmm):
            act_b = Cat(Const(0, lgW), tl_dma.act_base[:AB])
            wgt_b = Cat(Const(0, lgW), tl_dma.wgt_base[:AB])
            m_tok = tl_cmd.tokens_minus_one + 1
            nbv = tl_cmd.n_blocks
            a_bytes = m_tok * EA
            m.d.sync += [
                M.eq(m_tok),
                kc_last.eq(tl_cmd.k_chunks - 1),
                NB.eq(nbv),
                run_a_bytes.eq(a_bytes),
                run_w_bytes.eq(nbv * EW),
                rs_active.eq(1),
                rs_kind.eq(0),
                rs_kc.eq(0),
                rs_a.eq(act_b),
                rs_w.eq(wgt_b),
                rs_addr.eq(tl_dma.act_base[:AB]),
                rs_left.eq(run_beats(act_b, a_bytes)),
                gb_active.eq(1),
                gb_kind.eq(0),
                gb_kc.eq(0),
                gb_first.eq(1),
                gb_a.eq(act_b),
                gb_w.eq(wgt_b),
                gb_bb.eq(run_beats(act_b, a_bytes)),
                gb_eb.eq(m_tok),
                w_active.eq(1),
                wfill.eq(0),
                wbuf.eq(0),
                res_left.eq(m_tok * nbv),
                w_addr.eq(tl_dma.res_base[:AB]),
            ]

        # ---------------------------------------------------------------- GEMM_LIST: list fetch, B addresses
        # At the dispatch the top keeps the command's GEMM fields and reads the list's first
        # list_fetch_beats(capacity) beats (the field n_tiles (mode 1) or k_tiles (mode 2) is the capacity; the
        # count is in the header, so the request covers the capacity) in one request; the cycle after its last
        # beat the engine takes the GEMM with the list's count in place of the field. The engine computes its
        # B addresses for packed tiles; the top follows its requests (per step the A tile's beats, then the B
        # tile's: bursts never cross a tile) and puts the listed tile's address on B requests.
        has_list = acfg.system.attention == "resv"  # only resv Programs hold GEMM_LIST commands
        lbuf = Signal(8 * W * max(1, list_buffer_beats(acfg.kv, W) if has_list else 1))
        lmode = Signal(2)  # mode of the GEMM in flight (0: opcode 2)
        lf_fire, lf_beat, lf_req, lf_base = Signal(), Signal(), Signal(), Signal(AB)
        lf_beats = Signal(range(mem.max_burst + 1))
        p_part, p_off, b_tile = (
            Signal(),
            Signal(range(max(acfg.gemm_geometry.a_beats, acfg.gemm_geometry.b_beats) + 1)),
            Signal(AB),
        )
        if not has_list:
            m.d.comb += gemm.cmd.payload.eq(fields.gemm)
        else:
            ggeo = acfg.gemm_geometry
            GA, GB = ggeo.a_beats, ggeo.b_beats
            LB, LCAP = list_buffer_beats(acfg.kv, W), list_capacity(acfg.kv)
            if LB > mem.max_burst:
                raise ValueError(
                    f"{acfg.name}: a tile list of {LCAP} entries ({LB} beats) must fit one read burst "
                    f"(memory.max_burst {mem.max_burst}): fewer kv.max_clusters or a longer burst"
                )
            lf_in = Signal()
            lf_idx = Signal(range(LB + 1))
            l_bbase, l_stride, l_ktbb = Signal(AB), Signal(AB), Signal(AB)
            count = lbuf[:16]
            lf_payload = Signal(gemm_command_layout())
            m.d.comb += [lf_start.eq(lf_in), lf_payload.eq(lf_cmd)]
            with m.If(lmode == 1):
                m.d.comb += lf_payload.n_tiles.eq(count)
            with m.Else():
                m.d.comb += lf_payload.k_tiles.eq(count)
            m.d.comb += gemm.cmd.payload.eq(Mux(lf_start, lf_payload.as_value(), fields.gemm.as_value()))
            with m.If(dispatch_gemm):
                m.d.sync += lmode.eq(0)
            with m.If(dispatch_list):
                gf, gl = fields.gemm, fields.glist
                cap = Mux(gl.mode == 1, gf.n_tiles, gf.k_tiles)
                need = (LIST_HEADER_BYTES + 4 * cap + (W - 1)) >> lgW
                ktbb = gf.k_tiles * GB
                m.d.sync += [
                    lf_active.eq(1),
                    lf_req.eq(1),
                    lf_beats.eq(Mux(cap > LCAP, LB, need)),
                    lf_idx.eq(0),
                    lf_base.eq(gl.list_base[:AB]),
                    lmode.eq(gl.mode),
                    lf_cmd.eq(gf),
                    l_bbase.eq(gf.b_base[:AB]),
                    l_ktbb.eq(ktbb),
                    l_stride.eq(Mux(gf.b_stride == 0, ktbb, gf.b_stride)),
                ]
            with m.If(lf_fire):
                m.d.sync += lf_req.eq(0)
            with m.If(lf_beat):
                m.d.sync += [lbuf.word_select(lf_idx, 8 * W).eq(self.rdata.payload), lf_idx.eq(lf_idx + 1)]
                with m.If(lf_idx + 1 == lf_beats):
                    m.d.sync += lf_in.eq(1)
            with m.If(lf_start):
                m.d.sync += [lf_active.eq(0), lf_in.eq(0)]
            # the engine's requests: part (0 A tile, 1 B tile), beats of the tile requested, the B tile's (kt, ni)
            p_kt, p_ni = Signal(16), Signal(16)
            kt_last = Mux(lmode == 2, count, lf_cmd.k_tiles) - 1
            nt_last = Mux(lmode == 1, count, lf_cmd.n_tiles) - 1
            g_fire = gemm.rreq.valid & gemm.rreq.ready
            g_burst = gemm.rreq.payload.len_minus_one + 1
            with m.If(g_fire):
                with m.If(p_off + g_burst == Mux(p_part, GB, GA)):
                    m.d.sync += [p_off.eq(0), p_part.eq(~p_part)]
                    with m.If(p_part):
                        with m.If(p_kt != kt_last[:16]):
                            m.d.sync += p_kt.eq(p_kt + 1)
                        with m.Elif(p_ni != nt_last[:16]):
                            m.d.sync += [p_kt.eq(0), p_ni.eq(p_ni + 1)]
                        with m.Else():
                            m.d.sync += [p_kt.eq(0), p_ni.eq(0)]
                with m.Else():
                    m.d.sync += p_off.eq(p_off + g_burst)
            with m.If(lf_start):
                m.d.sync += [p_part.eq(0), p_off.eq(0), p_kt.eq(0), p_ni.eq(0)]
            # the B tile's address, registered: the counters change at a B tile's last request, and the next
            # step's A tile is requested (at least one cycle) before its B tile
            eidx = Signal(range(LCAP))
            m.d.comb += eidx.eq(Mux(lmode == 1, p_ni, p_kt))
            entry = lbuf[8 * LIST_HEADER_BYTES :].word_select(eidx, 32)[:16]
            m.d.sync += b_tile.eq(
                l_bbase + Mux(lmode == 1, entry * l_ktbb + p_kt * GB, p_ni * l_stride + entry * GB)
            )

        # ---------------------------------------------------------------- memory port
        def read_port(valid, addr, beats, fire, beat):
            """The top's own reads on the port: a request of ``beats`` at ``addr`` while ``valid`` (``fire``
            in its accept cycle), every returned beat taken (``beat`` while one arrives)."""
            return [
                self.rreq.valid.eq(valid),
                self.rreq.payload.addr.eq(addr),
                self.rreq.payload.len_minus_one.eq(beats - 1),
                fire.eq(valid & self.rreq.ready),
                self.rdata.ready.eq(1),
                beat.eq(self.rdata.valid),
            ]

        with m.If(w_active):  # the port belongs to the engine in flight (TLMM and GEMM never overlap)
            m.d.comb += read_port(tl_rreq_valid, rs_addr, burst, rq_fire, rfifo.w_en)
            m.d.comb += [
                self.wr.valid.eq(tl_wr_valid),
                self.wr.payload.addr.eq(w_addr),
                self.wr.payload.data.eq(wbuf[: 8 * W]),
                wr_fire.eq(tl_wr_valid & self.wr.ready),
            ]
        with m.Elif(lf_active):  # a GEMM_LIST's list fetch (the engine is idle)
            m.d.comb += read_port(lf_req, lf_base, lf_beats, lf_fire, lf_beat)
        if has_kvr:
            with m.Elif(kvr_active):  # a KVR: rows in, the list block out (hw/kv_sequencer.py)
                m.d.comb += forward_mem_port(kvr, self)
        with m.Else():
            m.d.comb += forward_mem_port(gemm, self)
            with m.If((lmode != 0) & p_part):  # a GEMM_LIST's B tile: the listed tile's address
                m.d.comb += self.rreq.payload.addr.eq(b_tile + p_off)
        return m
