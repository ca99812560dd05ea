"""Hugging Face BitNet checkpoints → :class:`models.lm.TernaryLM` (no ``transformers``; safetensors only).

A Hugging Face model folder holds ``config.json`` and either ``model.safetensors`` or shards listed by
``model.safetensors.index.json``. Two layouts are read (docs/models.md has the details and the evidence):

``packed``  microsoft/bitnet-b1.58-2B-4T: ``model_type: bitnet`` with ``quantization_config.quant_method:
            bitnet``. Every projection is uint8 ``[out/4, in]``: the 2-bit code ``w + 1`` of row
            ``i·out/4 + r`` sits in bits ``2i..2i+1`` of packed row ``r`` (blocked along the output axis), plus
            a per-tensor ``weight_scale``. ``quantization_config.linear_class: autobitlinear`` (transformers'
            ``AutoBitLinear``) multiplies the output by the scale; ``bitlinear`` divides by it. Sub-norms
            ``self_attn.attn_sub_norm`` / ``mlp.ffn_sub_norm``, ReLU² (``hidden_act: relu2``).
``latent``  1bitLLM/bitnet_b1_58-large (``model_type: llama``, ``architectures: [BitnetForCausalLM]``) and
            unpacked ``model_type: bitnet`` folders: float16/bfloat16/float32 weights, ternarized on load by
            BitNet's absmean rule (exactly :func:`models.bitlinear.ternary_weight`). SwiGLU (``hidden_act:
            silu``) or ReLU²; ``self_attn.inner_attn_ln`` / ``mlp.ffn_layernorm`` (1bitLLM) or the bitnet
            sub-norm names, when present, become the model's sub-LN.

The ternary codes and scale of a packed projection are stored in the TernaryLM as an equivalent *latent*
float32 weight (:func:`latent_weight`): ``code · a`` with ``a`` chosen so that BitNet's absmean quantizer, the one
every forward mode, the compiler and the Programs apply, gives back exactly the checkpoint's codes and its scale
(to the nearest float32 the quantizer's float32 mean can produce: within one ulp). Such a model is meant for the
``int`` and ``fake`` modes; its ``float`` mode multiplies by ``a`` instead of the scale.

Every failure is a :class:`~models.checkpoint.CheckpointError` with one line naming the file and the field or
tensor. Dimensions are bounded (:data:`models.checkpoint.DIM_LIMITS`) before anything is allocated.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hw.ternary import quantize_weights
from models.checkpoint import CheckpointError, check_dims
from models.lm import LMConfig, TernaryLM

__all__ = [
    "HFLayout",
    "is_hf_folder",
    "read_hf_config",
    "load_hf",
    "unpack_ternary",
    "pack_ternary",
    "latent_weight",
    "write_synthetic_hf",
]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
ACTIVATIONS = {"relu2": "relu2", "silu": "swiglu"}
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
PROJ = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
OURS = {"self_attn": "attn", "mlp": "ffn"}
SUBNORMS = {"self_attn": ("attn_sub_norm", "inner_attn_ln"), "mlp": ("ffn_sub_norm", "ffn_layernorm")}
IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # old Llama exports


@dataclass(frozen=True)
class HFLayout:
    """How a folder's tensors are stored: ``packed`` ternary (uint8 + weight_scale) or ``latent`` floats;
    ``scale_divides`` for packed checkpoints whose ``linear_class`` is ``bitlinear``."""

    kind: str
    scale_divides: bool = False
    model_type: str = ""


def is_hf_folder(path: str | os.PathLike) -> bool:
    """A folder holding ``config.json`` (what :func:`compiler.load_model` treats as a Hugging Face model)."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def _fail(where: Path | str, msg: str) -> CheckpointError:
    return CheckpointError(f"{where}: {msg}")


def _int_field(cfg: dict, src: Path, key: str, default=None) -> int:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(src, f"{key}: expected a positive integer, got {repr(v)[:40]}")
    return v


def _float_field(cfg: dict, src: Path, key: str, default: float) -> float:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise _fail(src, f"{key}: expected a positive number, got {repr(v)[:40]}")
    return float(v)


def read_hf_config(folder: str | os.PathLike) -> tuple[LMConfig, HFLayout, dict]:
    """Parse and check ``config.json``; returns ``(LMConfig without subln decided, layout, raw config)``.

    ``subln`` is ``True`` for ``model_type: bitnet``; for Llama-type folders it is decided by the tensors
    (see :func:`load_hf`)."""
    folder = Path(folder)
    src = folder / "config.json"
    if not src.is_file():
        raise _fail(
            folder, "no config.json (a Hugging Face model folder needs config.json and *.safetensors)"
        )
    try:
        raw = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(src, f"not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise _fail(src, "expected a JSON object")
    mt = raw.get("model_type")
    arch = raw.get("architectures") or []
    qc = raw.get("quantization_config")
    if mt == "bitnet":
        packed = (
            isinstance(qc, dict)
            and qc.get("quant_method") == "bitnet"
            and qc.get("quantization_mode", "offline") == "offline"
        )
        if qc is not None and not isinstance(qc, dict):
            raise _fail(src, "quantization_config: expected an object")
        if isinstance(qc, dict) and qc.get("quant_method") not in (None, "bitnet"):
            raise _fail(
                src, f"quantization_config.quant_method: {qc.get('quant_method')!r} is not supported (bitnet)"
            )
        lc = qc.get("linear_class", "bitlinear") if isinstance(qc, dict) else "bitlinear"
        if lc not in ("bitlinear", "autobitlinear"):
            raise _fail(
                src, f"quantization_config.linear_class: {lc!r} is not supported (autobitlinear, bitlinear)"
            )
        layout = HFLayout("packed" if packed else "latent", packed and lc == "bitlinear", mt)
        defaults = {"rope_theta": 500000.0, "rms_norm_eps": 1e-5, "act": "relu2"}
    elif mt == "llama":
        if not any(isinstance(a, str) and a.lower() == "bitnetforcausallm" for a in arch):
            raise _fail(
                src,
                f"architectures: {arch!r} is not a BitNet model (expected BitnetForCausalLM; a "
                "float Llama cannot be ternarized)",
            )
        if qc is not None:
            raise _fail(
                src, "quantization_config: not supported for model_type llama (latent BitNet weights)"
            )
        layout = HFLayout("latent", False, mt)
        defaults = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "act": "silu"}
    else:
        raise _fail(src, f"model_type: {mt!r} is not supported (bitnet, llama with BitnetForCausalLM)")
    act = raw.get("hidden_act", defaults["act"])
    if act not in ACTIVATIONS:
        raise _fail(src, f"hidden_act: {act!r} is not supported ({', '.join(ACTIVATIONS)})")
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            raise _fail(src, f"{key}: true is not supported (BitNet projections have no bias)")
    if raw.get("rope_scaling") not in (None, {}):
        raise _fail(src, "rope_scaling: not supported (plain RoPE only); remove it or use a model without it")
    d = _int_field(raw, src, "hidden_size")
    heads = _int_field(raw, src, "num_attention_heads")
    kv = raw.get("num_key_value_heads")
    fields = {
        "vocab": _int_field(raw, src, "vocab_size"),
        "d_model": d,
        "n_layers": _int_field(raw, src, "num_hidden_layers"),
        "n_heads": heads,
        "n_kv_heads": heads if kv is None else _int_field(raw, src, "num_key_value_heads"),
        "ffn": _int_field(raw, src, "intermediate_size"),
        "max_seq": _int_field(raw, src, "max_position_embeddings", 2048),
    }
    names = {
        "vocab": "vocab_size",
        "d_model": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "max_seq": "max_position_embeddings",
    }
    try:
        check_dims(fields)
    except ValueError as e:
        field, _, rest = str(e).partition(":")
        raise _fail(src, f"{names.get(field, field)}:{rest}") from None
    hd = raw.get("head_dim")
    if hd is not None and hd != d // heads:
        raise _fail(
            src,
            f"head_dim: {hd!r} differs from hidden_size / num_attention_heads = {d // heads} (not supported)",
        )
    tied = raw.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise _fail(src, f"tie_word_embeddings: expected true or false, got {tied!r}")
    try:
        cfg = LMConfig(
            activation=ACTIVATIONS[act],
            rope_theta=_float_field(raw, src, "rope_theta", defaults["rope_theta"]),
            norm_eps=_float_field(raw, src, "rms_norm_eps", defaults["rms_norm_eps"]),
            subln=mt == "bitnet",
            tie_embeddings=tied,
            **fields,
        )
    except ValueError as e:
        raise _fail(src, str(e)) from None
    return cfg, layout, raw


# ------------------------------------------------------------------ tensors
class _Tensors:
    """The folder's tensors by name: which file holds each, dtype and shape from the headers (no data read)."""

    def __init__(self, folder: Path):
        from safetensors import SafetensorError, safe_open

        self.folder = folder
        self._open = safe_open
        self.where: dict[str, Path] = {}
        self.info: dict[str, tuple[str, tuple[int, ...]]] = {}
        index = folder / INDEX
        if index.is_file():
            try:
                wm = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
                raise _fail(index, f"not a valid index ({str(e).splitlines()[0] if str(e) else e})") from None
            if not isinstance(wm, dict) or not wm:
                raise _fail(index, "weight_map: expected a non-empty object of tensor name → file")
            files = sorted(set(wm.values()), key=str)
            for f in files:
                if not isinstance(f, str) or Path(f).name != f or not f.endswith(".safetensors"):
                    raise _fail(index, f"weight_map: {f!r} is not a .safetensors file name in the folder")
        elif (folder / SINGLE).is_file():
            files = [SINGLE]
        else:
            found = sorted(p.name for p in folder.glob("*.safetensors"))
            if len(found) != 1:
                why = "none" if not found else f"{len(found)} without {INDEX}"
                raise _fail(
                    folder,
                    f"expected {SINGLE} or {INDEX} with its shards ({why} found; pickled "
                    ".bin/.pt weights are not read)",
                )
            files = found
        for name in files:
            path = folder / name
            if not path.is_file():
                raise _fail(path, "shard listed in the index is missing")
            try:
                with safe_open(path, framework="pt") as f:
                    for k in f.keys():
                        s = f.get_slice(k)
                        if k in self.where:
                            raise _fail(path, f"tensor {k} also in {self.where[k].name}")
                        self.where[k] = path
                        self.info[k] = (s.get_dtype(), tuple(int(x) for x in s.get_shape()))
            except SafetensorError as e:
                raise _fail(path, f"not a safetensors file ({str(e).splitlines()[0]})") from None
            except OSError as e:
                raise _fail(path, f"cannot read ({e.strerror or e})") from None

    def get(self, name: str) -> torch.Tensor:
        with self._open(self.where[name], framework="pt") as f:
            return f.get_tensor(name)


def unpack_ternary(packed: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 ``[out/4, in]`` → int8 ``[out, in]`` in {-1, 0, 1}: row ``i·out/4 + r`` is bits ``2i..2i+1`` of
    packed row ``r``, minus 1. A 2-bit code of 3 is refused (ValueError)."""
    p = np.asarray(packed.numpy() if isinstance(packed, torch.Tensor) else packed, dtype=np.uint8)
    codes = np.concatenate([(p >> (2 * i)) & 3 for i in range(4)], axis=0)
    if (codes == 3).any():
        raise ValueError("2-bit code 3 found (codes are w + 1 in 0..2)")
    return codes.astype(np.int8) - 1


def pack_ternary(w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`unpack_ternary`: int ``[out, in]`` in {-1, 0, 1} (out a multiple of 4) → uint8."""
    w = np.asarray(w)
    if w.shape[0] % 4:
        raise ValueError(f"pack_ternary: {w.shape[0]} rows is not a multiple of 4")
    c = (w + 1).astype(np.uint8).reshape(4, w.shape[0] // 4, *w.shape[1:])
    return (c[0] | (c[1] << 2) | (c[2] << 4) | (c[3] << 6)).astype(np.uint8)


def latent_weight(codes: np.ndarray, scale: float) -> np.ndarray:
    """A float32 weight whose BitNet absmean quantization (:func:`hw.ternary.quantize_weights`, hence
    :func:`models.bitlinear.ternary_weight`) returns exactly ``codes`` and, as its scale, ``scale`` rounded to
    float32 whenever the quantizer's float32 mean can produce that value, else the nearest value it can.

    Every nonzero code becomes ``±a`` with ``a = scale · n / nnz`` except the first, ``±b``; ``b`` (within
    [0.75·a, 1.5·a], so every code survives the rounding) is found by bisection on its float32 bit pattern, the
    mean being monotone in ``b``."""
    codes = np.asarray(codes, dtype=np.int8)
    flat = codes.reshape(-1)
    nz = np.flatnonzero(flat)
    if nz.size == 0:
        return np.zeros(codes.shape, np.float32)
    s32 = np.float32(scale)
    if not (np.isfinite(s32) and s32 >= 1e-5):
        raise ValueError(f"scale {scale!r}: must be a finite number ≥ 1e-5 (BitNet's absmean floor)")
    a = np.float32(float(s32) * flat.size / nz.size)
    mag = np.abs(flat).astype(np.float32) * a  # |w|, what the quantizer averages (same values, same order)
    i0 = nz[0]

    def mean_at(bits: int) -> np.float32:
        mag[i0] = np.array(bits, np.int32).view(np.float32)
        return mag.mean()

    lo = int(np.float32(0.75 * a).view(np.int32))
    hi = int(np.float32(1.5 * a).view(np.int32))
    while lo < hi:  # smallest b with mean(b) >= scale
        mid = (lo + hi) // 2
        if mean_at(mid) >= s32:
            hi = mid
        else:
            lo = mid + 1
    cands = [c for c in (lo - 1, lo) if c > 0]
    best = min(cands, key=lambda c: abs(float(mean_at(c)) - float(s32)))
    mean_at(best)
    out = (mag * flat.astype(np.float32)).reshape(codes.shape)  # sign · |w| (exact)
    wq, _ = quantize_weights(out)
    if not np.array_equal(wq, codes):  # cannot happen: every |w| / mean|w| ≥ 0.75 → ±1
        raise ValueError("latent weight does not reproduce the ternary codes")
    return out


# ------------------------------------------------------------------ loading
def _names(cfg: LMConfig) -> list[tuple[str, str, str, str | None]]:
    """(our name, HF name, role, sub-norm alias group) for every tensor the model needs."""
    out = [("embed_tokens.weight", "model.embed_tokens.weight", "float", None)]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}"
        out.append((f"layers.{i}.attn_norm.weight", f"{p}.input_layernorm.weight", "float", None))
        out.append((f"layers.{i}.ffn_norm.weight", f"{p}.post_attention_layernorm.weight", "float", None))
        for blk, projs in PROJ.items():
            for proj in projs:
                out.append(
                    (f"layers.{i}.{OURS[blk]}.{proj}.weight", f"{p}.{blk}.{proj}.weight", "proj", None)
                )
            out.append((f"layers.{i}.{OURS[blk]}.sub_norm.weight", f"{p}.{blk}", "subnorm", blk))
    out.append(("norm.weight", "model.norm.weight", "float", None))
    if not cfg.tie_embeddings:
        out.append(("lm_head.weight", "lm_head.weight", "float", None))
    return out


def load_hf(folder: str | os.PathLike, device: str | torch.device = "cpu") -> TernaryLM:
    """Build the :class:`TernaryLM` of a Hugging Face BitNet folder and return it in eval mode.

    ``device="meta"`` checks config, names, dtypes and shapes from the safetensors headers and returns a
    shapes-only model without reading any tensor data (what estimates need)."""
    folder = Path(folder)
    cfg, layout, _ = read_hf_config(folder)
    ts = _Tensors(folder)
    # sub-LN: which alias each block uses (bitnet: required; llama: all layers or none)
    alias: dict[str, str | None] = {}
    for blk, names in SUBNORMS.items():
        hits = [n for n in names if f"model.layers.0.{blk}.{n}.weight" in ts.info]
        alias[blk] = hits[0] if hits else None
    if cfg.subln and not (alias["self_attn"] and alias["mlp"]):
        missing = "self_attn.attn_sub_norm" if not alias["self_attn"] else "mlp.ffn_sub_norm"
        raise _fail(
            folder, f"tensor model.layers.0.{missing}.weight missing (model_type bitnet has sub-norms)"
        )
    if not cfg.subln and (alias["self_attn"] or alias["mlp"]):
        if not (alias["self_attn"] and alias["mlp"]):
            have = "self_attn." + alias["self_attn"] if alias["self_attn"] else "mlp." + alias["mlp"]
            raise _fail(
                folder,
                f"model.layers.0.{have}.weight without the matching norm of the other block "
                "(sub-norms must be in both attention and MLP)",
            )
        cfg = LMConfig(**{**cfg.to_dict(), "subln": True})
    expected = {}
    for ours, hf, role, blk in _names(cfg):
        if role == "subnorm":
            if not cfg.subln:
                continue
            hf = f"{hf}.{alias[blk]}.weight"
        expected[ours] = (hf, role)
    shapes = _shapes(cfg)
    used = set()
    for ours, (hf, role) in expected.items():
        if hf not in ts.info:
            raise _fail(folder, f"tensor {hf} missing")
        used.add(hf)
        dt, shape = ts.info[hf]
        src = ts.where[hf].name
        want = shapes[ours]
        if role == "proj" and layout.kind == "packed":
            if dt != "U8":
                raise _fail(
                    folder / src,
                    f"tensor {hf} has dtype {dt}, expected U8 (packed ternary, "
                    "quantization_config.quant_method: bitnet)",
                )
            if want[0] % 4 or shape != (want[0] // 4, want[1]):
                raise _fail(
                    folder / src,
                    f"tensor {hf} has shape {list(shape)}, expected "
                    f"{[want[0] // 4, want[1]]} (4 ternary rows per byte)",
                )
            sname = hf + "_scale"
            if sname not in ts.info:
                raise _fail(
                    folder, f"tensor {sname} missing (a packed projection needs its per-tensor scale)"
                )
            used.add(sname)
            sdt, sshape = ts.info[sname]
            if sdt not in FLOAT_DTYPES or math.prod(sshape) != 1:
                raise _fail(
                    folder / ts.where[sname].name,
                    f"tensor {sname} has dtype {sdt} shape {list(sshape)}, expected one float",
                )
        else:
            if dt not in FLOAT_DTYPES:
                raise _fail(folder / src, f"tensor {hf} has dtype {dt}, expected {'/'.join(FLOAT_DTYPES)}")
            if shape != want:
                raise _fail(folder / src, f"tensor {hf} has shape {list(shape)}, expected {list(want)}")
    extra = sorted(
        k
        for k in ts.info
        if k not in used and not IGNORED.fullmatch(k) and not (cfg.tie_embeddings and k == "lm_head.weight")
    )
    if extra:
        raise _fail(
            folder,
            f"unexpected tensor {extra[0]} ({len(extra)} in all; biases and other extras are not supported)",
        )
    if torch.device(device).type == "meta":
        return TernaryLM(cfg, device="meta").eval()
    sd = {}
    for ours, (hf, role) in expected.items():
        t = ts.get(hf)
        if role == "proj" and layout.kind == "packed":
            try:
                codes = unpack_ternary(t)
            except ValueError as e:
                raise _fail(folder / ts.where[hf].name, f"tensor {hf}: {e}") from None
            s = float(ts.get(hf + "_scale").to(torch.float64).reshape(()))
            if not (math.isfinite(s) and s > 0):
                raise _fail(folder, f"tensor {hf}_scale is {s}; expected a positive number")
            scale = 1.0 / s if layout.scale_divides else s
            try:
                w = torch.from_numpy(latent_weight(codes, scale))
            except ValueError as e:
                raise _fail(folder, f"tensor {hf}_scale: {e}") from None
        else:
            w = t.to(torch.float32)
        if not bool(torch.isfinite(w).all()):
            raise _fail(folder / ts.where[hf].name, f"tensor {hf} has non-finite values")
        sd[ours] = w
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    model = TernaryLM(cfg, device=device)
    model.load_state_dict(sd)
    return model.eval()


def _shapes(cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    m = TernaryLM(cfg, device="meta")  # (not `with torch.device`: that would build real RoPE tables)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


# ------------------------------------------------------------------ synthetic folders (examples, tests)
def write_synthetic_hf(
    folder: str | os.PathLike,
    cfg: LMConfig,
    layout: str = "packed",
    seed: int = 0,
    linear_class: str = "autobitlinear",
    shards: int = 1,
) -> Path:
    """Write a random Hugging Face BitNet folder of shape ``cfg`` (``layout`` ``packed``: bitnet-b1.58-2B-4T
    style, needs ``cfg.subln``; ``latent``: 1bitLLM style, ``model_type: llama``). For examples and tests:
    random weights, nothing trained. ``shards > 1`` splits the tensors over an index."""
    from safetensors.torch import save_file

    if layout not in ("packed", "latent"):
        raise ValueError(f"layout={layout!r}: expected packed or latent")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    act = {v: k for k, v in ACTIVATIONS.items()}[cfg.activation]
    conf = {
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "intermediate_size": cfg.ffn,
        "hidden_act": act,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_seq,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": "bfloat16",
    }
    if layout == "packed":
        if not cfg.subln:
            raise ValueError(
                "a packed (model_type bitnet) folder has sub-norms: use a config with subln=True"
            )
        conf.update(
            model_type="bitnet",
            architectures=["BitNetForCausalLM"],
            quantization_config={
                "quant_method": "bitnet",
                "linear_class": linear_class,
                "quantization_mode": "offline",
            },
        )
    else:
        conf.update(model_type="llama", architectures=["BitnetForCausalLM"])
    tensors = {}
    shapes = _shapes(cfg)
    for ours, hf, role, blk in _names(cfg):
        if role == "subnorm":
            if not cfg.subln:
                continue
            hf = f"{hf}.{SUBNORMS[blk][0 if layout == 'packed' else 1]}.weight"
        shape = shapes[ours]
        if role == "proj":
            fan_in = shape[1]
            if layout == "packed":
                codes = torch.randint(-1, 2, shape, generator=g).numpy()
                tensors[hf] = torch.from_numpy(pack_ternary(codes))
                s = (0.5 + torch.rand(1, generator=g)) / math.sqrt(fan_in)
                s = 1.0 / s if linear_class == "bitlinear" else s
                tensors[hf + "_scale"] = s.to(torch.bfloat16)
            else:
                tensors[hf] = (torch.randn(shape, generator=g) / math.sqrt(fan_in)).to(torch.bfloat16)
        elif ours.endswith("norm.weight"):
            tensors[hf] = (0.5 + torch.rand(shape, generator=g)).to(torch.bfloat16)
        else:  # embeddings, LM head
            tensors[hf] = (0.2 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    (folder / "config.json").write_text(json.dumps(conf, indent=1) + "\n", encoding="utf-8")
    names = list(tensors)
    if shards <= 1:
        save_file(tensors, folder / SINGLE, metadata={"format": "pt"})
        return folder
    per = math.ceil(len(names) / shards)
    wm = {}
    for j in range(shards):
        fn = f"model-{j + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[j * per : (j + 1) * per]}
        if part:
            save_file(part, folder / fn, metadata={"format": "pt"})
            wm.update({n: fn for n in part})
    (folder / INDEX).write_text(
        json.dumps({"metadata": {}, "weight_map": wm}, indent=1) + "\n", encoding="utf-8"
    )
    return folder
