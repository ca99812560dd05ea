"""Overlapped DSE points (system.overlap; configs/kv260.yaml ships with it on): the evaluator costs them from
their step Programs with estimate()'s own ``cost_program`` (the overlapped schedule), the Programs cached per
compile key (tritium.dse.compile_key: the config without its timing, energy, retrieval and unused fields), so a
point that differs from an earlier one only in such a field re-costs the cached commands and lowers nothing.
Figures equal estimate()'s; bad points still end in one-line reasons. Fast: the tiny model (~20 s on 2 cores)."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import yaml
from conftest import (
    REPO,
    assert_one_line_error,
    assert_same_estimate,
    config_variant,
    run_cli,
    tiny_resv_config,
)

from hw.config import load_config
from tritium import dse
from tritium import estimate as E
from tritium.dse import FastEvaluator, build_workload, compile_key, load_spec, run_dse

pytestmark = pytest.mark.torch

P, C = 16, 40  # prompt, context of the tiny model's workload


@pytest.fixture(scope="module")
def kv260():
    acfg = load_config(REPO / "configs" / "kv260.yaml")
    assert acfg.system.overlap, "configs/kv260.yaml ships with overlap on"
    return acfg


def test_overlapped_points_equal_estimate(kv260):
    """The shipped config and points that change its Programs (weight reuse depth, weight buffer, attention
    mapping, LM-head placement): each equals estimate() and is costed on the scheduled path."""
    ev = FastEvaluator(build_workload("tiny", P, C, kv260))
    variants = [
        {},
        {"tlmm": {"tokens": 2, "weight_buffer_beats": 0}},
        {"gemm": {"rows": 1, "cols": 64, "k_tile": 64, "buffers": 2}},
        {"system": {"lm_head": "host_fp16"}},
    ]
    for v in variants:
        acfg = config_variant(kv260, **v)
        fig = ev.estimate(acfg)
        assert fig["overlap"] is True
        assert_same_estimate(E.estimate("tiny", acfg, P, C), fig, v)
    assert ev.scheduled_points == len(variants) and ev.exact_points == 0
    # overlap off: the fast path (no Programs), the same figures as estimate() there
    off = config_variant(kv260, system={"overlap": False})
    assert_same_estimate(E.estimate("tiny", off, P, C), ev.estimate(off), "overlap off")
    assert ev.scheduled_points == len(variants)


def test_bitnet07b_fast_path_on_the_overlapped_base(kv260):
    """BitNet-0.7B on the kv260 base: its overlap-off points stay on the fast path (no Programs) and equal
    estimate() — the coverage tests/test_dse.py had before kv260 shipped with overlap on."""
    ev = FastEvaluator(build_workload("bitnet-0.7b", 64, 128, kv260))
    for v in ({}, {"tlmm": {"tables": 12, "tokens": 3, "max_k": 1000, "max_n": 700}, "gemm": {"rows": 4}}):
        acfg = config_variant(kv260, system={"overlap": False}, **v)
        assert_same_estimate(E.estimate("bitnet-0.7b", acfg, 64, 128), ev.estimate(acfg), v)
    assert ev.scheduled_points == 0 and ev.exact_points == 0


def test_timing_only_point_reuses_the_programs(kv260):
    """A second point that differs only in timing / energy fields takes both step Programs from the cache: no
    lowering, no capture (counters), and its figures are estimate()'s (which the timing did change)."""
    ev = FastEvaluator(build_workload("tiny", P, C, kv260))
    first = config_variant(kv260, tlmm={"tokens": 1})  # a compile key no other test here uses
    ev.estimate(first)
    programs, lowered = dict(dse.PROGRAM_STATS), dict(E.STATS)
    # fields outside the compile key that the causal band cut does not read either (compiler.tiling.gemm_cost);
    # with overlap the clock and the host are in the key (dse.ORDER_FIELDS: the chunk order reads them)
    slow = config_variant(first, memory={"read_fifo_beats": 16, "latency": 90}, device={"static_w": 5.0})
    fig = ev.estimate(slow)
    assert dse.PROGRAM_STATS["hit"] == programs.get("hit", 0) + 2  # prefill and decode
    assert dse.PROGRAM_STATS["miss"] == programs.get("miss", 0)
    assert E.STATS == lowered  # nothing captured or lowered for it
    assert_same_estimate(E.estimate("tiny", slow, P, C), fig, "timing-only point")
    assert fig["decode_tokens_per_s"] < ev.estimate(first)["decode_tokens_per_s"]


def test_compile_key_separates_program_fields_from_cost_fields(kv260):
    key = compile_key(kv260)
    same = [
        {"memory": {"latency": 70, "outstanding": 4, "read_fifo_beats": 32}},
        {"device": {"static_w": 1.0, "power_boundary": "board"}},
        {"gemm": {"buffers": 2}},
        {"kv": {"max_clusters": 64}, "system": {"kv_selected_share": 0.2, "attention": "resv"}},
    ]
    for v in same:
        assert compile_key(config_variant(kv260, **v)) == key, v
    assert compile_key(dataclasses.replace(kv260, name="other")) == key
    # with overlap the lowering orders a prefill's host-op chunks by their latency: the clock and the host
    # are in the key (dse.ORDER_FIELDS); without overlap they are not
    off = config_variant(kv260, system={"overlap": False})
    for v in (
        {"device": {"host_gflops": 2.0}},
        {"device": {"dram_gbs": 10.0}},
        {"device": {"host_op_us": 9.0}},
    ):
        assert compile_key(config_variant(kv260, **v)) != key, v
        assert compile_key(config_variant(off, **v)) == compile_key(off), v
    assert compile_key(dataclasses.replace(kv260, clock_mhz=150.0)) != key
    assert compile_key(dataclasses.replace(off, clock_mhz=150.0)) == compile_key(off)
    differ = [
        {"system": {"overlap": False}},
        {"system": {"lm_head": "host_fp32"}},
        {"tlmm": {"tokens": 2}},
        {"tlmm": {"weight_buffer_beats": 0}},
        {"gemm": {"rows": 4}},
        {"memory": {"addr_bits": 28}},
    ]
    for v in differ:
        assert compile_key(config_variant(kv260, **v)) != key, v
    assert compile_key(kv260, "host_fp16") == compile_key(
        config_variant(kv260, system={"lm_head": "host_fp16"})
    )


#: points whose dense Programs must equal the base's: together they change every field compile_key leaves out
#: of COST_FIELDS (device.sources only documents) and the retrieval and unused fields a dense Program could read
KEY_FREE = [
    {"clock_mhz": 150.0},
    {"gemm": {"buffers": 2}},
    {"memory": {"latency": 90, "max_burst": 8, "outstanding": 2}},
    {"memory": {"beat_interval": 2, "read_fifo_beats": 32}},
    {"device": {"host_gflops": 2.0, "host_gbs": 1.0, "dram_gbs": 5.0, "static_w": 1.0}},
    {"device": {"name": "other", "family": "ecp5", "power_boundary": "board"}},
    {
        "system": {
            "attention": "resv",
            "kv_sinks": 2,
            "kv_window": 8,
            "kv_min_context": 64,
            "kv_tables": "onchip",
        }
    },
    {"system": {"kv_selected_share": 0.5}, "kv": {"max_clusters": 64, "lanes": 16, "hamming": 3, "seed": 5}},
]


def _dense_programs(acfg) -> list:
    """The dense step Programs' words, host ops (without their modeled latency) and tensors, as compared."""
    cm = E._compiled("tiny", acfg)
    out = []
    for T, pos in ((P, 0), (1, C - 1)):
        p = cm.program(T, pos, logits="last")
        ops = [
            (h.name, h.kind, h.inputs, h.outputs, {k: v for k, v in h.attrs.items() if k != "cycles"})
            for h in p.host_ops
        ]
        tensors = sorted((n, t.addr, t.nbytes, t.dtype, t.shape, t.layout) for n, t in p.tensors.items())
        out.append((p.words.tobytes(), ops, tensors))
    return out


def _step_keys(acfg) -> list:
    attention = build_workload("tiny", P, C, acfg).attention
    return [
        (compile_key(acfg), dse.attention_key(acfg, attention, T, pos)) for T, pos in ((P, 0), (1, C - 1))
    ]


def test_fields_outside_the_compile_key_leave_the_programs_unchanged(kv260):
    """What makes the Program cache exact: a config whose compile key and attention cut (the causal band cut
    reads memory timing and gemm.buffers through compiler.tiling.gemm_cost) equal the base's lowers the same
    dense Programs (commands, host ops but for their modeled latency, tensors and addresses)."""
    changed = set()
    for v in KEY_FREE:
        for sec, fields in v.items():
            changed |= {f"{sec}.{f}" for f in fields} if isinstance(fields, dict) else {sec}
    assert set(dse.COST_FIELDS) - {"device.sources"} <= changed | set(dse.ORDER_FIELDS)
    ref, keys = _dense_programs(kv260), _step_keys(kv260)
    same = 0
    for v in KEY_FREE:
        acfg = (
            dataclasses.replace(kv260, clock_mhz=v["clock_mhz"])
            if "clock_mhz" in v
            else config_variant(kv260, **v)
        )
        touched = {f"{sec}.{f}" for sec, fs in v.items() if isinstance(fs, dict) for f in fs} | set(v)
        if touched & set(dse.ORDER_FIELDS):  # overlap on: in the key (the chunk order reads them)
            assert compile_key(acfg) != compile_key(kv260), v
            continue
        assert compile_key(acfg) == compile_key(kv260), v
        if _step_keys(acfg) == keys:
            same += 1
            assert _dense_programs(acfg) == ref, v
    assert same >= 3  # the device-name and retrieval variants at least


def test_relowered_model_equals_a_fresh_compile(kv260):
    """estimate() captures a model once and lowers it per config (CompiledModel.relower): the Programs equal
    compile_model's for that config, word for word."""
    from compiler import compile_model, load_model

    first = E._compiled("tiny", kv260)
    other = config_variant(kv260, tlmm={"tokens": 2}, gemm={"rows": 4}, system={"lm_head": "host_fp16"})
    re = first.relower(other, retrieval=False)
    fresh = compile_model(load_model("tiny", device="meta"), other, retrieval=False)
    for T, pos in ((P, 0), (1, C - 1)):
        a, b = re.program(T, pos, logits="last"), fresh.program(T, pos, logits="last")
        assert np.array_equal(a.words, b.words) and a.config == b.config
        assert [(h.kind, h.inputs, h.outputs, h.attrs) for h in a.host_ops] == [
            (h.kind, h.inputs, h.outputs, h.attrs) for h in b.host_ops
        ]


def test_overlapped_retrieval_point_equals_estimate():
    """system.attention resv with overlap: the dense Programs (decode at the plan's effective context) plus
    retrieval's closed-form extras, as estimate() costs it."""
    base = tiny_resv_config(overlap=True)
    ev = FastEvaluator(build_workload("tiny", P, 200, base))
    for share in (0.265, 0.5):
        acfg = config_variant(base, system={"kv_selected_share": share})
        assert_same_estimate(E.estimate("tiny", acfg, P, 200), ev.estimate(acfg), share)
    assert ev.scheduled_points == 2


def _spec(tmp_path, **over):
    d = {
        "name": "t-overlap",
        "base": str(REPO / "configs" / "kv260.yaml"),
        "board": "kv260",
        "parameters": {"memory.latency": [40, 80], "tlmm.tokens": [2, 4], "gemm.rows": [2, 3]},
        "workload": {"model": "tiny", "prompt": P, "context": C},
        "objectives": [{"decode_tokens_per_s": "max"}],
        "budget": 8,
        "sampler": "grid",
    }
    d.update(over)
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def test_sweep_on_the_overlapped_base(tmp_path):
    """A small grid over the kv260 base: valid points are ok with estimate()'s figures; an invalid point (3
    GEMM rows: not a power of two) is rejected with a one-line reason before evaluation."""
    spec = load_spec(_spec(tmp_path))
    res = run_dse(spec, tmp_path / "o", workers=0, progress=False, log=lambda s: None)
    rows = list(csv.DictReader((tmp_path / "o" / "results.csv").open()))
    assert len(rows) == 8
    bad = [r for r in res["rows"] if r["gemm.rows"] == 3]
    good = [r for r in res["rows"] if r["gemm.rows"] == 2]
    assert len(good) == 4 and all(r["status"] == "ok" for r in good), [r["reason"] for r in good]
    assert bad and all(r["status"] == "invalid" and r["reason"].count("\n") == 0 for r in bad)
    assert all("gemm.rows" in r["reason"] for r in bad), [r["reason"] for r in bad]
    r = good[0]
    acfg = config_variant(
        load_config(REPO / "configs" / "kv260.yaml"),
        memory={"latency": r["memory.latency"]},
        tlmm={"tokens": r["tlmm.tokens"]},
    )
    ref = E.estimate("tiny", acfg, P, C)
    assert r["decode_tokens_per_s"] == pytest.approx(ref["decode_tokens_per_s"], rel=1e-9)
    assert r["ttft_s"] == pytest.approx(ref["ttft_s"], rel=1e-9)


def test_config_the_compiler_refuses_is_invalid(tmp_path):
    """tlmm.act_bits 4 validates as a config but the compiler refuses it (estimate() could not cost it): the
    screen rejects the point as invalid with the compiler's one line, overlapped or not."""
    p = _spec(tmp_path, parameters={"tlmm.act_bits": [4, 8]}, budget=2)
    res = run_dse(load_spec(p), tmp_path / "o", workers=0, progress=False, log=lambda s: None)
    by = {r["tlmm.act_bits"]: r for r in res["rows"]}
    assert by[8]["status"] == "ok", by[8]["reason"]
    assert by[4]["status"] == "invalid" and "tlmm.act_bits" in by[4]["reason"]
    assert by[4]["reason"].count("\n") == 0


def test_bad_workload_is_one_line(tmp_path):
    """A context beyond the model's max_seq on the overlapped base: exit 2, one line naming it."""
    p = _spec(tmp_path, workload={"model": "tiny", "prompt": P, "context": 100_000})
    r = run_cli("dse", str(p), "--out", str(tmp_path / "o"), expect=None)
    assert_one_line_error(r, "100000")
