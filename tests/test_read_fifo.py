"""The top level's DMA read FIFO depth (``memory.read_fifo_beats``): the RTL and the cycle model both read it
from hw.top_geometry; a FIFO shallower than the memory latency makes a long weight stream latency-bound, one
that covers it keeps the port busy (cycles ≈ bus beats)."""

import math

import pytest
import yaml
from conftest import assert_one_line_error, run_cli, top_one_layer

from hw.config import config_from_dict, load_config
from hw.isa import TlmmCommand
from hw.program import tlmm_wgt_beat_bytes
from hw.top_geometry import TopGeometry
from sim.top_model import tlmm_run_cycles


def _with_memory(acfg, **fields):
    d = acfg.to_dict()
    d["memory"].update(fields)
    return config_from_dict(d, "test")


def _read_beats(acfg, cmd) -> int:
    """Bus beats a streaming TLMM command reads (activations and weights)."""
    t, W = acfg.tlmm, acfg.memory.bus_bytes
    return math.ceil(cmd.k_chunks * (cmd.tokens * t.chunk_k + cmd.n_blocks * tlmm_wgt_beat_bytes(t)) / W)


def test_default_rule_unchanged(repo):
    """0 (the default) keeps max(8, 2·max_burst) and the config's fingerprint (build folders, Programs)."""
    for name in ("default", "kv260", "small-g2-half"):
        acfg = load_config(repo / "configs" / f"{name}.yaml")
        if acfg.memory.read_fifo_beats:
            continue
        assert TopGeometry(acfg).fifo == max(8, 2 * acfg.memory.max_burst)
        explicit = _with_memory(acfg, read_fifo_beats=TopGeometry(acfg).fifo)
        assert TopGeometry(explicit).fifo == TopGeometry(acfg).fifo
        assert explicit.fingerprint() != acfg.fingerprint()  # an explicit depth is a hardware choice
    base = load_config(repo / "configs" / "default.yaml")
    assert _with_memory(base, read_fifo_beats=128).fingerprint() != base.fingerprint()


def test_decode_stream_latency_bound_then_bandwidth_bound(repo):
    """KV260 memory (latency 50, 16-beat bursts, 8 outstanding, a beat per cycle), a decode-shaped TLMM
    (one token, K = N = 1536): with 32 beats requested ahead the stream gets 32 beats per latency round trip
    (~2 cycles a beat); with 128 it runs at the port's rate."""
    base = load_config(repo / "configs" / "kv260.yaml")
    t = base.tlmm
    cmd = TlmmCommand(tokens=1, k_chunks=math.ceil(1536 / t.chunk_k), n_blocks=1536 // t.columns)
    beats = _read_beats(base, cmd)
    cyc = {f: tlmm_run_cycles(_with_memory(base, read_fifo_beats=f), cmd) for f in (32, 64, 128, 256)}
    lat = base.memory.latency
    assert cyc[32] > 1.8 * beats  # latency-bound: ≤ 32 beats per (latency + a few) cycles
    assert cyc[32] >= beats * lat / 32
    assert cyc[128] <= beats + 3 * lat  # bandwidth-bound: a beat per cycle plus the first latency
    assert cyc[32] > cyc[64] > cyc[128] == cyc[256]  # deeper helps until it covers the latency


def test_deep_fifo_reaches_the_estimate_bound(repo):
    """The roofline of a streaming TLMM (latency + bytes / port rate, what tritium.estimate charged before it
    took this model's counts): the stepped model reaches it (within 2 %) only with a FIFO that covers the
    latency."""
    base = load_config(repo / "configs" / "kv260.yaml")
    t = base.tlmm
    for k, n in ((1536, 4096), (4096, 1536)):
        cmd = TlmmCommand(tokens=1, k_chunks=math.ceil(k / t.chunk_k), n_blocks=n // t.columns)
        bound = base.memory.latency + _read_beats(base, cmd)
        deep = tlmm_run_cycles(_with_memory(base, read_fifo_beats=128), cmd)
        shallow = tlmm_run_cycles(_with_memory(base, read_fifo_beats=32), cmd)
        assert abs(deep - bound) <= 0.02 * bound and shallow > 1.8 * bound, (k, n, deep, shallow, bound)


def test_bad_depth_one_line_error(tmp_path, repo):
    d = load_config(repo / "configs" / "default.yaml").to_dict()
    for value, needle in ((48, "must be a power of two"), (8, "at least memory.max_burst (16)")):
        d["memory"]["read_fifo_beats"] = value
        p = tmp_path / f"fifo{value}.yaml"
        p.write_text(yaml.safe_dump({k: v for k, v in d.items() if k != "device"}))
        assert_one_line_error(
            run_cli("config", "check", p, expect=2), str(p), "memory.read_fifo_beats", needle
        )


def test_resource_model_counts_the_deeper_fifo(repo):
    """tritium.resources: nothing added at the default depth (the calibration runs had it); a deeper FIFO
    adds its distributed RAM, counted against Yosys on the FIFO alone (xcup, 512 bits: 316 LUT at 32
    beats, 1,723 at 128)."""
    from tritium.resources import _fifo_luts, load_model, read_fifo_resources, top_overhead

    base = load_config(repo / "configs" / "kv260.yaml")
    rule = _with_memory(base, read_fifo_beats=0)
    assert read_fifo_resources(rule, "xcup") == {r: 0.0 for r in ("lut", "ff", "bram", "uram", "dsp")}
    assert _fifo_luts(32, 512, "xcup") == pytest.approx(316, rel=0.02)
    assert _fifo_luts(128, 512, "xcup") == pytest.approx(1723, rel=0.02)
    deep = _with_memory(base, read_fifo_beats=128)
    extra = read_fifo_resources(deep, "xcup")
    assert extra["lut"] == pytest.approx(1723 - 316, rel=0.03) and extra["bram"] == 0
    assert top_overhead(deep, "xcup")["lut"] == pytest.approx(
        top_overhead(rule, "xcup")["lut"] + extra["lut"]
    )
    m = load_model()
    assert m.predict(deep, "xcup", "top")["lut"] == pytest.approx(
        m.predict(rule, "xcup", "top")["lut"] + extra["lut"]
    )
    assert read_fifo_resources(_with_memory(base, read_fifo_beats=256), "xcup")["lut"] > extra["lut"]


@pytest.mark.torch
def test_fast_evaluator_equals_estimate_with_a_deep_fifo(repo):
    """The DSE's fast evaluator gives tritium.estimate's figures for a point that sets the FIFO depth."""
    from conftest import assert_same_estimate

    from tritium.dse import FastEvaluator, build_workload
    from tritium.estimate import estimate

    base = load_config(repo / "configs" / "default.yaml")
    ev = FastEvaluator(build_workload("tiny", 16, 40, base))
    for f in (0, 64):
        acfg = _with_memory(base, read_fifo_beats=f, latency=60)
        assert_same_estimate(estimate("tiny", acfg, 16, 40), ev.estimate(acfg), f)


@pytest.mark.torch
@pytest.mark.verilator
def test_deep_fifo_long_latency_cycle_exact(repo):
    """One layer of the trained tiny model through the RTL top level with a read FIFO far deeper than the
    default and a latency-100 memory: logits bit-exact and every command's cycles equal to sim/top_model.py;
    the deep FIFO makes its TLMM commands faster than the default one on the same memory (model). The config
    is configs/top-wide-beats.yaml (its 64-beat FIFO against the default rule's 8 beats), so this shares the
    Verilator build of tests/test_top_widths.py: latency and outstanding requests are the bench memory's, not
    the RTL's."""
    wide = load_config(repo / "configs" / "top-wide-beats.yaml")
    assert wide.memory.read_fifo_beats == 64
    deep = _with_memory(wide, latency=100, outstanding=8)
    slow = _with_memory(deep, read_fifo_beats=0)  # the default rule: max(8, 2·max_burst) = 8 beats
    assert TopGeometry(slow).fifo == 8
    rep = top_one_layer(deep, b"x = 1", 1)
    assert "tlmm" in {k for step in rep.commands for k in step}
    # the same Program's TLMM commands on the default 8-beat FIFO take longer (model): the run used the depth
    from compiler import compile_model, load_model
    from sim.cosim import truncated_model
    from sim.top_model import program_cycles, run_cycles

    model = truncated_model(load_model(str(repo / "models" / "checkpoints" / "tiny.pt")), 1)
    prog = compile_model(model, deep).program(len(b"x = 1"), 0, logits="last")
    idx = [i for i, c in enumerate(prog.commands()) if isinstance(c, TlmmCommand)]
    tlmm = [prog.commands()[i] for i in idx]
    rtl = [r for k, r in zip(rep.commands[0], rep.rtl_cycles[0], strict=True) if k == "tlmm"]
    assert rtl == [program_cycles(prog)[i] for i in idx]  # the co-simulated Program
    assert sum(run_cycles(deep, c) for c in tlmm) < sum(run_cycles(slow, c) for c in tlmm)
