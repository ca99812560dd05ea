"""Decode attention at the bandwidth floor (issue 15 part 3): KV heads grouped into one block-diagonal GEMM
command (no head_dim padding, no wasted block rows), P·V as one command per group (the GEMM ``b_stride``:
column panels of a B laid out for a longer K), and ``gemm.buffers`` operand slots (the loader runs ahead of
compute far enough to hide the memory latency when a step loads as many beats as it computes).

Checks: the group choice; the stepped model with 4 and 8 slots and with strided B against the reference and
the fast path; more slots hide the latency of a decode-shaped command; the RTL with 4 slots equals the model
bit for bit and cycle for cycle on random data, decode-shaped, strided and starved cases (Verilator); a
compiled grouped-attention model's logits equal PyTorch's integer mode through sim/runtime.py."""

import dataclasses

import numpy as np
import pytest
from conftest import cosim_mismatches

from compiler.tiling import attention_gemms, attention_group
from hw.config import config_from_dict, load_config
from hw.gemm_layout import build_gemm_image, gemm_shape
from hw.isa import GemmCommand, decode_program
from sim.gemm_cases import GemmCase, directed_cases, random_cases
from sim.gemm_model import gemm_fast, reference, run_gemm_image


def _cfg(repo, base="default.yaml", **gemm):
    d = load_config(repo / "configs" / base).to_dict()
    d["gemm"] = {**d["gemm"], **gemm}
    return config_from_dict(d)


def _decode_cases(acfg, seed=0):
    """A grouped decode step's two GEMMs: Q·Kᵀ with a block-diagonal A (2 heads of head_dim 48) against
    the stacked keys of 150 positions, and P·V of those 2 query rows against 150 values of 2.5 column
    tiles whose panels are 5 beats apart more than packed (strided B)."""
    rng = np.random.default_rng(seed)
    hd, ctx = 48, 150
    q = np.zeros((2, 2 * hd), np.int8)
    q[0, :hd] = rng.integers(-128, 128, hd)
    q[1, hd:] = rng.integers(-128, 128, hd)
    k = rng.integers(-128, 128, (2 * hd, ctx)).astype(np.int8)
    p = rng.integers(-128, 128, (2, ctx)).astype(np.int8)
    v = rng.integers(-128, 128, (ctx, 5 * acfg.gemm.cols // 2)).astype(np.int8)
    starved = {"latency": 41, "outstanding": 2, "beat_interval": 2}
    return [
        GemmCase("decode-qk-block-diagonal", q, k),
        GemmCase("decode-pv-strided", p, v, requant=True, shift=7, b_gap=5),
        GemmCase("decode-pv-strided-starved", p, v, timing=starved, b_gap=3),
        GemmCase("decode-qk-starved", q, k, timing=starved),
    ]


def test_group_choice_removes_padding_and_keeps_one_row_tile(repo):
    kv = load_config(repo / "configs" / "kv260.yaml").gemm_geometry
    geo = dataclasses.replace(kv, rows=2, cols=64, k_tile=64)
    # BitNet-0.7B: MHA, head_dim 96 on a 64-deep, 64-wide tile: pairs fill 192 = 3 tiles exactly
    assert attention_group(geo, 16, 16, 96) == 2
    ag = attention_gemms(geo, 16, 16, 96, 1, 1024)
    assert (ag.group, ag.n_groups, ag.qk, ag.pv) == (2, 8, (2, 192, 1024), (2, 1024, 192))
    # head_dim 128 needs no grouping; GQA with 4 query heads per KV head on 2 rows: grouping would add row tiles
    assert attention_group(geo, 20, 5, 128) == 1
    assert attention_group(dataclasses.replace(geo, rows=2), 8, 2, 96) == 1
    # a prefill step uses the same groups (the cache layout is shared by all steps)
    assert attention_gemms(geo, 16, 16, 96, 128, 128).qk == (256, 192, 128)


@pytest.mark.parametrize("buffers", [4, 8])
def test_stepped_model_with_more_slots_matches_reference_and_fast_path(repo, buffers):
    acfg = _cfg(repo, "gemm-2x8-w16.yaml", buffers=buffers)
    cases = directed_cases(acfg, seed=1, long=False) + random_cases(acfg, seed=9, count=4)
    for c in cases + _decode_cases(_cfg(repo, "gemm-2x8-w16.yaml", buffers=buffers)):
        ccfg = c.config(acfg)
        img = build_gemm_image(ccfg, c.a, c.b, c.requant, c.shift, b_gap=c.b_gap)
        assert (img.command.b_stride != 0) == (c.b_gap > 0)
        run = run_gemm_image(ccfg, img)
        assert np.array_equal(run.output, reference(c.a, c.b, c.requant, c.shift)), c.name
        sh = gemm_shape(ccfg.gemm_geometry, c.a.shape[0], c.a.shape[1], c.b.shape[1])
        fast = gemm_fast(ccfg, GemmCommand(sh.m_tiles, sh.n_tiles, sh.k_tiles, requant=c.requant))
        assert (fast.cycles, fast.events) == (run.cycles, run.events), c.name


def test_more_slots_hide_the_latency_of_a_decode_step(repo):
    """kv260's recommended 2×64 block: a step loads 66 beats and computes 64 cycles, so with 2 slots the
    50-cycle latency is exposed every other step; 4 slots keep the port busy."""
    base = load_config(repo / "configs" / "kv260.yaml").to_dict()
    cyc = {}
    for b in (2, 4):
        base["gemm"] = {**base["gemm"], "rows": 2, "cols": 64, "k_tile": 64, "buffers": b}
        acfg = config_from_dict(base)
        t = gemm_fast(acfg, GemmCommand(1, 16, 3))  # a head pair's Q·Kᵀ at context 1024
        cyc[b] = t.cycles
        beats = t.events["read_beats"] + t.events["write_beats"]
    assert cyc[2] > 1.25 * beats and cyc[4] < 1.1 * beats


@pytest.mark.verilator
def test_rtl_with_four_slots_matches_model_cycle_for_cycle(repo):
    from sim.cosim import run_gemm_cosim

    acfg = _cfg(repo, rows=2, cols=16, k_tile=32, buffers=4)
    cases = _decode_cases(acfg, seed=3) + random_cases(acfg, seed=17, count=4)
    rep = run_gemm_cosim(acfg, cases, build_root=repo / "build" / "cosim", quiet=True)
    assert len(rep.rows) == len(cases)
    bad = cosim_mismatches(rep, lambda r: r["rtl_read_beats"] == r["model_read_beats"] and r["idle_after"])
    assert not bad, bad


@pytest.mark.torch
def test_grouped_attention_program_equals_pytorch(repo):
    torch = pytest.importorskip("torch")
    from compiler import compile_model
    from models.lm import LMConfig, TernaryLM
    from sim.runtime import Runtime

    cfg = LMConfig(
        vocab=64, d_model=48, n_layers=2, n_heads=4, n_kv_heads=4, ffn=80, activation="relu2", max_seq=64
    )
    torch.manual_seed(0)
    m = TernaryLM(cfg).eval()
    acfg = _cfg(repo, rows=2, cols=16, k_tile=32, buffers=4)  # head_dim 12: pairs (24 = 1.5 column tiles)
    cm = compile_model(m, acfg)
    prompt = torch.tensor([3, 17, 40, 8, 61])
    p0 = cm.program(len(prompt), 0)
    attn = [op for op in p0.host_ops if op.kind.endswith("attn_prep")]  # dequant+attn_prep: q/k/v fused
    assert attn and all(op.attrs["group"] == 2 for op in attn)
    rt = Runtime(p0)
    logits, stats = rt.run(p0, prompt.numpy())
    toks = prompt.tolist()
    assert torch.equal(logits, m(prompt[None], mode="int")[0])
    for _ in range(3):  # decode steps: one query row per KV-head pair
        toks.append(int(logits[-1].argmax()))
        prog = cm.program(1, len(toks) - 1)
        gemms = [c for c in prog.commands() if isinstance(c, GemmCommand)]
        assert len(gemms) == 2 * 2 * 2 and sum(c.b_stride > 0 for c in gemms) == 2 * 2  # P·V strided
        logits, stats = rt.run(prog, [toks[-1]])
        assert torch.equal(logits[-1], m(torch.tensor(toks)[None], mode="int")[0, -1])
    assert stats.commands["gemm"] == 8


def test_b_stride_round_trips_and_bounds_the_b_span():
    g = GemmCommand(1, 3, 16, a_base=4, b_base=100, c_base=900, b_stride=2**32 - 1)
    assert decode_program(g.words()) == [g] and g.words()[2] >> 32 == 2**32 - 1
    assert GemmCommand(1, 3, 16).b_span(8) == 3 * 16 * 8  # 0: packed
    assert GemmCommand(1, 3, 16, b_stride=512).b_span(8) == 2 * 512 + 16 * 8
    with pytest.raises(ValueError, match="b_stride"):
        GemmCommand(1, 1, 1, b_stride=-1)
