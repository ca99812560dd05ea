"""Checkpoints: a plain dict that ``torch.load(path, weights_only=True)`` accepts.

Format (``format == "tritium-lm"``, ``version == 1``)::

    {"format": "tritium-lm", "version": 1,
     "config": LMConfig as a dict,
     "state_dict": the model's state_dict (float32 tensors; tied weights appear under both names),
     "meta": dict of plain values (training run facts)}

Every failure of :func:`load_checkpoint` is a :class:`CheckpointError` (a ValueError) with one line naming the
file and what is wrong.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from hw import data_files
from models.lm import LMConfig, TernaryLM

__all__ = ["FORMAT", "VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT = "tritium-lm"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model it describes."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(model: TernaryLM, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
           "state_dict": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
           "meta": dict(meta or {})}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check the outer structure of a checkpoint file; returns the dict."""
    path = data_files.resolve(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a torch checkpoint ({first})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (expected a dict with format={FORMAT!r})")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {obj.get('version')!r}, this code reads {VERSION}")
    for key, typ in (("config", dict), ("state_dict", dict)):
        if not isinstance(obj.get(key), typ):
            raise CheckpointError(f"{path}: field {key!r} missing or not a {typ.__name__}")
    return obj


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> TernaryLM:
    """Build the checkpoint's model, load its weights and return it in eval mode."""
    path = Path(path)
    obj = read_checkpoint(path)
    try:
        cfg = LMConfig.from_dict(obj["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad config: {e}") from None
    with torch.device("meta"):
        model = TernaryLM(cfg)
    expected = model.state_dict()
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
            raise CheckpointError(f"{path}: state_dict[{k!r}] has shape {tuple(t.shape)}, the config needs "
                                  f"{tuple(ref.shape)}")
        if not t.is_floating_point():
            raise CheckpointError(f"{path}: state_dict[{k!r}] has dtype {t.dtype}, expected a float tensor")
    model = TernaryLM(cfg, device=device)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()})
    return model.eval()
