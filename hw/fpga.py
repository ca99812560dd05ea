"""FPGA bitstream flow for any engine: elaborate → Yosys → fit check → nextpnr → pack.

The engines that can be built are the entries of :data:`ENGINES` (one :class:`FpgaEngine` each: the RTL
component's factory, the config section it takes, what to shrink per resource, counts known before
synthesis). ``all`` puts the TLMM and the GEMM side by side, as a system that uses both must hold them.
An engine's streams are hundreds of bits wide, far more than a board has pins, so :class:`BoardTop` — one
generic board top generated from the component's ``lib.wiring`` signature — feeds every input from
on-chip pseudo-random registers and folds every output into one LED. Everything the engine computes stays
observable (the result parity depends on every output bit, every input bit comes from a register fed by an
LFSR and a button pin), so Yosys cannot constant-fold any of the datapath away and the resource and
timing figures are those of the real engine.

:func:`build_bitstream` runs the open toolchain (YoWASP builds of Yosys/nextpnr by default) by hand,
step by step, so that the design can be checked against the device's capacity *between* synthesis and
place-and-route: a config too large for the board fails in seconds to minutes with a one-line
:class:`FitError` instead of after a long nextpnr run. The nextpnr clock constraint is the config's
``clock_mhz``, so placement is timing-driven towards the target and the reported Fmax is the engine's.

The ``kv260`` board (AMD Kria K26, Zynq UltraScale+) has no open place-and-route: for it
:func:`xilinx_resources` runs Yosys ``synth_xilinx -family xcup`` on the same board tops and checks the
mapped cells against the K26's LUTs, FFs, block RAM, URAM and DSPs — a resource estimate only.

Tools are looked up from the environment variables Amaranth uses (``YOSYS``, ``NEXTPNR_ECP5``,
``ECPPACK``, ``NEXTPNR_ICE40``, ``ICEPACK``), defaulting to the ``yowasp-*`` commands.

Layering: this module is hw-level; it names no simulation or CLI code. The verification side of an engine
(model, bench, cases) is registered in ``sim/engines.py``, whose entries point here by engine name.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amaranth import Cat, Elaboratable, Module, Signal, Value
from amaranth.build import Clock, Resource, TemplatedPlatform
from amaranth.lib import io, stream, wiring

from hw.boards import BOARDS, Board
from hw.boards import board as _board
from hw.config import AcceleratorConfig
from hw.lookup import lookup
from hw.netlist import gc_paused, to_rtlil

__all__ = [
    "BOARDS",
    "ENGINES",
    "FpgaEngine",
    "BoardTop",
    "FitError",
    "FlowError",
    "build_bitstream",
    "fpga_engine",
    "xilinx_resources",
]


class FitError(Exception):
    """The synthesized design needs more of a resource than the board's device has (raised before P&R)."""


class FlowError(RuntimeError):
    """A tool of the flow failed; the message names the step and the log file to read."""


# ------------------------------------------------------------------------------------------------------
# Engines: the hardware slice of each engine, registered once
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FpgaEngine:
    """What the FPGA flow (and the Verilator build) needs to know about one engine.

    ``rtl`` is the ``"module:Class"`` of its ``wiring.Component``, imported only when the engine is
    elaborated; the constructor takes config section ``section`` (``None``: the whole
    :class:`~hw.config.AcceleratorConfig`). A composite engine (``all``) has no ``rtl`` but ``parts``: the
    names of the engines placed side by side. ``shrink`` maps a resource (``lut``, ``ff``, ``bram``, ...)
    to the config fields that reduce it (for the :class:`FitError` message); ``known_usage`` gives the
    resource counts fixed by the config alone (checked before elaboration) and how they were derived.
    Board-top hints: ``capture_outputs`` registers each transferred output beat before its parity (so the
    engine's output paths end at a register, as at a memory controller); ``always_valid`` names input
    streams held valid (a new command whenever the engine is idle); ``dsp`` asks ``synth_ice40 -dsp``.
    """

    name: str
    description: str
    rtl: str | None = None
    section: str | None = None
    parts: tuple[str, ...] = ()
    shrink: dict[str, str] = field(default_factory=dict)
    known_usage: Callable[[AcceleratorConfig], tuple[dict[str, int], str]] | None = None
    capture_outputs: bool = True
    always_valid: tuple[str, ...] = ()
    dsp: bool = True
    #: ``"module:Class"`` of a complete board top (taking the config; it drives its own pins and clock and
    #: has a ``clock_mhz``, the clock it runs the design at) used instead of :class:`BoardTop`; ECP5 only
    board_top: str | None = None
    #: extra nextpnr arguments for this engine's place-and-route (after the board's)
    pnr_args: tuple[str, ...] = ()
    #: nextpnr's placement seed (recorded in the report as ``pnr_seed``)
    pnr_seed: int = 1
    #: the config used when none is given (before the board's default): a board top built for one config
    default_config: str | None = None

    @property
    def label(self) -> str:
        """How messages name the design: "tlmm engine", or "both engines" for a two-part composite."""
        return "both engines" if len(self.parts) == 2 else f"{self.name} engine"

    def component(self, acfg: AcceleratorConfig) -> wiring.Component:
        """A fresh instance of the engine's RTL component for ``acfg`` (not for composite engines)."""
        if self.rtl is None:
            raise ValueError(
                f"engine {self.name!r} is a composite of {', '.join(self.parts)}: elaborate its parts"
            )
        module_name, class_name = self.rtl.split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls(acfg if self.section is None else getattr(acfg, self.section))

    def components(self, acfg: AcceleratorConfig) -> list[tuple[FpgaEngine, wiring.Component]]:
        """(engine, component) of every part: the engine itself, or each part of a composite."""
        if not self.parts:
            return [(self, self.component(acfg))]
        return [pair for p in self.parts for pair in fpga_engine(p).components(acfg)]


def _gemm_dsps(acfg: AcceleratorConfig) -> tuple[dict[str, int], str]:
    # The GEMM's rows·cols int8×int8 products each become one DSP block (MULT18X18D on ECP5, SB_MAC16 on
    # iCE40 with synth_ice40 -dsp, DSP48E2 on UltraScale+; Yosys maps every $mul of at least 2×2 bits, with
    # ≥ 11 product bits on iCE40, and does not fall back to LUTs when the device runs out).
    g = acfg.gemm
    return {"dsp": g.rows * g.cols}, f" (gemm.rows·gemm.cols = {g.rows}·{g.cols} multipliers)"


def _kv_dsps(acfg: AcceleratorConfig) -> tuple[dict[str, int], str]:
    return {"dsp": acfg.kv.lanes}, f" (kv.lanes = {acfg.kv.lanes} scoring multipliers)"


# What a user can shrink to reduce each resource, per engine (used in the FitError message).
_TLMM_SHRINK = {
    "lut": "tlmm.tables, tlmm.columns (and tlmm.tokens; table_mode half, group_size 2)",
    "ff": "tlmm.tokens, tlmm.tables, tlmm.columns",
    "bram": "tlmm.max_n, tlmm.tokens, tlmm.columns",
    "spram": "tlmm.max_n, tlmm.tokens, tlmm.columns",
    "uram": "tlmm.max_n, tlmm.tokens, tlmm.columns",
    "dsp": "tlmm.columns, tlmm.tables",
    "muxf7": "tlmm.columns, tlmm.tables (the Q·T table-lookup multiplexers; table_mode half)",
    "muxf8": "tlmm.columns, tlmm.tables (the Q·T table-lookup multiplexers; table_mode half)",
}
# GEMM: rows·cols MACs, each an int32 accumulator + shadow register and (on devices with DSPs) one
# DSP multiplier; two operand memories of buffers·k_tile·{rows,cols} bytes (gemm.buffers slots), bus_bytes wide.
_GEMM_SHRINK = {
    "lut": "gemm.rows, gemm.cols (rows·cols int32 accumulators and adders), memory.bus_bytes "
    "(operand-buffer width, output beat muxes)",
    "ff": "gemm.rows, gemm.cols (rows·cols int32 accumulators + shadow registers), memory.bus_bytes",
    "bram": "gemm.buffers, gemm.k_tile, gemm.rows, gemm.cols (operand buffers of buffers·k_tile·rows and "
    "buffers·k_tile·cols bytes), memory.bus_bytes (buffer width)",
    "spram": "gemm.k_tile, gemm.rows, gemm.cols, memory.bus_bytes",
    "uram": "gemm.k_tile, gemm.rows, gemm.cols, memory.bus_bytes",
    "muxf7": "gemm.rows, gemm.cols, memory.bus_bytes",
    "muxf8": "gemm.rows, gemm.cols, memory.bus_bytes",
    "dsp": "gemm.rows, gemm.cols (one DSP per int8 multiplier, rows·cols of them; both must divide "
    "memory.bus_bytes)",
}
_KV_SHRINK = {
    **{
        r: "kv.lanes, kv.hyperplanes (projection adders, signature compares), kv.max_clusters, "
        "kv.dim, kv.max_cluster_size (cluster table)"
        for r in _TLMM_SHRINK
    },
    "dsp": "kv.lanes (lanes int8 × key-sum multipliers in the scoring unit)",
}
# Both engines: a resource can be relieved in either section.
_ALL_SHRINK = {r: f"{_TLMM_SHRINK[r]}; or {_GEMM_SHRINK[r]}" for r in _TLMM_SHRINK}
_TOP_SHRINK = {
    r: f"{v}; memory.bus_bytes, memory.max_burst (DMA gearbox and read FIFO)"
    + ("; tlmm.weight_buffer_beats (the DMA's weight buffer)" if r in ("bram", "uram", "lut") else "")
    for r, v in _ALL_SHRINK.items()
}

#: Engine name → its hardware description, for the flow; ``sim/engines.py`` points at these by name.
ENGINES: dict[str, FpgaEngine] = {
    e.name: e
    for e in (
        FpgaEngine(
            "tlmm",
            "table-lookup ternary matmul (config section tlmm)",
            rtl="hw.tlmm:TableLookupMatmul",
            section="tlmm",
            shrink=_TLMM_SHRINK,
            capture_outputs=False,
            dsp=False,
        ),
        FpgaEngine(
            "gemm",
            "temporal int8 GEMM, rows x cols MAC block (config sections gemm, memory)",
            rtl="hw.gemm:TemporalGemm",
            shrink=_GEMM_SHRINK,
            known_usage=_gemm_dsps,
            always_valid=("cmd",),
        ),
        FpgaEngine(
            "all",
            "both engines side by side (tlmm + gemm), as a system using both holds them",
            parts=("tlmm", "gemm"),
            shrink=_ALL_SHRINK,
            known_usage=_gemm_dsps,
        ),
        FpgaEngine(
            "kv",
            "KV-cache retrieval engine (config section kv)",
            rtl="hw.kv:KvRetrieval",
            section="kv",
            shrink=_KV_SHRINK,
            known_usage=_kv_dsps,
        ),
        FpgaEngine(
            "top",
            "the integrated top level: command decoder, TLMM DMA, TLMM and GEMM on one memory port",
            rtl="hw.top:AcceleratorTop",
            shrink=_TOP_SHRINK,
            known_usage=_gemm_dsps,
        ),
        FpgaEngine(
            "deploy",
            "the deployable ULX3S board: the top level with a PLL, an SDRAM controller and a UART host link "
            "(docs/board.md)",
            rtl="hw.top:AcceleratorTop",
            shrink=_TOP_SHRINK,
            known_usage=_gemm_dsps,
            board_top="hw.deploy:DeployTop",
            # nextpnr's default router1 stalls on this design (three runs, docs/board.md "Timing": ~60,000 of
            # 117,000 arcs left after 11 min and not falling); router2 routes it
            pnr_args=("--router", "router2"),
            # router2 does not converge from seed 1's or seed 3's placement of today's netlist (overuse falls
            # to ~250, then grows); seed 2's routes at 55.8 MHz (docs/board.md, "Timing")
            pnr_seed=2,
            # the SDRAM's 16-bit port and 32 MB: the board driver and the board simulation use this config too
            default_config="configs/ulx3s.yaml",
        ),
    )
}

_RESOURCE_NAME = {
    "lut": "LUT4s/logic cells",
    "ff": "flip-flops",
    "bram": "block RAMs",
    "spram": "SPRAM blocks",
    "uram": "URAM blocks",
    "dsp": "DSP blocks",
}
# UltraScale+ names its units differently (6-input LUTs; block RAM counted as 36 Kbit RAMB36 equivalents).
_RESOURCE_NAME_XCUP = {
    **_RESOURCE_NAME,
    "lut": "CLB LUTs",
    "bram": "block RAMs (RAMB36 equivalents)",
    "uram": "URAM288 blocks",
    "dsp": "DSP48E2 blocks",
    "muxf7": "F7 muxes",
    "muxf8": "F8 muxes",
}


def fpga_engine(engine: str | FpgaEngine) -> FpgaEngine:
    """The :class:`FpgaEngine` called ``engine`` (or ``engine`` itself); ValueError naming the engines."""
    if isinstance(engine, FpgaEngine):
        return engine
    return lookup(ENGINES, engine, "engine")


def platform_clock_hz(board: Board) -> float:
    """The board oscillator's frequency (from the amaranth-boards platform)."""
    module_name, class_name = board.platform.split(":")
    platform = getattr(importlib.import_module(module_name), class_name)()
    return platform.default_clk_frequency


def _make_platform(board: Board, clock_hz: float) -> TemplatedPlatform:
    """Instantiate the amaranth-boards platform with its oscillator constrained to ``clock_hz``.

    The engine is clocked straight from the board oscillator (no PLL), but nextpnr is told the clock runs
    at the config's target, so timing-driven placement aims at ``clock_mhz`` and the timing report checks
    the engine against it. The generated bitstream is therefore a resource/timing probe: on the board it
    runs at the oscillator frequency.
    """
    module_name, class_name = board.platform.split(":")
    platform = getattr(importlib.import_module(module_name), class_name)()
    key = (platform.default_clk, 0)
    old = platform.resources[key]
    # Resources are immutable descriptions; swap in a copy whose Clock is the target frequency.
    platform.resources[key] = Resource(old.name, old.number, *old.ios, Clock(clock_hz), old.attrs)
    return platform


# ------------------------------------------------------------------------------------------------------
# Board top, generated from the engine's signature
# ------------------------------------------------------------------------------------------------------


class BoardTop(Elaboratable):
    """An engine (or each part of a composite engine) with self-driven ports, one parity LED and one busy
    LED, generated by walking the component's ``lib.wiring`` signature:

    * A 32-bit Galois LFSR (x^32 + x^22 + x^2 + x + 1) shifts 8 fresh bits per cycle, XORed with a button,
      into a *pool* register as wide as all input payloads; every ``In`` stream payload and every plain
      ``In`` port is a slice of the pool. So every input bit is a distinct register fed by an input pin:
      nothing is constant, and command fields keep their full width (loop counters and comparators stay).
    * Input streams' ``valid`` and output streams' ``ready`` are pseudo-random (mostly high) rather than
      constant 1, so bubble, credit and back-pressure logic is kept (streams named in the engine's
      ``always_valid`` are held valid).
    * Every transferred output-stream beat (and every plain ``Out`` port but ``busy``) is XORed into a
      parity register (LED 0); with ``capture_outputs`` the beat is first captured in a register, so the
      engine's output paths end at a register as they would at a memory controller and the timing report
      is the engine's. ``busy`` (OR over the parts) drives LED 1.
    * A composite engine gets one stimulus per part (the parts share no logic but the button); LED 0 is the
      XOR of their parities.
    * With ``leds`` and ``button`` None no pin is requested: ``seed_in`` (button), ``parity_out`` and
      ``busy_out`` (LEDs) are then the top's ports, driven or read by an enclosing design (the top-level
      ports in :func:`xilinx_resources`, or a test's ``rtlil.convert``).
    """

    def __init__(
        self,
        acfg: AcceleratorConfig,
        engine: str | FpgaEngine = "tlmm",
        *,
        leds: tuple[tuple[str, int], ...] | None = (("led", 0), ("led", 1)),
        button: tuple[str, int] | None = ("button", 0),
    ):
        self.acfg = acfg
        self.engine = fpga_engine(engine)
        self.leds = leds
        self.button = button
        self.seed_in = Signal(name="seed_in")
        self.parity_out = Signal(name="parity_out")
        self.busy_out = Signal(name="busy_out")
        #: (engine, component) of every part, instantiated here so that callers can inspect them.
        self.parts = self.engine.components(acfg)

    @property
    def ports(self) -> list[Signal]:
        """The pin-side signals (for ``rtlil.convert``/``verilog.convert`` of a pinless top)."""
        return [self.seed_in, self.parity_out, self.busy_out]

    def elaborate(self, platform):
        m = Module()
        seed_in = self.seed_in
        if platform is not None and self.button is not None:
            m.submodules.button = button = io.Buffer("i", platform.request(*self.button, dir="-"))
            m.d.comb += seed_in.eq(button.i)
        parities, busies = [], []
        parts = self.parts
        for part, eng in parts:
            name = "engine" if len(parts) == 1 else part.name
            m.submodules[name] = eng
            parity, busy = _drive_component(m, part, eng, seed_in, name)
            parities.append(parity)
            busies.append(busy)
        parity_out = parities[0]
        for p in parities[1:]:
            parity_out = parity_out ^ p
        busy_out = busies[0]
        for b in busies[1:]:
            busy_out = busy_out | b
        m.d.comb += [self.parity_out.eq(parity_out), self.busy_out.eq(busy_out)]
        if platform is not None and self.leds is not None:
            m.submodules.led_parity = led_parity = io.Buffer("o", platform.request(*self.leds[0], dir="-"))
            m.submodules.led_busy = led_busy = io.Buffer("o", platform.request(*self.leds[1], dir="-"))
            m.d.comb += [led_parity.o.eq(self.parity_out), led_busy.o.eq(self.busy_out)]
        return m


def _stimulus(m: Module, seed_in: Signal, pool_bits: int, prefix: str) -> tuple[Signal, Signal]:
    """A 32-bit LFSR and a ``pool_bits``-wide register that shifts in 8 LFSR bits (XOR ``seed_in``) per
    cycle: every pool bit is a distinct register fed, ultimately, by an input pin."""
    # Maximal-length Galois LFSR (taps 32, 22, 2, 1); any non-zero seed works.
    lfsr = Signal(32, init=0x1ACE_B00C, name=f"{prefix}_lfsr")
    m.d.sync += lfsr.eq((lfsr >> 1) ^ (lfsr[0].replicate(32) & 0x8020_0003))
    pool_bits = max(1, pool_bits)
    step = min(8, pool_bits)
    pool = Signal(pool_bits, init=0x5A5A_5A5A, name=f"{prefix}_pool")
    fresh = lfsr[:step] ^ seed_in.replicate(step)
    m.d.sync += pool.eq(Cat(fresh, pool[:-step]) if pool_bits > step else fresh)
    return lfsr, pool


def _drive_component(
    m: Module, part: FpgaEngine, eng: wiring.Component, seed_in: Signal, prefix: str
) -> tuple[Signal, Signal]:
    """Drive every input of ``eng`` from an LFSR-fed pool and fold every output into a parity register;
    returns (parity, busy) registers. Walks the top-level signature members: valid/ready streams are
    handled as streams, any other interface member port by port (``flatten``)."""
    inputs: list[Value] = []  # pool-driven values, in signature order
    handshakes = []  # (flow, name, interface) of the streams
    outputs: list[tuple[Value, Value | None]] = []  # (value, transfer strobe or None: every cycle)
    busy = []
    for name, member in eng.signature.members.items():
        obj = getattr(eng, name)
        if member.is_signature and isinstance(member.signature, stream.Signature):
            handshakes.append((member.flow, name, obj))
            if member.flow == wiring.In:
                inputs.append(Value.cast(obj.payload))
            continue
        if member.is_port:
            flat = [((name,), member.flow, obj)]
        else:  # a non-stream interface: its ports one by one, flows as seen from the engine
            flat = [((name, *path), flow, value) for path, flow, value in member.signature.flatten(obj)]
            if member.flow == wiring.In:
                flat = [(p, flow.flip(), v) for p, flow, v in flat]
        for path, flow, value in flat:
            if flow == wiring.In:
                inputs.append(Value.cast(value))
            elif path == ("busy",):
                busy.append(Value.cast(value))
            else:
                outputs.append((Value.cast(value), None))

    lfsr, pool = _stimulus(m, seed_in, sum(len(v) for v in inputs), prefix)
    offset = 0
    for v in inputs:
        m.d.comb += v.eq(pool[offset : offset + len(v)])
        offset += len(v)
    for k, (flow, name, s) in enumerate(handshakes):
        a, b = 8 + (2 * k) % 24, 9 + (2 * k) % 24
        mostly = ~(lfsr[a] & lfsr[b])  # 3 cycles in 4
        if flow == wiring.In:
            m.d.comb += s.valid.eq(1 if (name in part.always_valid or s.signature.always_valid) else mostly)
        else:
            if not s.signature.always_ready:
                m.d.comb += s.ready.eq(mostly)
            outputs.append((Value.cast(s.payload), s.valid & s.ready))

    parity = Signal(name=f"{prefix}_parity")
    toggle = []
    for value, strobe in outputs:
        if part.capture_outputs:
            q = Signal(len(value), name=f"{prefix}_out_q{len(toggle)}")
            qv = Signal(name=f"{prefix}_out_q{len(toggle)}_valid")
            m.d.sync += [q.eq(value), qv.eq(1 if strobe is None else strobe)]
            toggle.append(qv & q.xor())
        else:
            toggle.append(value.xor() if strobe is None else (strobe & value.xor()))
    m.d.sync += parity.eq(parity ^ Cat(*toggle).xor())
    busy_q = Signal(name=f"{prefix}_busy")
    m.d.sync += busy_q.eq(Cat(*busy).any() if busy else 0)
    return parity, busy_q


# ------------------------------------------------------------------------------------------------------
# Tool runs and report parsing
# ------------------------------------------------------------------------------------------------------

_TOOL_ENV = {
    "yosys": "YOSYS",
    "nextpnr-ecp5": "NEXTPNR_ECP5",
    "ecppack": "ECPPACK",
    "nextpnr-ice40": "NEXTPNR_ICE40",
    "icepack": "ICEPACK",
}


def _tool(name: str) -> str:
    """Command for a tool: $YOSYS etc. if set, else yowasp-<name> on PATH or next to this Python."""
    override = os.environ.get(_TOOL_ENV[name])
    if override:
        return override
    candidate = f"yowasp-{name}"
    found = shutil.which(candidate) or shutil.which(candidate, path=str(Path(sys.executable).parent))
    if found is None:
        raise FlowError(f"{candidate} not found on PATH (pip install '.[fpga]', or set ${_TOOL_ENV[name]})")
    return found


def _run(step: str, args: list[str], cwd: Path, log_path: Path, full_log: Path | None = None) -> float:
    """Run one tool with its console output in ``log_path``; return seconds. On failure raise FlowError
    with the tail of that output and the path of the tool's full log (``full_log``, if it writes one)."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        # In a process group of its own, so that an interrupted flow (Ctrl-C, SIGTERM turned into an
        # exception by the caller) ends the tool and everything it started instead of orphaning it.
        proc = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-12:]
        if full_log is None or not full_log.exists():  # the tool died before opening its log
            full_log = log_path
        raise FlowError(
            f"{step} failed (exit {proc.returncode}) after {seconds:.1f} s; see "
            f"{full_log or log_path}\n" + "\n".join("    " + line for line in tail)
        )
    return seconds


def _kill_group(proc: subprocess.Popen) -> None:
    """End ``proc``'s process group (SIGTERM, then SIGKILL after 5 s) and reap ``proc``."""
    import signal

    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _netlist_stats(netlist: Path, top: str) -> tuple[Counter, int]:
    """Cell types of the flattened synthesized top module (Yosys JSON netlist) and the number of FFs
    that can share a logic cell with the LUT driving them.

    On iCE40 a logic cell holds one LUT4 and one FF, and nextpnr packs them together only when the FF's
    D input is the LUT's output and that LUT drives nothing else; FFs fed straight from another FF (the
    stimulus shift register) or from RAM need a cell of their own. Counting those pairs makes the
    logic-cell estimate close to nextpnr's final ICESTORM_LC figure.
    """
    with open(netlist) as f:
        cells = json.load(f)["modules"][top]["cells"]
    types = Counter(cell["type"] for cell in cells.values())
    fanout: Counter = Counter()
    lut_outputs = set()
    for cell in cells.values():
        for port, bits in cell["connections"].items():
            if cell.get("port_directions", {}).get(port) == "input":
                fanout.update(b for b in bits if isinstance(b, int))
        if cell["type"] == "SB_LUT4":
            lut_outputs.update(b for b in cell["connections"]["O"] if isinstance(b, int))
    pairs = 0
    for cell in cells.values():
        if cell["type"].startswith("SB_DFF"):
            d = cell["connections"]["D"][0]
            if d in lut_outputs and fanout[d] == 1:
                pairs += 1
    return types, pairs


def _usage(board: Board, cells: Counter, lut_ff_pairs: int) -> dict[str, int]:
    """Resource use estimated from the mapped cells, in the units of ``board.capacity``."""
    if board.family == "ecp5":
        # ECP5 slices count LUTs and FFs separately (nextpnr: TRELLIS_COMB, TRELLIS_FF). A CCU2C carry
        # cell occupies a whole slice (2 LUT4 sites); a TRELLIS_DPR16X4 distributed RAM takes two slices
        # of LUTs plus a third slice for its write port: 6 LUT4 sites.
        return {
            "lut": cells["LUT4"] + 2 * cells["CCU2C"] + 6 * cells["TRELLIS_DPR16X4"],
            "ff": cells["TRELLIS_FF"],
            "bram": cells["DP16KD"] + cells["PDPW16KD"],
            "dsp": cells["MULT18X18D"],
        }
    # iCE40: "lut" counts logic cells (LUT4 + FF + carry each): every LUT, plus every FF that cannot ride
    # in its driving LUT's cell. SB_CARRY shares the cell of its LUT.
    ffs = sum(n for t, n in cells.items() if t.startswith("SB_DFF"))
    return {
        "lut": cells["SB_LUT4"] + ffs - lut_ff_pairs,
        "ff": ffs,
        "bram": cells["SB_RAM40_4K"],
        "spram": cells["SB_SPRAM256KA"],
        "dsp": cells["SB_MAC16"],
    }


def _check_fit(
    board_name: str,
    board: Board,
    usage: dict[str, int],
    acfg: AcceleratorConfig,
    engine: str | FpgaEngine = "tlmm",
    why: str = "",
) -> None:
    """Raise :class:`FitError` if ``usage`` exceeds the board. ``why`` (e.g. how a count was derived
    before synthesis) is added after the first figure."""
    over = [r for r in board.capacity if usage.get(r, 0) > board.capacity[r]]
    if not over:
        return
    names = _RESOURCE_NAME_XCUP if board.family == "xcup" else _RESOURCE_NAME
    first = over[0]
    others = "".join(f"; also {names[r]} {_fmt(usage[r])} > {board.capacity[r]}" for r in over[1:])
    eng = fpga_engine(engine)
    raise FitError(
        f"config {acfg.name!r} ({eng.label}) does not fit board {board_name} ({board.device}): "
        f"{names[first]} needed {_fmt(usage[first])}{why}, available {board.capacity[first]}{others}; "
        f"shrink {eng.shrink.get(first, 'the engine')} in {acfg.source}"
    )


def _fmt(n: float) -> str:
    """A resource count: an integer, or a half (RAMB18 = half a RAMB36)."""
    return str(int(n)) if float(n).is_integer() else f"{n:.1f}"


def _known_usage(engine: FpgaEngine, acfg: AcceleratorConfig) -> tuple[dict[str, int], str]:
    """Resource counts fixed by the config alone, checked before elaboration so that a config far too
    large fails at once instead of after a long synthesis (the engine's ``known_usage``, e.g. the GEMM's
    rows·cols DSP multipliers); none for an engine without multipliers (the TLMM)."""
    return engine.known_usage(acfg) if engine.known_usage is not None else ({}, "")


_FMAX_RE = re.compile(r"Max frequency for clock\s+'([^']+)': ([0-9.]+) MHz \((PASS|FAIL) at ([0-9.]+) MHz\)")


def _timing(
    pnr_report: Path, pnr_log: Path, target_mhz: float, prefer: str | None = None
) -> tuple[float | None, str | None, str, dict | None]:
    """(Fmax in MHz, clock name, critical path summary, its endpoints) for the engine clock; the endpoints are
    ``{"from": "cell.port", "to": "cell.port", "delay_ns": ...}`` (HDL-level names), None without a report.

    nextpnr's JSON report (``--report``) has the per-clock Fmax and the critical paths cell by cell; the
    log's "Max frequency" lines are the fallback. The design has one clock domain; if there were several,
    the one constrained to the target is the engine's (``prefer``: the clock of that name when it is reported —
    a complete board top with a second clock at the same frequency names its design clock).
    """
    fmax, clock, path, endpoints = None, None, "n/a", None
    try:
        report = json.loads(pnr_report.read_text())
    except (OSError, ValueError):
        report = {}
    clocks = report.get("fmax", {})
    if clocks:

        def distance(item):
            return abs(item[1].get("constraint", 0) - target_mhz)

        # nextpnr names a clock routed on a global network "$glbnet$<net>"
        named = [k for k in clocks if prefer is not None and k in (prefer, f"$glbnet${prefer}")]
        clock, entry = (named[0], clocks[named[0]]) if named else min(clocks.items(), key=distance)
        fmax = float(entry["achieved"])
    else:
        found = _FMAX_RE.findall(pnr_log.read_text(errors="replace"))
        if prefer is not None:
            found = [f for f in found if f[0] in (prefer, f"$glbnet${prefer}")] or found
        if found:
            clock, achieved = found[-1][0], found[-1][1]
            fmax = float(achieved)
    for crit in report.get("critical_paths", []):
        # Register-to-register paths of the engine clock; <async> entries are I/O paths.
        if clock is not None and crit.get("from") == crit.get("to") == f"posedge {clock}":
            path = _summarize_path(crit)
            endpoints = _path_endpoints(crit)
            break
    return fmax, clock, path, endpoints


def _path_endpoints(crit: dict) -> dict | None:
    """Source and sink (``cell.port``, HDL-level names) and total delay of one nextpnr critical path."""
    segments = crit.get("path", [])
    if not segments:
        return None
    start, end = segments[0]["from"], segments[-1]["to"]
    return {
        "from": f"{_short_name(start['cell'])}.{start['port']}",
        "to": f"{_short_name(end['cell'])}.{end['port']}",
        "delay_ns": round(sum(s["delay"] for s in segments), 3),
    }


def _summarize_path(crit: dict) -> str:
    """One line: source cell.port -> sink cell.port, delay split into logic and routing, the nets on the
    way and the HDL lines (Amaranth source locations Yosys kept) they come from."""
    segments = crit.get("path", [])
    if not segments:
        return "n/a"
    start, end = segments[0]["from"], segments[-1]["to"]
    logic = sum(s["delay"] for s in segments if s["type"] != "routing")
    routing = sum(s["delay"] for s in segments if s["type"] == "routing")
    levels = sum(1 for s in segments if s["type"] == "logic")
    nets: list[str] = []
    for seg in segments:
        net = _short_name(seg.get("net", "")) if seg["type"] == "routing" else ""
        if net and net not in nets:
            nets.append(net)
    shown = nets if len(nets) <= 6 else nets[:3] + ["..."] + nets[-2:]
    lines: list[str] = []
    for seg in segments:
        for src in seg.get("sources", []):
            where = src.split(".py:")
            # Python HDL of this project only: not the vendor techmap files nor Amaranth internals.
            if len(where) == 2 and "site-packages" not in where[0]:
                short = f"{Path(where[0]).name}.py:{where[1]}"
                if short not in lines:
                    lines.append(short)
    return (
        f"{_short_name(start['cell'])}.{start['port']} -> "
        f"{_short_name(end['cell'])}.{end['port']}: "
        f"{logic + routing:.2f} ns ({levels} logic levels, logic {logic:.2f} ns, routing "
        f"{routing:.2f} ns); HDL: {', '.join(lines) or 'n/a'}; nets: {', '.join(shown)}"
    )


# Yosys/nextpnr name mapped cells and nets by appending the primitive chain to the HDL signal name
# ("engine.a_val_0_0_SB_DFFESR_Q_7_D_SB_LUT4_O_I0..."); cut there to keep the HDL part.
_PRIMITIVE_SUFFIX = re.compile(
    r"_(?:CCU2C|LUT4|TRELLIS_|PFUMX|L6MUX21|DP16KD|SB_|ICESTORM_)|\$CCU2|\$nextpnr"
)


def _short_name(name: str) -> str:
    return _PRIMITIVE_SUFFIX.split(name, maxsplit=1)[0]


def _pnr_utilization(pnr_report: Path) -> dict[str, dict[str, int]]:
    try:
        util = json.loads(pnr_report.read_text()).get("utilization", {})
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in util.items() if v.get("used")}


# ------------------------------------------------------------------------------------------------------
# The flow
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Build:
    """One run of a flow: the board (its name and its :class:`Board`), the engine, the config, the work folder,
    the Yosys binary."""

    board: str
    b: Board
    eng: FpgaEngine
    acfg: AcceleratorConfig
    work: Path
    yosys: str

    @classmethod
    def start(
        cls,
        acfg: AcceleratorConfig,
        board: str,
        b: Board,
        eng: FpgaEngine,
        out_dir: Path,
        stale: tuple[str, ...],
    ) -> _Build:
        """Check the counts the config alone fixes (before a long elaboration and synthesis), make the work
        folder ``<out_dir>/<board>-<config name>-<engine>`` and remove the ``stale`` results of an earlier run
        (they must not look like the outcome of this one); find Yosys."""
        known, why = _known_usage(eng, acfg)
        _check_fit(board, b, known, acfg, eng, why)
        work = Path(out_dir) / f"{board}-{acfg.name}-{eng.name}"
        work.mkdir(parents=True, exist_ok=True)
        for name in stale:
            (work / name).unlink(missing_ok=True)
        return cls(board, b, eng, acfg, work, _tool("yosys"))

    def synthesize(self, script: str) -> float:
        """Run the Yosys ``script`` in the work folder (its log: synth.log); the seconds it took."""
        args = [self.yosys, "-q", "-l", "synth.log", script]
        return _run("Yosys synthesis", args, self.work, self.work / "synth.stdout", self.work / "synth.log")

    def synthesized(self, usage: dict, t_synth: float, log: Callable[[str], None]) -> None:
        """Log what synthesis used of the board; FitError if it does not fit."""
        log(
            f"[fpga] {self.board}: synthesized in {t_synth:.1f} s: "
            + ", ".join(f"{r} {_fmt(usage[r])}/{self.b.capacity[r]}" for r in self.b.capacity)
        )
        _check_fit(self.board, self.b, usage, self.acfg, self.eng)

    def report(
        self, usage: dict, cells: Counter, seconds: dict[str, float], percent: bool = False, **fields
    ) -> dict:
        """The flow's report, written to report.json: what was built, for which board, from which config; each
        resource's use of the board's (``percent``: also as a percentage); the synthesized cells; the
        place-and-route fields (``fields`` set them; left out, they say there was none); the seconds each step
        took."""
        b, acfg = self.b, self.acfg
        report = {
            "board": self.board,
            "board_description": b.description,
            "device": b.device,
            "engine": self.eng.name,
            "config": acfg.name,
            "config_source": acfg.source,
            "config_fingerprint": acfg.fingerprint(),
            **{
                r: {"used": usage[r], "available": b.capacity[r]}
                | ({"percent": round(100 * usage[r] / b.capacity[r], 1)} if percent else {})
                for r in b.capacity
            },
            "cells": dict(cells.most_common()),
            "pnr_utilization": {},
            "clock": None,
            "fmax_mhz": None,
            "target_mhz": acfg.clock_mhz,
            "meets_target": None,
            "critical_path": "n/a",
            "critical_path_endpoints": None,
            "bitstream": None,
            "bitstream_bytes": None,
            **fields,
            "seconds": {step: round(t, 1) for step, t in seconds.items()},
        }
        (self.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        return report


#: The stages of the flow on a board with an open place-and-route, and on an UltraScale+ board (``kv260``):
#: what :func:`build_bitstream`'s ``step`` callback is called with, in order.
FLOW_STAGES = ("elaborate", "Yosys synthesis", "nextpnr place and route", "pack")
XILINX_STAGES = ("elaborate", "Yosys synthesis")


def flow_stages(board: str, pnr: bool = True) -> tuple[str, ...]:
    """The stages :func:`build_bitstream` runs for ``board`` (its ``step`` callback's names)."""
    return XILINX_STAGES if _board(board).family == "xcup" or not pnr else FLOW_STAGES


def _no_step(name: str) -> None:
    pass


def build_bitstream(
    acfg: AcceleratorConfig,
    board: str = "ulx3s",
    out_dir: Path = Path("build/bitstream"),
    log: Callable[[str], None] = print,
    engine: str | FpgaEngine = "tlmm",
    pnr: bool = True,
    step: Callable[[str], None] = _no_step,
    clock_mhz: float | None = None,
) -> dict:
    """Synthesize, fit-check, place, route and pack ``engine`` (a name in :data:`ENGINES`: "tlmm",
    "gemm", "all" = both, "kv", "top", "deploy" = the ULX3S board top of hw/deploy.py at its PLL clock; or an
    :class:`FpgaEngine`) of
    ``acfg`` for ``board``; return the report. For a board without an open place-and-route (``kv260``)
    this is :func:`xilinx_resources`: synthesis and fit check only. ``pnr=False`` stops after the fit
    check (synthesis-only resource figures, ``fmax_mhz`` None, no bitstream; used by resource-model
    calibration).

    Outputs go to ``<out_dir>/<board>-<config name>-<engine>/``: ``top.il`` (RTLIL), ``synth.log``,
    ``top.json`` (netlist), ``pnr.log``, ``pnr_report.json``, the bitstream (``top.bit`` for ECP5,
    ``top.bin`` for iCE40) and, last of all, ``report.json``. Raises :class:`FitError` when the design is
    too large for the device: before elaboration when a count fixed by the config (the GEMM's DSPs) is
    over, otherwise right after synthesis, before place-and-route. Raises :class:`FlowError` when a tool
    fails, ``ValueError`` for an unknown board or engine. ``step`` is called with each stage's name
    (:func:`flow_stages`) as it starts (a progress bar; the tools' own output goes to their logs).
    ``clock_mhz``: the clock of a complete board top (``deploy``: its PLL output; default the top's own);
    the other engines are timed at the config's ``clock_mhz``. Timing is checked, not enforced: the report's
    ``meets_target`` says whether the routed Fmax reaches the target (the CLI exits 1 when it does not).
    """
    b = _board(board)
    eng = fpga_engine(engine)
    if clock_mhz is not None and eng.board_top is None:
        raise ValueError(
            f"clock_mhz: only a complete board top (engine deploy) takes a clock; the {eng.label} is timed at "
            f"the config's clock_mhz ({acfg.clock_mhz:g} MHz)"
        )
    if eng.board_top is not None and b.family != "ecp5":
        raise ValueError(
            f"engine {eng.name!r} is a complete ULX3S (ECP5) board top; board {board!r} is {b.family}"
        )
    if b.family == "xcup":
        return xilinx_resources(acfg, out_dir, log, engine=eng, board=board, step=step)
    bit_name = "top.bit" if b.family == "ecp5" else "top.bin"
    run = _Build.start(acfg, board, b, eng, out_dir, ("report.json", bit_name, "pnr_report.json", "top.json"))
    engine, work = eng.name, run.work
    nextpnr = _tool(f"nextpnr-{b.family}")
    packer = _tool("ecppack" if b.family == "ecp5" else "icepack")

    # -- elaborate: the platform writes RTLIL, the Yosys script and the pin/clock constraints --
    t0 = time.monotonic()
    step("elaborate")
    target_mhz = acfg.clock_mhz
    # a complete board top: the oscillator constrained at its real frequency; its PLL's clock is timed
    if eng.board_top is not None:
        module_name, class_name = eng.board_top.split(":")
        top_cls = getattr(importlib.import_module(module_name), class_name)
        top = top_cls(acfg) if clock_mhz is None else top_cls(acfg, clock_mhz=clock_mhz)
        target_mhz = top.clock_mhz
        platform = _make_platform(b, platform_clock_hz(b))
    else:
        platform = _make_platform(b, acfg.clock_mhz * 1e6)
        top = BoardTop(acfg, eng)
    log(
        f"[fpga] {board}: elaborating the {engine} engine of config {acfg.name!r} ({acfg.source}) at "
        f"{target_mhz:g} MHz"
    )
    # synth_ecp5 infers MULT18X18D by default; synth_ice40 uses SB_MAC16 only with -dsp.
    overrides = {"synth_opts": "-dsp"} if b.family == "ice40" and eng.dsp else {}
    with gc_paused():  # the platform converts to RTLIL here (hw/netlist.py)
        plan = platform.prepare(top, name="top", **overrides)
    plan.extract(str(work))
    t_elab = time.monotonic() - t0

    # -- synthesize --
    log(f"[fpga] {board}: Yosys synth_{b.family} (log {work / 'synth.log'}) ...")
    step("Yosys synthesis")
    t_synth = run.synthesize("top.ys")
    cells, lut_ff_pairs = _netlist_stats(work / "top.json", "top")
    usage = _usage(b, cells, lut_ff_pairs)
    run.synthesized(usage, t_synth, log)  # the fit check before the (long) place-and-route
    if not pnr:
        return run.report(
            usage,
            cells,
            {"elaborate": t_elab, "synth": t_synth},
            note="synthesis only (pnr=False): no place-and-route, no Fmax",
            target_mhz=target_mhz,
        )

    # -- place and route, timing-driven towards clock_mhz (the oscillator constraint was raised) --
    log(
        f"[fpga] {board}: nextpnr-{b.family} place and route (log {work / 'pnr.log'}); "
        "a large design takes minutes ..."
    )
    step("nextpnr place and route")
    constraints = (
        ["--lpf", "top.lpf", "--textcfg", "top.config"]
        if b.family == "ecp5"
        else ["--pcf", "top.pcf", "--asc", "top.asc"]
    )
    # --timing-allow-fail: missing the target is a result to report, not a failed build.
    t_pnr = _run(
        f"nextpnr-{b.family}",
        [
            nextpnr,
            *b.pnr_args,
            *eng.pnr_args,
            "--json",
            "top.json",
            *constraints,
            "--seed",
            str(eng.pnr_seed),
            "--timing-allow-fail",
            "--report",
            "pnr_report.json",
            "--log",
            "pnr.log",
            "-q",
        ],
        work,
        work / "pnr.stdout",
        work / "pnr.log",
    )
    fmax, clock, critical, endpoints = _timing(
        work / "pnr_report.json", work / "pnr.log", target_mhz, getattr(top, "timing_clock", None)
    )
    log(
        f"[fpga] {board}: placed and routed in {t_pnr:.1f} s; Fmax "
        f"{'n/a' if fmax is None else f'{fmax:.1f}'} MHz (target {target_mhz:g} MHz)"
    )

    # -- pack; write to a temporary name so a failed pack leaves no complete-looking bitstream --
    log(f"[fpga] {board}: packing the bitstream ...")
    step("pack")
    tmp = work / (bit_name + ".part")
    pack_args = (
        [packer, "--compress", "top.config", tmp.name]
        if b.family == "ecp5"
        else [packer, "top.asc", tmp.name]
    )
    t_pack = _run("bitstream packing", pack_args, work, work / "pack.log")
    bitstream = work / bit_name
    tmp.replace(bitstream)

    report = run.report(
        usage,
        cells,
        {"elaborate": t_elab, "synth": t_synth, "pnr": t_pnr, "pack": t_pack},
        pnr_utilization=_pnr_utilization(work / "pnr_report.json"),
        clock=clock,
        fmax_mhz=None if fmax is None else round(fmax, 2),
        target_mhz=target_mhz,
        meets_target=fmax is not None and fmax >= target_mhz,
        critical_path=critical,
        critical_path_endpoints=endpoints,
        pnr_seed=eng.pnr_seed,
        **({"board_top": top.report_fields()} if hasattr(top, "report_fields") else {}),
        bitstream=str(bitstream),
        bitstream_bytes=bitstream.stat().st_size,
    )
    log(
        f"[fpga] {board}: bitstream {bitstream} ({report['bitstream_bytes']} bytes); report "
        f"{work / 'report.json'}"
    )
    return report


# ------------------------------------------------------------------------------------------------------
# AMD/Xilinx UltraScale+ (KV260): resource estimate only
# ------------------------------------------------------------------------------------------------------

#: Yosys command for the Xilinx estimate. ``-flatten`` lets optimizations cross the engine/board-top
#: boundaries (as synth_ecp5/synth_ice40 do by default) and gives one cell count for the whole design;
#: ``-uram`` lets memory_libmap use URAM288 for large memories (the K26 has 64 of them); ``-widemux 5``
#: maps multiplexers of 5+ inputs onto the slices' MUXF7/MUXF8 (as Vivado does), which the TLMM's 27:1
#: table-lookup muxes need: without it Yosys builds them from LUTs alone and the TLMM of configs/kv260.yaml
#: counts ~15 % more LUTs (measured: 104k vs 89k with 8 tokens). abc9 (the synth_xilinx default) maps
#: the rest into LUT6s.
XILINX_SYNTH = "synth_xilinx -family xcup -flatten -uram -widemux 5 -top top"

# CLB LUTs that a LUT-as-memory / shift-register primitive occupies (UG574: a SLICEM LUT6 holds 64×1 RAM
# bits or a 32-bit shift register; RAM32M/RAM64M use 4 LUTs, RAM32M16/RAM64M8 use 8).
_XCUP_LUTRAM = {
    "RAM16X1S": 1,
    "RAM32X1S": 1,
    "RAM64X1S": 1,
    "RAM128X1S": 2,
    "RAM256X1S": 4,
    "RAM512X1S": 8,
    "RAM16X1D": 2,
    "RAM32X1D": 2,
    "RAM64X1D": 2,
    "RAM128X1D": 4,
    "RAM256X1D": 8,
    "RAM32M": 4,
    "RAM64M": 4,
    "RAM32M16": 8,
    "RAM64M8": 8,
    "SRL16E": 1,
    "SRLC16E": 1,
    "SRLC32E": 1,
}
# Yosys leaves some inverters as INV cells; each is a LUT1 unless Vivado folds it into a neighbour, so
# count it as a LUT (errs on the side of "does not fit").
_XCUP_LUT = {f"LUT{i}" for i in range(1, 7)} | {"INV"}
_XCUP_FF = {"FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE"}
XILINX_NOTE = "resource estimate only: no open place-and-route for UltraScale+"


def _xcup_usage(cells: Counter) -> dict[str, float]:
    """K26 resources from the synth_xilinx cell counts, in the units of Vivado's utilization report:
    CLB LUTs (logic LUT1..LUT6 and INV, plus LUTs used as distributed RAM / shift registers), CLB
    registers, block RAM tiles (RAMB36E2 = 1, RAMB18E2 = ½), URAM288, DSP48E2, and the F7/F8 muxes.
    MUXF7/F8/F9 and CARRY cells sit beside the LUTs and are not counted as LUTs."""
    lut = sum(n for t, n in cells.items() if t in _XCUP_LUT)
    lutram = sum(n * _XCUP_LUTRAM[t] for t, n in cells.items() if t in _XCUP_LUTRAM)
    bram = cells["RAMB36E2"] + cells["FIFO36E2"] + 0.5 * (cells["RAMB18E2"] + cells["FIFO18E2"])
    return {
        "lut": lut + lutram,
        "ff": sum(n for t, n in cells.items() if t in _XCUP_FF),
        "bram": int(bram) if bram.is_integer() else bram,
        "uram": cells["URAM288"] + cells["URAM288_BASE"],
        "dsp": cells["DSP48E2"],
        "muxf7": cells["MUXF7"],
        "muxf8": cells["MUXF8"],
    }


def _stat_cells(stat_json: Path, top: str = "top") -> Counter:
    """Cell types of the flattened top module from Yosys ``stat -json``."""
    stats = json.loads(stat_json.read_text())
    modules = stats.get("modules", {})
    mod = modules.get(f"\\{top}") or modules.get(top)
    if mod is None:
        raise FlowError(
            f"Yosys statistics {stat_json} have no module {top!r} (modules: {', '.join(modules)})"
        )
    return Counter({t.lstrip("\\"): n for t, n in mod.get("num_cells_by_type", {}).items()})


def xilinx_resources(
    acfg: AcceleratorConfig,
    out_dir: Path = Path("build/bitstream"),
    log: Callable[[str], None] = print,
    engine: str | FpgaEngine = "tlmm",
    board: str = "kv260",
    step: Callable[[str], None] = _no_step,
) -> dict:
    """Resource estimate of ``engine`` (as for :func:`build_bitstream`) of ``acfg`` on an
    AMD UltraScale+ board (``kv260``): elaborate the LFSR-fed board top (without pins: its button and LED
    signals become top-level ports, so nothing is pruned) to RTLIL, run Yosys :data:`XILINX_SYNTH`, count
    the mapped cells and check them against the device.

    Outputs go to ``<out_dir>/<board>-<config name>-<engine>/``: ``top.il``, ``synth.ys``, ``synth.log``,
    ``stat.json`` (Yosys statistics) and, last, ``report.json`` (the shape of :func:`build_bitstream`'s
    report; no bitstream, ``fmax_mhz`` None, and a ``note`` saying it is an estimate). Raises
    :class:`FitError` before elaboration when a count fixed by the config (the GEMM's DSPs) is over the
    device, or after synthesis when the mapped design is; :class:`FlowError` when Yosys fails. ``step``: as
    for :func:`build_bitstream` (:data:`XILINX_STAGES`).
    """
    b = _board(board)
    if b.family != "xcup":
        raise ValueError(f"board {board!r} is not an UltraScale+ board; use build_bitstream")
    eng = fpga_engine(engine)
    run = _Build.start(acfg, board, b, eng, out_dir, ("report.json", "stat.json"))
    work = run.work

    t0 = time.monotonic()
    what = eng.label if eng.parts else f"the {eng.label}"
    step("elaborate")
    log(f"[fpga] {board}: elaborating {what} of config {acfg.name!r} ({acfg.source})")
    top = BoardTop(acfg, eng, leds=None, button=None)
    (work / "top.il").write_text(to_rtlil(top, name="top", ports=top.ports))
    t_elab = time.monotonic() - t0

    (work / "synth.ys").write_text(f"read_rtlil top.il\n{XILINX_SYNTH}\ntee -q -o stat.json stat -json\n")
    log(f"[fpga] {board}: Yosys {XILINX_SYNTH} (log {work / 'synth.log'}); a large design takes minutes ...")
    step("Yosys synthesis")
    t_synth = run.synthesize("synth.ys")
    cells = _stat_cells(work / "stat.json")
    usage = _xcup_usage(cells)
    run.synthesized(usage, t_synth, log)
    report = run.report(
        usage,
        cells,
        {"elaborate": t_elab, "synth": t_synth},
        percent=True,
        synth_command=XILINX_SYNTH,
        note=XILINX_NOTE,
    )
    log(f"[fpga] {board}: fits ({XILINX_NOTE}); report {work / 'report.json'}")
    return report
