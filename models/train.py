"""Train the tiny ternary LM and its float baseline on the offline corpus; report validation perplexity.

    python -m models.train --out models/checkpoints/tiny.pt [--steps N --seed S]

1. Trains the ``tiny`` preset in ``"fake"`` mode (ternary weights, int8 activations, straight-through
   gradients) for ``--steps`` steps of ``--batch`` × 256 bytes, AdamW, linear warm-up then cosine decay.
2. Writes the checkpoint atomically (:func:`models.checkpoint.save_checkpoint`).
3. Trains the float baseline (same shape, ``"float"`` mode, same seed, data order and schedule).
4. Reloads the checkpoint and evaluates the ternary model in ``"fake"`` and ``"int"`` mode, and the float
   baseline in ``"float"`` mode, on the validation split (:mod:`models.data`), and writes
   ``<out>.json`` (same folder and stem) with per-byte perplexity and bits per byte of each.

Fine-tuning (``--init CKPT``): the weights start from ``CKPT`` (same shape as ``--preset`` except ``max_seq``,
whose RoPE tables are not weights), e.g. the ``tiny-long`` preset (1024 positions) from ``tiny.pt``::

    python -m models.train --preset tiny-long --init models/checkpoints/tiny.pt \
        --out models/checkpoints/tiny-long.safetensors --steps N --batch 8 --lr 1e-3 --no-baseline

``--save-every K`` also writes the checkpoint every K steps (so a run stopped early leaves its progress).

Perplexity is per byte: ``exp(mean NLL)`` over every predicted byte of the evaluated windows (non-overlapping
windows of 256 bytes, each predicted from the bytes before it in its window); bits/byte = mean NLL / ln 2.
Runs on 2 CPU threads (``torch.set_num_threads(2)``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hw.files import write_text
from models.checkpoint import load_checkpoint, save_checkpoint
from models.data import batches, corpus_info, eval_windows, load_corpus
from models.lm import TernaryLM
from models.presets import build_model, get_config

__all__ = ["train", "evaluate", "main"]


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(
    model: TernaryLM,
    mode: str,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    log_every: int = 50,
    label: str = "",
    on_step=None,
) -> list[tuple[int, float]]:
    """Train in place; returns [(step, train loss)] at the logged steps. ``on_step(step, log)`` is called
    after every logged step (progress saves)."""
    corpus = load_corpus()
    seq = model.config.max_seq
    gen = torch.Generator().manual_seed(seed)
    data = batches(corpus.train, batch, seq, gen)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, min(50, steps // 10))
    model.train()
    log, t0, run = [], time.time(), 0.0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        x, y = next(data)
        loss = F.cross_entropy(model(x, mode=mode).reshape(-1, model.config.vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run = loss.item() if step == 0 else 0.9 * run + 0.1 * loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log.append((step + 1, round(run, 4)))
            print(
                f"[{label}] step {step + 1}/{steps}  loss {run:.3f}  ({run / math.log(2):.3f} bits/byte)  "
                f"{time.time() - t0:.0f} s",
                flush=True,
            )
            if on_step is not None:
                on_step(step + 1, log)
                model.train()
    model.eval()
    return log


@torch.no_grad()
def evaluate(
    model: TernaryLM,
    mode: str,
    data: torch.Tensor | None = None,
    max_windows: int | None = None,
    batch: int = 8,
    seq: int | None = None,
) -> dict:
    """Per-byte validation perplexity of ``model`` in ``mode`` → {"loss", "ppl", "bits_per_byte", "bytes"},
    over windows of ``seq`` bytes (default the model's ``max_seq``)."""
    if data is None:
        data = load_corpus().val
    seq = model.config.max_seq if seq is None else seq
    if not 1 <= seq <= model.config.max_seq:
        raise ValueError(f"evaluation window {seq} is outside 1..max_seq={model.config.max_seq}")
    x, y = eval_windows(data, seq, max_windows)
    model.eval()
    total, count = 0.0, 0
    for i in range(0, x.shape[0], batch):
        logits = model(x[i : i + batch], mode=mode)
        total += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y[i : i + batch].reshape(-1), reduction="sum"
        ).item()
        count += y[i : i + batch].numel()
    loss = total / count
    return {
        "loss": round(loss, 5),
        "ppl": round(math.exp(loss), 4),
        "bits_per_byte": round(loss / math.log(2), 4),
        "bytes": count,
    }


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--out", default="models/checkpoints/tiny.pt", help="checkpoint path (.json written beside)"
    )
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--eval-windows",
        type=int,
        default=None,
        help="evaluate on the first N validation windows (default: the whole validation split)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the float baseline")
    ap.add_argument(
        "--eval-seq",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also evaluate the ternary model (fake mode) on windows of N bytes (e.g. 256 for a long model)",
    )
    ap.add_argument(
        "--init",
        default=None,
        metavar="CKPT",
        help="fine-tune: start from this checkpoint's weights (same shape as --preset but max_seq)",
    )
    ap.add_argument(
        "--save-every",
        type=int,
        default=0,
        metavar="K",
        help="also write the checkpoint every K steps (rounded up to the 50-step log interval)",
    )
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        ap.error("--steps and --batch must be positive")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cfg = get_config(args.preset)
    info = corpus_info()
    print(
        f"corpus: {info['name']} (Python {info['python']}): {info['documents']} documents, "
        f"train {info['train_bytes']} bytes, validation {info['val_bytes']} bytes",
        flush=True,
    )
    t_start = time.time()

    model = build_model(cfg, seed=args.seed)
    meta = {
        "preset": args.preset,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "mode": "fake",
        "corpus_val_sha256": info["val_sha256"],
    }
    if args.init:
        init = load_checkpoint(args.init)
        if {**init.config.to_dict(), "max_seq": cfg.max_seq} != cfg.to_dict():
            ap.error(f"--init {args.init}: its shape differs from preset {args.preset} (other than max_seq)")
        model.load_state_dict(init.state_dict())
        meta["init"] = {"checkpoint": Path(args.init).name, "sha256": _sha256(args.init)}
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model {args.preset}: {n_params} parameters; ternary {'fine-tuning' if args.init else 'training'} "
        f"({args.steps} steps × {args.batch}×{cfg.max_seq} bytes)",
        flush=True,
    )

    def progress(step: int, log) -> None:
        if args.save_every and (step % args.save_every < 50 or step == args.steps):
            save_checkpoint(model, out, {**meta, "steps_done": step})

    t0 = time.time()
    log_tern = train(
        model, "fake", args.steps, args.batch, args.lr, args.seed, label="ternary", on_step=progress
    )
    t_tern = time.time() - t0
    save_checkpoint(model, out, meta)
    print(f"wrote {out} ({out.stat().st_size} bytes)", flush=True)

    result = {
        "command": "python -m models.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "checkpoint": out.name,
        "preset": args.preset,
        "config": cfg.to_dict(),
        "parameters": n_params,
        "corpus": info,
        "train": {k: meta[k] for k in ("steps", "batch", "lr", "seed", "init") if k in meta},
        "tokens_per_model": args.steps * args.batch * cfg.max_seq,
        "eval": {"split": "validation", "seq": cfg.max_seq, "windows": None},
        "results": {},
        "train_log": {"ternary": log_tern},
        "seconds": {"ternary_train": round(t_tern, 1)},
    }
    if not args.no_baseline:
        base = build_model(cfg, seed=args.seed)
        t0 = time.time()
        result["train_log"]["float"] = train(
            base, "float", args.steps, args.batch, args.lr, args.seed, label="float"
        )
        result["seconds"]["float_train"] = round(time.time() - t0, 1)
        t0 = time.time()
        result["results"]["float"] = evaluate(base, "float", max_windows=args.eval_windows)
        print(f"float baseline: {result['results']['float']}", flush=True)
        result["seconds"]["float_eval"] = round(time.time() - t0, 1)
    loaded = load_checkpoint(out)
    for mode in ("fake", "int"):
        t0 = time.time()
        result["results"][mode] = evaluate(loaded, mode, max_windows=args.eval_windows)
        result["seconds"][f"{mode}_eval"] = round(time.time() - t0, 1)
        print(f"ternary {mode} mode: {result['results'][mode]}", flush=True)
    result["eval"]["windows"] = result["results"]["int"]["bytes"] // cfg.max_seq
    for n in args.eval_seq:  # the same bytes as the max_seq windows (more, shorter windows)
        wins = None if args.eval_windows is None else args.eval_windows * cfg.max_seq // n
        result["results"][f"fake_seq{n}"] = evaluate(loaded, "fake", max_windows=wins, seq=n)
        print(f"ternary fake mode, {n}-byte windows: {result['results'][f'fake_seq{n}']}", flush=True)
    result["seconds"]["total"] = round(time.time() - t_start, 1)
    _write_json(out.with_suffix(".json"), result)
    print(f"wrote {out.with_suffix('.json')}  (total {result['seconds']['total']} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
