"""KV retrieval in the design space (tritium.dse; docs/dse.md, "KV retrieval"): a ``system.attention: resv``
point is costed with retrieval by the fast evaluator — the dense decode step at the plan's effective context
plus tritium.retrieval's extras — with exactly ``tritium.estimate.estimate()``'s figures; the retrieval fields
change a resv point's figures and leave a dense point's alone; a ``tritium dse`` run sweeps attention and a kv
field. Fast: the tiny model and BitNet-0.7B on meta tensors (seconds)."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import yaml
from conftest import DSE_SPEC, REPO, assert_same_estimate, config_variant, tiny_resv_config

from hw.config import load_config
from tritium.dse import FastEvaluator, build_workload, load_spec, run_dse, screen
from tritium.estimate import estimate

pytestmark = pytest.mark.torch

_variant = config_variant


@pytest.mark.parametrize("context", [40, 200])  # below kv_min_context (inserts only), then retrieving
def test_tiny_resv_points_equal_estimate(context):
    base = tiny_resv_config()
    ev = FastEvaluator(build_workload("tiny", 16, context, base))
    for v in (
        {"system": {"kv_selected_share": 0.1}},
        {"system": {"kv_selected_share": 0.5, "kv_tables": "dram"}},
        {"kv": {"max_clusters": 16, "lanes": 4}},
        {"system": {"lm_head": "host_fp32", "kv_window": 32}},
    ):
        acfg = _variant(base, **v)
        fast = ev.estimate(acfg)
        assert_same_estimate(estimate("tiny", acfg, 16, context), fast, (context, v))
        assert fast["retrieval"]["plan"]["active"] == (context >= 64)
    assert ev.exact_points == 0  # all on the fast path


@pytest.mark.parametrize("context", [1024, 2048])
def test_bitnet07b_kv260_resv_points_equal_estimate(context):
    kv260 = load_config(REPO / "configs" / "kv260.yaml")
    ev = FastEvaluator(build_workload("bitnet-0.7b", 32, context, kv260))  # captured dense
    for v in ({"kv_selected_share": 0.2}, {"kv_selected_share": 0.377, "kv_tables": "dram"}):
        acfg = _variant(kv260, system={"attention": "resv", **v})
        assert_same_estimate(estimate("bitnet-0.7b", acfg, 32, context), ev.estimate(acfg), (context, v))
    acfg = _variant(kv260, system={"attention": "resv"}, kv={"max_clusters": 64})
    assert_same_estimate(estimate("bitnet-0.7b", acfg, 32, context), ev.estimate(acfg), (context, "mc64"))
    assert ev.exact_points == 0


def test_retrieval_fields_change_resv_points_only():
    """A field in RETRIEVAL_FIELDS changes a resv point's figures; a dense point's stay; UNUSED kv fields
    change neither (the classification is honest)."""
    base = tiny_resv_config()
    ev = FastEvaluator(build_workload("tiny", 16, 200, base))
    dense = _variant(base, system={"attention": "dense"})

    def fig(a):
        r = ev.estimate(a)
        return (r["decode_tokens_per_s"], r["j_per_token"], r["dram_bytes_per_token"], r["ttft_s"])

    changes = [
        ("system", "kv_selected_share", 0.5),
        ("system", "kv_window", 8),
        ("system", "kv_tables", "onchip"),
        ("system", "kv_min_context", 256),
        ("system", "kv_sinks", 8),
        ("kv", "max_clusters", 16),
        ("kv", "lanes", 4),
        ("kv", "hyperplanes", 64),
    ]
    for sec, k, v in changes:
        assert fig(_variant(base, **{sec: {k: v}})) != fig(base), (sec, k)
        assert fig(_variant(dense, **{sec: {k: v}})) == fig(dense), (sec, k)
    assert fig(dense) != fig(base)
    for k, v in (("hamming", 3), ("alpha", 0.7), ("seed", 5), ("slots", 4), ("buckets", 8)):
        assert fig(_variant(base, kv={k: v})) == fig(base), k


def test_resv_screen_names_the_field():
    ev = FastEvaluator(build_workload("tiny", 16, 40, tiny_resv_config()))
    spec = load_spec(REPO / "configs" / "sweeps" / "kv260-retrieval.yaml")
    status, reason, _, _ = screen(spec, {"system.attention": "resv", "kv.dim": 64}, [ev])
    assert status == "invalid" and "kv.dim=64" in reason, reason


def test_dse_sweeps_attention_and_a_kv_field(tmp_path):
    """A grid over attention × kv_selected_share: resv rows differ between the shares and equal estimate();
    dense rows do not depend on the share."""
    base_path = tmp_path / "tiny-resv.yaml"
    d = tiny_resv_config().to_dict()
    d["system"]["attention"] = "dense"
    base_path.write_text(yaml.safe_dump(d, sort_keys=False))
    spec_d = {
        **copy.deepcopy(DSE_SPEC),
        "name": "t-resv",
        "base": str(base_path),
        "board": None,
        "parameters": {"system.attention": ["dense", "resv"], "system.kv_selected_share": [0.1, 0.5]},
        "workload": {"model": "tiny", "prompt": 16, "context": 200},
        "objectives": [{"decode_tokens_per_s": "max"}, {"j_per_token": "min"}],
        "budget": 4,
    }
    p = tmp_path / "t-resv.yaml"
    p.write_text(yaml.safe_dump(spec_d, sort_keys=False))
    run_dse(load_spec(p), tmp_path / "o", workers=0, progress=False, log=lambda s: None)
    with open(tmp_path / "o" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    by = {(r["system.attention"], float(r["system.kv_selected_share"])): r for r in rows}
    for (att, share), r in by.items():
        ref = estimate(
            "tiny",
            _variant(tiny_resv_config(), system={"attention": att, "kv_selected_share": share}),
            16,
            200,
        )
        # each row is the point's estimate (CSV rounding: 9 decimals)
        assert math.isclose(float(r["decode_tokens_per_s"]), ref["decode_tokens_per_s"], rel_tol=1e-9)
        for k in ("ttft_s", "j_per_token"):
            assert math.isclose(float(r[k]), ref[k], abs_tol=1e-9), (att, share, k)
    assert by[("resv", 0.1)]["decode_tokens_per_s"] != by[("resv", 0.5)]["decode_tokens_per_s"]
    assert by[("dense", 0.1)]["decode_tokens_per_s"] == by[("dense", 0.5)]["decode_tokens_per_s"]
