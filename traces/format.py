"""KV trace format (version 1): the post-RoPE queries and keys of one recorded token stream.

One ``.npz`` file per stream (written with ``np.savez_compressed``, read with ``np.load(allow_pickle=False)``;
no object arrays). Arrays (L layers, H query heads, Hkv KV heads, S tokens, hd = head_dim):

=============  =================  ==========================================================================
name           dtype, shape       meaning
=============  =================  ==========================================================================
``keys``       float32 (L,Hkv,S,hd)  post-RoPE keys, exactly the float32 tensor the int-mode model feeds to
                                  ``quantize_act`` (the KV cache holds ``quantize_act(keys)``)
``queries``    float32 (L,H,S,hd)    post-RoPE queries (query head h uses KV head ``h // (H/Hkv)``)
``positions``  int64 (S,)         absolute position of each token (0, 1, ... for a stream from a fresh cache)
``tokens``     int64 (S,)         token ids of the stream (bytes for the tiny model)
``meta``       0-d unicode str    JSON object, the fields below
=============  =================  ==========================================================================

``meta`` fields: ``format`` (``"tritium-kv-trace"``), ``version`` (1), ``model`` (preset or checkpoint name),
``model_config`` (the LMConfig dict), ``checkpoint_sha256``, ``source`` (text source, e.g.
``"pydoc+docstrings/validation"``), ``offset`` (byte offset of the first token in that text), ``n_layers``,
``n_heads``, ``n_kv_heads``, ``head_dim``, ``n_tokens``, ``dtype`` (``"float32"``), ``mode`` (the forward mode
the tensors come from, ``"int"``); any further fields are kept as they are (e.g. ``corpus_sha256``).

:func:`load_trace` checks all of it and raises :class:`TraceError` (a ValueError) with one line naming the file
and the problem: unreadable / corrupt / truncated file, missing or extra arrays, wrong dtypes or shapes,
meta that is not JSON or has the wrong format/version, head counts that do not divide, NaN/inf values.
:func:`save_trace` validates the same way before writing, and writes atomically.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hw import data_files
from hw.files import atomic_write

__all__ = ["FORMAT", "VERSION", "ARRAYS", "TraceError", "Trace", "load_trace", "save_trace", "validate"]

FORMAT = "tritium-kv-trace"
VERSION = 1
ARRAYS = ("keys", "queries", "positions", "tokens", "meta")
_META_INT = ("n_layers", "n_heads", "n_kv_heads", "head_dim", "n_tokens", "offset")
_META_REQUIRED = (
    "format",
    "version",
    "model",
    "model_config",
    "checkpoint_sha256",
    "source",
    "dtype",
    "mode",
    *_META_INT,
)


class TraceError(ValueError):
    """A trace file is missing, unreadable or inconsistent (the message names the file)."""


def _axis(array: str, axis: int, doc: str) -> property:
    """A dimension of the trace, read from the shape of one of its arrays (they are the one record of it)."""
    return property(lambda self: getattr(self, array).shape[axis], doc=doc)


@dataclass
class Trace:
    """One recorded stream; see the module docstring for the arrays and ``meta``."""

    keys: np.ndarray  # float32 (L, Hkv, S, hd)
    queries: np.ndarray  # float32 (L, H, S, hd)
    positions: np.ndarray  # int64 (S,)
    tokens: np.ndarray  # int64 (S,)
    meta: dict = field(default_factory=dict)
    path: str = "<memory>"

    n_layers = _axis("keys", 0, "L: decoder layers")
    n_kv_heads = _axis("keys", 1, "Hkv: KV heads")
    n_heads = _axis("queries", 1, "H: query heads")
    n_tokens = _axis("keys", 2, "S: tokens of the stream")
    head_dim = _axis("keys", 3, "hd: values per key and query")

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def query_heads(self, kv_head: int) -> range:
        g = self.group
        return range(kv_head * g, kv_head * g + g)

    @property
    def name(self) -> str:
        return Path(self.path).name

    def prefix(self, tokens: int) -> Trace:
        """The first ``tokens`` tokens of the stream, copied (in int mode a prefix's q/k do not depend on what
        follows, so it is the trace of the shorter stream)."""
        return Trace(
            self.keys[:, :, :tokens].copy(),
            self.queries[:, :, :tokens].copy(),
            self.positions[:tokens].copy(),
            self.tokens[:tokens].copy(),
            {**self.meta, "n_tokens": tokens},
            self.path,
        )


def _err(path, msg: str) -> TraceError:
    return TraceError(f"{path}: {msg}")


def validate(t: Trace) -> Trace:
    """Check a :class:`Trace` in memory (what :func:`load_trace` checks after reading); returns it."""
    p = t.path
    for name, dt, nd in (
        ("keys", np.float32, 4),
        ("queries", np.float32, 4),
        ("positions", np.int64, 1),
        ("tokens", np.int64, 1),
    ):
        a = getattr(t, name)
        if not isinstance(a, np.ndarray):
            raise _err(p, f"array {name!r} is not an ndarray")
        if a.dtype != dt:
            raise _err(p, f"array {name!r} has dtype {a.dtype}, expected {np.dtype(dt)}")
        if a.ndim != nd:
            raise _err(p, f"array {name!r} has shape {a.shape}, expected {nd} dimensions")
    L, hkv, S, hd = t.keys.shape
    if min(t.keys.shape) < 1:
        raise _err(p, f"array 'keys' has an empty dimension {t.keys.shape}")
    Lq, h, Sq, hdq = t.queries.shape
    if (Lq, Sq, hdq) != (L, S, hd):
        raise _err(
            p,
            f"array 'queries' has shape {t.queries.shape}, expected (L={L}, H, S={S}, hd={hd}) "
            f"to match 'keys' {t.keys.shape}",
        )
    if h < 1 or h % hkv:
        raise _err(p, f"{h} query heads are not a multiple of {hkv} KV heads")
    for name in ("positions", "tokens"):
        if getattr(t, name).shape != (S,):
            raise _err(p, f"array {name!r} has shape {getattr(t, name).shape}, expected ({S},)")
    for name in ("keys", "queries"):
        a = getattr(t, name)
        if not np.isfinite(a).all():
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise _err(p, f"array {name!r} has {bad} NaN/inf value(s)")
    if S > 1 and not (np.diff(t.positions) > 0).all():
        raise _err(p, "positions are not strictly increasing")
    if (t.positions < 0).any() or (t.tokens < 0).any():
        raise _err(p, "negative positions or token ids")
    m = t.meta
    if not isinstance(m, dict):
        raise _err(p, "meta is not a JSON object")
    missing = [k for k in _META_REQUIRED if k not in m]
    if missing:
        raise _err(p, f"meta lacks field(s) {', '.join(missing)}")
    if m["format"] != FORMAT:
        raise _err(p, f"meta format {m['format']!r}, expected {FORMAT!r}")
    if m["version"] != VERSION:
        raise _err(p, f"trace version {m['version']!r}, this code reads version {VERSION}")
    for k in _META_INT:
        if not isinstance(m[k], int) or isinstance(m[k], bool) or m[k] < 0:
            raise _err(p, f"meta field {k!r}={m[k]!r} is not a non-negative integer")
    if m["dtype"] != "float32":
        raise _err(p, f"meta dtype {m['dtype']!r}, expected 'float32'")
    if not isinstance(m["model_config"], dict):
        raise _err(p, "meta field 'model_config' is not an object")
    shape = {"n_layers": L, "n_heads": h, "n_kv_heads": hkv, "head_dim": hd, "n_tokens": S}
    for k, v in shape.items():
        if m[k] != v:
            raise _err(p, f"meta {k}={m[k]} but the arrays have {v}")
    return t


def load_trace(path: str | os.PathLike) -> Trace:
    """Read and validate one trace file (see the module docstring); :class:`TraceError` on any problem."""
    path = data_files.resolve(path)
    if not path.is_file():
        raise _err(path, "no such trace file")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            missing = [a for a in ARRAYS if a not in names]
            if missing:
                raise _err(path, f"missing array(s) {', '.join(missing)}")
            extra = sorted(names - set(ARRAYS))
            if extra:
                raise _err(path, f"unexpected array(s) {', '.join(extra)}")
            arrays = {a: z[a] for a in ARRAYS}
    except TraceError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zipfile.LargeZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _err(path, f"not a readable .npz trace ({first})") from None
    except Exception as e:  # noqa: BLE001 - zlib / zipfile raise assorted types on a damaged member
        raise _err(path, f"not a readable .npz trace ({type(e).__name__}: {e})") from None
    meta_arr = arrays.pop("meta")
    if meta_arr.ndim != 0 or meta_arr.dtype.kind != "U":
        raise _err(
            path,
            f"array 'meta' must be a 0-d unicode string, got dtype {meta_arr.dtype} shape {meta_arr.shape}",
        )
    try:
        meta = json.loads(str(meta_arr))
    except json.JSONDecodeError as e:
        raise _err(path, f"meta is not valid JSON ({e.msg} at character {e.pos})") from None
    return validate(Trace(**arrays, meta=meta, path=str(path)))


def save_trace(trace: Trace, path: str | os.PathLike) -> Path:
    """Validate ``trace`` and write it to ``path`` atomically (temporary file in the same folder, rename)."""
    path = Path(path)
    validate(Trace(trace.keys, trace.queries, trace.positions, trace.tokens, trace.meta, str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        np.savez_compressed(
            f,
            keys=trace.keys,
            queries=trace.queries,
            positions=trace.positions,
            tokens=trace.tokens,
            meta=np.array(json.dumps(trace.meta, sort_keys=True)),
        )
    return path
