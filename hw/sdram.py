"""SDR SDRAM controller behind the accelerator's memory port (docs/board.md, "SDRAM timing").

The port is the one of hw/top.py (``rreq``: beat address + burst length − 1; ``rdata``: bus beats with
valid/ready; ``wr``: one beat per transfer with its address), so the controller can serve the accelerator
directly. A bus beat of ``bus_bytes`` bytes is ``bus_bytes / 2`` consecutive 16-bit SDRAM words.

- **Init**: ``init`` cycles of NOP (200 µs), PRECHARGE ALL, ``init_refreshes`` AUTO REFRESH, LOAD MODE
  (burst length 1, sequential, CAS latency ``cl``); then ``ready``.
- **Accesses**: one row is kept open after an access (open-page). A request to the open row issues its READs
  or WRITEs at once, one word per cycle; a request elsewhere first closes the row (PRECHARGE, after tRAS from
  its ACTIVE and tWR from its last WRITE), waits tRP, opens the row (ACTIVE) and waits tRCD. A burst that runs
  past the end of a row closes it and opens the next one. Writes are taken before reads when both wait;
  a WRITE waits until the data of earlier READs has left the DQ bus.
- **Read data**: a READ on the pins in cycle n is captured at the clock edge n + 1 + CL (docs/board.md,
  the model's timing convention), ``extra_read_delay`` edges later when IO registers sit between the
  controller and the pins (hw/deploy.py's ULX3S top: 2, one output and one input register); words are assembled into beats and queued in a FIFO of ``fifo_depth``
  beats. A read request is only accepted when the FIFO has room for all its beats, so ``rdata`` may be
  back-pressured without losing data (the accelerator's GEMM takes read data when it wants it).
- **Refresh**: every ``refi`` cycles a refresh is due; it is served before the next request (the row is
  closed first), so no access is ever delayed by more than one refresh.
- Requests (``rreq``, ``wr``) enter through 2-entry FIFOs: ``ready`` is a register's, so the requester's
  valid → ready → next-state logic does not run through the controller (timing); this adds a cycle. A read
  waits while a write is queued, so it never overtakes an earlier write.
- Latency is variable (row hits, misses, refreshes): the accelerator's port is valid/ready on every
  stream (hw/top.py), so it tolerates any delay.

All SDRAM outputs come from registers; ``dq_i`` is registered before use.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from hw.sdram_timing import SdramCycles, SdramPart

__all__ = ["SdramController", "sdram_pins_signature", "CMD_NOP", "CMD_ACTIVE", "CMD_READ", "CMD_WRITE"]

# (ras_n, cas_n, we_n) with cs_n = 0
CMD_LOAD_MODE = 0b000
CMD_REFRESH = 0b001
CMD_PRECHARGE = 0b010
CMD_ACTIVE = 0b011
CMD_WRITE = 0b100
CMD_READ = 0b101
CMD_NOP = 0b111


def sdram_pins_signature() -> wiring.Signature:
    """The controller's pin-side ports (the names of docs/board.md's ``sdram_*`` ports)."""
    return wiring.Signature(
        {
            "cke": Out(1),
            "csn": Out(1, init=1),
            "rasn": Out(1, init=1),
            "casn": Out(1, init=1),
            "wen": Out(1, init=1),
            "ba": Out(2),
            "a": Out(13),
            "dqm": Out(2),
            "dq_o": Out(16),
            "dq_oe": Out(1),
            "dq_i": In(16),
        }
    )


def _precharge_when_allowed(m, can_pre, issue, a, is_open, wait, rp):
    """Close the open row (PRECHARGE with A10 high: all banks) once tRAS / tWR allow it (``can_pre``); the
    controller's states that must close a row (for a refresh, or for another row) use it."""
    with m.If(can_pre):
        m.d.comb += issue.eq(CMD_PRECHARGE)
        m.d.sync += [a.eq(1 << 10), is_open.eq(0), wait.eq(rp - 1)]


class SdramController(wiring.Component):
    """Init, refresh and open-row reads/writes of a 16-bit SDR SDRAM (module docstring)."""

    def __init__(
        self,
        *,
        bus_bytes: int,
        addr_bits: int,
        max_burst: int,
        part: SdramPart,
        cycles: SdramCycles,
        fifo_depth: int | None = None,
        extra_read_delay: int = 0,
    ):
        if bus_bytes % 2 or bus_bytes < 2:
            raise ValueError(f"SDRAM controller: bus_bytes must be an even number >= 2, got {bus_bytes}")
        self.bus_bytes, self.addr_bits, self.max_burst = bus_bytes, addr_bits, max_burst
        self.part, self.cycles = part, cycles
        self.extra_read_delay = extra_read_delay  # IO registers between the controller and the pins
        self.wpb = bus_bytes // 2  # 16-bit words per beat
        self.word_bits = addr_bits + (self.wpb - 1).bit_length()
        if self.wpb & (self.wpb - 1):
            raise ValueError(f"SDRAM controller: bus_bytes must be a power of two, got {bus_bytes}")
        have = part.col_bits + part.row_bits + (part.banks - 1).bit_length()
        if self.word_bits > have:
            raise ValueError(
                f"SDRAM controller: memory.addr_bits {addr_bits} addresses {bus_bytes << addr_bits} bytes, "
                f"more than the {part.bytes}-byte SDRAM"
            )
        self.fifo_depth = fifo_depth or max(8, 2 * max_burst)
        if self.fifo_depth < max_burst:
            raise ValueError("SDRAM controller: the read FIFO must hold a whole burst")
        lb = max(1, (max_burst - 1).bit_length())
        super().__init__(
            {
                "rreq": In(stream.Signature(data.StructLayout({"addr": addr_bits, "len_minus_one": lb}))),
                "rdata": Out(stream.Signature(unsigned(8 * bus_bytes))),
                "wr": In(stream.Signature(data.StructLayout({"addr": addr_bits, "data": 8 * bus_bytes}))),
                "ready": Out(1),
                "refreshes": Out(32),
                "pins": Out(sdram_pins_signature()),
            }
        )

    def elaborate(self, platform):
        m = Module()
        c, part, wpb = self.cycles, self.part, self.wpb
        CB, RB = part.col_bits, part.row_bits
        BB = (part.banks - 1).bit_length()
        lgw = (wpb - 1).bit_length()
        pins = self.pins

        # ---- registered pin outputs: a NOP unless a state issues a command this cycle
        cmd = Signal(3, init=CMD_NOP)
        a, ba = Signal(13), Signal(2)
        dq_o, dq_oe = Signal(16), Signal()
        cke = Signal()
        m.d.sync += cke.eq(1)
        m.d.comb += [
            pins.cke.eq(cke),
            pins.csn.eq(0),
            Cat(pins.wen, pins.casn, pins.rasn).eq(cmd),
            pins.a.eq(a),
            pins.ba.eq(ba),
            pins.dqm.eq(0),
            pins.dq_o.eq(dq_o),
            pins.dq_oe.eq(dq_oe),
        ]
        issue = Signal(3)  # the command issued in this cycle (on the pins next cycle)
        m.d.comb += issue.eq(CMD_NOP)
        m.d.sync += [cmd.eq(issue), dq_oe.eq(issue == CMD_WRITE)]

        # ---- timers
        big = max(c.init, c.refi, c.rfc, c.rp, c.rcd, c.mrd) + 1
        wait = Signal(range(big))
        with m.If(wait != 0):
            m.d.sync += wait.eq(wait - 1)
        sat = max(c.ras, c.wr, 2) + 1
        since_act, since_wr = Signal(range(sat + 1), init=sat), Signal(range(sat + 1), init=sat)
        with m.If(since_act != sat):
            m.d.sync += since_act.eq(since_act + 1)
        with m.If(since_wr != sat):
            m.d.sync += since_wr.eq(since_wr + 1)
        can_pre = (since_act >= c.ras) & (since_wr >= max(c.wr, 2))

        refi = Signal(range(c.refi + 1), init=c.refi)
        refresh_due = Signal()
        with m.If(refi == 0):
            m.d.sync += [refi.eq(c.refi), refresh_due.eq(1)]
        with m.Else():
            m.d.sync += refi.eq(refi - 1)

        # ---- read data path: capture pipeline and beat assembly
        rd_pipe = Signal(c.cl + 2 + self.extra_read_delay)  # bit i: a READ issued i + 1 cycles ago
        m.d.sync += rd_pipe.eq(Cat(issue == CMD_READ, rd_pipe[:-1]))
        dq_r = Signal(16)
        m.d.sync += dq_r.eq(pins.dq_i)
        m.submodules.rfifo = rfifo = SyncFIFO(width=8 * self.bus_bytes, depth=self.fifo_depth)
        asm = Signal(8 * self.bus_bytes)
        asm_n = Signal(range(wpb + 1))
        word_in = rd_pipe[-1]  # dq_r holds a READ's word in this cycle
        full_beat = Signal(8 * self.bus_bytes)
        m.d.comb += full_beat.eq(Cat(asm[16:], dq_r) if wpb > 1 else dq_r)
        m.d.comb += [rfifo.w_data.eq(full_beat), rfifo.w_en.eq(word_in & (asm_n == wpb - 1))]
        with m.If(word_in):
            m.d.sync += asm.eq(full_beat)
            m.d.sync += asm_n.eq(Mux(asm_n == wpb - 1, 0, asm_n + 1))
        m.d.comb += [
            self.rdata.valid.eq(rfifo.r_rdy),
            self.rdata.payload.eq(rfifo.r_data),
            rfifo.r_en.eq(self.rdata.ready),
        ]
        # beats promised to the FIFO (requested, not yet pushed)
        pending = Signal(range(self.fifo_depth + 1))
        pushed = rfifo.w_en

        # ---- the current job
        job_write = Signal()
        job_word = Signal(self.word_bits)
        job_left = Signal(range(self.max_burst * wpb + 1))
        wdata = Signal(8 * self.bus_bytes)
        col = job_word[:CB]
        row = job_word[CB : CB + RB]
        bank = job_word[CB + RB : CB + RB + BB] if BB else Const(0, 1)
        is_open, open_row, open_bank = Signal(), Signal(RB), Signal(2)

        # register slices: the requests wait in 2-entry FIFOs, so the ready the requester sees comes from a
        # register (FIFO level) and the requester's valid/payload logic does not run through the FSM (timing)
        rq_layout = self.rreq.payload.shape()
        wq_layout = self.wr.payload.shape()
        m.submodules.rq_fifo = rq_fifo = SyncFIFO(width=rq_layout.size, depth=2)
        m.submodules.wq_fifo = wq_fifo = SyncFIFO(width=wq_layout.size, depth=2)
        m.d.comb += [
            rq_fifo.w_data.eq(self.rreq.payload),
            rq_fifo.w_en.eq(self.rreq.valid),
            self.rreq.ready.eq(rq_fifo.w_rdy),
            wq_fifo.w_data.eq(self.wr.payload),
            wq_fifo.w_en.eq(self.wr.valid),
            self.wr.ready.eq(wq_fifo.w_rdy),
        ]
        rq = data.View(rq_layout, rq_fifo.r_data)
        wq = data.View(wq_layout, wq_fifo.r_data)
        burst = rq.len_minus_one + 1
        take_write = wq_fifo.r_rdy & (rd_pipe == 0)
        # a read never overtakes a queued write (the next command may read what the last one wrote)
        take_read = rq_fifo.r_rdy & ~wq_fifo.r_rdy & (rfifo.level + pending + burst <= self.fifo_depth)
        accepted = Signal(range(self.max_burst + 1))
        m.d.comb += accepted.eq(0)
        m.d.sync += pending.eq(pending + accepted - pushed)

        with m.FSM():
            with m.State("INIT"):
                with m.If(wait == 0):
                    m.d.sync += wait.eq(c.init)
                    m.next = "INIT_WAIT"
            with m.State("INIT_WAIT"):
                with m.If(wait == 0):
                    m.d.comb += issue.eq(CMD_PRECHARGE)
                    m.d.sync += [a.eq(1 << 10), wait.eq(c.rp - 1), job_left.eq(c.init_refreshes)]
                    m.next = "INIT_REFRESH"
            with m.State("INIT_REFRESH"):
                with m.If(wait == 0):
                    with m.If(job_left == 0):
                        m.d.comb += issue.eq(CMD_LOAD_MODE)
                        m.d.sync += [a.eq(c.cl << 4), ba.eq(0), wait.eq(c.mrd - 1)]
                        m.next = "INIT_MODE"
                    with m.Else():
                        m.d.comb += issue.eq(CMD_REFRESH)
                        m.d.sync += [wait.eq(c.rfc - 1), job_left.eq(job_left - 1)]
            with m.State("INIT_MODE"):
                with m.If(wait == 0):
                    m.d.sync += [self.ready.eq(1), refi.eq(c.refi), refresh_due.eq(0)]
                    m.next = "IDLE"
            with m.State("IDLE"):
                with m.If(wait == 0):
                    with m.If(refresh_due):
                        with m.If(is_open):
                            _precharge_when_allowed(m, can_pre, issue, a, is_open, wait, c.rp)
                        with m.Else():
                            m.d.comb += issue.eq(CMD_REFRESH)
                            m.d.sync += [
                                wait.eq(c.rfc - 1),
                                refresh_due.eq(0),
                                self.refreshes.eq(self.refreshes + 1),
                            ]
                    with m.Elif(take_write):
                        m.d.comb += wq_fifo.r_en.eq(1)
                        m.d.sync += [
                            job_write.eq(1),
                            job_word.eq(wq.addr << lgw),
                            job_left.eq(wpb),
                            wdata.eq(wq.data),
                        ]
                        m.next = "OPEN"
                    with m.Elif(take_read):
                        m.d.comb += [rq_fifo.r_en.eq(1), accepted.eq(burst)]
                        m.d.sync += [job_write.eq(0), job_word.eq(rq.addr << lgw), job_left.eq(burst << lgw)]
                        m.next = "OPEN"
            with m.State("OPEN"):  # make the job's row the open one
                with m.If(wait == 0):
                    with m.If(is_open & (open_row == row) & (open_bank == bank)):
                        m.next = "ACCESS"
                    with m.Elif(is_open):
                        _precharge_when_allowed(m, can_pre, issue, a, is_open, wait, c.rp)
                    with m.Else():
                        m.d.comb += issue.eq(CMD_ACTIVE)
                        m.d.sync += [
                            a.eq(row),
                            ba.eq(bank),
                            is_open.eq(1),
                            open_row.eq(row),
                            open_bank.eq(bank),
                            since_act.eq(1),
                            wait.eq(c.rcd - 1),
                        ]
                        m.next = "ACCESS"
            with m.State("ACCESS"):  # one READ/WRITE per cycle
                with m.If(wait == 0):
                    m.d.comb += issue.eq(Mux(job_write, CMD_WRITE, CMD_READ))
                    m.d.sync += [
                        a.eq(col),
                        ba.eq(bank),
                        dq_o.eq(wdata[:16]),
                        wdata.eq(wdata >> 16),
                        job_word.eq(job_word + 1),
                        job_left.eq(job_left - 1),
                    ]
                    with m.If(job_write):
                        m.d.sync += since_wr.eq(1)
                    with m.If(job_left == 1):
                        m.next = "IDLE"
                    with m.Elif(col == (1 << CB) - 1):  # the burst runs into the next row
                        m.next = "OPEN"
        return m
