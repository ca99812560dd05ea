"""RTL ⇔ model ⇔ reference on four configs: directed + seeded random cases, outputs bit-exact and
cycles exact (stalled streams included). Each config is one Verilator build (cached in build/cosim)."""

import json
import subprocess
import sys

import pytest

from hw.config import load_config
from sim.cosim import run_tlmm_cosim
from sim.tlmm_cases import directed_cases, random_cases

pytestmark = pytest.mark.verilator

CONFIGS = ["default.yaml", "wide.yaml", "small-g2-half.yaml", "small-g3-half.yaml"]


@pytest.mark.parametrize("name", CONFIGS)
def test_rtl_model_reference_agree(repo, name):
    acfg = load_config(repo / "configs" / name)
    cases = directed_cases(acfg.tlmm, seed=0) + random_cases(acfg.tlmm, seed=11, count=6)
    rep = run_tlmm_cosim(acfg, cases, build_root=repo / "build" / "cosim", quiet=True)
    assert len(rep.rows) == len(cases)
    bad = [
        r
        for r in rep.rows
        if not (
            r["rtl_equals_reference"]
            and r["rtl_equals_model"]
            and r["model_equals_reference"]
            and r["rtl_cycles"] == r["model_cycles"]
        )
    ]
    assert not bad, bad
    assert any(r["name"].endswith("stalled") or r["name"] == "stalled-streams" for r in rep.rows)


def test_cli_cosim_json(repo):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tritium.cli",
            "cosim",
            "tlmm",
            "--config",
            str(repo / "configs" / "small-g2-half.yaml"),
            "--seed",
            "5",
            "--random",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    for key in ("engine", "config", "cases", "outputs_equal", "rtl_cycles", "model_cycles"):
        assert key in out
    assert out["engine"] == "tlmm" and out["outputs_equal"] is True
    assert out["rtl_cycles"] == out["model_cycles"] > 0 and out["seed"] == 5
