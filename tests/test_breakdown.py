"""`tritium estimate --breakdown` and `tritium cosim top --breakdown` (sim/breakdown.py): every grouping sums to
the totals the estimate prints; labels come from the Program's listing. Tiny model on meta tensors, small
steps (no Verilator: the co-simulation's grouping is fed the model's per-command cycles)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hw.config import load_config
from sim.breakdown import BOUNDS, command_labels, cosim_breakdown, layer_of, op_kind
from tritium.estimate import OVERLAP_ROW

pytestmark = pytest.mark.torch

PROMPT, CONTEXT = 8, 24


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def acfg():
    return load_config(REPO / "configs" / "kv260.yaml")


@pytest.fixture(scope="module")
def est(acfg):
    from tritium.estimate import estimate

    return estimate("tiny", acfg, PROMPT, CONTEXT, breakdown=True)


def test_labels_and_kinds():
    assert layer_of("layers.12.attn.q_proj") == "layer 12"
    assert layer_of("layers.3") == "layer 3"
    assert layer_of("lm_head") == "lm_head"
    assert op_kind("GEMM", "layers.0.attn.pv1.2") == "GEMM pv"
    assert op_kind("GEMM", "layers.0.attn.qk3") == "GEMM qk"
    assert op_kind("GEMM", "lm_head.gemm0") == "GEMM lm_head"
    assert op_kind("TLMM", "layers.0.ffn.down_proj") == "TLMM down_proj"
    assert op_kind("HOST", "layers.0.attn.softmax", "attn_softmax") == "HOST attn_softmax"


def test_command_labels_of_a_program(acfg):
    from tritium.estimate import _compiled

    # the LM head on the host (kv260's own placement, acc_int8, labels it "GEMM gemm" in layer lm_head)
    prog = _compiled("tiny", acfg, "host_fp32").program(PROMPT, 0, logits="last")
    labels = command_labels(prog)
    assert len(labels) == len(prog.commands())
    layers = {layer for layer, _ in labels}
    assert layers == {"embed_tokens", "layer 0", "layer 1", "layer 2", "layer 3", "norm", "lm_head"}
    kinds = {k for _, k in labels}
    assert {
        "TLMM q_proj",
        "TLMM down_proj",
        "GEMM qk",
        "GEMM pv",
        "HOST attn_softmax",
        "HOST lm_head",
    } <= kinds
    # a listing that does not name every command is refused, not guessed
    prog.listing = "\n".join(prog.listing.splitlines()[:-1])
    with pytest.raises(ValueError, match="not named in the listing"):
        command_labels(prog)


@pytest.mark.parametrize("step", ["prefill", "decode"])
@pytest.mark.parametrize("grouping", ["by_layer", "by_op_kind", "by_layer_op"])
def test_breakdown_sums_equal_totals(est, step, grouping):
    b = est["breakdown"][step]
    rows, tot = b[grouping], b["totals"]
    assert sum(r["commands"] for r in rows) == tot["commands"] == est["commands"][step]
    assert sum(r["cycles"] for r in rows) == tot["cycles"]
    assert sum(r["dram_bytes"] for r in rows) == tot["dram_bytes"]
    assert sum(r["time_s"] for r in rows) == pytest.approx(tot["time_s"], rel=1e-12)
    assert sum(r["energy_j"] for r in rows) == pytest.approx(tot["energy_j"], rel=1e-12)
    # the totals are the figures estimate prints
    if step == "decode":
        assert tot["time_s"] == est["decode_s_per_token"]
        assert tot["dram_bytes"] == est["dram_bytes_per_token"]
        assert tot["energy_j"] == est["j_per_token"]
    else:
        assert tot["time_s"] == est["ttft_s"]
        assert tot["dram_bytes"] == sum(est["prefill_dram_bytes"].values())
        assert tot["energy_j"] == est["prefill_energy_j"]
    pre, dec = est["_steps"]
    assert tot["cycles"] == sum((pre if step == "prefill" else dec).engine_cycles.values())
    if grouping != "by_layer_op":
        # kv260 ships with overlap on: its "overlap (saved)" row (estimate.OVERLAP_ROW) is bound by the overlap
        assert all(r["bound"] in BOUNDS or (r["name"], r["bound"]) == (OVERLAP_ROW, "overlap") for r in rows)
        assert any(r["name"] == OVERLAP_ROW for r in rows)
        assert all(r["time_by"][r["bound"]] == max(r["time_by"].values()) for r in rows)


def test_breakdown_tables_and_figure(est, tmp_path):
    from tritium.estimate import format_breakdown, plot_breakdown

    text = format_breakdown(est)
    assert "prefill by layer" in text and "decode by op kind" in text and "TLMM q_proj" in text
    paths = plot_breakdown(est, tmp_path / "breakdown")
    assert [p.name for p in paths] == ["breakdown.png", "breakdown.svg", "breakdown.csv"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and b"<svg" in paths[1].read_bytes()[:2000]
    with open(paths[2], newline="") as f:
        rows = list(csv.DictReader(f))
    for step in ("prefill", "decode"):
        tot = est["breakdown"][step]["totals"]
        mine = [r for r in rows if r["step"] == step]
        assert sum(int(r["cycles"]) for r in mine) == tot["cycles"]
        assert sum(float(r["time_s"]) for r in mine) == pytest.approx(tot["time_s"], rel=1e-12)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left


def test_cli_breakdown_json(capsys, monkeypatch, tmp_path):
    from tritium.cli import main

    monkeypatch.setenv("TRITIUM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRITIUM_PROGRESS", "1")  # bars forced on: --json must still turn them off
    argv = ["estimate", "--model", "tiny", "--config", "configs/kv260.yaml", "--prompt", str(PROMPT)]
    assert main([*argv, "--context", str(CONTEXT), "--breakdown", "--json"]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)  # stdout is exactly one JSON document
    assert set(r["breakdown"]) == {"prefill", "decode"}
    assert r["breakdown"]["decode"]["totals"]["time_s"] == r["decode_s_per_token"]
    assert "estimate" not in err and "%|" not in err  # no progress bar either
    assert main([*argv, "--context", str(CONTEXT), "--breakdown"]) == 0
    out, err = capsys.readouterr()
    assert "decode by layer" in out and "%|" not in out
    assert "estimate" in err  # the forced bar went to stderr


def test_cosim_breakdown_sums(repo):
    from sim.top_model import program_cycles
    from tritium.estimate import _compiled

    acfg = load_config(repo / "configs" / "default.yaml")  # a config the top level's DMA supports
    cm = _compiled("tiny", acfg)
    progs = [
        cm.program(3, 0, logits="last"),
        cm.program(1, 3, logits="last"),
        cm.program(1, 4, logits="last"),
    ]
    labels = [command_labels(p) for p in progs]
    model = [list(program_cycles(p)) for p in progs]
    rtl = [list(c) for c in model]
    rtl[2] = rtl[2][:5]  # a step that hung: fewer RTL counts than commands
    bd = cosim_breakdown(labels, rtl, model, acfg.clock_mhz)
    assert bd["prefill"]["steps"] == 1 and bd["decode"]["steps"] == 2
    for step, idx in (("prefill", [0]), ("decode", [1, 2])):
        b = bd[step]
        assert b["totals"]["rtl_cycles"] == sum(sum(rtl[i]) for i in idx)
        assert b["totals"]["model_cycles"] == sum(sum(model[i]) for i in idx)
        for grouping in ("by_layer", "by_op_kind"):
            assert sum(r["rtl_cycles"] for r in b[grouping]) == b["totals"]["rtl_cycles"]
            assert sum(r["model_cycles"] for r in b[grouping]) == b["totals"]["model_cycles"]
            assert sum(r["commands"] for r in b[grouping]) == b["totals"]["commands"]
            assert sum(r["time_s"] for r in b[grouping]) == pytest.approx(b["totals"]["time_s"], rel=1e-12)


def test_cli_cosim_top_breakdown(repo, monkeypatch, capsys):
    """The CLI wiring of `cosim top --breakdown`, with the Verilator run replaced by a report whose RTL cycles
    are the model's (the grouping itself is tested above)."""
    import sim.cosim
    from sim.cosim import TopReport
    from sim.top_model import program_cycles, step_cycles
    from tritium.cli import main
    from tritium.estimate import _compiled

    acfg = load_config(repo / "configs" / "default.yaml")
    cm = _compiled("tiny", acfg)
    progs = [cm.program(2, 0, logits="last"), cm.program(1, 2, logits="last")]
    cycles = [list(program_cycles(p)) for p in progs]

    def fake_run(acfg_, checkpoint, prompt, tokens, layers, build_root, quiet, **_):
        return TopReport(
            config={**acfg_.to_dict(), "source": acfg_.source},
            layers=4,
            prompt=prompt,
            rtl_tokens=[1, 2],
            model_tokens=[1, 2],
            torch_tokens=[1, 2],
            logits_equal_torch=[True, True],
            logits_equal_model=[True, True],
            rtl_cycles=cycles,
            model_cycles=cycles,
            build_s=0.0,
            sim_s=0.0,
            commands=[["x"] * len(c) for c in cycles],
            labels=[command_labels(p) for p in progs],
            rtl_step_cycles=[step_cycles(p) for p in progs],
            model_step_cycles=[step_cycles(p) for p in progs],
        )

    monkeypatch.setattr(sim.cosim, "run_top_cosim", fake_run)
    assert main(["cosim", "top", "--prompt", "ab", "--tokens", "2", "--breakdown", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    bd = out["breakdown"]
    assert bd["prefill"]["totals"]["rtl_cycles"] == sum(cycles[0])
    assert out["step_cycles"] == out["model_step_cycles"] == [step_cycles(p) for p in progs]
    assert bd["decode"]["totals"]["rtl_cycles"] == sum(cycles[1])
    assert sum(r["rtl_cycles"] for r in bd["decode"]["by_layer"]) == sum(cycles[1])
    assert main(["cosim", "top", "--prompt", "ab", "--tokens", "2", "--breakdown"]) == 0
    text = capsys.readouterr().out
    assert "prefill (1 step(s)) by layer" in text and "decode (1 step(s)) by op kind" in text
    assert main(["cosim", "gemm", "--breakdown"]) == 2  # only the top level has commands to break down
