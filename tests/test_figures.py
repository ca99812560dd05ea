"""Figures for papers (tritium/figures.py): every figure command writes PNG + a vector format + a CSV of its
data, atomically; titles and axes reflect the arguments; honest axes; readable labels."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hw.config import load_config

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "tritium.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def read_csv(p: Path) -> list[dict]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def assert_figure(stem: Path, vector: str) -> list[dict]:
    """PNG, the vector file and the CSV exist and are what they say; no temporary file is left."""
    png, vec, data = (stem.with_name(stem.name + s) for s in (".png", f".{vector}", ".csv"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    head = vec.read_bytes()[:200]
    assert head.startswith(b"%PDF") if vector == "pdf" else b"<svg" in vec.read_bytes()[:2000], head
    rows = read_csv(data)
    assert rows, f"{data} has no data rows"
    assert not list(stem.parent.glob(".*tmp*"))
    return rows


def test_save_figure_formats_and_honest_axes(tmp_path):
    from tritium.figures import figure_files, honest_axes, new_figure, save_figure

    assert set(figure_files(tmp_path / "a.svg")) == {"png", "svg", "csv"}
    assert set(figure_files(tmp_path / "a.png")) == {"png", "pdf", "csv"}
    fig, ax = new_figure()
    ax.plot([1, 2, 3], [100.0, 101.0, 102.0])
    honest_axes(ax)
    assert ax.get_ylim()[0] == 0.0  # a 2 % change must not fill the whole axis
    ax.set_title("small change, honest axis")
    files = save_figure(fig, tmp_path / "a.svg", ["x", "y"], [[1, 100.0], [2, 101.0], [3, 102.0]])
    rows = assert_figure(tmp_path / "a", "svg")
    assert [r["y"] for r in rows] == ["100.0", "101.0", "102.0"]
    assert "small change, honest axis" in files["svg"].read_text()  # text stays text in the SVG
    fig, ax = new_figure()
    ax.set_yscale("log")
    ax.plot([1, 2], [10.0, 100.0])
    lo = ax.get_ylim()[0]
    honest_axes(ax)
    assert ax.get_ylim()[0] == lo > 0  # log axes are left alone


def test_perf_gemm_plot_svg_reflects_the_shape(tmp_path):
    out = tmp_path / "roof.svg"
    r = run_cli("perf", "gemm", "--shape", "64x128x96", "--plot", str(out), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    rows = assert_figure(tmp_path / "roof", "svg")
    assert "64×128×96" in out.read_text()
    own = [x for x in rows if x["this_config"] == "1"]
    assert len(own) == 1 and float(own[0]["gops_modeled"]) == pytest.approx(rep["gops"])
    assert len(rows) == rep["sweep_points"] + 1


def test_perf_tlmm_from_the_stepped_model(tmp_path):
    out = tmp_path / "tlmm.pdf"
    r = run_cli("perf", "tlmm", "--shape", "2x96x64", "--plot", str(out), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["modeled"] and rep["shape"] == [2, 96, 64]
    assert 0 < rep["issue_utilization"] <= 1 and 0 < rep["gops"] <= rep["peak_gops"]
    rows = assert_figure(tmp_path / "tlmm", "pdf")
    assert {x["engine"] for x in rows} == {"tlmm"} and len(rows) == rep["sweep_points"] + 1
    gops = sorted((float(x["bandwidth_gbs"]), float(x["gops_modeled"])) for x in rows)
    assert gops[0][1] < gops[-1][1]  # starved of weight bandwidth, the engine is slower


def test_perf_tlmm_stalls_when_the_memory_is_slow():
    from tritium.perf import _with_memory, tlmm_report

    acfg = load_config(REPO / "configs" / "default.yaml")
    fast = tlmm_report(acfg, 2, 96, 64)
    slow_cfg = _with_memory(acfg, beat_interval=16)
    assert slow_cfg is not None
    slow = tlmm_report(slow_cfg, 2, 96, 64)
    assert fast["cycles"] == fast["unstalled_cycles"] and fast["weight_stall_cycles"] == 0
    assert slow["weight_stall_cycles"] > 0 and slow["cycles"] > slow["unstalled_cycles"]
    assert slow["gops"] < fast["gops"]
    # more tokens than the engine shares a weight beat among: several commands
    three = tlmm_report(acfg, 2 * acfg.tlmm.tokens + 1, 96, 64)
    assert three["commands"] == 3


def test_kv_report_markdown_defines_columns_and_lists_traces():
    from tritium.kv import REPORT_COLUMNS, report_markdown

    rep = {
        "config": "default",
        "config_source": "configs/default.yaml",
        "checkpoint": None,
        "first": 16,
        "traces": ["traces/a.npz", "traces/b.npz"],
        "summary": [],
    }
    md = report_markdown(rep)
    header = next(line for line in md.splitlines() if line.startswith("| policy"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    defined = {name for name, _ in REPORT_COLUMNS}
    assert set(columns) == defined, set(columns) ^ defined
    assert all(f"**{c}**" in md for c in columns)
    assert "`traces/a.npz`" in md and "`traces/b.npz`" in md and "from 16 on" in md


def test_dse_pareto_axes_are_words_with_units(tmp_path):
    from tritium.dse import load_spec, plot_pareto

    spec = load_spec(REPO / "configs" / "sweeps" / "tiny-grid.yaml")
    rows = [
        {
            "trial": i,
            "status": "ok",
            "pareto": int(i % 2 == 0),
            "verified": "",
            **p,
            "decode_tokens_per_s": t,
            "lut": lut,
        }
        for i, (p, t, lut) in enumerate(
            [
                ({"tlmm.tables": 4, "tlmm.columns": 2, "tlmm.tokens": 1}, 100.0, 9000.0),
                ({"tlmm.tables": 8, "tlmm.columns": 4, "tlmm.tokens": 2}, 180.0, 15000.0),
                ({"tlmm.tables": 16, "tlmm.columns": 8, "tlmm.tokens": 4}, 250.0, 40000.0),
            ]
        )
    ]
    png = plot_pareto(tmp_path / "pareto.png", rows, spec)
    assert png == tmp_path / "pareto.png"
    data = assert_figure(tmp_path / "pareto", "pdf")
    assert [float(r["decode_tokens_per_s"]) for r in data] == [100.0, 180.0, 250.0]
    from tritium.dse import axis_label

    assert (
        axis_label("decode_tokens_per_s", "maximize")
        == "decode throughput (tokens/s, modeled) — higher is better"
    )
    assert "(max)" not in axis_label("lut", "minimize") and "lower is better" in axis_label("lut", "minimize")


@pytest.mark.torch
def test_estimate_figures_show_the_requested_point(tmp_path):
    pytest.importorskip("torch")
    from tritium.estimate import plot_estimates

    acfg = load_config(REPO / "configs" / "default.yaml")
    files = plot_estimates("tiny", acfg, tmp_path, prompt=20, context=100, points=3)
    assert {f.name for f in files} == {
        f"{s}.{x}" for s in ("context", "roofline-tlmm", "roofline-gemm") for x in ("png", "pdf", "csv")
    }
    rows = assert_figure(tmp_path / "context", "pdf")
    asked = {(r["step"], int(r["tokens"])) for r in rows if r["requested"] == "1"}
    assert asked == {("decode", 100), ("prefill", 20)}
    roof = assert_figure(tmp_path / "roofline-tlmm", "pdf")
    ops = {s: sum(float(r["ops"]) for r in roof if r["step"] == s) for s in ("prefill", "decode")}
    assert ops["prefill"] == pytest.approx(20 * ops["decode"])  # the roofline is of the 20-token prefill


@pytest.mark.torch
def test_kv_plot_writes_figure_and_data(tmp_path):
    pytest.importorskip("torch")
    from traces.format import load_trace, save_trace
    from tritium.cli import main
    from tritium.kv import SWEEP_ALPHAS

    p = save_trace(load_trace(REPO / "traces" / "tiny-val-0.npz").prefix(48), tmp_path / "short.npz")
    out = tmp_path / "fig" / "recall.svg"
    assert main(["kv", "plot", str(p), "--plot", str(out)]) == 0
    rows = assert_figure(tmp_path / "fig" / "recall", "svg")
    assert [float(r["value"]) for r in rows if r["policy"] == "resv"] == list(SWEEP_ALPHAS)
    svg = out.read_text()
    assert "1 trace(s)" in svg and "config default" in svg and "α=0.3" in svg
