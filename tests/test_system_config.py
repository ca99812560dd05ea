"""The config's ``system`` section (system choices around the engines): ``system.lm_head`` is the default
LM-head placement of compile, estimate, cosim top and the DSE; ``lm_head=`` / ``--lm-head`` override it."""

import math
from pathlib import Path

import pytest

from hw.config import ConfigError, config_from_dict, load_config

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parent.parent


def _with(acfg, **system):
    d = acfg.to_dict()
    d["system"].update(system)
    return config_from_dict(d, source="test")


@pytest.fixture(scope="module")
def base():
    return load_config(REPO / "configs/default.yaml")


def test_default_and_bad_value(base, tmp_path):
    assert base.system.lm_head == "host_fp32"
    p = tmp_path / "bad.yaml"
    p.write_text((REPO / "configs/default.yaml").read_text() + "\nsystem:\n  lm_head: gpu\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "system.lm_head" in msg and "\n" not in msg and "acc_int8" in msg


def test_system_is_not_hardware(base):
    """Build folders and bitstreams key on the fingerprint: a system choice must not change it."""
    assert _with(base, lm_head="acc_int8").fingerprint() == base.fingerprint()


def test_compile_takes_the_configs_placement_and_the_argument_overrides(base):
    from compiler import compile_model, load_model

    acfg = _with(base, lm_head="acc_int8")
    model = load_model("tiny", device="meta")
    assert compile_model(model, acfg).program(1, 3).meta["lm_head"] == "acc_int8"
    assert compile_model(model, acfg, lm_head="host_fp16").program(1, 3).meta["lm_head"] == "host_fp16"
    assert compile_model(model, base).program(1, 3).meta["lm_head"] == "host_fp32"


@pytest.mark.parametrize("lm_head", ["host_fp32", "host_fp16", "acc_int8"])
def test_dse_fast_evaluator_follows_the_placement(base, lm_head):
    """The DSE's evaluator equals the estimate for every placement a sweep may choose, starting from a
    workload built for another placement (it must not cost host_fp32 for an acc_int8 point)."""
    from tritium.dse import FastEvaluator, build_workload
    from tritium.estimate import _compiled, estimate

    ev = FastEvaluator(build_workload("tiny", 16, 64, base))  # host_fp32 workload
    acfg = _with(base, lm_head=lm_head)
    ref, fast = estimate("tiny", acfg, 16, 64), ev.estimate(acfg)
    assert ref["lm_head"] == fast["lm_head"] == lm_head
    for k in ("ttft_s", "decode_tokens_per_s", "j_per_token", "dram_bytes_per_token"):
        assert math.isclose(ref[k], fast[k], rel_tol=1e-9), (k, ref[k], fast[k])
    assert ev.memory_beats(acfg) == _compiled("tiny", acfg).lowering.step_base
