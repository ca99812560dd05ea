"""Progress on every long command (docs/cli.md, "Progress"): with ``TRITIUM_PROGRESS=1`` a bar appears on stderr
and never on stdout; ``--json`` turns it off. The staged bars of sim/progress.py count stages, poll how far a
step is (cases a co-simulation's bench has finished, commands run, streams scored) and keep their clock moving
while a tool runs. Every subcommand's ``--help`` is tested in tests/test_cli_grammar.py.

The co-simulation test runs the real harness (elaboration, case generation, the model, the comparison) with a
stand-in for cocotb's Verilator runner: its "bench" writes the result file one case at a time, as
sim/bench_common.Results does, so the parent's per-case polling is exercised without a Verilator build."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from sim import progress as prog
from tritium import cli

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def bars_on(monkeypatch):
    monkeypatch.setenv("TRITIUM_PROGRESS", "1")
    prog.set_enabled(None)
    yield
    prog.set_enabled(None)


def _lines(err: str) -> list[str]:
    """The distinct lines a bar drew (tqdm redraws with carriage returns)."""
    return list(dict.fromkeys(s.strip() for s in err.replace("\r", "\n").splitlines() if s.strip()))


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- the helper
def test_staged_bar_counts_stages_polls_and_ticks(bars_on, capsys, monkeypatch):
    monkeypatch.setattr(prog, "TICK_S", 0.05)
    done = [0]
    with prog.progress(desc="flow", stages=["build", "simulate", "compare"]):
        prog.step("build", "cached")
        time.sleep(0.2)
        prog.step("simulate", lambda: f"{done[0]}/3 cases")
        for k in (1, 2, 3):
            done[0] = k
            time.sleep(0.2)
        prog.note("a log line")
        prog.step("detail within simulate")
        time.sleep(0.2)
        prog.step("compare")
    out, err = capsys.readouterr()
    assert out == ""
    lines = _lines(err)
    assert any("0/3" in s and "build cached" in s for s in lines)
    assert any("1/3" in s and "simulate 2/3 cases" in s for s in lines)  # polled while the step ran
    assert any("simulate: detail within simulate" in s for s in lines)  # a step within a stage
    assert any("2/3" in s and "compare" in s for s in lines)
    assert "a log line" in lines
    # the clock moves without any call from the run (a long tool): two refreshes, same step, later second
    ticks = [s for s in lines if "build cached" in s]
    assert len(ticks) >= 2
    assert prog.current() is prog._OFF  # closed bars are gone


def test_step_without_a_bar_is_free(monkeypatch, capsys):
    monkeypatch.setenv("TRITIUM_PROGRESS", "0")
    with prog.progress(desc="quiet", stages=["a"]):
        prog.step("a", lambda: 1 / 0)  # never polled
        prog.step("b")
    prog.step("outside any bar")
    assert capsys.readouterr() == ("", "")


def test_unstaged_bar_shows_steps_after_its_stage(bars_on, capsys):
    with prog.progress(4, "bench", "part") as bar:
        bar.stage("tlmm")
        prog.step("Verilator build", "cached")
        bar.update()
    lines = _lines(capsys.readouterr().err)
    assert any("tlmm: Verilator build cached" in s and "0/4" in s for s in lines)


# ---------------------------------------------------------------- commands
def _no_bar(out: str, *descs: str) -> None:
    assert "\r" not in out
    for d in descs:
        assert f"{d}:" not in out


def test_perf_plot_sweep(bars_on, capsys, tmp_path):
    shape = ["--shape", "64x64x64"]
    code, out, err = _run(capsys, "perf", "gemm", *shape, "--plot", tmp_path / "r.png")
    assert code == 0
    lines = [s for s in _lines(err) if s.startswith("perf gemm:")]
    assert any("0/3" in s and "model 64x64x64" in s for s in lines)
    assert any("1/3" in s and "bandwidth sweep" in s for s in lines)
    assert any("2/3" in s and "plot" in s for s in lines)
    _no_bar(out, "perf gemm")
    code, out, err = _run(capsys, "perf", "gemm", *shape, "--json")
    assert code == 0 and json.loads(out)["cycles"] > 0 and err == ""


def test_kv_replay_stages(bars_on, capsys):
    trace = REPO / "traces" / "tiny-val-0.npz"
    code, out, err = _run(capsys, "kv", "replay", trace)
    assert code == 0
    lines = _lines(err)
    assert any(s.startswith("kv replay:") and "streams" in s for s in lines)
    assert any("KV-engine cycles" in s for s in lines)
    _no_bar(out, "kv replay")
    code, out, err = _run(capsys, "kv", "replay", trace, "--policy", "quest", "--json")
    assert code == 0 and json.loads(out)["policy"] == "quest"
    assert "kv replay" not in err and "\r" not in err


@pytest.mark.torch
def test_run_counts_commands(bars_on, capsys, tmp_path):
    ck = REPO / "models" / "checkpoints" / "tiny.pt"
    code, out, _ = _run(capsys, "compile", "--model", ck, "-o", tmp_path / "p", "--tokens", "2", "--json")
    assert code == 0
    n = json.loads(out)["commands"]
    code, out, err = _run(capsys, "run", tmp_path / "p")
    assert code == 0
    lines = _lines(err)
    assert any(s.startswith("run:") and "load + verify" in s for s in lines)
    assert any(s.startswith("run:") and f"/{n} commands" in s for s in lines)
    _no_bar(out, "run")
    code, out, err = _run(capsys, "run", tmp_path / "p", "--json")
    assert code == 0 and json.loads(out)["commands"]["total"] == n
    assert err == ""


class _FakeRunner:
    """Stands in for cocotb's Verilator runner: build() leaves the binary the cache checks for; test() is a
    bench that scores every case as equal, one case at a time, rewriting the result file after each."""

    builds = 0

    def build(self, *, build_dir, hdl_toplevel, **kw):
        type(self).builds += 1
        (Path(build_dir) / hdl_toplevel).write_text("fake")

    def test(self, *, extra_env, **kw):
        with np.load(extra_env["TRITIUM_CASES"], allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
        rows = []
        for c in meta["cases"]:
            time.sleep(0.15)
            rows.append(
                {
                    "name": c["name"],
                    "rtl_equals_reference": True,
                    "rtl_equals_model": True,
                    "model_equals_reference": True,
                    "rtl_cycles": c["model_cycles"],
                    "model_cycles": c["model_cycles"],
                    "rtl_wall_s": 0.15,
                }
            )
            Path(extra_env["TRITIUM_RESULTS"]).write_text(json.dumps(rows))


def test_cosim_stages_and_cases(bars_on, capsys, tmp_path, monkeypatch):
    pytest.importorskip("amaranth", reason="the sim extra (elaboration)")
    runner = pytest.importorskip("cocotb_tools.runner", reason="the sim extra (cocotb)")

    monkeypatch.setattr(runner, "get_runner", lambda name: _FakeRunner())
    monkeypatch.setattr(prog, "TICK_S", 0.1)
    args = ["cosim", "gemm", "--config", REPO / "configs" / "gemm-2x8-w16.yaml", "--random", "0"]
    args += ["--build-dir", tmp_path / "cosim"]
    code, out, err = _run(capsys, *args)
    assert code == 0, err
    n = out.split("RESULT:")[0].count("\n")  # sanity: tables were printed
    assert n > 5 and "PASS" in out
    lines = [s for s in _lines(err) if s.startswith("cosim gemm:")]
    for stage in ("elaborate", "Verilator build gemm, not cached", "model", "compare"):
        assert any(stage in s for s in lines), (stage, lines)
    cases = {s.split(" cases")[0].rsplit(" ", 1)[-1] for s in lines if " cases" in s}
    total = {c.split("/")[1] for c in cases}
    assert len(total) == 1 and any(0 < int(c.split("/")[0]) < int(next(iter(total))) for c in cases), cases
    assert any("/5 [" in s for s in lines)
    _no_bar(out, "cosim gemm")
    # cached build, --json: no bar, stdout one JSON document
    code, out, err = _run(capsys, *args, "--json")
    assert code == 0 and json.loads(out)["ok"] and _FakeRunner.builds == 1
    assert "cosim gemm:" not in err and "\r" not in err
    assert "reusing Verilator build" in err  # the log lines stay


def test_bitstream_stages(bars_on, capsys, tmp_path, monkeypatch):
    """``tritium bitstream`` hands the flow a step callback and shows the board's stages (the flow itself,
    Yosys and nextpnr, is tested in tests/test_fpga.py)."""
    pytest.importorskip("amaranth", reason="the sim or fpga extra")
    import hw.fpga

    seen = []

    def fake_flow(acfg, board, out, log, engine, step):
        for s in hw.fpga.flow_stages(board):
            seen.append(s)
            step(s)
            time.sleep(0.05)
        return {"board": board}

    monkeypatch.setattr(hw.fpga, "build_bitstream", fake_flow)
    code, out, err = _run(capsys, "bitstream", "--board", "icebreaker", "--out", tmp_path)
    assert code == 0 and json.loads(out) == {"board": "icebreaker"}
    assert seen == list(hw.fpga.FLOW_STAGES)
    lines = [s for s in _lines(err) if s.startswith("bitstream icebreaker tlmm:")]
    assert any("3/4" in s and "pack" in s for s in lines)
    assert hw.fpga.flow_stages("kv260") == hw.fpga.XILINX_STAGES


def test_calibrate_bar_per_point(bars_on, capsys, tmp_path, monkeypatch):
    pytest.importorskip("amaranth", reason="the sim or fpga extra")
    from tritium import calibrate

    def fake_point(p, build_dir, log=print, step=None):
        step("Yosys synthesis")
        time.sleep(0.05)
        return {"name": p.name, "lut": 1, "ff": 2, "bram": 0, "dsp": 0, "fmax_mhz": "", "_wall": 0.0}

    monkeypatch.setattr(calibrate, "run_point", fake_point)
    import tritium.resources

    monkeypatch.setattr(tritium.resources, "fit_report", lambda runs: "fit")
    name = calibrate.POINTS[0].name
    code, out, err = _run(capsys, "calibrate", "--only", name, "--runs", tmp_path / "runs.csv")
    assert code == 0
    assert f"[calibrate] 1/1 {name}" in out  # the log lines stay on stdout
    assert any(s.startswith("calibrate:") and f"{name}: Yosys synthesis" in s for s in _lines(err))
    _no_bar(out, "calibrate")


def test_docs_name_every_command():
    """docs/cli.md "Progress" says what each subcommand shows (or that it needs nothing)."""
    text = (REPO / "docs" / "cli.md").read_text()
    section = text.split("### Progress", 1)[1].split("\n### ", 1)[0]
    import argparse

    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name in sub.choices:
        assert f"`{name}" in section, name
