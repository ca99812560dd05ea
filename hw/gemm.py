"""Temporal GEMM engine (Tempus-style, resource-invariant) in Amaranth 0.5.

A fixed R×C block of int8×int8 MACs computes ``C = A·B`` of any size: the output is cut into R×C tiles,
K into ``k_tile``-deep slices, and the block iterates them in time. Each MAC keeps its int32 partial sum
across every K tile of an output tile (output-stationary: partial sums never leave the block), and operand
tiles stream in from external memory into double buffers, so loads overlap compute.

Schedule of one command (loop order mi, ni, kt; one *step* per (mi, ni, kt))::

    loader:   for each step s: wait until buffer slot s%B is free (compute finished step s-B;
              B = gemm.buffers, 2 = double buffering), then request the A tile and the B tile in bursts
              of ≤ memory.max_burst beats
    receiver: beats arrive in request order; A beats, then B beats of step s go to slot s%B;
              the last beat marks the slot full
    compute:  for each step: when its slot is full, issue k = 0..TK-1, one k per cycle: read one k-row
              of A (R int8) and of B (C int8), R·C products, accumulate. The last k of an output tile
              (kt = KT-1) waits until the output shadow register is free, and its sums go to the shadow
    drain:    the shadow is written out in bus beats (int32, or int8 requantized), one tile after another

Pipeline after an issue in cycle t: t+1 the buffer words arrive and the k-rows are selected and
registered; t+2 the R·C products are registered; t+3 they are added into the accumulators (or, on an output
tile's last k, into the shadow register); t+4 the shadow is visible to the drain. The drain takes one beat
per cycle from the shadow (while it holds a *credit*) into a 4-stage output pipeline — capture, add the
rounding constant, shift, saturate — whose beats queue in an output FIFO in front of ``wr``; a beat leaving
on ``wr`` returns its credit. ``cfg.out_credits`` credits let an always-ready memory take a beat every cycle
and mean ``wr.ready`` never reaches the pipeline. Cycle rules: docs/design.md ("Temporal GEMM engine") and
in :mod:`sim.gemm_model`, which mirrors this schedule register by register.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import AcceleratorConfig
from hw.isa import OP_GEMM, payload_fields

__all__ = ["TemporalGemm", "command_layout", "read_request_layout", "write_layout"]


def command_layout() -> data.StructLayout:
    """Decoded GEMM command fields: the fields of hw.isa after the opcode, same names, widths and order."""
    return data.StructLayout({name: unsigned(width) for name, width in payload_fields(OP_GEMM)})


def read_request_layout(acfg: AcceleratorConfig) -> data.StructLayout:
    mem = acfg.memory
    return data.StructLayout(
        {"addr": unsigned(mem.addr_bits), "len_minus_one": unsigned(max(1, (mem.max_burst - 1).bit_length()))}
    )


def write_layout(acfg: AcceleratorConfig) -> data.StructLayout:
    mem = acfg.memory
    return data.StructLayout({"addr": unsigned(mem.addr_bits), "data": unsigned(8 * mem.bus_bytes)})


class TemporalGemm(wiring.Component):
    """GEMM engine with a memory interface.

    ``cmd``: decoded command (:func:`command_layout`). ``rreq``: read requests (beat address, burst length
    − 1). ``rdata``: read data beats (``bus_bytes`` bytes), always accepted. ``wr``: write beats (address,
    data). ``busy`` is high from the cycle after a command is accepted until its last write beat.
    """

    def __init__(self, acfg: AcceleratorConfig):
        self.acfg = acfg
        self.geo = acfg.gemm_geometry
        W = acfg.memory.bus_bytes
        super().__init__(
            {
                "cmd": In(stream.Signature(command_layout())),
                "rreq": Out(stream.Signature(read_request_layout(acfg))),
                "rdata": In(stream.Signature(unsigned(8 * W))),
                "wr": Out(stream.Signature(write_layout(acfg))),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        acfg, geo = self.acfg, self.geo
        mem = acfg.memory
        m = Module()
        R, C, TK, W = geo.rows, geo.cols, geo.k_tile, mem.bus_bytes
        AB, BB = geo.a_beats, geo.b_beats
        NS = acfg.gemm.buffers  # operand tile slots (a power of two: slot counters wrap)
        AW = mem.addr_bits
        n_out = R * C

        # ---- operand buffers: one bus beat per word, slot h at words [h·beats, (h+1)·beats) ----
        m.submodules.abuf = abuf = Memory(shape=unsigned(8 * W), depth=NS * AB, init=[])
        m.submodules.bbuf = bbuf = Memory(shape=unsigned(8 * W), depth=NS * BB, init=[])
        a_wp, b_wp = abuf.write_port(), bbuf.write_port()
        a_rp, b_rp = abuf.read_port(), bbuf.read_port()

        # ---- command registers ----
        busy = Signal()
        mt_last, nt_last, kt_last = Signal(16), Signal(16), Signal(16)
        requant = Signal()
        shift = Signal(5)
        c_ptr = Signal(AW)

        # ---- loader (request side) ----
        rq_done = Signal()
        rq_part = Signal()  # 0: A tile, 1: B tile
        rq_off = Signal(range(max(AB, BB) + 1))  # beats of the current tile already requested
        rq_kt, rq_ni, rq_mi = Signal(16), Signal(16), Signal(16)
        a_ptr, a_row, b_ptr, b_base = Signal(AW), Signal(AW), Signal(AW), Signal(AW)
        b_col = Signal(AW)  # first B tile of the current column tile
        b_stride = Signal(32)  # beats between column tiles' B panels (0: packed, KT·BB)
        ahead = Signal(range(NS + 1))  # steps fully requested − steps fully issued (0..NS)

        # ---- receiver ----
        rs_part = Signal()
        rs_off = Signal(range(max(AB, BB)))
        rs_half = Signal(range(NS))  # the slot being filled
        full = Signal(NS)

        # ---- compute issue ----
        cp_done = Signal()
        cp_half = Signal(range(NS))  # the slot being computed on
        cp_k = Signal(range(TK))
        cp_kt, cp_ni, cp_mi = Signal(16), Signal(16), Signal(16)

        # ---- pipeline, accumulators, shadow, drain ----
        v1, first1, last1 = Signal(), Signal(), Signal()
        a_sel1 = Signal(range(max(2, geo.a_per_beat)))
        b_sel1 = Signal(range(max(2, geo.b_per_beat)))
        v2, first2, last2 = Signal(), Signal(), Signal()
        a_q = [Signal(signed(8), name=f"a_q_{r}") for r in range(R)]
        b_q = [Signal(signed(8), name=f"b_q_{c}") for c in range(C)]
        v3, first3, last3 = Signal(), Signal(), Signal()
        prod = [[Signal(signed(16), name=f"p_{r}_{c}") for c in range(C)] for r in range(R)]
        acc = [[Signal(signed(32), name=f"acc_{r}_{c}") for c in range(C)] for r in range(R)]
        shadow = [Signal(signed(32), name=f"shadow_{i}") for i in range(n_out)]
        shadow_full = Signal()
        dr_cnt = Signal(range(max(geo.out_beats(False), geo.out_beats(True))))
        rnd = Signal(32)  # 2^(shift-1) (0 for shift 0), registered at the accept

        m.d.comb += [self.busy.eq(busy), self.cmd.ready.eq(~busy), self.rdata.ready.eq(1)]

        # ---------------- loader ----------------
        tile_beats = Mux(rq_part, BB, AB)
        remaining = tile_beats - rq_off
        burst = Mux(remaining > mem.max_burst, mem.max_burst, remaining)
        m.d.comb += [
            self.rreq.valid.eq(busy & ~rq_done & (ahead != NS)),
            self.rreq.payload.addr.eq(Mux(rq_part, b_ptr, a_ptr) + rq_off),
            self.rreq.payload.len_minus_one.eq(burst - 1),
        ]
        rq_step_done = Signal()
        with m.If(self.rreq.valid & self.rreq.ready):
            with m.If(rq_off + burst == tile_beats):
                m.d.sync += [rq_off.eq(0), rq_part.eq(~rq_part)]
                with m.If(rq_part):
                    m.d.comb += rq_step_done.eq(1)
                    # next step (mi, ni, kt) in loop order; A tiles at a_base + (mi·KT + kt)·AB,
                    # B tiles at b_base + ni·stride + kt·BB (stride = KT·BB when b_stride is 0)
                    next_col = Mux(b_stride == 0, b_ptr + BB, b_col + b_stride)
                    with m.If(rq_kt != kt_last):
                        m.d.sync += [rq_kt.eq(rq_kt + 1), a_ptr.eq(a_ptr + AB), b_ptr.eq(b_ptr + BB)]
                    with m.Elif(rq_ni != nt_last):
                        m.d.sync += [
                            rq_kt.eq(0),
                            rq_ni.eq(rq_ni + 1),
                            a_ptr.eq(a_row),
                            b_ptr.eq(next_col),
                            b_col.eq(next_col),
                        ]
                    with m.Elif(rq_mi != mt_last):
                        m.d.sync += [
                            rq_kt.eq(0),
                            rq_ni.eq(0),
                            rq_mi.eq(rq_mi + 1),
                            a_ptr.eq(a_ptr + AB),
                            a_row.eq(a_ptr + AB),
                            b_ptr.eq(b_base),
                            b_col.eq(b_base),
                        ]
                    with m.Else():
                        m.d.sync += rq_done.eq(1)
            with m.Else():
                m.d.sync += rq_off.eq(rq_off + burst)

        # ---------------- receiver ----------------
        beat = self.rdata.valid
        m.d.comb += [
            a_wp.addr.eq(rs_half * AB + rs_off),
            a_wp.data.eq(self.rdata.payload),
            a_wp.en.eq(beat & ~rs_part),
            b_wp.addr.eq(rs_half * BB + rs_off),
            b_wp.data.eq(self.rdata.payload),
            b_wp.en.eq(beat & rs_part),
        ]
        set_full = Signal(NS)
        with m.If(beat):
            with m.If(rs_off == Mux(rs_part, BB - 1, AB - 1)):
                m.d.sync += [rs_off.eq(0), rs_part.eq(~rs_part)]
                with m.If(rs_part):
                    m.d.sync += rs_half.eq(rs_half + 1)
                    m.d.comb += set_full.eq(Const(1, NS) << rs_half)
            with m.Else():
                m.d.sync += rs_off.eq(rs_off + 1)

        # ---------------- compute issue ----------------
        final_k = (cp_k == TK - 1) & (cp_kt == kt_last)
        issue = Signal()
        m.d.comb += issue.eq(busy & ~cp_done & full.bit_select(cp_half, 1) & ~(final_k & shadow_full))
        la, lb = (geo.a_per_beat - 1).bit_length(), (geo.b_per_beat - 1).bit_length()
        m.d.comb += [a_rp.addr.eq(cp_half * AB + (cp_k >> la)), b_rp.addr.eq(cp_half * BB + (cp_k >> lb))]
        clear_full = Signal(NS)
        cp_step_done = Signal()
        with m.If(issue):
            with m.If(cp_k == TK - 1):
                m.d.sync += [cp_k.eq(0), cp_half.eq(cp_half + 1)]
                m.d.comb += [clear_full.eq(Const(1, NS) << cp_half), cp_step_done.eq(1)]
                with m.If(cp_kt != kt_last):
                    m.d.sync += cp_kt.eq(cp_kt + 1)
                with m.Elif(cp_ni != nt_last):
                    m.d.sync += [cp_kt.eq(0), cp_ni.eq(cp_ni + 1)]
                with m.Elif(cp_mi != mt_last):
                    m.d.sync += [cp_kt.eq(0), cp_ni.eq(0), cp_mi.eq(cp_mi + 1)]
                with m.Else():
                    m.d.sync += cp_done.eq(1)
            with m.Else():
                m.d.sync += cp_k.eq(cp_k + 1)
        m.d.sync += full.eq((full | set_full) & ~clear_full)
        m.d.sync += ahead.eq(ahead + rq_step_done - cp_step_done)

        # ---------------- compute pipeline ----------------
        m.d.sync += [
            v1.eq(issue),
            first1.eq((cp_kt == 0) & (cp_k == 0)),
            last1.eq(final_k),
            a_sel1.eq(cp_k & (geo.a_per_beat - 1)),
            b_sel1.eq(cp_k & (geo.b_per_beat - 1)),
        ]
        a_row_bits = a_rp.data.word_select(a_sel1, 8 * R) if geo.a_per_beat > 1 else a_rp.data
        b_row_bits = b_rp.data.word_select(b_sel1, 8 * C) if geo.b_per_beat > 1 else b_rp.data
        m.d.sync += [v2.eq(v1), first2.eq(first1), last2.eq(last1)]
        m.d.sync += [a_q[r].eq(a_row_bits[8 * r : 8 * r + 8]) for r in range(R)]
        m.d.sync += [b_q[c].eq(b_row_bits[8 * c : 8 * c + 8]) for c in range(C)]
        m.d.sync += [v3.eq(v2), first3.eq(first2), last3.eq(last2)]
        m.d.sync += [prod[r][c].eq(a_q[r] * b_q[c]) for r in range(R) for c in range(C)]

        load_shadow = v3 & last3
        for r in range(R):
            for c in range(C):
                s_new = (Mux(first3, 0, acc[r][c]) + prod[r][c])[:32].as_signed()
                with m.If(v3 & ~last3):
                    m.d.sync += acc[r][c].eq(s_new)
                with m.If(load_shadow):
                    m.d.sync += shadow[r * C + c].eq(s_new)

        # ---------------- drain: shadow → 4-stage output pipeline → FIFO → wr ----------------
        v32, v8 = geo.out_values(False), geo.out_values(True)
        n_cred = acfg.gemm.out_credits
        m.submodules.out_fifo = fifo = SyncFIFO(width=AW + 8 * W, depth=n_cred)
        credits = Signal(range(n_cred + 1), init=n_cred)
        wr_fire = self.wr.valid & self.wr.ready
        m.d.comb += [
            self.wr.valid.eq(fifo.r_rdy),
            self.wr.payload.addr.eq(fifo.r_data[:AW]),
            self.wr.payload.data.eq(fifo.r_data[AW:]),
            fifo.r_en.eq(self.wr.ready),
        ]
        dr_issue = Signal()
        m.d.comb += dr_issue.eq(shadow_full & (credits != 0))
        dr_last = Mux(requant, dr_cnt == geo.out_beats(True) - 1, dr_cnt == geo.out_beats(False) - 1)
        with m.If(load_shadow):
            m.d.sync += shadow_full.eq(1)
        with m.Elif(dr_issue):
            m.d.sync += [c_ptr.eq(c_ptr + 1), dr_cnt.eq(Mux(dr_last, 0, dr_cnt + 1))]
            for i in range(n_out):
                nxt8 = shadow[i + v8] if i + v8 < n_out else 0
                nxt32 = shadow[i + v32] if i + v32 < n_out else 0
                m.d.sync += shadow[i].eq(Mux(requant, nxt8, nxt32))
            with m.If(dr_last):
                m.d.sync += shadow_full.eq(0)
        m.d.sync += credits.eq(credits - dr_issue + wr_fire)
        # stage A: capture the beat's values; B: + 2^(shift-1); C: arithmetic shift; D: saturate / pass int32
        va, vb, vc, vd = Signal(), Signal(), Signal(), Signal()
        addr_a, addr_b, addr_c, addr_d = (Signal(AW, name=f"addr_{x}") for x in "abcd")
        xa = [Signal(signed(32), name=f"xa_{i}") for i in range(v8)]
        ub = [Signal(signed(34), name=f"ub_{i}") for i in range(v8)]
        wc = [Signal(signed(34), name=f"wc_{i}") for i in range(v8)]
        xb = [Signal(signed(32), name=f"xb_{i}") for i in range(v32)]
        xc = [Signal(signed(32), name=f"xc_{i}") for i in range(v32)]
        data_d = Signal(8 * W)
        m.d.sync += [
            va.eq(dr_issue),
            addr_a.eq(c_ptr),
            vb.eq(va),
            addr_b.eq(addr_a),
            vc.eq(vb),
            addr_c.eq(addr_b),
            vd.eq(vc),
            addr_d.eq(addr_c),
        ]
        m.d.sync += [xa[i].eq(shadow[i]) for i in range(v8)]
        m.d.sync += [ub[i].eq(xa[i] + rnd) for i in range(v8)]
        m.d.sync += [xb[i].eq(xa[i]) for i in range(v32)]
        m.d.sync += [wc[i].eq(ub[i] >> shift) for i in range(v8)]
        m.d.sync += [xc[i].eq(xb[i]) for i in range(v32)]
        sat = [Mux(wc[i] > 127, 127, Mux(wc[i] < -128, -128, wc[i]))[:8] for i in range(v8)]
        m.d.sync += data_d.eq(Mux(requant, Cat(*sat), Cat(*xc)))
        m.d.comb += [fifo.w_en.eq(vd), fifo.w_data.eq(Cat(addr_d, data_d))]

        # ---------------- command accept / done ----------------
        with m.If(self.cmd.valid & ~busy):
            p = self.cmd.payload
            m.d.sync += [
                busy.eq(1),
                mt_last.eq(p.m_tiles - 1),
                nt_last.eq(p.n_tiles - 1),
                kt_last.eq(p.k_tiles - 1),
                requant.eq(p.requant),
                shift.eq(p.shift),
                c_ptr.eq(p.c_base),
                credits.eq(n_cred),
                rnd.eq((Const(1, 33) << p.shift)[1:]),
                rq_done.eq(0),
                rq_part.eq(0),
                rq_off.eq(0),
                rq_kt.eq(0),
                rq_ni.eq(0),
                rq_mi.eq(0),
                a_ptr.eq(p.a_base),
                a_row.eq(p.a_base),
                b_ptr.eq(p.b_base),
                b_base.eq(p.b_base),
                b_col.eq(p.b_base),
                b_stride.eq(p.b_stride),
                ahead.eq(0),
                rs_part.eq(0),
                rs_off.eq(0),
                rs_half.eq(0),
                full.eq(0),
                cp_done.eq(0),
                cp_half.eq(0),
                cp_k.eq(0),
                cp_kt.eq(0),
                cp_ni.eq(0),
                cp_mi.eq(0),
                dr_cnt.eq(0),
            ]
        # done: the last beat leaves while nothing else is in flight
        with m.If(
            busy
            & cp_done
            & ~v1
            & ~v2
            & ~v3
            & ~shadow_full
            & ~va
            & ~vb
            & ~vc
            & ~vd
            & wr_fire
            & (fifo.level == 1)
        ):
            m.d.sync += busy.eq(0)
        return m
