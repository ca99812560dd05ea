"""GEMM RTL ⇔ model ⇔ reference on three block shapes and three bus widths: directed corners (1×1×1, K=1,
non-multiples, extremes, int32 limits, requantization, bandwidth- and write-starved memories) and seeded
random cases with random memory timings. Outputs bit-exact, cycles exact, read beats equal."""

import pytest
from conftest import assert_one_line_error, cli_json, cosim_mismatches, run_cli

from hw.config import load_config
from sim.cosim import run_gemm_cosim
from sim.gemm_cases import directed_cases, random_cases

CONFIGS = [("default.yaml", True), ("gemm-4x4-w8.yaml", False), ("gemm-2x8-w16.yaml", False)]


@pytest.mark.verilator
@pytest.mark.parametrize("name, long", CONFIGS)
def test_rtl_model_reference_agree(repo, name, long):
    acfg = load_config(repo / "configs" / name)
    cases = directed_cases(acfg, seed=0, long=long) + random_cases(acfg, seed=21, count=6)
    rep = run_gemm_cosim(acfg, cases, build_root=repo / "build" / "cosim", quiet=True)
    assert len(rep.rows) == len(cases)
    bad = cosim_mismatches(rep, lambda r: r["rtl_read_beats"] == r["model_read_beats"] and r["idle_after"])
    assert not bad, bad
    # the starved cases really stalled: more cycles than their issue count alone
    starved = {r["name"]: r for r in rep.rows}["bandwidth-starved"]
    assert starved["rtl_cycles"] > 2 * {r["name"]: r for r in rep.rows}["extremes"]["rtl_cycles"]


@pytest.mark.verilator
def test_cli_cosim_gemm_json(repo):
    out = cli_json(
        "cosim", "gemm", "--config", repo / "configs" / "gemm-2x8-w16.yaml", "--seed", 3, "--random", 2
    )
    for key in ("engine", "config", "cases", "outputs_equal", "cycles_equal", "rtl_cycles", "model_cycles"):
        assert key in out
    assert out["engine"] == "gemm" and out["outputs_equal"] is True and out["cycles_equal"] is True
    assert out["rtl_cycles"] == out["model_cycles"] > 0 and out["seed"] == 3


def test_cli_perf_gemm(tmp_path):
    png = tmp_path / "roof.png"
    out = cli_json("perf", "gemm", "--shape", "256x512x128", "--plot", png)
    assert out["modeled"] and 0 < out["mac_utilization"] <= 1 and out["gops"] <= out["peak_gops"]
    assert png.stat().st_size > 10_000 and out["sweep_points"] >= 10
    assert_one_line_error(run_cli("perf", "gemm", "--shape", "12x3", expect=2), "--shape")
