"""The deployable board: the accelerator top with a UART host link and an SDRAM controller (docs/board.md).

- :class:`BoardCore`: everything but the PLL and the pins — UART RX/TX, RX FIFO, :class:`hw.hostlink.HostLink`,
  the command FIFO, :class:`hw.top.AcceleratorTop`, :class:`hw.hostlink.MemArbiter`,
  :class:`hw.sdram.SdramController`, the status counters.
- :class:`BoardSim`: the simulation top (``board_sim``): BoardCore with flat ports (docs/board.md's table),
  for the Verilator board simulation; ``python -m hw.deploy --sim`` writes its Verilog.
- :class:`DeployTop`: the ULX3S-85F top: EHXPLLL from the 25 MHz oscillator, IO registers on the SDRAM pins,
  the SDRAM clock from a phase-shifted PLL output through an ODDRX1F, the FTDI UART pins, reset from the PLL
  lock and button 0. Built by ``tritium bitstream --engine deploy``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from amaranth import ClockDomain, ClockSignal, Instance, Module, ResetSignal, Signal
from amaranth.lib import io, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hw import board_protocol as bp
from hw.config import AcceleratorConfig
from hw.hostlink import HostLink, MemArbiter
from hw.mem_port import forward_mem_port
from hw.sdram import SdramController, sdram_pins_signature
from hw.sdram_timing import AS4C32M16SB_7, SdramPart, sdram_cycles
from hw.top import AcceleratorTop
from hw.uart import UartRx, UartTx, check_divisor

__all__ = [
    "BoardCore",
    "BoardSim",
    "DeployTop",
    "DEFAULT_CLOCK_MHZ",
    "CLOCK_RANGE_MHZ",
    "deploy_clock",
    "DEFAULT_BAUD",
    "SIM_DIVISOR",
    "SDRAM_CLOCK_PHASE",
    "pll_params",
    "main",
]

#: the accelerator clock of the ULX3S top: at 40 MHz nextpnr routes it (router2, 58.3 MHz routed); at a 50 MHz
#: target neither router finished (router1 stalled, router2's overuse grew again; docs/board.md, "Timing")
DEFAULT_CLOCK_MHZ = 40.0
#: the FTDI FT231X's rates are 3 MBd / n; 2 MBd is 20 clock cycles per bit at 40 MHz (25 at 50), exactly
DEFAULT_BAUD = 2_000_000
#: UART bit time of the simulation top (cycles per bit): fast to simulate, still mid-bit sampled
SIM_DIVISOR = 8
#: the SDRAM clock's phase lag behind the accelerator clock, degrees (docs/board.md, "The ULX3S top")
SDRAM_CLOCK_PHASE = 270
#: the SDRAM IO registers of the ULX3S top: one output, one input register → 2 extra cycles of read latency
DEPLOY_IO_DELAY = 2


#: the clocks ``--clock-mhz`` may ask for: below ~9 MHz the SDRAM's refresh interval (tREFI) holds no access,
#: above 143 MHz the part is out of its rating; the PLL and the UART divisor narrow it further (:func:`deploy_clock`)
CLOCK_RANGE_MHZ = (10.0, 143.0)


def deploy_clock(
    clock_mhz: float, baud: int = DEFAULT_BAUD, sdram_phase: float = SDRAM_CLOCK_PHASE
) -> tuple[dict[str, int | float], int]:
    """(EHXPLLL parameters, UART divisor) of the ULX3S top at ``clock_mhz`` from the 25 MHz oscillator; one-line
    ValueError when the PLL cannot make the clock (within 0.5 %), when ``baud`` from it is off by more than 1 %,
    or when the clock is outside :data:`CLOCK_RANGE_MHZ` (the SDRAM timing is checked there too)."""
    lo, hi = CLOCK_RANGE_MHZ
    if not (isinstance(clock_mhz, (int, float)) and math.isfinite(clock_mhz) and lo <= clock_mhz <= hi):
        raise ValueError(f"clock {clock_mhz!r} MHz: the ULX3S top runs at {lo:g} to {hi:g} MHz")
    pll = pll_params(25.0, clock_mhz, sdram_phase)
    divisor = check_divisor(uart_divisor(pll["f_out_mhz"] * 1e6, baud))
    sdram_cycles(AS4C32M16SB_7, pll["f_out_mhz"])  # the part's speed limit
    return pll, divisor


def uart_divisor(clock_hz: float, baud: int) -> int:
    """Clock cycles per bit; ValueError when the rate is off by more than 1 % (8N1 tolerates ~ 2 %)."""
    d = round(clock_hz / baud)
    err = abs(clock_hz / d - baud) / baud
    if err > 0.01:
        raise ValueError(
            f"UART: {baud} Bd from a {clock_hz / 1e6:g} MHz clock is off by {100 * err:.1f} % (> 1 %)"
        )
    return d


class BoardCore(wiring.Component):
    """The board's logic between the pins (module docstring); ports: ``uart_rx``, ``uart_tx``, ``sdram``
    (hw.sdram's pin signature), ``busy``."""

    def __init__(
        self,
        acfg: AcceleratorConfig,
        *,
        divisor: int,
        clock_mhz: float,
        part: SdramPart = AS4C32M16SB_7,
        init_cycles: int | None = None,
        extra_read_delay: int = 0,
        cmd_fifo_depth: int = bp.CMD_FIFO_DEPTH,
        timeout_log2: int = bp.TIMEOUT_LOG2,
    ):
        if acfg.system.overlap:
            raise ValueError(
                "system.overlap: the deployable top needs false (the host link takes the memory port while a "
                "host op is pending, which overlapped engine commands would also use)"
            )
        self.acfg = acfg
        self.divisor, self.clock_mhz = check_divisor(divisor), clock_mhz
        self.part = part
        self.cycles = sdram_cycles(part, clock_mhz, init_cycles=init_cycles)
        self.extra_read_delay = extra_read_delay
        self.cmd_fifo_depth = cmd_fifo_depth
        self.timeout_log2 = timeout_log2
        super().__init__(
            {
                "uart_rx": In(1, init=1),
                "uart_tx": Out(1, init=1),
                "sdram": Out(sdram_pins_signature()),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        mem = self.acfg.memory
        W, AB, MB = mem.bus_bytes, mem.addr_bits, mem.max_burst
        m.submodules.rx = rx = UartRx(self.divisor)
        m.submodules.tx = tx = UartTx(self.divisor)
        m.submodules.rx_fifo = rx_fifo = SyncFIFO(width=8, depth=16)
        m.submodules.link = link = HostLink(
            bus_bytes=W,
            addr_bits=AB,
            max_burst=MB,
            divisor=self.divisor,
            clock_hz=round(self.clock_mhz * 1e6),
            timeout_log2=self.timeout_log2,
        )
        m.submodules.cmd_fifo = cmd_fifo = SyncFIFOBuffered(width=64, depth=self.cmd_fifo_depth)
        m.submodules.acc = acc = AcceleratorTop(self.acfg)
        m.submodules.arbiter = arb = MemArbiter(W, AB, MB)
        m.submodules.sdram = sdram = SdramController(
            bus_bytes=W,
            addr_bits=AB,
            max_burst=MB,
            part=self.part,
            cycles=self.cycles,
            extra_read_delay=self.extra_read_delay,
        )

        # UART → RX FIFO → host link → UART
        overrun, timeout = Signal(), Signal()
        m.d.comb += [
            rx.rx.eq(self.uart_rx),
            self.uart_tx.eq(tx.tx),
            rx_fifo.w_data.eq(rx.data),
            rx_fifo.w_en.eq(rx.valid),
            link.rx.valid.eq(rx_fifo.r_rdy),
            link.rx.payload.eq(rx_fifo.r_data),
            rx_fifo.r_en.eq(link.rx.ready),
        ]
        wiring.connect(m, link.tx, tx.data)
        with m.If(rx.valid & ~rx_fifo.w_rdy):
            m.d.sync += overrun.eq(1)
        with m.If(link.timeout):
            m.d.sync += timeout.eq(1)

        # command words: host link → FIFO → decoder
        m.d.comb += [
            cmd_fifo.w_data.eq(link.cmd.payload),
            cmd_fifo.w_en.eq(link.cmd.valid),
            link.cmd.ready.eq(cmd_fifo.w_rdy),
            acc.cmd.valid.eq(cmd_fifo.r_rdy),
            acc.cmd.payload.eq(cmd_fifo.r_data),
            cmd_fifo.r_en.eq(acc.cmd.ready),
            self.busy.eq(acc.busy),
        ]
        # host ops (hw/top.py, HOST): the top hands the op over at the handshake and waits for host_done; the
        # op is pending for the PC (POLL: FLAG_HOST and its index) until the PC's HOST_DONE
        pending, pending_op = Signal(), Signal(16)
        m.d.comb += [acc.host.ready.eq(~pending), acc.host_done.eq(pending & link.host_done)]
        with m.If(acc.host.valid & acc.host.ready):
            m.d.sync += [pending.eq(1), pending_op.eq(acc.host.payload)]
        with m.Elif(link.host_done):
            m.d.sync += pending.eq(0)

        # memory: the host link owns the port while the accelerator cannot use it (a pending host op: with
        # system.overlap false no engine command runs beside it, which __init__ checks)
        idle = Signal()
        m.d.comb += idle.eq(((cmd_fifo.level == 0) & ~acc.busy) | pending)
        m.d.comb += arb.host_owns.eq(idle)
        wiring.connect(m, link.mem, arb.host)
        m.d.comb += forward_mem_port(acc, arb.acc)
        for name in ("rreq", "rdata", "wr"):
            wiring.connect(m, getattr(arb.mem, name), getattr(sdram, name))
        wiring.connect(m, sdram.pins, wiring.flipped(self.sdram))

        # status counters (docs/board.md, POLL)
        active, words = Signal(32), Signal(32)
        word_taken = acc.cmd.valid & acc.cmd.ready
        host_ack = pending & link.host_done
        with m.If(link.clear):
            m.d.sync += [active.eq(0), words.eq(0), overrun.eq(0), timeout.eq(0)]
        with m.Else():
            with m.If(word_taken | (acc.busy & ~pending) | host_ack):
                m.d.sync += active.eq(active + 1)
            with m.If(word_taken):
                m.d.sync += words.eq(words + 1)
        st = link.status
        m.d.comb += [
            st.flags.eq(
                acc.busy * bp.FLAG_BUSY
                | pending * bp.FLAG_HOST
                | idle * bp.FLAG_IDLE
                | sdram.ready * bp.FLAG_SDRAM_READY
                | overrun * bp.FLAG_OVERRUN
                | timeout * bp.FLAG_TIMEOUT
            ),
            st.host_op.eq(pending_op),
            st.cmd_free.eq(self.cmd_fifo_depth - cmd_fifo.level),
            st.active_cycles.eq(active),
            st.cmd_words.eq(words),
        ]
        return m


_SDRAM_OUTS = ("cke", "csn", "rasn", "casn", "wen", "ba", "a", "dqm", "dq_o", "dq_oe")


class BoardSim(wiring.Component):
    """The simulation top: :class:`BoardCore` with the flat ports of docs/board.md (``clk``/``rst`` come from
    the ``sync`` domain)."""

    def __init__(
        self,
        acfg: AcceleratorConfig,
        *,
        divisor: int = SIM_DIVISOR,
        clock_mhz: float = DEFAULT_CLOCK_MHZ,
        **core_args,
    ):
        self.core = BoardCore(acfg, divisor=divisor, clock_mhz=clock_mhz, **core_args)
        pins = sdram_pins_signature().members
        ports = {"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1)}
        for name in _SDRAM_OUTS:
            ports[f"sdram_{name}"] = Out(pins[name].shape, init=pins[name].init)
        ports["sdram_dq_i"] = In(16)
        ports["dbg_busy"] = Out(1)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.d.comb += [
            core.uart_rx.eq(self.uart_rx),
            self.uart_tx.eq(core.uart_tx),
            self.dbg_busy.eq(core.busy),
        ]
        for name in _SDRAM_OUTS:
            m.d.comb += getattr(self, f"sdram_{name}").eq(getattr(core.sdram, name))
        m.d.comb += core.sdram.dq_i.eq(self.sdram_dq_i)
        return m


def pll_params(f_in_mhz: float, f_out_mhz: float, phase_deg: float = 0.0) -> dict[str, int | float]:
    """EHXPLLL dividers for ``f_out_mhz`` from ``f_in_mhz`` (feedback from CLKOP; VCO 400–800 MHz, phase
    detector ≥ 3.125 MHz; the VCO nearest 600 MHz among the exact settings) and a secondary output CLKOS at the same frequency lagging by ``phase_deg``: the
    coarse phase counts VCO cycles (CLKOP's CPHASE is div/2 − 1, CLKOS's adds phase·div/360), the fine phase
    eighths of one. Returns the parameters and the frequency reached; ValueError when none is within 0.5 %."""
    best = None
    for clki in range(1, 129):
        pfd = f_in_mhz / clki
        if pfd < 3.125:
            break
        for fb in range(1, 81):
            f = pfd * fb
            divs = [d for d in range(1, 129) if 400 <= f * d <= 800]
            if not divs:
                continue
            div = min(divs, key=lambda d: abs(f * d - 600))  # the VCO nearest mid-range, as ecppll picks
            key = (round(abs(f - f_out_mhz), 9), abs(f * div - 600))
            if best is None or key < best[0]:
                best = (key, clki, fb, div, f)
    if best is None or best[0][0] > 0.005 * f_out_mhz:
        raise ValueError(f"PLL: no EHXPLLL setting gives {f_out_mhz:g} MHz from {f_in_mhz:g} MHz")
    _, clki, fb, div, f = best
    op_cphase = div // 2 - 1
    steps = phase_deg / 360.0 * div
    coarse = math.floor(steps)
    fine = round((steps - coarse) * 8)
    if fine == 8:
        coarse, fine = coarse + 1, 0
    return {
        "CLKI_DIV": clki,
        "CLKFB_DIV": fb,
        "CLKOP_DIV": div,
        "CLKOP_CPHASE": op_cphase,
        "CLKOP_FPHASE": 0,
        "CLKOS_DIV": div,
        "CLKOS_CPHASE": op_cphase + coarse,
        "CLKOS_FPHASE": fine,
        "f_out_mhz": f,
        "vco_mhz": f * div,
    }


class DeployTop(wiring.Component):
    """The ULX3S-85F top (module docstring). Build it with an amaranth-boards ULX3S platform."""

    #: the design clock's net as nextpnr names it (the SDRAM clock, CLKOS, runs at the same frequency)
    timing_clock = "clk"

    def __init__(
        self,
        acfg: AcceleratorConfig,
        *,
        clock_mhz: float = DEFAULT_CLOCK_MHZ,
        baud: int = DEFAULT_BAUD,
        sdram_phase: float = SDRAM_CLOCK_PHASE,
    ):
        self.acfg = acfg
        self.pll, self.divisor = deploy_clock(clock_mhz, baud, sdram_phase)
        self.clock_mhz = self.pll["f_out_mhz"]
        self.baud, self.sdram_phase = baud, sdram_phase
        self.core = BoardCore(
            acfg, divisor=self.divisor, clock_mhz=self.clock_mhz, extra_read_delay=DEPLOY_IO_DELAY
        )
        super().__init__({})

    def report_fields(self) -> dict:
        """What the bitstream report records about this top (``deploy``): the PLL clock and its dividers, the
        UART line rate and divisor, the SDRAM timing in cycles of that clock — the parameters a board
        simulation or host must match."""
        c = self.core.cycles
        return {
            "clock_mhz": self.clock_mhz,
            "pll": {k: v for k, v in self.pll.items() if k != "f_out_mhz"},
            "baud": self.baud,
            "uart_divisor": self.divisor,
            "sdram_phase_deg": self.sdram_phase,
            "sdram_cycles": {"cl": c.cl, "rcd": c.rcd, "rp": c.rp, "rc": c.rc, "rfc": c.rfc, "refi": c.refi},
        }

    def elaborate(self, platform):
        m = Module()
        p = self.pll
        clk25 = platform.request("clk25", 0, dir="-")
        m.submodules.clk25_buf = clk_buf = io.Buffer("i", clk25)
        clkop, clkos, locked = Signal(), Signal(), Signal()
        f_in = 25
        outputs = ("CLKOP", "CLKOS")  # the system clock and the SDRAM clock (phase-shifted), same frequency
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=str(f_in),
            **{f"a_FREQUENCY_PIN_{o}": f"{p['f_out_mhz']:g}" for o in outputs},
            a_ICP_CURRENT="12",
            a_LPF_RESISTOR="8",
            a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            **{f"p_{n}": "DISABLED" for n in ("PLLRST_ENA", "INTFB_WAKE", "STDBY_ENABLE", "DPHASE_SOURCE")},
            **{f"p_OUTDIVIDER_MUX{c}": f"DIV{c}" for c in "ABCD"},
            p_CLKI_DIV=p["CLKI_DIV"],
            **{f"p_{o}_ENABLE": "ENABLED" for o in outputs},
            **{f"p_{o}_{n}": p[f"{o}_{n}"] for o in outputs for n in ("DIV", "CPHASE", "FPHASE")},
            p_FEEDBK_PATH="CLKOP",
            p_CLKFB_DIV=p["CLKFB_DIV"],
            i_CLKI=clk_buf.i,
            o_CLKOP=clkop,
            o_CLKOS=clkos,
            i_CLKFB=clkop,
            # no reset, standby or dynamic phase stepping: tied off
            **{f"i_{n}": 0 for n in ("RST", "STDBY", "PHASESEL0", "PHASESEL1", "PLLWAKESYNC", "ENCLKOP")},
            **{f"i_{n}": 1 for n in ("PHASEDIR", "PHASESTEP", "PHASELOADREG")},
            o_LOCK=locked,
        )
        # reset: held until the PLL locks, released synchronously 4 cycles later
        m.domains.sync = ClockDomain("sync")
        m.domains.sdram_clk = ClockDomain("sdram_clk", reset_less=True)
        m.d.comb += [ClockSignal("sync").eq(clkop), ClockSignal("sdram_clk").eq(clkos)]
        rst_pipe = Signal(4, init=0b1111)
        m.domains.por = ClockDomain("por", reset_less=True)
        m.d.comb += ClockSignal("por").eq(clkop)
        m.d.por += rst_pipe.eq((rst_pipe << 1) | ~locked)
        m.d.comb += ResetSignal("sync").eq(rst_pipe[-1])

        m.submodules.core = core = self.core

        # UART: FTDI TXD → FPGA rx (M1), FPGA tx (L4) → FTDI RXD
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = urx = io.FFBuffer("i", uart.rx)
        m.submodules.uart_tx = utx = io.FFBuffer("o", uart.tx)
        m.d.comb += [core.uart_rx.eq(urx.i), utx.o.eq(core.uart_tx)]

        # SDRAM: every pin through an IO register (DEPLOY_IO_DELAY); the clock from CLKOS via an ODDR
        sd = platform.request("sdram", 0, dir="-")
        m.submodules.sd_clk = sd_clk = io.DDRBuffer("o", sd.clk, o_domain="sdram_clk")
        m.d.comb += [sd_clk.o[0].eq(1), sd_clk.o[1].eq(0)]
        outs = {
            "clk_en": "cke",
            "cs": "csn",
            "we": "wen",
            "ras": "rasn",
            "cas": "casn",
            "ba": "ba",
            "a": "a",
            "dqm": "dqm",
        }
        for pin, name in outs.items():
            buf = io.FFBuffer("o", getattr(sd, pin))
            m.submodules[f"sd_{pin}"] = buf
            v = getattr(core.sdram, name)
            # cs/we/ras/cas are declared active-low in the platform (PinsN): the buffer inverts, so drive
            # the active-high meaning
            m.d.comb += buf.o.eq(~v if name in ("csn", "wen", "rasn", "casn") else v)
        m.submodules.sd_dq = dq = io.FFBuffer("io", sd.dq)
        m.d.comb += [dq.o.eq(core.sdram.dq_o), dq.oe.eq(core.sdram.dq_oe), core.sdram.dq_i.eq(dq.i)]
        # LEDs: 0 busy, 1 SDRAM initialised? (busy only: the status is on POLL)
        led = platform.request("led", 0, dir="-")
        m.submodules.led0 = led0 = io.Buffer("o", led)
        m.d.comb += led0.o.eq(core.busy)
        return m


def write_sim_verilog(acfg: AcceleratorConfig, out: Path, *, divisor: int, clock_mhz: float) -> str:
    """Write ``board_sim``'s Verilog to ``out`` (atomically) and return it."""
    from hw.files import write_text
    from hw.netlist import to_verilog

    top = BoardSim(acfg, divisor=divisor, clock_mhz=clock_mhz)
    text = to_verilog(top, name="board_sim", emit_src=False)
    write_text(out, text)
    return text


def main(argv: list[str] | None = None) -> int:
    from hw.config import load_config

    ap = argparse.ArgumentParser(
        prog="python -m hw.deploy", description="write the board top's simulation Verilog"
    )
    ap.add_argument(
        "--config", default="configs/ulx3s.yaml", help="accelerator config (default configs/ulx3s.yaml)"
    )
    ap.add_argument(
        "--sim", action="store_true", required=True, help="the simulation top board_sim (the only output)"
    )
    ap.add_argument("-o", "--out", default="build/board/board_sim.v", help="output Verilog file")
    ap.add_argument(
        "--divisor", type=int, default=SIM_DIVISOR, help=f"UART cycles per bit (default {SIM_DIVISOR})"
    )
    ap.add_argument(
        "--clock-mhz",
        type=float,
        default=DEFAULT_CLOCK_MHZ,
        help=f"the clock the SDRAM timing is counted in (default {DEFAULT_CLOCK_MHZ:g})",
    )
    args = ap.parse_args(argv)
    from hw.files import OutputPathError, output_file

    try:
        out = output_file(args.out, "-o", (".v",))
        acfg = load_config(args.config)
        BoardCore(
            acfg, divisor=args.divisor, clock_mhz=args.clock_mhz
        )  # a bad divisor or clock: one line now
        write_sim_verilog(acfg, out, divisor=args.divisor, clock_mhz=args.clock_mhz)
    except (ValueError, OSError, OutputPathError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (top module board_sim, config {acfg.name}, UART divisor {args.divisor})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
