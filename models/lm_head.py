"""Where and in which precision the LM head runs: the three placements and their PyTorch references.

The LM head is ``logits = x @ Wᵀ`` with ``x`` the final RMSNorm's output (float32, rows × d_model) and ``W``
the LM-head weight (vocab × d_model; tied to the embedding in every preset). The compiler option
``lm_head`` (``compiler.compile_model(..., lm_head=...)``, ``--lm-head`` on the CLI, recorded in a Program's
``meta["lm_head"]``) picks one of :data:`LM_HEAD_OPTIONS`; each has exactly one numeric definition here, which
the model's ``mode="int"`` forward (``TernaryLM.forward(..., lm_head=...)``) and the Program executor
(``sim/runtime.py``) both compute, bit for bit:

``host_fp32``  (default; unchanged) the host computes ``hostops.linear(x, W)`` from float32 weights
               (4 bytes per weight read per token).
``host_fp16``  the weights are stored as float16 ``W16 = W.half()`` (round to nearest even; 2 bytes per
               weight); the host computes ``hostops.linear(x, W16.float())`` — float16 → float32 is exact,
               so this is the fp32 definition (float32 products, fixed summation order) on rounded weights.
``acc_int8``   weights int8 per output row, the activation int8 per token, the product on the GEMM engine::

                   wq, s_w  = quantize_act(W)             # per row of W (absmax over d_model): int8 (V, K),
                                                          # s_w float32 (V, 1) = max|W[v]| / 127
                   xq, s_x  = quantize_act(x)             # per token (absmax over d_model): int8, (rows, 1)
                   y_int    = int_matmul(xq, wqᵀ)         # int32 (rows, V): the GEMM engine, no requant
                   logits   = y_int.to(f32) * (s_x * s_wᵀ)

               ``quantize_act`` is :func:`models.bitlinear.quantize_act`, the one absmax rule of the BitLinear
               activations (docs/design.md "Numeric definition"): ``q = clip(round(v · (127/a)), −128, 127)``
               with ``a = max|row|``; as ``|v| ≤ a`` the codes lie in −127..127 (symmetric). The last line is
               evaluated like BitLinear's dequant: the float32 outer product ``s_x * s_wᵀ`` first, then one
               float32 product with the int32 → float32 conversion (round to nearest even). ``|y_int| ≤
               K·127·127``, so no valid shape wraps int32.

:func:`accuracy` compares the options on held-out text (perplexity per byte, top-1 agreement with
``host_fp32``); ``python -m models.lm_head`` prints it for the trained tiny model.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

from hw.program import LM_HEAD_OPTIONS
from models import hostops
from models.w8a8 import dequant_rows, quantize_weight_rows, w8a8_linear

__all__ = [
    "LM_HEAD_OPTIONS",
    "DEFAULT_LM_HEAD",
    "check_lm_head",
    "fp16_weight",
    "quantize_lm_head",
    "lm_head_int",
    "dequant_logits",
    "lm_head_logits",
    "accuracy",
    "main",
]

DEFAULT_LM_HEAD = "host_fp32"


def check_lm_head(option: str) -> str:
    """``option`` if it is one of :data:`LM_HEAD_OPTIONS`, else ValueError naming the choices."""
    if option not in LM_HEAD_OPTIONS:
        raise ValueError(f"lm_head={option!r}: expected one of {', '.join(LM_HEAD_OPTIONS)}")
    return option


def fp16_weight(w: torch.Tensor) -> torch.Tensor:
    """The stored weights of ``host_fp16``: float16, round to nearest even (``Tensor.half``)."""
    return w.detach().to(torch.float32).half()


def quantize_lm_head(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored weights of ``acc_int8``: ``(wq int8 (V, K), s_w float32 (V,))``, absmax per output row —
    :func:`models.w8a8.quantize_weight_rows`, the rule of every W8A8 linear."""
    return quantize_weight_rows(w)


def dequant_logits(y_int: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """``y_int.to(f32) * (s_x * s_wᵀ)`` (:func:`models.w8a8.dequant_rows`)."""
    return dequant_rows(y_int, s_x, s_w)


def lm_head_int(
    x: torch.Tensor, wq: torch.Tensor, s_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``acc_int8`` LM head of ``x`` (..., K): ``(y_int int32 (..., V), s_x (..., 1), logits (..., V))``
    — :func:`models.w8a8.w8a8_linear`, the W8A8 linear on the LM head's weights."""
    return w8a8_linear(x, wq, s_w)


def lm_head_logits(x: torch.Tensor, weight: torch.Tensor, option: str = DEFAULT_LM_HEAD) -> torch.Tensor:
    """Logits of the final-norm output ``x`` under placement ``option`` (module doc)."""
    check_lm_head(option)
    if option == "host_fp32":
        return hostops.linear(x, weight)
    if option == "host_fp16":
        return hostops.linear(x, fp16_weight(weight).to(torch.float32))
    wq, sw = quantize_lm_head(weight)
    return lm_head_int(x, wq, sw)[2]


@torch.no_grad()
def accuracy(model, data: torch.Tensor | None = None, max_windows: int | None = None, batch: int = 8) -> dict:
    """Each option's per-byte perplexity (int-mode body, the option's LM head) on the validation windows of
    :func:`models.data.eval_windows`, and its top-1 (argmax) agreement with ``host_fp32`` over every predicted
    byte. The body runs once per window; the three heads read the same final-norm output."""
    from models.data import eval_windows, load_corpus

    if data is None:
        data = load_corpus().val
    x, y = eval_windows(data, model.config.max_seq, max_windows)
    model.eval()
    w = model.lm_head.weight
    heads = {
        "host_fp32": lambda h: hostops.linear(h, w),
        "host_fp16": lambda h: hostops.linear(h, w16),
        "acc_int8": lambda h: lm_head_int(h, wq, sw)[2],
    }
    w16 = fp16_weight(w).to(torch.float32)
    wq, sw = quantize_lm_head(w)
    nll = dict.fromkeys(heads, 0.0)
    agree = dict.fromkeys(heads, 0)
    count = 0
    for i in range(0, x.shape[0], batch):
        h = model.final_hidden(x[i : i + batch], mode="int")
        tgt = y[i : i + batch].reshape(-1)
        top_ref = None
        for name, head in heads.items():
            lg = head(h).reshape(-1, w.shape[0])
            nll[name] += F.cross_entropy(lg, tgt, reduction="sum").item()
            top = lg.argmax(dim=-1)
            if top_ref is None:
                top_ref = top
            agree[name] += int((top == top_ref).sum())
        count += tgt.numel()
    out = {"bytes": count, "windows": int(x.shape[0]), "options": {}}
    base = nll["host_fp32"] / count
    for name in heads:
        loss = nll[name] / count
        out["options"][name] = {
            "ppl": round(math.exp(loss), 4),
            "ppl_change": round(math.exp(loss - base) - 1, 7),  # relative to host_fp32
            "bits_per_byte": round(loss / math.log(2), 5),
            "top1_agreement": round(agree[name] / count, 5),
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m models.lm_head",
        description="Perplexity and top-1 agreement of the LM-head placements (host_fp16, acc_int8 vs "
        "host_fp32) on the validation split, int-mode body.",
    )
    ap.add_argument("--checkpoint", default="models/checkpoints/tiny.pt")
    ap.add_argument("--windows", type=int, default=None, help="first N validation windows (default all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        ap.error("--windows must be positive")
    from models.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    r = accuracy(load_checkpoint(args.checkpoint), max_windows=args.windows)
    r["checkpoint"] = args.checkpoint
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(
        f"{args.checkpoint}: {r['windows']} validation windows, {r['bytes']} predicted bytes (int-mode body)"
    )
    print(f"{'lm_head':<10} {'ppl/byte':>9} {'change':>9} {'bits/byte':>10} {'top-1 = host_fp32':>18}")
    for name, v in r["options"].items():
        print(
            f"{name:<10} {v['ppl']:>9.4f} {v['ppl_change']:>+9.4%} {v['bits_per_byte']:>10.5f} "
            f"{v['top1_agreement']:>18.4%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
