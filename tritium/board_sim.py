"""The board-level simulation (docs/board.md, "Board simulation"): the board's simulation top (hw/deploy.py's
``board_sim``: UART, host link, SDRAM controller, accelerator top level) under Verilator, driven by a C++
harness (sim/board_harness.cpp: an SDR SDRAM chip model with the datasheet's timing checked on every command,
the UART line at the top's divisor bridged to a pseudo-terminal), and the very same host driver
(tritium/board.py) a physical board gets, opening the pseudo-terminal as its serial port.

    tritium board sim --model tiny --prompt "def " --tokens 4

compiles the model for the board's config, generates greedily on the simulated board and with PyTorch's int
mode, compares the tokens and every step's logits bit for bit (exit 1 on a mismatch), and prints per step the
accelerator's cycles as the board counts them (POLL's ``active_cycles``) beside the cycle model's prediction
(sim/top_model.py) for the memory the SDRAM controller gives (:func:`sdram_memory`), plus the SDRAM model's
command counts and timing violations (a violation is a failure too).

The Verilator build is cached under ``build/board-sim/board_sim-<key>/`` (the key hashes the Verilog, the
harness source and the Verilator version and options, as sim/cosim.py's builds), locked while it is built.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_DIVISOR",
    "DEFAULT_BUILD",
    "build_board_sim",
    "BoardSim",
    "sdram_memory",
    "run_board_sim",
    "SimReport",
]

#: UART bit time in clock cycles for the simulation (hw/uart.py's smallest: 4); a physical board uses
#: clock / baud. 4 cycles per bit = 40 cycles per byte: the tiny model's 330 KB image loads in ~13.5 M cycles.
DEFAULT_DIVISOR = 4
REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUILD = (REPO if (REPO / "pyproject.toml").exists() else Path.cwd()) / "build" / "board-sim"
VERILATOR_FLAGS = (
    "-O3",
    "--x-assign",
    "fast",
    "--x-initial",
    "fast",
    "-Wno-fatal",
    "-Wno-lint",
    "-Wno-style",
)
#: C++ optimization by code kind (Verilator's make variables): -O2 for the per-cycle model and the harness
#: (OPT_FAST, OPT_GLOBAL), -O0 for the one-time construction code (OPT_SLOW), which -O2 spent ~20 s of CPU on
#: for no run-time gain (measured: the acceptance run's 23.3 M cycles take the same time either way).
CXX_MAKEFLAGS = ("OPT_FAST=-O2", "OPT_GLOBAL=-O2", "OPT_SLOW=-O0")


def _harness_source() -> str:
    return resources.files("sim").joinpath("board_harness.cpp").read_text()


def board_verilog(config: str, divisor: int, clock_mhz: float) -> str:
    """The simulation top's Verilog (hw/deploy.py's ``board_sim``, as ``python -m hw.deploy --sim`` writes it)."""
    from hw.config import load_config
    from hw.deploy import write_sim_verilog

    with tempfile.TemporaryDirectory(prefix="tritium-board-v-") as tmp:
        return write_sim_verilog(
            load_config(config), Path(tmp) / "board_sim.v", divisor=divisor, clock_mhz=clock_mhz
        )


def build_board_sim(verilog: str, build_root: Path = DEFAULT_BUILD, quiet: bool = False) -> Path:
    """Build (or reuse) the Verilator model of ``board_sim`` with the harness; returns the executable."""
    from sim.cosim import _PCH_MAKEFLAG, _dist_version, _locked
    from sim.progress import note, step
    from sim.verilator import ToolError, ensure_verilator_on_path, raise_pending_signal

    ensure_verilator_on_path()
    harness = _harness_source()
    spec = {
        "verilog_sha256": hashlib.sha256(verilog.encode()).hexdigest(),
        "harness_sha256": hashlib.sha256(harness.encode()).hexdigest(),
        "flags": list(VERILATOR_FLAGS),
        "cxx": list(CXX_MAKEFLAGS),
        "verilator": _dist_version("verilator"),
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    bdir = Path(build_root) / f"board_sim-{key}"
    exe = bdir / "obj" / "board_sim_harness"
    bdir.mkdir(parents=True, exist_ok=True)
    with _locked(bdir, quiet):
        stamp = bdir / "build.json"
        want = json.dumps(spec, sort_keys=True, indent=1)
        if stamp.exists() and stamp.read_text() == want and exe.exists():
            step("Verilator build", "cached")
            return exe
        stamp.unlink(missing_ok=True)
        (bdir / "board_sim.v").write_text(verilog)
        (bdir / "board_harness.cpp").write_text(harness)
        (bdir / "board_top.h").write_text('#include "Vboard_sim.h"\n#define TOP Vboard_sim\n')
        if not quiet:
            note(f"[board] building the board simulation with Verilator in {bdir} (minutes) ...")
        step("Verilator build", "board_sim, not cached (minutes)")
        cmd = [
            "verilator",
            "--cc",
            "--exe",
            "--build",
            "-j",
            "2",
            *VERILATOR_FLAGS,
            "--top-module",
            "board_sim",
            "-Mdir",
            "obj",
            "-o",
            exe.name,
            "-CFLAGS",
            f"-I{bdir}",
            "board_sim.v",
            "board_harness.cpp",
        ]
        env = dict(os.environ)
        env["MAKEFLAGS"] = " ".join([env.get("MAKEFLAGS", ""), _PCH_MAKEFLAG, *CXX_MAKEFLAGS]).strip()
        log = bdir / "build.log"
        with open(log, "w") as f:
            r = subprocess.run(cmd, cwd=bdir, stdout=f, stderr=subprocess.STDOUT, env=env)
        if r.returncode != 0 or not exe.exists():
            raise_pending_signal()
            raise ToolError(f"the board simulation's Verilator build failed; see {log}")
        stamp.write_text(want)
        return exe


class BoardSim:
    """The running simulation: ``with BoardSim(exe, divisor, clock_mhz) as sim: open_port(sim.pty)``; on exit
    the simulator is stopped (SIGTERM) and its statistics read (:attr:`stats`)."""

    def __init__(self, exe: Path, divisor: int, clock_mhz: float, timing: dict | None = None):
        self.exe, self.divisor, self.clock_mhz = exe, divisor, clock_mhz
        self.timing = {**sdram_timing_args(), **(timing or {})}  # tests tighten a limit to see it flagged
        self.stats: dict = {}

    def __enter__(self) -> BoardSim:
        self._tmp = tempfile.TemporaryDirectory(prefix="tritium-board-sim-")
        tmp = Path(self._tmp.name)
        self.stats_path, self.log_path = tmp / "stats.json", tmp / "sim.log"
        self._log = open(self.log_path, "w")
        cmd = [str(self.exe), "--divisor", str(self.divisor), "--clock-mhz", f"{self.clock_mhz:g}"]
        cmd += ["--stats", str(self.stats_path)]
        for name, value in self.timing.items():
            cmd += ["--timing", f"{name}={value:g}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("PTY "):
            self.proc.kill()
            from sim.verilator import ToolError

            raise ToolError(f"the board simulation did not start: {line or self.log_path.read_text()[-500:]}")
        self.pty = line[4:]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        try:
            self.stats = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            self.stats = {}
        self.log_tail = self.log_path.read_text(errors="replace")[-2000:]
        self._tmp.cleanup()


def sdram_timing_args() -> dict[str, float]:
    """The SDRAM part's datasheet figures (hw/sdram_timing.py, the table the controller uses) as the harness's
    ``--timing`` arguments (ns; ``init_refreshes`` a count)."""
    from hw.sdram_timing import AS4C32M16SB_7 as p

    return {
        "rc": p.t_rc,
        "rfc": p.t_rfc,
        "rcd": p.t_rcd,
        "rp": p.t_rp,
        "ras": p.t_ras,
        "wr": p.t_wr,
        "mrd": p.t_mrd,
        "refi": p.t_refi_us * 1000,
        "init": p.t_init_us * 1000,
        "init_refreshes": p.init_refreshes,
        "tck_cl2": p.t_ck_cl2,
        "tck_cl3": p.t_ck_cl3,
    }


def _accelerator_cycles(prog) -> int:
    """The modeled step (sim/top_model.py, whole-step cycles) without the host ops' modeled latency: the
    board's active-cycle counter stops while a host op waits for the PC."""
    from hw.isa import HostCommand
    from sim.top_model import step_cycles

    host = sum(
        int(prog.host_ops[c.op].attrs["cycles"]) for c in prog.commands() if isinstance(c, HostCommand)
    )
    return int(step_cycles(prog)) - host


def sdram_memory(acfg, clock_mhz: float, row_miss: bool = False):
    """``acfg`` with its ``memory`` section set to what the board's SDRAM controller (hw/sdram.py) gives the
    accelerator at ``clock_mhz``, in the cycle model's terms (sim/mem_kernel.py). From the controller's state
    machine: a read request accepted in cycle t enters a 2-entry request FIFO, IDLE takes it at t+1, OPEN at
    t+2, and the first READ issues at t+3 on a row hit; the READ reaches the pins a cycle later, its word is in
    the ``dq_i`` register CL+2 cycles after the issue, a beat's ``w = bus_bytes/2`` words come one per cycle
    and the beat is readable from the read FIFO the cycle after its last word: first beat at t + CL + 5 + w
    (``latency``), then one beat every w cycles (``beat_interval``). A row miss adds PRECHARGE → tRP → ACTIVE
    → tRCD: rp + rcd − 1 cycles. Not in the cycle model: refreshes (every tREFI, tRP + tRFC each, plus the row
    reopened after), the controller serving one request at a time (the next one's first READ three cycles
    after the previous one's last), writes (IDLE, OPEN and w WRITEs: w + 2 cycles per beat, only once no READ
    data is in flight) and reads waiting for queued writes. ``row_miss``: every request misses its row."""
    from hw.config import config_from_dict
    from hw.sdram_timing import AS4C32M16SB_7, sdram_cycles

    c = sdram_cycles(AS4C32M16SB_7, clock_mhz)
    words = acfg.memory.bus_bytes // 2
    latency = c.cl + 5 + words
    if row_miss:
        latency += c.rp + c.rcd - 1
    d = acfg.to_dict()
    d["memory"] = {**d["memory"], "latency": latency, "beat_interval": words}
    d["clock_mhz"] = clock_mhz
    d.pop("device", None)
    return config_from_dict(d, f"{acfg.source} (SDRAM controller at {clock_mhz:g} MHz)")


@dataclass
class SimReport:
    model: str
    config: str
    prompt: list
    board_tokens: list
    torch_tokens: list
    logits_equal_torch: list
    steps: list  # per step: active_cycles, modeled (row hit / row miss), host ops, link bytes, wall
    sim: dict  # the harness's statistics (cycles, bytes, SDRAM commands and violations)
    divisor: int
    clock_mhz: float
    wall_s: float
    load: dict = field(default_factory=dict)

    @property
    def violations(self) -> int:
        return sum(self.sim.get("sdram", {}).get("violations", {}).values()) + self.sim.get(
            "framing_errors", 0
        )

    @property
    def ok(self) -> bool:
        return (
            self.board_tokens == self.torch_tokens
            and all(self.logits_equal_torch)
            and self.violations == 0
            and bool(self.sim)
        )

    def to_json(self) -> dict:
        return {**self.__dict__, "violations": self.violations, "ok": self.ok}


def run_board_sim(
    model_spec: str,
    config: str,
    prompt: list[int],
    new_tokens: int,
    divisor: int = DEFAULT_DIVISOR,
    clock_mhz: float | None = None,
    build_root: Path = DEFAULT_BUILD,
    lm_head: str | None = None,
    quiet: bool = False,
) -> SimReport:
    """Greedy generation of ``new_tokens`` tokens on the simulated board and with PyTorch int mode."""
    from compiler import load_model
    from hw.config import load_config
    from hw.deploy import DEFAULT_CLOCK_MHZ
    from sim.cosim import torch_int_greedy
    from sim.progress import note, step
    from tritium.board import BoardLink, BoardRunner, compile_for_board, open_port

    acfg = load_config(config)
    clock_mhz = float(clock_mhz or DEFAULT_CLOCK_MHZ)
    step("compile")
    model = load_model(model_spec)
    cm, lm_head = compile_for_board(model, acfg, model_spec, lm_head)
    step("PyTorch reference")
    torch_logits, seq = torch_int_greedy(model, prompt, new_tokens, lm_head)
    torch_tokens = seq[len(prompt) :]
    step("elaborate")
    verilog = board_verilog(config, divisor, clock_mhz)
    exe = build_board_sim(verilog, build_root, quiet)
    hit, miss = sdram_memory(acfg, clock_mhz), sdram_memory(acfg, clock_mhz, row_miss=True)
    t0 = time.perf_counter()
    steps, board_tokens, equal = [], [], []
    loaded = [0, 0]
    step("load", lambda: f"{loaded[0] / 1024:.0f}/{loaded[1] / 1024:.0f} KiB")
    with BoardSim(exe, divisor, clock_mhz) as sim:
        port = open_port(sim.pty, timeout_s=120)
        try:
            link = BoardLink(port)
            prog = cm.program(len(prompt), 0, logits="last")
            loaded[1] = prog.image.size

            def loading(n):
                loaded[0] += n

            runner = BoardRunner(link, prog, progress=loading)
            load = {"bytes": prog.image.size, "s": round(time.perf_counter() - t0, 2)}
            toks = list(prompt)
            for s in range(new_tokens):
                step("generate", f"step {s + 1}/{new_tokens}")
                if s:
                    prog = cm.program(1, len(toks) - 1, logits="last")
                res = runner.run(prog, toks if s == 0 else toks[-1:])
                lg = res.logits[-1]
                equal.append(bool(np.array_equal(lg, torch_logits[s])))
                toks.append(int(np.argmax(lg)))
                board_tokens.append(toks[-1])
                steps.append(
                    {
                        "tokens": prog.meta["tokens"],
                        "pos": prog.meta["pos"],
                        "active_cycles": res.active_cycles,
                        "modeled_row_hit": _accelerator_cycles(replace_config(prog, hit)),
                        "modeled_row_miss": _accelerator_cycles(replace_config(prog, miss)),
                        "host_ops": res.host_ops,
                        "host_s": round(res.host_s, 3),
                        "wall_s": round(res.wall_s, 2),
                        "link": res.link,
                    }
                )
                if not quiet:
                    note(
                        f"[board] step {s}: token {toks[-1]} ({bytes([toks[-1]])!r}), {res.active_cycles:,} cycles"
                    )
        finally:
            port.close()
    if sim.stats.get("sdram", {}).get("violations") and not quiet:
        note(f"[board] SDRAM model:\n{sim.log_tail}")
    return SimReport(
        model=model_spec,
        config=acfg.name,
        prompt=list(prompt),
        board_tokens=board_tokens,
        torch_tokens=torch_tokens,
        logits_equal_torch=equal,
        steps=steps,
        sim=sim.stats,
        divisor=divisor,
        clock_mhz=clock_mhz,
        wall_s=round(time.perf_counter() - t0, 2),
        load=load,
    )


def replace_config(prog, acfg):
    """``prog`` seen with another config of the same hardware (the memory section differs)."""
    import dataclasses

    return dataclasses.replace(prog, config=acfg.to_dict())


SIM_STAGES = ("compile", "PyTorch reference", "elaborate", "Verilator build", "load", "generate")


def cmd_board_sim(args) -> int:
    from sim.progress import progress
    from tritium.board import LinkError, prompt_tokens

    prompt = prompt_tokens(args.prompt)
    with progress(desc="board sim", stages=SIM_STAGES):
        try:
            rep = run_board_sim(
                args.model,
                args.config,
                prompt,
                args.tokens,
                args.divisor,
                args.clock_mhz,
                Path(args.build_dir),
                args.lm_head,
                quiet=args.json,
            )
        except LinkError as e:
            print(f"tritium: error: board link: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(rep.to_json(), indent=1))
        return 0 if rep.ok else 1
    return print_sim_report(rep)


def print_sim_report(rep: SimReport) -> int:
    """The human-readable report of a board simulation; returns the exit code (1: mismatch or violation)."""
    text = bytes(rep.board_tokens).decode("latin-1") if all(t < 256 for t in rep.board_tokens) else ""
    print(
        f"board simulation: {rep.model} on {rep.config} (Verilator: UART divisor {rep.divisor}, "
        f"{rep.clock_mhz:g} MHz, SDRAM model at CL {rep.sim.get('sdram', {}).get('cas_latency', '?')})"
    )
    print(f"  prompt {bytes(rep.prompt)!r} → board tokens {rep.board_tokens} {text!r}")
    print(f"  PyTorch int mode tokens          {rep.torch_tokens}")
    print(
        f"  logits equal to PyTorch, bit for bit, per step: {rep.logits_equal_torch}; "
        f"tokens {'equal' if rep.board_tokens == rep.torch_tokens else 'DIFFER'}"
    )
    print(
        f"  image loaded: {rep.load.get('bytes', 0):,} bytes over the UART in {rep.load.get('s', 0)} s wall"
    )
    print("  accelerator cycles per step (measured = the board's active_cycles; modeled = sim/top_model.py):")
    print(
        f"    {'step':>4} {'tokens':>6} {'pos':>4} {'measured':>10} {'modeled hit':>12} {'modeled miss':>13}"
        f" {'meas/hit':>9}"
    )
    for i, s in enumerate(rep.steps):
        ratio = s["active_cycles"] / s["modeled_row_hit"] if s["modeled_row_hit"] else float("nan")
        print(
            f"    {i:>4} {s['tokens']:>6} {s['pos']:>4} {s['active_cycles']:>10,} {s['modeled_row_hit']:>12,} "
            f"{s['modeled_row_miss']:>13,} {ratio:>9.3f}"
        )
    from hw.deploy import DEFAULT_BAUD

    print(
        f"  host link per step (bytes; at the ULX3S top's {DEFAULT_BAUD / 1e6:g} MBd, 10 bits a byte: modeled time):"
    )
    for i, s in enumerate(rep.steps):
        ln = s["link"]
        line_s = (
            (ln["sent"] + ln["received"]) * 10 / DEFAULT_BAUD
        )  # half duplex: the driver waits for answers
        print(
            f"    step {i}: {s['host_ops']} host ops ({s['host_s']} s PC compute), {ln['frames']} frames, "
            f"PC→board {ln['sent']:,} (memory writes {ln['write_bytes']:,}), board→PC {ln['received']:,} "
            f"(memory reads {ln['read_bytes']:,}); {line_s:.2f} s on the line"
        )
    sd = rep.sim.get("sdram", {})
    print(
        f"  simulation: {rep.sim.get('cycles', 0):,} cycles, {rep.wall_s} s wall; UART bytes PC→board "
        f"{rep.sim.get('host_to_board_bytes', 0):,}, board→PC {rep.sim.get('board_to_host_bytes', 0):,}"
    )
    print(
        f"  SDRAM commands {sd.get('commands', {})}; timing violations {sd.get('violations', {}) or 'none'}"
    )
    if not rep.ok:
        print(
            "MISMATCH"
            if rep.board_tokens != rep.torch_tokens or not all(rep.logits_equal_torch)
            else "SDRAM timing violated",
            file=sys.stderr,
        )
        return 1
    return 0


def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="models/checkpoints/tiny.pt", help="MODEL: a checkpoint (default the tiny model)"
    )
    p.add_argument(
        "--config", default="configs/ulx3s.yaml", help="accelerator config (default configs/ulx3s.yaml)"
    )
    p.add_argument("--prompt", default="def ", help="the prompt's UTF-8 bytes as tokens (default 'def ')")
    p.add_argument("--tokens", type=int, default=4, help="tokens to generate (prefill + N-1 decode steps)")
    p.add_argument(
        "--divisor",
        type=int,
        default=DEFAULT_DIVISOR,
        help=f"UART bit time in clock cycles (default {DEFAULT_DIVISOR}: the fastest the receiver takes)",
    )
    p.add_argument(
        "--clock-mhz",
        type=float,
        default=None,
        help="the board clock the SDRAM timing is counted in (default hw/deploy.py's DEFAULT_CLOCK_MHZ, the ULX3S top's PLL)",
    )
    p.add_argument("--lm-head", default=None, choices=("host_fp32", "host_fp16", "acc_int8"))
    p.add_argument(
        "--build-dir", default=str(DEFAULT_BUILD), help="Verilator build cache (default build/board-sim)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
