"""The DSE's system choices and workload sweeps (tritium.dse): the fast evaluator gives exactly estimate()'s
figures for the LM-head placement, the GEMM operand slots and the attention mapping (block geometry →
attention groups) at several contexts; config fields it does not mirror fall back to compiling; a workload
may list models, prompts and contexts (one CSV row per point and workload, objectives aggregated, the
context plot). Fast: the tiny model, BitNet-0.7B on meta tensors for three configs (~1 min on 2 cores)."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import DSE_SPEC, REPO, assert_same_estimate, config_variant

from hw.config import config_from_dict, load_config
from tritium import dse
from tritium.dse import FastEvaluator, SpecError, build_workload, load_spec, run_dse
from tritium.estimate import _compiled, estimate

pytestmark = pytest.mark.torch

_variant = config_variant


# ------------------------------------------------------------------------- system choices, exactly
TINY_SYSTEM = [
    {"system": {"lm_head": "host_fp32"}},
    {"system": {"lm_head": "host_fp16"}, "gemm": {"buffers": 4}},
    {"system": {"lm_head": "acc_int8"}, "gemm": {"buffers": 8}},
    # attention mapping: a 1-row block (groups of KV heads), then 8 rows on a 16-byte port
    {"system": {"lm_head": "acc_int8"}, "gemm": {"rows": 1, "cols": 32, "k_tile": 32, "buffers": 4}},
    {
        "system": {"lm_head": "host_fp16"},
        "gemm": {"rows": 8, "cols": 16, "k_tile": 16, "buffers": 2},
        "memory": {"bus_bytes": 16},
    },
]


@pytest.mark.parametrize("context", [40, 200])
def test_tiny_system_choices_equal_estimate(context):
    base = load_config(REPO / "configs" / "default.yaml")
    ev = FastEvaluator(build_workload("tiny", 16, context, base))  # captured for host_fp32
    for v in TINY_SYSTEM:
        acfg = _variant(base, **v)
        ref, fast = estimate("tiny", acfg, 16, context), ev.estimate(acfg)
        assert fast["lm_head"] == acfg.system.lm_head
        assert_same_estimate(ref, fast, (context, v))
        assert ev.memory_beats(acfg) == _compiled("tiny", acfg).lowering.step_base, v
    assert ev.exact_points == 0, "the fast path should cover every known field"


def test_bitnet07b_system_choices_equal_estimate():
    base = load_config(REPO / "configs" / "kv260.yaml")  # acc_int8, 2×64 GEMM, 4 slots
    ev = FastEvaluator(build_workload("bitnet-0.7b", 32, 1024, base))
    for v in (
        {"system": {"lm_head": "host_fp16"}, "gemm": {"buffers": 2}},
        # groups of 1 KV head (k_tile 64: a 1-row tile of 32 bytes is below the 64-byte beat)
        {"system": {"lm_head": "acc_int8"}, "gemm": {"rows": 1, "k_tile": 64, "buffers": 2}},
        {"system": {"lm_head": "host_fp32"}, "gemm": {"rows": 4, "cols": 32, "k_tile": 32}},
    ):
        acfg = _variant(base, **v)
        assert_same_estimate(estimate("bitnet-0.7b", acfg, 32, 1024), ev.estimate(acfg), v)
    assert ev.exact_points == 0


def test_system_choices_change_the_figures():
    """The swept system choices are not inert: each changes the decode figures."""
    base = load_config(REPO / "configs" / "kv260.yaml")
    ev = FastEvaluator(build_workload("bitnet-0.7b", 32, 1024, base))
    figs = {
        lm: ev.estimate(_variant(base, system={"lm_head": lm}))["decode_tokens_per_s"]
        for lm in ("host_fp32", "host_fp16", "acc_int8")
    }
    assert figs["host_fp32"] < figs["host_fp16"] < figs["acc_int8"], figs
    slots = [ev.estimate(_variant(base, gemm={"buffers": b}))["decode_tokens_per_s"] for b in (2, 4)]
    assert slots[0] < slots[1], slots


# ---------------------------------------------------------------- fields the evaluator does not mirror
def test_every_config_field_is_classified():
    """A new config field must be classified in tritium.dse: PROGRAM_FIELDS (and mirrored in
    FastEvaluator.commands/step_cost, with a variant in the equality tests above), COST_FIELDS,
    UNUSED_FIELDS, or COMPILED_FIELDS (points off its default are compiled: exact, slow). Unclassified, the
    DSE already compiles every point that changes it and logs it; this test makes the choice explicit."""
    loose = dse.unclassified_fields()
    assert not loose, (
        f"config fields the DSE's fast evaluator does not classify: {sorted(loose)} — add each to "
        "tritium.dse PROGRAM_FIELDS (and mirror it in FastEvaluator), COST_FIELDS, RETRIEVAL_FIELDS, UNUSED_FIELDS or "
        "COMPILED_FIELDS (docs/dse.md)"
    )
    lists = (
        dse.PROGRAM_FIELDS,
        dse.COST_FIELDS,
        dse.RETRIEVAL_FIELDS,
        dse.UNUSED_FIELDS,
        dse.COMPILED_FIELDS,
    )
    assert sum(len(x) for x in lists) == len(set().union(*lists)), "a field in two lists"
    assert set().union(*lists) <= set(dse.config_fields()), "a listed field that the config does not have"


def test_compiled_field_is_exact_off_its_default(monkeypatch):
    """A field listed in COMPILED_FIELDS (simulated with gemm.buffers): fast at its default, compiled off it."""
    monkeypatch.setattr(dse, "KNOWN_FIELDS", dse.KNOWN_FIELDS - {"gemm.buffers"})
    monkeypatch.setattr(dse, "COMPILED_FIELDS", dse.COMPILED_FIELDS + ("gemm.buffers",))
    assert not dse.unclassified_fields() and "gemm.buffers" in dse.unmirrored_fields()
    base = load_config(REPO / "configs" / "default.yaml")
    ev = FastEvaluator(build_workload("tiny", 16, 40, base))
    ev.estimate(base)
    assert ev.exact_points == 0
    acfg = _variant(base, gemm={"buffers": 8})
    assert_same_estimate(estimate("tiny", acfg, 16, 40), ev.estimate(acfg), "compiled field")
    assert ev.exact_points == 1


def test_overlap_points_are_scheduled_and_exact():
    """system.overlap (SCHEDULED_FIELDS): the step time is the overlapped schedule of the step Programs,
    equal to estimate() (more in tests/test_dse_overlap.py)."""
    base = load_config(REPO / "configs" / "default.yaml")
    ev = FastEvaluator(build_workload("tiny", 16, 40, base))
    acfg = _variant(base, system={"overlap": True})
    fig = ev.estimate(acfg)
    assert_same_estimate(estimate("tiny", acfg, 16, 40), fig, "overlap")
    assert ev.scheduled_points == 1 and ev.exact_points == 0 and fig["overlap"] is True


def test_unmirrored_field_falls_back_to_compiling(monkeypatch):
    """A field the fast evaluator does not know (simulated: gemm.buffers taken out of its lists) is costed
    by compiling when a point changes it, and the result is estimate()'s."""
    monkeypatch.setattr(dse, "KNOWN_FIELDS", dse.KNOWN_FIELDS - {"gemm.buffers"})
    base = load_config(REPO / "configs" / "default.yaml")
    assert base.gemm.buffers == dse.unmirrored_fields()["gemm.buffers"]  # the default
    ev = FastEvaluator(build_workload("tiny", 16, 40, base))
    ev.estimate(base)
    assert ev.exact_points == 0  # at its default: the fast path
    acfg = _variant(base, gemm={"buffers": 4}, system={"lm_head": "acc_int8"})
    assert ev.needs_exact(acfg) == ["gemm.buffers"]
    assert_same_estimate(estimate("tiny", acfg, 16, 40), ev.estimate(acfg), "fallback")
    assert ev.exact_points == 1


def test_self_check_makes_every_point_exact(monkeypatch, tmp_path):
    """A field the evaluator does not know that changes the Program even at its default is caught by the
    start-up self-check on the base config (simulated: the fast path drops the GEMM commands)."""
    monkeypatch.setattr(dse, "KNOWN_FIELDS", dse.KNOWN_FIELDS - {"gemm.buffers"})
    orig = FastEvaluator.commands

    def wrong(self, acfg, step):
        return type(orig(self, acfg, step))(
            {c: n for c, n in orig(self, acfg, step).items() if type(c).__name__ != "GemmCommand"}
        )

    monkeypatch.setattr(FastEvaluator, "commands", wrong)
    d = {**copy.deepcopy(DSE_SPEC), "name": "t-selfcheck", "budget": 2}
    d["workload"] = {"model": "tiny", "prompt": 16, "context": [40, 80]}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d))
    spec = load_spec(p)
    lines: list[str] = []
    ws = dse._capture(spec, lines.append)
    assert any("gemm.buffers" in x and "does not mirror" in x for x in lines), lines
    assert any("self-check on the base config failed" in x for x in lines), lines
    assert all(w.exact for w in ws)
    ev = FastEvaluator(ws[1])
    acfg = config_from_dict({**spec.base, "name": "x"}, source="t")
    assert_same_estimate(estimate("tiny", acfg, 16, 80), ev.estimate(acfg), "self-check fallback")
    assert ev.exact_points == 1


# --------------------------------------------------------------------------------- workload sweeps
def _write(tmp_path: Path, name: str, **over) -> Path:
    d = {**copy.deepcopy(DSE_SPEC), "name": name, **over}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


@pytest.mark.parametrize(
    "workload, field",
    [
        ({"model": "tiny", "context": []}, "workload.context"),
        ({"model": "tiny", "context": [32, 32]}, "workload.context"),
        ({"model": ["tiny", "nope"]}, "workload.model"),
        ({"model": "tiny", "context": [64, 100000]}, "workload.context"),
        ({"model": "tiny", "prompt": [0, 4]}, "workload.prompt"),
        ({"model": "tiny", "aggregate": "median"}, "workload.aggregate"),
        ({"model": "tiny", "context": list(range(1, 258))}, "workload"),
    ],
)
def test_workload_list_errors(tmp_path, workload, field):
    p = _write(tmp_path, "bad", workload=workload)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: ") and f": {field}" in msg, msg


def test_workload_lists_expand_models_outer_contexts_fastest(tmp_path):
    p = _write(tmp_path, "w", workload={"model": "tiny", "prompt": [8, 16], "context": [32, 64, 128]})
    s = load_spec(p)
    assert s.workloads == [("tiny", pp, c) for pp in (8, 16) for c in (32, 64, 128)]
    assert (s.model, s.prompt, s.context, s.aggregate) == ("tiny", 8, 32, "worst")


CTX = {
    "parameters": {
        "tlmm.tables": [4, 8],
        "system.lm_head": ["host_fp32", "acc_int8"],
        "gemm.buffers": [2, 4],
    },
    "workload": {"model": "tiny", "prompt": 16, "context": [32, 96, 200]},
    "constraints": ["decode_tokens_per_s >= 2200"],
    "budget": 8,
    "batch": 3,
}


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_context_sweep_rows_aggregates_and_plot(tmp_path):
    spec = load_spec(_write(tmp_path, "t-ctx", **CTX))
    res = run_dse(spec, tmp_path / "o", workers=0, progress=False, log=lambda s: None)
    rows = _csv(tmp_path / "o" / "results.csv")
    assert len(rows) == 8 * 3 and len(res["rows"]) == 8
    base = load_config(REPO / "configs" / "default.yaml")
    by_point: dict = {}
    for r in rows:
        by_point.setdefault(r["trial"], []).append(r)
    statuses = set()
    for trial, rs in by_point.items():
        assert [int(r["context"]) for r in rs] == [32, 96, 200] and {r["model"] for r in rs} == {"tiny"}
        assert len({(r["status"], r["reason"], r["pareto"], r["worst_decode_tokens_per_s"]) for r in rs}) == 1
        acfg = _variant(
            base,
            tlmm={"tables": int(rs[0]["tlmm.tables"])},
            gemm={"buffers": int(rs[0]["gemm.buffers"])},
            system={"lm_head": rs[0]["system.lm_head"]},
        )
        dec = []
        for r in rs:  # each row is its workload's estimate (CSV rounding: 9 decimals)
            ref = estimate("tiny", acfg, 16, int(r["context"]))
            assert math.isclose(float(r["decode_tokens_per_s"]), ref["decode_tokens_per_s"], rel_tol=1e-9)
            assert math.isclose(float(r["j_per_token"]), ref["j_per_token"], abs_tol=1e-9)
            dec.append(ref["decode_tokens_per_s"])
        # worst over the contexts = the longest context's; a constraint must hold on every workload
        assert math.isclose(float(rs[0]["worst_decode_tokens_per_s"]), min(dec), rel_tol=1e-9)
        status = "ok" if min(dec) >= 2200 else "constraint"
        assert rs[0]["status"] == status, (trial, dec, rs[0]["reason"])
        if status == "constraint":  # the reason names the first workload that violates it
            first = next(r["context"] for r, x in zip(rs, dec, strict=True) if x < 2200)
            assert rs[0]["reason"].endswith(f"at tiny prompt 16 context {first}"), rs[0]["reason"]
        statuses.add(status)
    assert statuses == {"ok", "constraint"}, "pick the constraint so that both outcomes occur"
    # Pareto over the aggregated objectives
    ok = [r for r in res["rows"] if r["status"] == "ok"]
    for r in ok:
        dominated = any(
            o["decode_tokens_per_s"] >= r["decode_tokens_per_s"]
            and o["lut"] <= r["lut"]
            and (o["decode_tokens_per_s"] > r["decode_tokens_per_s"] or o["lut"] < r["lut"])
            for o in ok
        )
        assert r["pareto"] == int(not dominated)
    # the context figure: PNG + PDF + CSV, one line per (top point, model) over the contexts
    for suf in ("png", "pdf", "csv"):
        assert (tmp_path / "o" / f"context.{suf}").stat().st_size > 100
    plotted = _csv(tmp_path / "o" / "context.csv")
    assert len(plotted) == 3 * len({r["trial"] for r in plotted}) and plotted
    top = dse.pareto_top(res["rows"], spec, 5)
    assert [int(r["trial"]) for r in plotted[::3]] == [r["trial"] for r in top]
    assert "best point per workload" in res["table"]


def test_context_sweep_deterministic_and_resumes(tmp_path):
    p = _write(tmp_path, "t-ctx-r", **{**CTX, "sampler": "nsga2", "population": 4, "budget": 8})
    spec = load_spec(p)
    quiet = {"progress": False, "log": lambda s: None}
    run_dse(spec, tmp_path / "a", workers=2, **quiet)
    ref = (tmp_path / "a" / "results.csv").read_text()
    # the same study stopped after 4 points, then resumed to the full budget
    d = yaml.safe_load(p.read_text())
    d["budget"] = 4
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    run_dse(load_spec(p), tmp_path / "b", workers=0, **quiet)
    d["budget"] = 8
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    r = run_dse(load_spec(p), tmp_path / "b", workers=2, **quiet)
    assert r["evaluated"] <= 4
    assert (tmp_path / "b" / "results.csv").read_text() == ref
    # per-workload metrics are stored with the point (what a resume reads back)
    recs = [json.loads(x) for x in (tmp_path / "a" / "evaluations.jsonl").read_text().splitlines()]
    assert all(len(x["metrics"]["by_workload"]) == 3 for x in recs)


def test_model_list_memory_and_rows(tmp_path):
    """Two models: a point is evaluated on both; the memory screen is per model."""
    d = {
        "base": str(REPO / "configs" / "kv260.yaml"),
        "board": "kv260",
        "parameters": {"system.lm_head": ["host_fp16", "acc_int8"], "memory.addr_bits": [20, 26]},
        "workload": {"model": ["tiny", "bitnet-0.7b"], "prompt": 16, "context": 64, "aggregate": "first"},
        "objectives": [{"decode_tokens_per_s": "max"}, {"memory_mib": "min"}],
        "budget": 4,
    }
    spec = load_spec(_write(tmp_path, "t-models", **d))
    res = run_dse(spec, tmp_path / "o", workers=0, progress=False, log=lambda s: None)
    rows = _csv(tmp_path / "o" / "results.csv")
    assert len(rows) == 8 and [r["model"] for r in rows[:2]] == ["tiny", "bitnet-0.7b"]
    for r in res["rows"]:
        if r["memory.addr_bits"] == 20:  # 64 MiB: the tiny model fits, BitNet-0.7B does not
            assert r["status"] == "memory" and r["reason"].startswith("bitnet-0.7b: "), r["reason"]
        else:
            assert r["status"] == "ok", r["reason"]
            tiny, big = r["by_workload"]
            assert tiny["memory_mib"] < big["memory_mib"]
            assert tiny["decode_tokens_per_s"] > big["decode_tokens_per_s"]
            assert r["decode_tokens_per_s"] == tiny["decode_tokens_per_s"]  # aggregate: first
            assert r["memory_mib"] == tiny["memory_mib"]
    assert not (tmp_path / "o" / "context.png").exists()  # one context: no context figure
