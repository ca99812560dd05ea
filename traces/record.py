"""Record KV traces: run the int-mode model over validation text and keep every layer's post-RoPE q and k.

    python -m traces.record --checkpoint models/checkpoints/tiny.pt --out traces/tiny-val-0.npz \\
        --tokens 256 --offset 0
    python -m traces.record --checkpoint models/checkpoints/tiny.pt --perplexity 256 512 1024

The stream is ``tokens`` bytes of the corpus's validation split starting at ``offset``, run as one int-mode
prefill from an empty cache (positions 0..S−1). In int mode every operation is per token or in a fixed order,
so a prefill computes exactly the q/k of token-by-token decoding (``models.lm``). q and k are captured at the
output of :func:`models.hostops.rope`, which :class:`models.lm.Attention` calls once for q and once for k per
layer, in layer order; :func:`models.kvpolicy.capture_qk` wraps it for the duration of one forward.

A checkpoint trained at ``max_seq`` = 256 can be loaded with a longer RoPE table (:func:`load_model`,
``max_seq=...``); ``--perplexity`` reports per-byte perplexity at several stream lengths (to see whether the
model still works beyond its training length; see traces/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from hw import data_files
from models.kvpolicy import capture_qk
from traces.format import FORMAT, VERSION, Trace, TraceError, save_trace

__all__ = ["load_model", "capture_qk", "record", "record_trace", "stream_nll", "length_perplexity", "main"]

SOURCE = "pydoc+docstrings/validation"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(data_files.resolve(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(checkpoint: str | Path, max_seq: int | None = None):
    """Load a checkpoint (``models.checkpoint.load_checkpoint``); with ``max_seq`` larger than the trained one,
    rebuild the RoPE tables to that length (rows below the old length are identical: each is computed on
    its own)."""
    from models import hostops
    from models.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    cfg = model.config
    if max_seq is not None and max_seq != cfg.max_seq:
        cfg = dataclasses.replace(cfg, max_seq=max_seq)
        cos, sin = hostops.rope_tables(cfg.max_seq, cfg.head_dim, cfg.rope_theta)
        model.config = cfg
        model.rope_cos, model.rope_sin = cos, sin
    return model


@torch.no_grad()
def record(model, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """One int-mode prefill of ``tokens`` (1-D int64) → ``(keys (L,Hkv,S,hd), queries (L,H,S,hd), logits (S,V))``."""
    cfg = model.config
    toks = torch.as_tensor(tokens, dtype=torch.int64).reshape(1, -1)
    with capture_qk(model) as pairs:
        logits = model(toks, mode="int")
    if len(pairs) != cfg.n_layers:
        raise RuntimeError(f"captured {len(pairs)} rope pairs, the model has {cfg.n_layers} layers")
    qs = torch.stack([q[0] for q, _ in pairs])
    ks = torch.stack([k[0] for _, k in pairs])
    want_q = (cfg.n_layers, cfg.n_heads, toks.shape[1], cfg.head_dim)
    want_k = (cfg.n_layers, cfg.n_kv_heads, toks.shape[1], cfg.head_dim)
    if tuple(qs.shape) != want_q or tuple(ks.shape) != want_k:
        raise RuntimeError(
            f"captured q {tuple(qs.shape)} / k {tuple(ks.shape)}, expected {want_q} / {want_k}"
        )
    return (ks.to(torch.float32).numpy().copy(), qs.to(torch.float32).numpy().copy(), logits[0])


def stream_nll(logits: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
    """Per-position negative log-likelihood (nats) of ``tokens[1:]`` under ``logits[:-1]`` (float64 numpy)."""
    lp = torch.log_softmax(logits[:-1].to(torch.float64), dim=-1)
    return (-lp.gather(1, torch.as_tensor(tokens[1:]).reshape(-1, 1))[:, 0]).numpy()


def validation_tokens(offset: int, n: int) -> torch.Tensor:
    from models.data import load_corpus

    val = load_corpus().val
    if offset < 0 or n < 2 or offset + n > val.numel():
        raise ValueError(
            f"--offset {offset} --tokens {n}: outside the validation text ({val.numel()} bytes; "
            "need at least 2 tokens)"
        )
    return val[offset : offset + n].clone()


def record_trace(checkpoint: str | Path, n_tokens: int, offset: int, max_seq: int | None = None) -> Trace:
    """Record ``n_tokens`` validation bytes from ``offset`` with the checkpoint's model (int mode)."""
    from models.data import corpus_info

    model = load_model(checkpoint, max_seq=max(n_tokens, max_seq or 0) if n_tokens > 0 else None)
    if n_tokens > model.config.max_seq:
        raise ValueError(f"--tokens {n_tokens} exceeds max_seq {model.config.max_seq}")
    toks = validation_tokens(offset, n_tokens)
    keys, queries, logits = record(model, toks)
    nll = stream_nll(logits, toks)
    cfg = model.config
    info = corpus_info()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": Path(checkpoint).stem,
        "model_config": cfg.to_dict(),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "source": SOURCE,
        "corpus_python": info["python"],
        "corpus_val_sha256": info["val_sha256"],
        "offset": int(offset),
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "n_tokens": int(n_tokens),
        "dtype": "float32",
        "mode": "int",
        "capture": "models.hostops.rope outputs",
        "stream_ppl_per_byte": round(float(math.exp(nll.mean())), 4),
    }
    return Trace(
        keys=keys,
        queries=queries,
        positions=np.arange(n_tokens, dtype=np.int64),
        tokens=toks.numpy().astype(np.int64),
        meta=meta,
    )


@torch.no_grad()
def length_perplexity(
    checkpoint: str | Path, lengths: list[int], n_bytes: int = 16384, offset: int = 0
) -> list[dict]:
    """Per-byte perplexity (int mode) of the first ``n_bytes`` validation bytes from ``offset``, cut into
    non-overlapping streams of each length (each from an empty cache), plus the perplexity of the bytes at
    positions < 256, 256..511, 512..1023 ... within the streams."""
    rows = []
    model = load_model(checkpoint, max_seq=max(lengths))
    data = validation_tokens(offset, n_bytes)
    for n in lengths:
        nll = []
        for s in range(0, n_bytes - n + 1, n):
            toks = data[s : s + n]
            nll.append(stream_nll(model(toks.reshape(1, -1), mode="int")[0], toks))
        nll = np.stack(nll)  # (streams, n-1); column j predicts position j+1
        row = {
            "length": n,
            "streams": int(nll.shape[0]),
            "ppl_per_byte": float(np.exp(nll.mean())),
            "by_position": {},
        }
        lo = 0
        while lo < n:
            hi = min(n, 256 if lo == 0 else 2 * lo)
            seg = nll[:, max(lo - 1, 0) : hi - 1]
            row["by_position"][f"{lo}-{hi - 1}"] = float(np.exp(seg.mean()))
            lo = hi
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m traces.record", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="model checkpoint (.pt)")
    p.add_argument("--out", help="trace file to write (.npz)")
    p.add_argument("--tokens", type=int, default=256, help="stream length in bytes/tokens (default 256)")
    p.add_argument("--offset", type=int, default=0, help="byte offset into the validation text (default 0)")
    p.add_argument(
        "--max-seq", type=int, default=None, help="RoPE table length (default: max(tokens, trained))"
    )
    p.add_argument(
        "--perplexity",
        type=int,
        nargs="+",
        metavar="LEN",
        help="instead of recording: per-byte perplexity at these stream lengths",
    )
    p.add_argument(
        "--ppl-bytes", type=int, default=16384, help="validation bytes for --perplexity (default 16384)"
    )
    args = p.parse_args(argv)
    from models.checkpoint import CheckpointError

    try:
        if args.perplexity:
            rows = length_perplexity(args.checkpoint, args.perplexity, args.ppl_bytes, args.offset)
            print(json.dumps(rows, indent=1))
            return 0
        if not args.out:
            raise ValueError("--out is required when recording")
        trace = record_trace(args.checkpoint, args.tokens, args.offset, args.max_seq)
        out = save_trace(trace, args.out)
    except (CheckpointError, TraceError, ValueError) as e:
        print(f"traces.record: error: {e}", file=sys.stderr)
        return 2
    size = out.stat().st_size
    print(
        f"wrote {out}: {args.tokens} tokens from offset {args.offset}, {trace.n_layers} layers, "
        f"{trace.n_heads}/{trace.n_kv_heads} heads, {size / 1e6:.2f} MB, "
        f"ppl/byte {trace.meta['stream_ppl_per_byte']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
