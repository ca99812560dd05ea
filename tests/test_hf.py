"""Hugging Face BitNet folders (models/hf.py) and safetensors checkpoints (models/checkpoint.py).

Synthetic folders are written on the fly in both layouts (packed 2B-4T style, latent 1bitLLM style). Checked:
the compiled Program, executed by sim.runtime, gives logits bit-identical to the model's int reference; an
independent float forward written here from the Hugging Face semantics (raw safetensors tensors, plain torch
ops) agrees with the int reference (same greedy tokens, correlated logits); a folder shaped like a preset
compiles to the preset's Program; malformed folders fail in one line naming the file and field.
"""

import dataclasses
import json
import math

import numpy as np
import pytest
from conftest import cli_json

pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")
pytest.importorskip("safetensors", reason="[torch] safetensors is not installed (the ml extra)")
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compiler import compile_model, load_model
from hw.config import load_config
from hw.ternary import quantize_weights
from models.bitlinear import ternary_weight
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.hf import latent_weight, load_hf, pack_ternary, unpack_ternary, write_synthetic_hf
from models.lm import LMConfig, generate
from models.presets import PRESETS, bitnet_2b_layout, build_model
from sim.runtime import execute

pytestmark = pytest.mark.torch

PACKED = bitnet_2b_layout(
    vocab=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, rope_theta=500000.0, max_seq=64
)
LATENT = LMConfig(
    vocab=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn=96, max_seq=64, norm_eps=1e-6, subln=True
)
LATENT_PLAIN = dataclasses.replace(LATENT, subln=False, n_kv_heads=2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "packed": write_synthetic_hf(root / "packed", PACKED, "packed", seed=1),
        "packed-divide": write_synthetic_hf(
            root / "packed-divide", PACKED, "packed", seed=2, linear_class="bitlinear"
        ),
        "latent": write_synthetic_hf(root / "latent", LATENT, "latent", seed=3, shards=3),
        "latent-plain": write_synthetic_hf(root / "latent-plain", LATENT_PLAIN, "latent", seed=4),
    }


# ------------------------------------------------------------------ packing
def test_unpack_follows_the_documented_blocked_layout():
    """transformers' unpack_weights docstring: bits 2i..2i+1 of packed row r are row i·(out/4) + r."""
    packed = np.array([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], np.uint8)
    want = [[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]]
    assert unpack_ternary(packed).tolist() == want
    assert np.array_equal(pack_ternary(np.array(want)), packed)
    rng = np.random.default_rng(0)
    w = rng.integers(-1, 2, (12, 5))
    assert np.array_equal(unpack_ternary(pack_ternary(w)), w)
    with pytest.raises(ValueError, match="code 3"):
        unpack_ternary(np.array([[0b11]], np.uint8))


def test_latent_weight_gives_back_codes_and_scale():
    rng = np.random.default_rng(1)
    exact = 0
    for i in range(40):
        codes = rng.choice([-1, 0, 1], size=(int(rng.choice([8, 64, 96])), 64), p=[0.3, 0.4, 0.3]).astype(
            np.int8
        )
        scale = np.float32(rng.uniform(0.01, 3.0))
        wq, s = quantize_weights(latent_weight(codes, float(scale)))
        assert np.array_equal(wq, codes)
        assert abs(s - float(scale)) <= float(np.spacing(scale)), (i, s, scale)  # within one float32 ulp
        exact += s == float(scale)
    assert exact >= 30  # most scales are reproduced exactly
    assert not latent_weight(np.zeros((4, 4), np.int8), 0.5).any()


# ------------------------------------------------------------------ the independent float forward
def _hf_float_forward(folder, tokens: list[int]) -> torch.Tensor:
    """Logits (T, vocab) of the checkpoint as Hugging Face defines it, from the raw tensors: BitLinear =
    per-token absmax int8 fake-quant of the input, times the ternary weight (packed: unpack, then multiply by
    weight_scale for autobitlinear or divide for bitlinear; latent: absmean ternarize); float attention."""
    cfg = json.loads((folder / "config.json").read_text())
    t = {}
    for f in sorted(folder.glob("*.safetensors")):
        t.update({k: v.to(torch.float32) if v.dtype != torch.uint8 else v for k, v in load_file(f).items()})
    qc = cfg.get("quantization_config") or {}
    packed = cfg["model_type"] == "bitnet" and qc.get("quant_method") == "bitnet"
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    d, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // nh

    def weight(name):
        w = t[name + ".weight"]
        if packed:
            codes = torch.cat([((w.to(torch.int32) >> (2 * i)) & 3) for i in range(4)], 0).float() - 1
            s = t[name + ".weight_scale"].reshape(())
            return codes * s if qc.get("linear_class") == "autobitlinear" else codes / s
        s = w.abs().mean().clamp(min=1e-5)
        return (w / s).round().clamp(-1, 1) * s

    def bitlinear(x, name):
        s = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        return F.linear((x * s).round().clamp(-128, 127) / s, weight(name))

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    T = len(tokens)
    inv = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    ang = torch.arange(T).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    sub = {"self_attn": ("attn_sub_norm", "inner_attn_ln"), "mlp": ("ffn_sub_norm", "ffn_layernorm")}
    x = t["model.embed_tokens.weight"][torch.tensor(tokens)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = rms(x, t[f"{p}.input_layernorm.weight"])
        q = rope(bitlinear(h, f"{p}.self_attn.q_proj").view(T, nh, hd).transpose(0, 1))
        k = rope(bitlinear(h, f"{p}.self_attn.k_proj").view(T, nkv, hd).transpose(0, 1))
        v = bitlinear(h, f"{p}.self_attn.v_proj").view(T, nkv, hd).transpose(0, 1)
        k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        sc = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        sc = sc.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        o = (sc.softmax(-1) @ v).transpose(0, 1).reshape(T, d)
        for n in sub["self_attn"]:
            if f"{p}.self_attn.{n}.weight" in t:
                o = rms(o, t[f"{p}.self_attn.{n}.weight"])
        x = x + bitlinear(o, f"{p}.self_attn.o_proj")
        h = rms(x, t[f"{p}.post_attention_layernorm.weight"])
        g, u = bitlinear(h, f"{p}.mlp.gate_proj"), bitlinear(h, f"{p}.mlp.up_proj")
        a = (F.relu(g) ** 2 if cfg["hidden_act"] == "relu2" else F.silu(g)) * u
        for n in sub["mlp"]:
            if f"{p}.mlp.{n}.weight" in t:
                a = rms(a, t[f"{p}.mlp.{n}.weight"])
        x = x + bitlinear(a, f"{p}.mlp.down_proj")
    x = rms(x, t["model.norm.weight"])
    head = t["lm_head.weight"] if not cfg.get("tie_word_embeddings") else t["model.embed_tokens.weight"]
    return x @ head.T


@pytest.mark.parametrize("kind", ["packed", "packed-divide", "latent", "latent-plain"])
def test_int_reference_agrees_with_independent_float_forward(folders, kind):
    model = load_hf(folders[kind])
    prompt, n_new = [3, 17, 42, 5], 10
    ours = generate(model, prompt, n_new, mode="int").tolist()
    toks = list(prompt)
    for _ in range(n_new):  # greedy with the float reference, recomputed every step
        toks.append(int(_hf_float_forward(folders[kind], toks)[-1].argmax()))
    assert ours == toks
    with torch.no_grad():
        li = model(torch.tensor([toks]), mode="int")[0]
    lf = _hf_float_forward(folders[kind], toks)
    corr = np.corrcoef(li.flatten().numpy(), lf.flatten().numpy())[0, 1]
    assert corr > 0.99, corr


def test_scale_convention_follows_linear_class(folders):
    """autobitlinear multiplies by weight_scale, bitlinear divides: the recovered scale is the same kind of
    number (≈ 1/sqrt(fan_in) here) either way, and the int model is not the one with the other convention."""
    for kind in ("packed", "packed-divide"):
        m = load_hf(folders[kind])
        with safe_open(folders[kind] / "model.safetensors", framework="pt") as f:
            stored = f.get_tensor("model.layers.0.self_attn.q_proj.weight_scale").float().item()
        _, s = ternary_weight(m.layers[0].attn.q_proj.weight)
        want = stored if kind == "packed" else 1.0 / stored
        assert s == pytest.approx(want, rel=1e-6) and 0.5 / 8 <= s <= 1.5 / 8


def test_unpacked_bitnet_folder_is_read_as_latent(folders, tmp_path):
    """model_type bitnet without a bitnet quantization_config (the bf16 master weights' layout): float weights
    ternarized on load, sub-norms under their bitnet names; the same model as the 1bitLLM-named folder."""
    f = _copy(folders["latent"], tmp_path / "bf16")
    for shard in f.glob("model-*.safetensors"):
        t = load_file(shard)
        t = {
            k.replace("inner_attn_ln", "attn_sub_norm").replace("ffn_layernorm", "ffn_sub_norm"): v
            for k, v in t.items()
        }
        save_file(t, shard)
    idx = json.loads((f / "model.safetensors.index.json").read_text())
    idx["weight_map"] = {
        k.replace("inner_attn_ln", "attn_sub_norm").replace("ffn_layernorm", "ffn_sub_norm"): v
        for k, v in idx["weight_map"].items()
    }
    (f / "model.safetensors.index.json").write_text(json.dumps(idx))
    _edit_config(f, model_type="bitnet", architectures=["BitNetForCausalLM"])
    a, b = load_hf(f), load_hf(folders["latent"])
    assert a.config == b.config
    tok = torch.arange(11)[None]
    with torch.no_grad():
        assert torch.equal(a(tok, mode="int"), b(tok, mode="int"))


# ------------------------------------------------------------------ compiled Programs
@pytest.mark.parametrize("kind", ["packed", "latent"])
def test_program_logits_bit_identical_to_int_reference(repo, folders, kind):
    model = load_model(str(folders[kind]))
    cm = compile_model(model, load_config(repo / "configs" / "default.yaml"))
    tok = torch.tensor([1, 9, 33, 2, 60, 7, 14])
    logits, stats = execute(cm.program(len(tok), 0), tok.numpy())
    with torch.no_grad():
        assert torch.equal(logits, model(tok[None], mode="int")[0])
    assert stats.commands["tlmm"] > 0 and stats.commands["gemm"] > 0


def test_folder_shaped_like_a_preset_compiles_to_the_preset_program(repo, tmp_path):
    acfg = load_config(repo / "configs" / "default.yaml")
    folder = write_synthetic_hf(tmp_path / "tiny-hf", PRESETS["tiny"], "packed", seed=5)
    hf_real = load_model(str(folder))
    hf_meta = load_hf(folder, device="meta")
    assert hf_real.config == hf_meta.config == PRESETS["tiny"]
    ref = compile_model(build_model("tiny", device="meta"), acfg).program(8, 0)
    for m in (hf_real, hf_meta):
        prog = compile_model(m, acfg).program(8, 0)
        assert np.array_equal(prog.words, ref.words)
        assert prog.meta["memory_beats"] == ref.meta["memory_beats"]
    from tritium.estimate import estimate

    est = [estimate(spec, acfg, prompt=8, context=32) for spec in (str(folder), "tiny")]
    for e in est:
        e.pop("model"), e.pop("_steps")
    assert est[0] == est[1]


def _header_only_safetensors(path, tensors: dict) -> None:
    """A valid safetensors file whose data section is a hole (sparse): headers say dtype and shape, nothing is
    written; enough for a meta load, which reads headers only."""
    size = {"U8": 1, "BF16": 2, "F16": 2, "F32": 4}
    header, off = {}, 0
    for name, (dt, shape) in tensors.items():
        n = math.prod(shape) * size[dt]
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        f.truncate(8 + len(h) + off)


def test_real_shaped_bitnet_2b_folder_maps_onto_the_preset(tmp_path):
    """config.json and tensor headers of microsoft/bitnet-b1.58-2B-4T's shape (data not written): the meta
    load gives exactly the bitnet-2b preset's config, hence the same captured graph, Programs and estimates."""
    p = PRESETS["bitnet-2b"]
    cfg = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_act": "relu2",
        "hidden_size": 2560,
        "intermediate_size": 6912,
        "num_hidden_layers": 30,
        "num_attention_heads": 20,
        "num_key_value_heads": 5,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "vocab_size": 128256,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "offline",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    t = {"model.embed_tokens.weight": ("BF16", (128256, 2560)), "model.norm.weight": ("BF16", (2560,))}
    outs = {
        "q_proj": 2560,
        "k_proj": 640,
        "v_proj": 640,
        "o_proj": 2560,
        "gate_proj": 6912,
        "up_proj": 6912,
        "down_proj": 2560,
    }
    for i in range(30):
        pre = f"model.layers.{i}"
        t[f"{pre}.input_layernorm.weight"] = ("BF16", (2560,))
        t[f"{pre}.post_attention_layernorm.weight"] = ("BF16", (2560,))
        t[f"{pre}.self_attn.attn_sub_norm.weight"] = ("BF16", (2560,))
        t[f"{pre}.mlp.ffn_sub_norm.weight"] = ("BF16", (6912,))
        for proj, n in outs.items():
            name = f"{pre}.{'mlp' if proj in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{proj}"
            t[f"{name}.weight"] = ("U8", (n // 4, 6912 if proj == "down_proj" else 2560))
            t[f"{name}.weight_scale"] = ("BF16", (1,))
    _header_only_safetensors(tmp_path / "model.safetensors", t)
    m = load_model(str(tmp_path), device="meta")
    assert m.config == p and m.embed_tokens.weight.device.type == "meta"


def test_cli_compile_and_estimate_accept_a_folder(folders, tmp_path):
    out = cli_json("compile", folders["packed"], "-o", tmp_path / "p", "--tokens", 4)
    assert out["weights_materialized"] and out["tlmm"] >= 7 * PACKED.n_layers and out["gemm"] > 0
    est = cli_json("estimate", "--model", folders["latent"], "--prompt", 8, "--context", 32)
    assert est["decode_tokens_per_s"] > 0 and est["model"] == str(folders["latent"])


# ------------------------------------------------------------------ malformed folders
def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(folder, **kv):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(kv)
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(folder, edit):
    t = load_file(folder / "model.safetensors")
    edit(t)
    save_file(t, folder / "model.safetensors")


def _one_line_error(folder, pattern):
    with pytest.raises(CheckpointError) as e:
        load_hf(folder)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300, msg
    assert __import__("re").search(pattern, msg), msg


def test_malformed_folders_fail_in_one_line(folders, tmp_path):
    src = folders["packed"]
    q = "model.layers.0.self_attn.q_proj.weight"

    f = _copy(src, tmp_path / "noconfig")
    (f / "config.json").unlink()
    _one_line_error(f, r"noconfig: no config\.json")
    with pytest.raises(ValueError, match="without config.json"):
        load_model(str(f))

    f = _copy(src, tmp_path / "badjson")
    (f / "config.json").write_text("{")
    _one_line_error(f, r"config\.json: not valid JSON")

    f = _copy(src, tmp_path / "gelu")
    _edit_config(f, hidden_act="gelu")
    _one_line_error(f, r"config\.json: hidden_act: 'gelu' is not supported \(relu2, silu\)")

    f = _copy(src, tmp_path / "mtype")
    _edit_config(f, model_type="gpt2")
    _one_line_error(f, r"config\.json: model_type: 'gpt2' is not supported")

    f = _copy(src, tmp_path / "llama")
    _edit_config(f, model_type="llama", architectures=["LlamaForCausalLM"], quantization_config=None)
    _one_line_error(f, r"config\.json: architectures: .*not a BitNet model")

    f = _copy(src, tmp_path / "huge")
    _edit_config(f, hidden_size=1 << 40)
    _one_line_error(f, r"config\.json: hidden_size: .*out of range")

    f = _copy(src, tmp_path / "lc")
    _edit_config(f, quantization_config={"quant_method": "bitnet", "linear_class": "fancy"})
    _one_line_error(f, r"quantization_config\.linear_class: 'fancy' is not supported")

    f = _copy(src, tmp_path / "dtype")
    _edit_tensors(f, lambda t: t.__setitem__(q, t[q].to(torch.float16)))
    _one_line_error(
        f,
        r"model\.safetensors: tensor model\.layers\.0\.self_attn\.q_proj\.weight has dtype F16, "
        r"expected U8",
    )

    f = _copy(src, tmp_path / "shape")
    _edit_tensors(f, lambda t: t.__setitem__(q, t[q][:-1].contiguous()))
    _one_line_error(
        f,
        r"tensor model\.layers\.0\.self_attn\.q_proj\.weight has shape \[15, 64\], expected "
        r"\[16, 64\]",
    )

    f = _copy(src, tmp_path / "noscale")
    _edit_tensors(f, lambda t: t.pop(q + "_scale"))
    _one_line_error(f, r"tensor model\.layers\.0\.self_attn\.q_proj\.weight_scale missing")

    f = _copy(src, tmp_path / "missing")
    _edit_tensors(f, lambda t: t.pop("model.layers.1.mlp.ffn_sub_norm.weight"))
    _one_line_error(f, r"tensor model\.layers\.1\.mlp\.ffn_sub_norm\.weight missing")

    f = _copy(src, tmp_path / "extra")
    _edit_tensors(f, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias", torch.zeros(64)))
    _one_line_error(f, r"unexpected tensor model\.layers\.0\.self_attn\.q_proj\.bias")

    f = _copy(src, tmp_path / "code3")
    _edit_tensors(f, lambda t: t[q].__setitem__((0, 0), 0xFF))
    _one_line_error(f, r"tensor model\.layers\.0\.self_attn\.q_proj\.weight: 2-bit code 3")

    f = _copy(src, tmp_path / "junk")
    (f / "model.safetensors").write_bytes(b"\x00" * 64)
    _one_line_error(f, r"junk/model\.safetensors: not a safetensors file")

    f = _copy(src, tmp_path / "pickle")
    (f / "model.safetensors").unlink()
    (f / "pytorch_model.bin").write_bytes(b"")
    _one_line_error(f, r"expected model\.safetensors or model\.safetensors\.index\.json")

    f = _copy(folders["latent"], tmp_path / "shard")
    (f / sorted(f.glob("model-*.safetensors"))[1].name).unlink()
    _one_line_error(f, r"shard\S* shard listed in the index is missing")


# ------------------------------------------------------------------ our own checkpoints in safetensors
@pytest.mark.parametrize("tied", [True, False])
def test_safetensors_checkpoint_roundtrip(tmp_path, tied):
    cfg = dataclasses.replace(LATENT_PLAIN, tie_embeddings=tied)
    model = build_model(cfg, seed=11)
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"note": "test", "steps": 3})
    with safe_open(path, framework="pt") as f:
        md = f.metadata()
        assert ("lm_head.weight" in f.keys()) == (not tied)
    assert md["format"] == "tritium-lm" and json.loads(md["config"]) == cfg.to_dict()
    assert json.loads(md["meta"]) == {"note": "test", "steps": 3}
    for loaded in (load_checkpoint(path), load_model(str(path))):
        tok = torch.arange(9)[None]
        with torch.no_grad():
            assert torch.equal(loaded(tok, mode="int"), model(tok, mode="int"))
        assert (loaded.lm_head.weight is loaded.embed_tokens.weight) == tied


def test_safetensors_checkpoint_errors(tmp_path, repo):
    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"other\.safetensors: not a tritium-lm checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
    model = build_model(LATENT_PLAIN, seed=1)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    t = load_file(path)
    with safe_open(path, framework="pt") as f:
        md = f.metadata()
    t.pop("layers.1.ffn.up_proj.weight")
    save_file(t, tmp_path / "missing.safetensors", metadata=md)
    with pytest.raises(CheckpointError, match=r"missing\.safetensors: .*missing 1 key"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="not JSON-serializable"):
        save_checkpoint(model, tmp_path / "bad.safetensors", {"x": object()})
    old = load_checkpoint(repo / "models" / "checkpoints" / "tiny.pt")  # the torch format still reads
    assert old.config == PRESETS["tiny"]
