"""Honest accounting in the whole-model estimates: every DRAM byte per token counts (accelerator and host),
host and accelerator share the DRAM bandwidth (a slower DRAM is never faster), every number that is not
derived from the RTL is listed with a source, and power figures carry their boundary."""

import dataclasses
import json
import math

import numpy as np
import pytest
from conftest import cli_json

from hw.config import POWER_BOUNDARIES, ConfigError, config_from_dict, load_config
from hw.isa import GemmCommand, HostCommand, TlmmCommand, encode_program
from hw.program import HostOp, Program, TensorInfo, tlmm_wgt_beat_bytes
from sim.energy import SOURCE_KEYS, load_energy
from tritium.estimate import HOST_COST, assumptions, cost_program, format_estimate, summarize

BOARDS = ("kv260.yaml", "ulx3s.yaml", "icebreaker.yaml", "edge-soc.yaml")
V, D = 32002, 1536  # BitNet-0.7B's LM head: vocab × d_model, float32 on the host


def _program(acfg, commands, host_ops=(), tensors=None) -> Program:
    return Program(
        config=acfg.to_dict(),
        words=np.array(encode_program(list(commands)), dtype=np.uint64),
        host_ops=list(host_ops),
        tensors=tensors or {},
        image=np.zeros((1, acfg.memory.bus_bytes), np.uint8),
    )


def _lm_head_program(acfg, extra=()):
    """A Program whose only host op is the LM head (one token), after the given engine commands."""
    tensors = {
        "w": TensorInfo("w", 0, V * D * 4, "float32", [V, D], attrs={"space": "host"}),
        "x": TensorInfo("x", 0, D * 4, "float32", [1, D]),
        "logits": TensorInfo("logits", 0, V * 4, "float32", [1, V]),
    }
    op = HostOp("head", "lm_head", ["x"], ["logits"], {"weight": "w", "last_only": True})
    return _program(acfg, [*extra, HostCommand(0)], [op], tensors)


def _with_device(acfg, **fields):
    d = acfg.to_dict()
    d["device"] = {**d["device"], **fields}
    return config_from_dict(d, acfg.source)


def test_lm_head_weights_are_host_dram_bytes(repo):
    acfg = load_config(repo / "configs" / "kv260.yaml")
    energy = load_energy(acfg.device.family)
    c = cost_program(_lm_head_program(acfg), acfg, energy)
    head = 4 * V * D + 4 * V  # float32 weights + one row of logits written
    assert c.dram_bytes_by == {"accelerator": 0, "host": head}
    assert c.dram_bytes == head and head > 196e6
    assert math.isclose(c.energy_j["dram"], 1e-12 * head * energy["pj"]["dram_byte"])
    # the host reads at min(host_gbs, dram_gbs): the head takes its bytes at 6 GB/s on the KV260 (+ the op's
    # fixed cost, device.host_op_us)
    bw = min(acfg.device.host_gbs, acfg.device.dram_gbs) * 1e9
    assert math.isclose(c.host_seconds, head / bw + acfg.device.host_op_us * 1e-6)


def test_limit_uses_accelerator_and_host_bytes(repo):
    acfg = load_config(repo / "configs" / "kv260.yaml")
    t = acfg.tlmm
    tl = TlmmCommand(1, 512 // t.chunk_k + 1, 96)
    c = cost_program(_lm_head_program(acfg, [tl, GemmCommand(1, 4, 2)]), acfg)
    acc, host = c.dram_bytes_by["accelerator"], c.dram_bytes_by["host"]
    wbytes = tl.k_chunks * tl.n_blocks * tlmm_wgt_beat_bytes(t)
    assert acc > wbytes and host > 196e6 and c.dram_bytes == acc + host
    r = summarize("synthetic", acfg, 1, 1, c, c)
    assert r["dram_bytes_per_token"] == acc + host
    assert r["dram_bytes_per_token_accelerator"] == acc and r["dram_bytes_per_token_host"] == host
    assert math.isclose(r["dram_limit_tokens_per_s"], acfg.device.dram_gbs * 1e9 / (acc + host))
    # with the host's bytes the limit is far below the accelerator-only figure
    assert r["dram_limit_tokens_per_s"] < 0.5 * acfg.device.dram_gbs * 1e9 / acc


@pytest.mark.parametrize("config", ["kv260.yaml", "default.yaml", "edge-soc.yaml", "ulx3s.yaml"])
def test_slower_shared_dram_is_never_faster(repo, config):
    base = load_config(repo / "configs" / config)
    t = base.tlmm
    cmds = [
        TlmmCommand(1, 8, 8),
        TlmmCommand(min(t.tokens, 4), 3, 5),
        GemmCommand(1, 2, 3),
        GemmCommand(2, 1, 1),
    ]
    prev = None
    for scale in (4.0, 1.0, 0.5, 0.1, 0.01):
        acfg = _with_device(base, dram_gbs=base.device.dram_gbs * scale)
        c = cost_program(_lm_head_program(acfg, cmds), acfg)
        # no overlap: the step can never beat all its bytes through the shared DRAM
        assert c.seconds >= c.dram_bytes / (acfg.device.dram_gbs * 1e9) * (1 - 1e-12)
        if prev is not None:
            assert c.seconds >= prev.seconds and c.host_seconds >= prev.host_seconds
            assert c.engine_cycles["tlmm"] >= prev.engine_cycles["tlmm"]
            assert c.engine_cycles["gemm"] >= prev.engine_cycles["gemm"]
            assert c.dram_bytes == prev.dram_bytes
        prev = c
    assert prev.time_by["tlmm memory"] > 0  # at 1 % of the bandwidth the engines wait for the DRAM


def test_slow_dram_bounds_each_command(repo):
    acfg = _with_device(load_config(repo / "configs" / "kv260.yaml"), dram_gbs=1.0)
    f = acfg.clock_mhz * 1e6
    tl = TlmmCommand(1, 10, 20)
    c = cost_program(_program(acfg, [tl]), acfg)
    nbytes = c.dram_bytes
    # the TLMM's cycle model (sim.top_model, = RTL) bounded by its bytes through the shared DRAM, as a GEMM's
    from sim.top_model import tlmm_run_cycles

    run = tlmm_run_cycles(acfg, tl)
    assert c.engine_cycles["tlmm"] == max(run, math.ceil(nbytes / (1e9 / f))) > run
    g = cost_program(_program(acfg, [GemmCommand(2, 3, 4)]), acfg)
    assert g.engine_cycles["gemm"] == max(g.compute_cycles["gemm"], math.ceil(g.dram_bytes / (1e9 / f)))
    assert g.engine_cycles["gemm"] > g.compute_cycles["gemm"]
    exact = cost_program(_program(acfg, [GemmCommand(2, 3, 4)]), acfg, memory_bound=False)
    assert exact.engine_cycles == exact.compute_cycles  # the cycle models' own counts stay exact


@pytest.mark.parametrize("config", [*BOARDS, "default.yaml"])
def test_every_assumption_has_a_source(repo, config):
    acfg = load_config(repo / "configs" / config)
    a = assumptions(acfg)
    names = [e["name"] for e in a]
    assert len(names) == len(set(names))
    for need in (
        "clock_mhz",
        "device.host_gflops",
        "device.host_gbs",
        "device.dram_gbs",
        "device.static_w",
        "pj.dram_byte",
        "host_w",
        "memory.latency",
    ):
        assert need in names, need
    assert {f"host_cost.{k}" for k in HOST_COST} <= set(names)
    for e in a:
        assert isinstance(e["source"], str) and e["source"].strip(), e
        assert e["kind"] in ("cited", "measured", "counted", "assumption"), e
        if "range" in e and e["name"].startswith(("device.", "pj.", "host_w")):
            lo, hi = e["range"]
            assert lo <= e["value"] <= hi, e
    if config in BOARDS:  # the board presets source every device number and every energy number
        missing = [
            e["name"]
            for e in a
            if e["source"].startswith("no source given")
            and e["name"].startswith(("device.", "pj.", "host_w", "clock_mhz"))
        ]
        assert not missing, missing
        assert acfg.device.power_boundary in POWER_BOUNDARIES


def test_energy_tables_source_every_number():
    for fam in ("ecp5", "ice40", "ultrascale_plus", "edge_soc"):
        e = load_energy(fam)
        assert set(e["sources"]) == set(SOURCE_KEYS), fam
        assert all(s["source"].strip() for s in e["sources"].values())


def test_a_value_outside_its_sourced_range_becomes_an_assumption(repo):
    acfg = _with_device(load_config(repo / "configs" / "kv260.yaml"), dram_gbs=40.0)  # a sweep may do this
    e = {e["name"]: e for e in assumptions(acfg)}["device.dram_gbs"]
    assert e["value"] == 40.0 and e["kind"] == "assumption" and "outside this source's range" in e["source"]


def test_kv260_power_is_stated_with_its_boundary_and_not_fitted(repo):
    acfg = load_config(repo / "configs" / "kv260.yaml")
    assert acfg.device.power_boundary == "som" and acfg.device.dram_gbs == 17.1
    static = {e["name"]: e for e in assumptions(acfg)}["device.static_w"]
    assert static["kind"] == "assumption" and "range" in static and "not fitted" in static["source"]
    assert {e["name"]: e for e in assumptions(acfg)}["device.dram_gbs"]["kind"] == "cited"


def test_sources_are_validated(repo, tmp_path):
    base = load_config(repo / "configs" / "kv260.yaml").to_dict()
    for sources, msg in (
        ({"static_x": "x"}, "device.sources.static_x: unknown field"),
        ({"static_w": ""}, "device.sources.static_w: source"),
        (
            {"static_w": {"source": "x", "range": [2, 1]}},
            "device.sources.static_w: range: expected [LOW, HIGH] with LOW <= HIGH",
        ),
        ({"static_w": {"src": "x"}}, "device.sources.static_w: expected"),
    ):
        d = {**base, "device": {**base["device"], "sources": sources}}
        with pytest.raises(ConfigError) as e:
            config_from_dict(d, "f.yaml")
        assert (
            str(e.value).startswith("f.yaml: device.sources.static")
            and msg in str(e.value)
            and "\n" not in str(e.value)
        )
    d = {**base, "device": {**base["device"], "power_boundary": "wall"}}
    with pytest.raises(ConfigError, match="device.power_boundary: expected one of board, som, chip, pl"):
        config_from_dict(d, "f.yaml")
    acfg = load_config(repo / "configs" / "kv260.yaml")  # the round trip keeps sources (and hashing)
    again = config_from_dict(json.loads(json.dumps(acfg.to_dict())), acfg.source)
    assert again == acfg and hash(again) == hash(acfg) and dataclasses.asdict(again.device)["sources"]


def test_energy_sources_are_validated(tmp_path, monkeypatch):
    import sim.energy as en

    good = (en.ENERGY_DIR / "ecp5.yaml").read_text()
    monkeypatch.setattr(en, "ENERGY_DIR", tmp_path)
    cases = (
        (good.replace("sources:\n", "sources:\n  pj.lookpu: x\n", 1), "sources.pj.lookpu: unknown field"),
        (good.replace("range: [1.05, 4.2]", "range: [5, 9]", 1), "sources.pj.lookup: range [5, 9] must"),
        (
            good.replace("  pj.lookup:\n    source:", "  pj.lookup:\n    text:", 1),
            "sources.pj.lookup: expected",
        ),
    )
    for text, msg in cases:
        assert text != good
        (tmp_path / "ecp5.yaml").write_text(text)
        with pytest.raises(ConfigError) as e:
            en.load_energy("ecp5")
        assert "ecp5.yaml: " + msg in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_report_labels_modeled_figures_and_the_power_boundary(repo):
    acfg = load_config(repo / "configs" / "kv260.yaml")
    energy = load_energy(acfg.device.family)
    c = cost_program(_lm_head_program(acfg, [TlmmCommand(1, 8, 8)]), acfg, energy)
    r = summarize("synthetic", acfg, 1, 1, c, c, energy)
    assert r["modeled"] is True and r["power_boundary"] == "som"
    assert r["j_per_token_range"]["low"] <= r["j_per_token"] <= r["j_per_token_range"]["high"]
    json.dumps({k: v for k, v in r.items() if k != "_steps"})  # JSON-serializable
    text = format_estimate(r)
    assert "(every figure modeled)" in text and "figure (modeled)" in text
    power_lines = [
        ln
        for ln in text.splitlines()
        if ln.startswith(("energy", "average power")) or "device.static_w" in ln
    ]
    assert len(power_lines) == 3
    assert all("som boundary" in ln for ln in power_lines), power_lines
    assert "accelerator" in text and "host" in text and "shared-DRAM limit" in text and "--json" in text


@pytest.mark.torch
def test_cli_json_lists_assumptions_and_boundary():
    pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")
    out = cli_json(
        "estimate", "--model", "tiny", "--config", "configs/kv260.yaml", "--prompt", 8, "--context", 32
    )
    assert out["modeled"] is True and out["power_boundary"] == "som"
    assert (
        out["dram_bytes_per_token"]
        == out["dram_bytes_per_token_accelerator"] + out["dram_bytes_per_token_host"]
    )
    assert out["dram_bytes_per_token_host"] > 0
    assert math.isclose(out["dram_limit_tokens_per_s"], out["dram_gbs"] * 1e9 / out["dram_bytes_per_token"])
    assert all(e["source"].strip() for e in out["assumptions"]) and out["model_rules"]
