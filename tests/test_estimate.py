"""Whole-model estimates: the closed-form cost of a Program equals executing it on the stepped models;
the CLI reports every figure, labeled modeled; bad input fails in one line."""

import pytest
from conftest import assert_one_line_error, cli_json, run_cli

pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")
import torch

from compiler import compile_model, load_model
from hw.config import ConfigError, config_from_dict, load_config
from sim.energy import load_energy
from sim.runtime import Runtime
from tritium.estimate import cost_program

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("config", ["default.yaml", "gemm-4x4-w8.yaml"])
def test_closed_form_equals_stepped_models(repo, config):
    acfg = load_config(repo / "configs" / config)
    m = load_model(str(repo / "models" / "checkpoints" / "tiny.pt"))
    cm = compile_model(m, acfg)
    pre = cm.program(9, 0)
    rt = Runtime(pre)
    for prog, tokens in ((pre, torch.arange(9).numpy()), (cm.program(1, 9), [7])):  # prefill, then decode
        _, stats = rt.run(prog, tokens)
        cost = cost_program(prog, acfg, memory_bound=False)
        assert cost.compute_cycles == stats.cycles
        assert cost.engine_cycles == stats.cycles


def test_memory_bound_appears_with_a_narrow_bus(repo):
    d = load_config(repo / "configs" / "default.yaml").to_dict()
    d["memory"] = {**d["memory"], "beat_interval": 16}
    slow = config_from_dict(d)
    m = load_model(str(repo / "models" / "checkpoints" / "tiny.pt"))
    prog = compile_model(m, slow).program(1, 0)
    c = cost_program(prog, slow)
    assert c.time_by["tlmm memory"] > 0 and c.engine_cycles["tlmm"] > c.compute_cycles["tlmm"]


def test_energy_tables_are_valid_and_errors_name_the_file(tmp_path, monkeypatch):
    for fam in ("ecp5", "ice40", "ultrascale_plus", "edge_soc"):
        assert load_energy(fam)["pj"]["dram_byte"] > 0
    import sim.energy as est  # the energy tables moved from tritium/estimate.py to sim/energy.py

    (tmp_path / "ecp5.yaml").write_text("pj: {lookup: -1}\n")
    monkeypatch.setattr(est, "ENERGY_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"ecp5.yaml: pj.lookup"):
        load_energy("ecp5")


def test_cli_estimate_json_and_errors():
    out = cli_json("estimate", "--model", "bitnet-0.7b", "--prompt", 16, "--context", 256)
    assert out["modeled"] is True
    for key in (
        "ttft_s",
        "decode_tokens_per_s",
        "j_per_token",
        "avg_power_w",
        "dram_bytes_per_token",
        "bound",
        "utilization",
    ):
        assert key in out
    assert (
        out["decode_tokens_per_s"] > 0
        and out["ttft_s"] > 0
        and 0 < out["utilization"]["prefill"]["tlmm"] <= 1
    )
    assert_one_line_error(
        run_cli("estimate", "--model", "bitnet-0.7b", "--context", 99999, expect=2), "--context"
    )
