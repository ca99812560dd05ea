"""The compiler, pass by pass, and end to end: Programs executed on the numba models give logits
bit-identical to the model's integer reference forward, on several accelerator configs."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import assert_one_line_error, cli_json, random_lm, run_cli

pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")
import torch
import torch.nn.functional as F

from compiler import CompileError, compile_model
from compiler.capture import capture, run_captured
from compiler.ir import from_export
from compiler.lower import Allocator
from compiler.passes import check_weights, dedupe_quant, fuse_quant, mark_engines, split_bitlinear
from hw.config import config_from_dict, load_config
from hw.program import Program, ProgramError, unpack_tlmm_weights
from hw.ternary import unpack_weight_groups
from models.bitlinear import ternary_weight
from models.lm import FeedForward, generate
from models.presets import bitnet_2b_layout
from sim.runtime import Runtime, execute

pytestmark = pytest.mark.torch

SMALL = bitnet_2b_layout(vocab=64, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn=80, max_seq=64)
SWIGLU = dataclasses.replace(SMALL, activation="swiglu", subln=False, n_kv_heads=4, tie_embeddings=False)


def small_model(cfg=SMALL, seed=0):
    return random_lm(cfg, seed)


def graph_of(model):
    return from_export(capture(model, 6), model.config.to_dict())


def state_of(model):
    st = dict(model.state_dict(keep_vars=True))
    st.update(dict(model.named_buffers()))
    return st


# ------------------------------------------------------------------ capture and IR
def test_capture_is_bit_identical_to_the_model():
    m = small_model()
    ep = capture(m, 6)
    tok = torch.randint(0, SMALL.vocab, (1, 6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(run_captured(ep, tok), m(tok, mode="int"))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert all(t.startswith("tritium.") or "embedding" in t or "arange" in t for t in targets), targets


def test_ir_ops_and_where():
    g = graph_of(small_model())
    kinds = [op.kind for op in g.ops]
    assert kinds[0] == "embed" and kinds[-1] == "lm_head"
    assert kinds.count("bitlinear") == 7 * SMALL.n_layers and kinds.count("attention") == SMALL.n_layers
    q = next(op for op in g.ops if op.name == "layers.1.attn.q_proj")
    assert q.attrs["weight"] == "layers.1.attn.q_proj.weight" and (q.attrs["k"], q.attrs["n"]) == (48, 48)
    assert "models/lm.py:" in q.where and q.where.startswith("layers.1.attn.q_proj")


# ------------------------------------------------------------------ graph passes
def test_split_bitlinear():
    g = split_bitlinear(graph_of(small_model()))
    i = next(i for i, op in enumerate(g.ops) if op.kind == "tlmm")
    assert [op.kind for op in g.ops[i - 1 : i + 2]] == ["quant", "tlmm", "dequant"]
    assert g.ops[i].engine == "tlmm" and g.ops[i].inputs[0].endswith(".q")


def test_dedupe_quant_shares_qkv_input():
    g = dedupe_quant(split_bitlinear(graph_of(small_model())))
    quants = [op for op in g.ops if op.kind == "quant"]
    # per layer: q/k/v share one, o, gate/up share one, down → 4
    assert len(quants) == 4 * SMALL.n_layers
    tl = [op for op in g.ops if op.kind == "tlmm"]
    assert tl[0].inputs == tl[1].inputs == tl[2].inputs


def test_fuse_quant_into_norms_and_activations():
    g = fuse_quant(dedupe_quant(split_bitlinear(graph_of(small_model()))))
    kinds = [op.kind for op in g.ops]
    assert "quant" not in kinds  # sub-LN model: every quant follows a norm
    assert kinds.count("rmsnorm+quant") == 4 * SMALL.n_layers
    g2 = fuse_quant(dedupe_quant(split_bitlinear(graph_of(small_model(SWIGLU)))))
    k2 = [op.kind for op in g2.ops]
    assert (
        k2.count("swiglu+quant") == SWIGLU.n_layers and k2.count("quant") == SWIGLU.n_layers
    )  # o_proj input


def test_check_weights_records_scales_and_rejects_bad_weights():
    m = small_model()
    g = fuse_quant(dedupe_quant(split_bitlinear(graph_of(m))))
    g = mark_engines(check_weights(g, state_of(m)))
    tl = [op for op in g.ops if op.kind == "tlmm"]
    assert all(op.attrs["scale"] == ternary_weight(m.get_parameter(op.attrs["weight"]))[1] for op in tl)
    with torch.no_grad():
        m.layers[1].ffn.up_proj.weight[3, 4] = float("nan")
    with pytest.raises(CompileError, match=r"layers\.1\.ffn\.up_proj .*non-finite"):
        check_weights(fuse_quant(dedupe_quant(split_bitlinear(graph_of(m)))), state_of(m))


# ------------------------------------------------------------------ lowering, allocation, packing
def test_allocator_first_fit_and_reuse():
    a = Allocator(10, 100)
    x, y = a.alloc(20, "x"), a.alloc(30, "y")
    assert (x, y) == (10, 30)
    a.release(x, 20)
    assert a.alloc(15, "z") == 10 and a.alloc(10, "w") == 60
    with pytest.raises(CompileError, match="memory exhausted"):
        a.alloc(1000, "big")


def test_weights_are_packed_in_the_tlmm_index_format(repo):
    m = small_model()
    acfg = load_config(repo / "configs" / "small-g2-half.yaml")
    prog = compile_model(m, acfg).program(3, 0)
    t = acfg.tlmm
    ti = prog.tensors["w:layers.0.ffn.down_proj.weight[0,0]"]
    kc, nb = ti.shape
    wgt = unpack_tlmm_weights(prog.image.reshape(-1)[ti.addr * acfg.memory.bus_bytes :], t, kc, nb)
    idx = wgt.transpose(1, 2, 0, 3).reshape(nb * t.columns, kc * t.tables)
    w = unpack_weight_groups(idx, t.group_size, kc * t.chunk_k)[: SMALL.d_model, : SMALL.ffn]
    assert np.array_equal(w, ternary_weight(m.layers[0].ffn.down_proj.weight)[0].numpy())


@pytest.mark.parametrize("config", ["default.yaml", "small-g2-half.yaml", "gemm-2x8-w16.yaml"])
def test_prefill_logits_bit_identical(repo, config):
    m = small_model()
    acfg = load_config(repo / "configs" / config)
    prog = compile_model(m, acfg).program(7, 0)
    tok = torch.randint(0, SMALL.vocab, (7,), generator=torch.Generator().manual_seed(2))
    logits, stats = execute(prog, tok.numpy())
    assert torch.equal(logits, m(tok[None], mode="int")[0])
    assert stats.commands["tlmm"] > 0 and stats.commands["gemm"] > 0 and stats.cycles["tlmm"] > 0


def test_tiling_splits_k_and_n_beyond_the_engine_limits(repo):
    """tlmm.max_k / max_n smaller than the layers: K slices add exactly, N slices concatenate."""
    base = load_config(repo / "configs" / "default.yaml").to_dict()
    base["tlmm"] = {**base["tlmm"], "max_k": 48, "max_n": 40}
    acfg = config_from_dict(base)
    m = small_model(SWIGLU)
    cm = compile_model(m, acfg)
    prog = cm.program(5, 0)
    down = [t for t in prog.tensors if t.startswith("w:layers.0.ffn.down_proj.weight")]
    assert len(down) == 2 * 2  # K=80 → 2 slices of ≤48; N=48 → 2 slices of ≤40
    tok = torch.arange(5) % SWIGLU.vocab
    assert torch.equal(execute(prog, tok.numpy())[0], m(tok[None], mode="int")[0])


def test_greedy_generation_through_step_programs(repo):
    m = small_model()
    cm = compile_model(m, load_config(repo / "configs" / "default.yaml"))
    prompt = torch.tensor([5, 9, 1, 33, 2])
    ref = generate(m, prompt, 12, mode="int").tolist()
    p0 = cm.program(len(prompt), 0)
    rt = Runtime(p0)
    logits, _ = rt.run(p0, prompt.numpy())
    toks = prompt.tolist()
    for i in range(12):
        toks.append(int(logits[-1].argmax()))
        if i < 11:
            logits, _ = rt.run(cm.program(1, len(toks) - 1), [toks[-1]])
    assert toks == ref
    last = execute(cm.program(len(prompt), 0, logits="last"), prompt.numpy())[0]
    assert last.shape == (1, SMALL.vocab) and torch.equal(last[0], m(prompt[None], mode="int")[0, -1])


def test_program_round_trip_and_bad_files(tmp_path, repo):
    m = small_model()
    prog = compile_model(m, load_config(repo / "configs" / "default.yaml")).program(4, 0)
    prog.save(tmp_path / "p")
    back = Program.load(tmp_path / "p")
    assert np.array_equal(back.words, prog.words) and np.array_equal(back.image, prog.image)
    tok = np.array([1, 2, 3, 4])
    assert torch.equal(execute(back, tok)[0], execute(prog, tok)[0])
    assert "TLMM  layers.0.attn.q_proj" in back.listing and "GEMM  layers.0.attn.qk0" in back.listing
    doc = json.loads((tmp_path / "p" / "program.json").read_text())
    doc["config"]["gemm"]["rows"] = 4
    (tmp_path / "p" / "program.json").write_text(json.dumps(doc))
    with pytest.raises(ProgramError, match="fingerprint"):
        Program.load(tmp_path / "p")
    (tmp_path / "p" / "program.json").write_text("{")
    with pytest.raises(ProgramError, match="not valid JSON"):
        Program.load(tmp_path / "p")
    with pytest.raises(ProgramError, match="not found"):
        Program.load(tmp_path / "missing")


# ------------------------------------------------------------------ errors
class _GeluFFN(FeedForward):
    def forward(self, x, mode):
        return self.down_proj(F.gelu(self.gate_proj(x, mode)) * self.up_proj(x, mode), mode)


class _FloatLinear(torch.nn.Linear):
    def forward(self, x, mode="fake"):
        return F.linear(x, self.weight)


def test_unsupported_op_names_module_and_line():
    m = small_model()
    m.layers[1].ffn.__class__ = _GeluFFN
    with pytest.raises(CompileError) as e:
        graph_of(m)
    msg = str(e.value)
    assert "layers.1.ffn" in msg and "gelu" in msg and "test_compiler.py:" in msg and "\n" not in msg


def test_float_linear_is_rejected_with_a_hint():
    m = small_model()
    m.layers[0].ffn.up_proj = _FloatLinear(SMALL.d_model, SMALL.ffn, bias=False)
    with pytest.raises(CompileError, match=r"layers\.0\.ffn\.up_proj.*ternary weights only.*BitLinear"):
        graph_of(m)


def test_memory_that_cannot_hold_the_model(repo):
    d = load_config(repo / "configs" / "default.yaml").to_dict()
    d["memory"] = {**d["memory"], "addr_bits": 8}
    with pytest.raises(CompileError, match="memory exhausted.*memory.addr_bits"):
        compile_model(small_model(), config_from_dict(d))


@pytest.mark.parametrize("preset", ["bitnet-0.7b", "bitnet-2b"])
def test_presets_compile_on_meta(preset, tmp_path):
    out = cli_json("compile", preset, "-o", tmp_path, "--tokens", 8)
    assert out["tlmm"] > 0 and out["gemm"] > 0 and not out["weights_materialized"]
    assert (tmp_path / "listing.txt").read_text().count("  TLMM  ") == out["tlmm"]


def test_cli_compile_errors(tmp_path):
    assert_one_line_error(run_cli("compile", "no-such-model", "-o", tmp_path, expect=2), "no-such-model")
    assert not (tmp_path / "program.json").exists()


def test_trained_model_bit_identical_and_32_greedy_tokens(repo):
    """Issue acceptance: the committed tiny model's logits and 32 greedy tokens through step Programs."""
    from compiler import load_model

    m = load_model(str(repo / "models" / "checkpoints" / "tiny.pt"))
    cm = compile_model(m, load_config(repo / "configs" / "default.yaml"))
    prompt = torch.tensor(list(b'def quantize(x):\n    """Return the '), dtype=torch.int64)
    p0 = cm.program(len(prompt), 0)
    rt = Runtime(p0)
    logits, stats = rt.run(p0, prompt.numpy())
    assert torch.equal(logits, m(prompt[None], mode="int")[0])
    toks = prompt.tolist()
    for i in range(32):
        toks.append(int(logits[-1].argmax()))
        if i < 31:
            logits, _ = rt.run(cm.program(1, len(toks) - 1), [toks[-1]])
    assert toks == generate(m, prompt, 32, mode="int").tolist()


def test_cli_compile_checkpoint(tmp_path):
    out = cli_json("compile", "models/checkpoints/tiny.pt", "-o", tmp_path, "--tokens", 4)
    assert out["weights_materialized"] is True
    prog = Program.load(tmp_path)
    assert prog.image.shape[0] == prog.meta["memory_beats"]
    embed = prog.host_ops[0]
    assert embed.kind == "embed" and prog.host_data[embed.attrs["weight"]].shape == (256, 128)
