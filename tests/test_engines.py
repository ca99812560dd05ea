"""The engine registry (sim/engines.py) and what is generated from it: board tops elaborated from each
engine's wiring signature (no synthesis), the CLI choices, the layering (hw/ imports neither sim/ nor
tritium/), a bench that stops early counted as a mismatch, and SIGTERM ending tool subprocesses."""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from hw import fpga
from hw.config import load_config
from sim import engines

ROOT = Path(__file__).resolve().parent.parent


def _small_config(tmp_path: Path):
    """small-g2-half's TLMM with a 4x8 GEMM (on the 32-byte bus the top level needs): fast to elaborate."""
    import yaml

    d = load_config(ROOT / "configs" / "small-g2-half.yaml").to_dict()
    d.update(
        name="small-engines",
        gemm={**d["gemm"], "rows": 4, "cols": 8, "k_tile": 16},
        memory={**d["memory"], "bus_bytes": 32},
    )
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(d))
    return load_config(path)


def test_registry_names_and_lookup():
    assert list(engines.ENGINES) == ["tlmm", "gemm", "kv", "top", "all", "deploy"]
    assert [e.name for e in engines.cosim_engines()] == ["tlmm", "gemm", "kv", "top"]
    assert {e.name for e in engines.board_engines()} == set(fpga.ENGINES)
    with pytest.raises(ValueError, match="unknown engine 'fft'.*all.*gemm.*kv.*tlmm.*top"):
        engines.engine("fft")
    with pytest.raises(ValueError, match="registered twice"):
        engines.register(engines.engine("tlmm"))


def test_registry_entries_resolve():
    import importlib.util

    for e in engines.ENGINES.values():
        assert e.description and e.sections
        if e.hardware is not None:
            assert fpga.fpga_engine(e.hardware).name == e.hardware
        if e.bench is not None:
            assert importlib.util.find_spec(e.bench) is not None, e.bench
        for ref in (e.model, e.cosim, e.cases):
            if ref is not None:
                assert callable(engines.load(ref)), ref
        if e.stimulus == "cases" and e.cosimulated:
            assert e.cosim and e.cases and "cases" in e.workloads and e.summary is not None


def test_registry_import_is_light():
    code = "import sys, sim.engines; bad = [m for m in ('amaranth', 'numba', 'cocotb') if m in sys.modules]; print(bad)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_case_generators(tmp_path):
    acfg = _small_config(tmp_path)
    for name in ("tlmm", "gemm", "kv"):
        e = engines.engine(name)
        cases = e.make_cases(acfg, "cases", seed=3, n_random=2)
        assert len(cases) > 2 and len({c.name for c in cases}) == len(cases)
        with pytest.raises(ValueError, match=f"engine {name}: no workload 'nope'"):
            e.make_cases(acfg, "nope")


def test_hw_imports_neither_sim_nor_tritium():
    for path in sorted((ROOT / "hw").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for n in names:
                assert n.split(".")[0] not in ("sim", "tritium"), f"{path.name} imports {n}"


@pytest.mark.parametrize("name", [n for n, e in fpga.ENGINES.items() if e.board_top is None])
def test_board_top_elaborates(tmp_path, name):
    """Each board top, generated from the engine's signature, converts to RTLIL with the engine(s) inside,
    every input payload fed from the pool and every output stream captured or folded into the parity."""
    from amaranth import Value
    from amaranth.lib import stream, wiring

    from hw.netlist import to_rtlil

    acfg = _small_config(tmp_path)
    eng = fpga.fpga_engine(name)
    top = fpga.BoardTop(acfg, eng, leds=None, button=None)
    text = to_rtlil(top, name="top", ports=top.ports)
    for port in ("seed_in", "parity_out", "busy_out"):
        assert f"\\{port}" in text
    parts = top.parts
    assert len(parts) == (len(eng.parts) or 1)
    for part, comp in parts:
        prefix = "engine" if len(parts) == 1 else part.name
        assert f"\\{prefix}_lfsr" in text and f"\\{prefix}_parity" in text
        members = comp.signature.members
        in_bits = 0  # the pool drives every input stream's payload and every other input port
        for n, m in members.items():
            obj = getattr(comp, n)
            if m.is_signature and isinstance(m.signature, stream.Signature):
                in_bits += len(Value.cast(obj.payload)) if m.flow == wiring.In else 0
            elif m.is_port:
                in_bits += len(Value.cast(obj)) if m.flow == wiring.In else 0
            else:
                for _, flow, value in m.signature.flatten(obj):
                    if (flow == wiring.In) != (m.flow == wiring.In):
                        in_bits += len(Value.cast(value))
        assert f"wire width {in_bits} \\{prefix}_pool" in text, f"pool of {prefix} is not {in_bits} bits"
        outs = [
            n
            for n, m in members.items()
            if m.is_signature and isinstance(m.signature, stream.Signature) and m.flow == wiring.Out
        ]
        assert outs, "an engine without output streams could not be observed"
        if part.capture_outputs:
            for k in range(len(outs)):
                assert f"\\{prefix}_out_q{k}" in text


def test_fit_check_uses_engine_hints():
    acfg = load_config(ROOT / "configs" / "default.yaml")
    board = fpga._board("icebreaker")
    for name, part in (("kv", "kv.lanes"), ("top", "memory.max_burst"), ("all", "gemm.rows")):
        with pytest.raises(fpga.FitError, match=part) as info:
            fpga._check_fit("icebreaker", board, {"lut": 10**6}, acfg, name)
        assert ("both engines" in str(info.value)) == (name == "all")


# ---------------------------------------------------------------- missing results are mismatches
def _fake_simulate(rows):
    def simulate(e, bdir, tmp, arrays, meta):
        result, log = tmp / "results.json", tmp / "sim.log"
        log.write_text("AssertionError: case x: RTL did not finish within 99 cycles\n")
        if rows is not None:
            result.write_text(json.dumps(rows))
        return result, log, 0.01

    return simulate


def test_short_results_are_mismatches(monkeypatch, tmp_path):
    from sim import cosim

    meta = {"config": {}, "cases": [{"name": "a", "model_cycles": 5}, {"name": "b", "model_cycles": 7}]}
    done = {
        "name": "a",
        "rtl_equals_reference": True,
        "rtl_equals_model": True,
        "model_equals_reference": True,
        "rtl_cycles": 5,
        "model_cycles": 5,
        "rtl_wall_s": 0.0,
    }
    monkeypatch.setattr(cosim, "_simulate", _fake_simulate([done]))
    rows, _ = cosim.run_bench("tlmm", tmp_path, {"x": np.zeros(1)}, meta, quiet=True)
    assert [r["name"] for r in rows] == ["a", "b"]
    assert rows[1]["missing"] and not rows[1]["rtl_equals_model"] and "did not finish" in rows[1]["error"]
    rep = cosim.CosimReport("tlmm", {}, rows, 0.0, 0.0, 0.0)
    assert not rep.ok  # → tritium exit 1 (mismatch), not 3

    monkeypatch.setattr(cosim, "_simulate", _fake_simulate(None))
    with pytest.raises(cosim.ToolError, match="did not start"):
        cosim.run_bench("tlmm", tmp_path, {"x": np.zeros(1)}, meta, quiet=True)


def test_cli_rejects_foreign_workload():
    r = run_cli("cosim", "tlmm", "--workload", "traces", expect=2)
    assert (
        "--workload traces: not a workload of the tlmm engine (its workloads: cases, bitnet, all)" in r.stderr
    )


# ---------------------------------------------------------------- SIGTERM
def test_sigterm_ends_children_and_cleans_temp_folder(tmp_path):
    script = textwrap.dedent(f"""
        import subprocess, sys, tempfile, time
        from sim.verilator import terminate_children_on_signal
        terminate_children_on_signal()
        with tempfile.TemporaryDirectory(prefix="tritium-cosim-", dir={str(tmp_path)!r}) as d:
            # a child that has a child of its own, as make has cc1plus
            p = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
            print(p.pid, p.stdout.readline().strip(), flush=True)
            p.wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        assert not _alive(p), f"child {p} survived SIGTERM"
    assert not list(tmp_path.glob("tritium-cosim-*")), "temporary folder left behind"


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return "Z" not in stat.read_text().rsplit(")", 1)[1][:3]
    except OSError:
        return False


def test_interrupted_flow_tool_ends_its_process_group(tmp_path):
    """hw.fpga._run starts each tool in its own process group and ends the group when interrupted."""
    script = textwrap.dedent(f"""
        from pathlib import Path
        from hw import fpga
        d = Path({str(tmp_path)!r})
        fpga._run("sleeper", ["sh", "-c", "sleep 60 & echo $! > pid; sleep 60"], d, d / "log")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    time.sleep(1.0)  # let _run reach its wait (the tool may write before Popen has returned)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild), "the tool's own child survived the interrupted flow"


def test_broken_rtl_is_a_mismatch_not_a_tool_failure(monkeypatch, repo, capsys):
    """An engine that takes its command and inputs but never answers: the bench stops on its cycle guard
    and leaves no result rows; ``tritium cosim`` must say mismatch (exit 1), not tool failure (exit 3)."""
    import dataclasses

    from amaranth import Module, Signal
    from amaranth.lib import wiring

    from hw.tlmm import TableLookupMatmul
    from tritium.cli import EXIT_MISMATCH, main

    class SilentTlmm(wiring.Component):
        def __init__(self, cfg):
            ref = TableLookupMatmul(cfg)
            ref._MustUse__silence = True  # only its signature is wanted
            super().__init__(ref.signature)

        def elaborate(self, platform):
            m = Module()
            alive = Signal()
            m.d.sync += alive.eq(1)
            m.d.comb += [
                self.cmd.ready.eq(1),
                self.act.ready.eq(1),
                self.wgt.ready.eq(1),
                self.res.valid.eq(0),
                self.busy.eq(alive),
            ]
            return m

    class SilentEngine(engines.Engine):
        def rtl(self, acfg):
            return SilentTlmm(acfg.tlmm)

    tlmm = engines.engine("tlmm")
    monkeypatch.setitem(
        engines.ENGINES,
        "tlmm",
        SilentEngine(**{f.name: getattr(tlmm, f.name) for f in dataclasses.fields(tlmm)}),
    )
    code = main(
        [
            "cosim",
            "tlmm",
            "--config",
            str(repo / "configs" / "small-g2-half.yaml"),
            "--random",
            "0",
            "--build-dir",
            str(repo / "build" / "cosim"),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == EXIT_MISMATCH
    assert out["ok"] is False and out["cases"] > 1
    assert all(r.get("missing") for r in out["case_results"])
    assert "did not finish" in out["case_results"][0]["error"]
