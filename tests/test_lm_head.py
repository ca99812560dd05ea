"""The LM-head placements (models/lm_head.py; compiler option ``lm_head``): compiled Programs equal the PyTorch
int reference bit for bit (the int32 GEMM outputs and the float logits), the estimate charges each placement
its own bytes, and one top-level co-simulation runs the tiny model's LM head on the GEMM engine."""

import functools

import numpy as np
import pytest
from conftest import top_one_layer

pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")
import torch  # noqa: E402

import compiler.lower as lower  # noqa: E402
from compiler import CompileError, compile_model, load_model  # noqa: E402
from compiler.tiling import lm_head_gemms, persistent_beats  # noqa: E402
from hw.config import load_config  # noqa: E402
from hw.gemm_layout import pack_b  # noqa: E402
from hw.isa import GemmCommand  # noqa: E402
from hw.program import Program  # noqa: E402
from models.lm_head import dequant_logits, fp16_weight, lm_head_int, quantize_lm_head  # noqa: E402
from sim.cosim import truncated_model  # noqa: E402
from sim.runtime import Runtime, _Host  # noqa: E402

PROMPT = list(b"import os")


@functools.cache
def _model(repo):
    return truncated_model(load_model(str(repo / "models" / "checkpoints" / "tiny.pt")), 1)


def _run_steps(cm, model, option, extra=5):
    """Prefill (all logits) and one decode step on the executor; the same on PyTorch int mode."""
    p0, p1 = cm.program(len(PROMPT), 0, "all"), cm.program(1, len(PROMPT), "last")
    rt = Runtime(p0)
    got0, _ = rt.run(p0, PROMPT)
    host0 = _Host(p0, rt.image.copy())
    got1, _ = rt.run(p1, [extra])
    cache = model.new_cache()
    with torch.no_grad():
        ref0 = model(torch.tensor([PROMPT]), cache, mode="int", lm_head=option)[0]
        ref1 = model(torch.tensor([[extra]]), cache, mode="int", lm_head=option)[0]
    return (p0, host0), (got0, ref0), (got1, ref1)


@pytest.mark.torch
@pytest.mark.parametrize("option", ["host_fp16", "acc_int8"])
def test_program_matches_the_int_reference(repo, option):
    acfg = load_config(repo / "configs" / "default.yaml")
    model = _model(repo)
    cm = compile_model(model, acfg, lm_head=option)
    (p0, host0), (got0, ref0), (got1, ref1) = _run_steps(cm, model, option)
    assert p0.meta["lm_head"] == option
    assert torch.equal(got0, ref0) and torch.equal(got1, ref1)
    w = model.lm_head.weight.detach()
    # the option changes the logits (the comparison above is not fp32 against itself)
    with torch.no_grad():
        fp32 = model(torch.tensor([PROMPT]), mode="int")[0]
    assert not torch.equal(got0, fp32)
    cmds = p0.commands()
    heads = [h for h in p0.host_ops if h.kind.startswith("lm_head")]
    if option == "host_fp16":
        (h,) = heads
        data = p0.host_data[h.attrs["weight"]]
        assert data.dtype == np.float16 and np.array_equal(data, fp16_weight(w).numpy())
        assert p0.tensors[h.attrs["weight"]].nbytes == 2 * w.numel()
        assert not any(isinstance(c, GemmCommand) for c in cmds[-3:])
        return
    assert [h.kind for h in heads] == ["lm_head_quant", "lm_head_dequant"]
    assert not any(v.dtype == np.int8 for v in p0.host_data.values())  # int8 weights: device image only
    # the int8 weight panels in the image are exactly the reference's quantized weights
    wq, sw = quantize_lm_head(w)
    (ti,) = [t for t in p0.tensors.values() if t.layout == "gemm_b" and t.name.endswith(".int8")]
    panels = pack_b(wq.numpy().T.copy(), acfg.gemm_geometry)
    assert np.array_equal(p0.image[ti.addr : ti.addr + panels.shape[0]], panels)
    # the int32 GEMM outputs equal the reference's exactly
    deq = heads[1]
    y = torch.cat(
        [
            host0.gemm_out(n, len(PROMPT), b - a)
            for n, (a, b) in zip(deq.inputs[:-2], deq.attrs["slices"], strict=True)
        ],
        1,
    )
    with torch.no_grad():
        h = model.final_hidden(torch.tensor([PROMPT]), mode="int")[0]
    y_ref, sx_ref, logits_ref = lm_head_int(h, wq, sw)
    assert y.dtype == torch.int32 and torch.equal(y, y_ref)
    assert torch.equal(host0.f32(deq.inputs[-2]), sx_ref)
    assert torch.equal(logits_ref, ref0)


@pytest.mark.torch
def test_dequant_order_is_observable(repo):
    """The float logits are pinned to one operation order: (y · s_x) · s_w differs from y · (s_x · s_w) in
    some bits, so the bit-exact comparisons above would catch an executor that reordered them."""
    w = _model(repo).lm_head.weight.detach()
    wq, sw = quantize_lm_head(w)
    x = torch.randn(64, w.shape[1], generator=torch.Generator().manual_seed(1))
    y, sx, logits = lm_head_int(x, wq, sw)
    assert torch.equal(logits, dequant_logits(y, sx, sw))
    other = (y.to(torch.float32) * sx) * sw[None, :]
    assert not torch.equal(logits, other)
    # symmetric int8 codes: every row's absmax code is ±127, never -128
    assert int(wq.abs().amax()) == 127 and int(wq.min()) >= -127


@pytest.mark.torch
def test_lm_head_split_over_several_gemm_commands(repo, monkeypatch):
    """The N slices of compiler.tiling.lm_head_gemms (B-panel offsets, one output per slice) — forced small."""
    acfg = load_config(repo / "configs" / "default.yaml")
    geo = acfg.gemm_geometry
    sl = lm_head_gemms(geo, 128, 256, max_n_tiles=3)
    assert sl[0] == (0, 24, 0) and sl[-1][1] == 256 and len(sl) == 11
    assert all(b[0] == a[1] for a, b in zip(sl, sl[1:], strict=False))
    monkeypatch.setattr(lower, "lm_head_gemms", functools.partial(lm_head_gemms, max_n_tiles=3))
    model = _model(repo)
    cm = compile_model(model, acfg, lm_head="acc_int8")
    _, (got0, ref0), (got1, ref1) = _run_steps(cm, model, "acc_int8")
    assert torch.equal(got0, ref0) and torch.equal(got1, ref1)
    assert sum(isinstance(c, GemmCommand) for c in cm.program(1, 3, "last").commands()) >= 11


@pytest.mark.torch
def test_option_recorded_saved_and_checked(repo, tmp_path):
    acfg = load_config(repo / "configs" / "default.yaml")
    cm = compile_model(_model(repo), acfg, lm_head="host_fp16")
    p = cm.program(1, 0, "last")
    q = Program.load(p.save(tmp_path / "p"))
    assert q.meta["lm_head"] == "host_fp16" and q.digest() == p.digest()
    assert any(v.dtype == np.float16 for v in q.host_data.values())
    with pytest.raises(CompileError, match="lm_head='int4'"):
        compile_model(_model(repo), acfg, lm_head="int4")
    with pytest.raises(ValueError, match="applies to mode='int' only"):
        _model(repo)(torch.tensor([PROMPT]), mode="fake", lm_head="acc_int8")


@pytest.mark.torch
def test_estimate_charges_each_placement(repo):
    from tritium.estimate import cost_program

    acfg = load_config(repo / "configs" / "kv260.yaml")
    cost = {}
    for option in ("host_fp32", "host_fp16", "acc_int8"):
        cm = compile_model(load_model("tiny", device="meta"), acfg, lm_head=option)
        cost[option] = cost_program(cm.program(1, 63, "last"), acfg)
    V, D = 256, 128
    # the persistent region's size rule (what the DSE screens with) counts the int8 panels
    low = cm.lowering
    tl = [(op.attrs["k"], op.attrs["n"], 1) for op in low.g.ops if op.kind == "tlmm"]
    att = [
        (a["n_heads"], a["n_kv_heads"], a["head_dim"], 1)
        for a in (op.attrs for op in low.g.ops if op.kind == "attention")
    ]
    geo, W, seq = acfg.gemm_geometry, acfg.memory.bus_bytes, low.mc["max_seq"]
    assert persistent_beats(acfg.tlmm, geo, W, tl, att, seq, lm_head=(D, V)) == low.step_base
    assert persistent_beats(acfg.tlmm, geo, W, tl, att, seq) < low.step_base
    f32, f16, i8 = cost["host_fp32"], cost["host_fp16"], cost["acc_int8"]
    assert f32.dram_bytes_by["host"] - f16.dram_bytes_by["host"] == 2 * V * D  # half the weight bytes
    assert f32.dram_bytes_by["accelerator"] == f16.dram_bytes_by["accelerator"]
    # acc_int8: the weights leave the host's bytes and the GEMM engine reads at least V·D int8 bytes more
    assert i8.dram_bytes_by["host"] < f16.dram_bytes_by["host"] - V * D
    assert i8.dram_bytes_by["accelerator"] - f32.dram_bytes_by["accelerator"] >= V * D
    assert i8.engine_cycles["gemm"] > f32.engine_cycles["gemm"] and i8.commands > f32.commands


@pytest.mark.torch
@pytest.mark.verilator
def test_top_level_runs_the_lm_head_on_the_gemm_engine(repo):
    rep = top_one_layer(load_config(repo / "configs" / "default.yaml"), b"def", 1, lm_head="acc_int8")
    assert rep.lm_head == "acc_int8"
    assert rep.rtl_tokens == rep.torch_tokens == rep.model_tokens and rep.ok
    # the step ends host (quant) → GEMM (the LM head) → host (dequant)
    assert rep.commands[0][-3:] == ["host", "gemm", "host"]
