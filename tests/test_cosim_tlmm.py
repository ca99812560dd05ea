"""RTL ⇔ model ⇔ reference on four configs: directed + seeded random cases, outputs bit-exact and
cycles exact (stalled streams included). Each config is one Verilator build (cached in build/cosim)."""

import pytest
from conftest import cli_json, cosim_mismatches

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
    bad = cosim_mismatches(rep)
    assert not bad, bad
    assert any(r["name"].endswith("stalled") or r["name"] == "stalled-streams" for r in rep.rows)


def test_cli_cosim_json(repo):
    out = cli_json(
        "cosim", "tlmm", "--config", repo / "configs" / "small-g2-half.yaml", "--seed", 5, "--random", 2
    )
    for key in ("engine", "config", "cases", "outputs_equal", "rtl_cycles", "model_cycles"):
        assert key in out
    assert out["engine"] == "tlmm" and out["outputs_equal"] is True
    assert out["rtl_cycles"] == out["model_cycles"] > 0 and out["seed"] == 5
