"""Checkpoints of :class:`~models.lm.TernaryLM`: safetensors (new) or a torch ``weights_only`` dict (older).

``.safetensors`` (written by :func:`save_checkpoint` for a path ending in ``.safetensors``): the state_dict's
float32 tensors (a tied ``lm_head.weight`` is left out and restored from ``embed_tokens.weight``), and as
safetensors metadata (strings): ``format`` = ``"tritium-lm"``, ``version`` = ``"1"``, ``config`` = the
LMConfig as JSON, ``meta`` = the meta dict as JSON. Nothing is unpickled when reading it.

Torch format (any other suffix, e.g. the committed ``models/checkpoints/tiny.pt``): a plain dict that
``torch.load(path, weights_only=True)`` accepts::

    {"format": "tritium-lm", "version": 1,
     "config": LMConfig as a dict,
     "state_dict": the model's state_dict (float32 tensors; tied weights appear under both names),
     "meta": dict of plain values (training run facts)}

Both are read by :func:`load_checkpoint` (by content, not by suffix). Hugging Face folders are read by
:mod:`models.hf`.

Every failure of :func:`load_checkpoint` is a :class:`CheckpointError` (a ValueError) with one line naming the
file and what is wrong.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from hw import data_files
from hw.files import atomic_write
from models.lm import LMConfig, TernaryLM

__all__ = [
    "FORMAT",
    "VERSION",
    "DIM_LIMITS",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "check_dims",
]

FORMAT = "tritium-lm"
VERSION = 1

# Largest model shape a checkpoint may declare, checked before anything is allocated (the RoPE tables are
# max_seq × head_dim and not in the state_dict, so a hostile max_seq would otherwise allocate first).
# BitNet-2B is vocab 128256, d_model 2560, 30 layers, ffn 6912, max_seq 4096.
DIM_LIMITS = {
    "vocab": 1 << 20,
    "d_model": 1 << 16,
    "n_layers": 1024,
    "n_heads": 1024,
    "n_kv_heads": 1024,
    "ffn": 1 << 18,
    "max_seq": 1 << 20,
}
ROPE_LIMIT = 1 << 24  # max_seq · head_dim values per RoPE table (64 MiB of float32)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model it describes."""


def save_checkpoint(model: TernaryLM, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` atomically (temporary file in the same folder, then rename): safetensors when ``path``
    ends in ``.safetensors``, else the torch format. ``meta`` must be JSON-serializable for safetensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_embeddings:
            sd.pop("lm_head.weight", None)
        try:
            meta_json = json.dumps(dict(meta or {}))
        except TypeError as e:
            raise ValueError(f"{path}: meta is not JSON-serializable ({e})") from None
        md = {
            "format": FORMAT,
            "version": str(VERSION),
            "config": json.dumps(model.config.to_dict()),
            "meta": meta_json,
        }
        data = save(sd, metadata=md)
        with atomic_write(path) as f:
            f.write(data)
        return path
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    with atomic_write(path) as f:
        torch.save(obj, f)
    return path


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with a little-endian u64 header length, then the JSON header ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            md = f.metadata() or {}
            if md.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path}: not a {FORMAT} checkpoint (safetensors metadata format="
                    f"{md.get('format')!r}; a Hugging Face model is a folder with config.json)"
                )
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a safetensors file ({str(e).splitlines()[0]})") from None
    obj = {"format": FORMAT, "version": md.get("version"), "state_dict": sd}
    if obj["version"] == str(VERSION):
        obj["version"] = VERSION
    for key in ("config", "meta"):
        try:
            obj[key] = json.loads(md.get(key, "null"))
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON") from None
    cfg = obj["config"]
    if (
        isinstance(cfg, dict)
        and cfg.get("tie_embeddings")
        and "embed_tokens.weight" in sd
        and "lm_head.weight" not in sd
    ):
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    return obj


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check the outer structure of a checkpoint file (safetensors or torch); returns the dict."""
    path = data_files.resolve(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if _is_safetensors(path):
        obj = _read_safetensors(path)
    else:
        obj = _read_torch(path)
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {obj.get('version')!r}, this code reads {VERSION}")
    for key, typ in (("config", dict), ("state_dict", dict)):
        if not isinstance(obj.get(key), typ):
            raise CheckpointError(f"{path}: field {key!r} missing or not a {typ.__name__}")
    return obj


def _read_torch(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", str(e)).strip()  # torch colours parts of its message
        # torch's first line only says that loading failed (and suggests weights_only=False: not here); the
        # reason follows "WeightsUnpickler error:" (an unsupported global or pickle operand)
        _, _, after = text.partition("WeightsUnpickler error:")
        reasons = [ln.strip() for ln in (after or text).splitlines() if ln.strip()]
        why = reasons[0].split(" Please ")[0].split(". In PyTorch")[0] if reasons else type(e).__name__
        raise CheckpointError(f"{path}: not a torch checkpoint ({why})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (expected a dict with format={FORMAT!r})")
    return obj


def check_dims(config: dict) -> None:
    """Refuse a model config whose dimensions exceed :data:`DIM_LIMITS` (ValueError naming the field)."""
    for field, hi in DIM_LIMITS.items():
        v = config.get(field)
        if isinstance(v, bool) or not isinstance(v, int):
            if v is not None:
                raise ValueError(f"{field}: expected an integer in 1..{hi}, got {repr(v)[:40]}")
        elif not 1 <= v <= hi:
            raise ValueError(
                f"{field}: {v if v.bit_length() < 64 else 'a huge number'} is out of range, allowed 1..{hi}"
            )
    d, h, s = config.get("d_model"), config.get("n_heads"), config.get("max_seq")
    if all(isinstance(x, int) for x in (d, h, s)) and s * (d // h) > ROPE_LIMIT:
        raise ValueError(f"max_seq: {s} × head_dim {d // h} exceeds {ROPE_LIMIT} RoPE table values")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> TernaryLM:
    """Build the checkpoint's model, load its weights and return it in eval mode (``device="meta"``: checked,
    then built without weights)."""
    path = Path(path)
    obj = read_checkpoint(path)
    try:
        check_dims(obj["config"])
        cfg = LMConfig.from_dict(obj["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad config: {e}") from None
    expected = TernaryLM(cfg, device="meta").state_dict()  # shapes only (device= keeps RoPE tables empty)
    sd = obj["state_dict"]
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), first {missing[0]!r}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s), first {unexpected[0]!r}")
        raise CheckpointError(f"{path}: state_dict does not match the config: {'; '.join(parts)}")
    for k, ref in expected.items():
        t = sd[k]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: state_dict[{k!r}] is not a tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: state_dict[{k!r}] has shape {tuple(t.shape)}, the config needs {tuple(ref.shape)}"
            )
        if not t.is_floating_point():
            raise CheckpointError(f"{path}: state_dict[{k!r}] has dtype {t.dtype}, expected a float tensor")
    if torch.device(device).type == "meta":  # shapes only: nothing to copy the weights into
        return TernaryLM(cfg, device="meta").eval()
    model = TernaryLM(cfg, device=device)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()})
    return model.eval()
