"""Perplexity with restricted attention over validation windows, and the share of the KV cache each policy reads.

:mod:`models.kvpolicy` scores policies on recorded traces; this module runs them on fresh windows of the
validation text at a chosen context (``tritium kv ppl``), to answer "how much perplexity does a policy cost at
context L, and how much of the KV cache does it read?":

1. The validation split (:func:`models.data.load_corpus`) is cut into consecutive windows of ``context`` bytes
   from ``offset`` (:func:`validation_windows`); each window is one stream from an empty cache (positions
   0..context−1), decoded token by token in int mode.
2. **Dense**: the int-mode model's per-byte NLL with full causal attention (:func:`models.kvpolicy.restricted_nll`
   with no masks).
3. **Restricted**, per policy setting: *closed loop* (default; :func:`closed_loop_one_pass`, the result of
   :func:`models.kvpolicy.closed_loop_nll` in one forward: each layer's policy selects on the q/k the
   already-restricted model computes — what an engine in the loop does) or *open loop* (the policy selects on the q/k of the dense
   model, captured with :func:`models.kvpolicy.capture_qk`).
4. Scored predictions: steps ``first``..context−1 (steps before ``first`` are a prompt with full attention, as
   in :mod:`models.kvpolicy`); dense and restricted NLL are averaged over the same predictions of every window,
   ``ppl = exp(mean NLL)`` per byte.

Shares of the KV cache, over the scored steps of every window, every layer and every KV head (a selection is
per KV head; its query heads read the union):

``retrieved_fraction``  mean over steps of selected / visible tokens (what ``tritium kv replay`` reports);
``kv_read_share``       Σ selected / Σ visible: the K/V rows a decode reads relative to dense attention — the
                        figure that sets KV traffic, since late steps see more tokens (for ReSV the cluster
                        table it consults, on chip or not, is not counted here).
"""

from __future__ import annotations

import math
import time

import numpy as np

__all__ = ["validation_windows", "kv_shares", "closed_loop_one_pass", "window_ppl", "policy_ppl"]


def validation_windows(context: int, windows: int, offset: int = 0) -> list[np.ndarray]:
    """``windows`` consecutive, non-overlapping windows of ``context`` validation bytes from ``offset``
    (int64 token arrays); ValueError when they do not fit the validation text."""
    from models.data import load_corpus

    if context < 2 or windows < 1 or offset < 0:
        raise ValueError(
            f"context {context}, windows {windows}, offset {offset}: need context ≥ 2, windows ≥ 1, offset ≥ 0"
        )
    val = load_corpus().val
    if offset + context * windows > val.numel():
        raise ValueError(
            f"{windows} window(s) of {context} bytes from offset {offset} exceed the validation text "
            f"({val.numel()} bytes)"
        )
    return [val[offset + i * context : offset + (i + 1) * context].numpy().copy() for i in range(windows)]


def kv_shares(masks: np.ndarray, first: int) -> tuple[float, float, float, float]:
    """``(mean of selected/visible, Σ selected, Σ visible, mean selected at the last step)`` of ``masks``
    (bool ``(L, Hkv, S, S)``) over the steps ``first``..S−1."""
    s = masks.shape[-1]
    steps = np.arange(first, s)
    sel = masks[:, :, first:, :].sum(axis=-1)  # (L, Hkv, steps)
    vis = np.broadcast_to(steps + 1, sel.shape)
    return (float((sel / vis).mean()), float(sel.sum()), float(vis.sum()), float(sel[..., -1].mean()))


def _open_loop_masks(model, tokens: np.ndarray, policy) -> np.ndarray:
    """The policy's selections on the dense int-mode model's q/k of every (layer, KV head)."""
    import torch

    from models.kvpolicy import capture_qk

    cfg = model.config
    g = cfg.n_heads // cfg.n_kv_heads
    s = len(tokens)
    toks = torch.as_tensor(tokens, dtype=torch.int64).reshape(1, -1)
    with torch.no_grad(), capture_qk(model) as pairs:
        model(toks, mode="int")
    masks = np.zeros((cfg.n_layers, cfg.n_kv_heads, s, s), dtype=bool)
    for layer, (q, k) in enumerate(pairs):
        qn, kn = q[0].to(torch.float32).numpy(), k[0].to(torch.float32).numpy()
        for j in range(cfg.n_kv_heads):
            masks[layer, j] = policy.select(kn[j], qn[j * g : (j + 1) * g]).mask
    return masks


def closed_loop_one_pass(model, tokens: np.ndarray, policy) -> tuple[np.ndarray, np.ndarray]:
    """:func:`models.kvpolicy.closed_loop_nll` in one int-mode forward instead of L + 1: layer l's q/k depend
    only on layers < l, which are already restricted when layer l runs, so the policy can select inside the
    forward — between layer l's :func:`models.hostops.rope` calls (q, then k) and its
    :func:`models.hostops.softmax`, whose scores it then masks. Same ``(nll (S−1,), masks (L, Hkv, S, S))``
    (``tests/test_long_context.py`` checks the two agree)."""
    import torch

    from models import hostops

    cfg = model.config
    s = len(tokens)
    g = cfg.n_heads // cfg.n_kv_heads
    toks = torch.as_tensor(np.asarray(tokens), dtype=torch.int64).reshape(1, -1)
    masks = np.zeros((cfg.n_layers, cfg.n_kv_heads, s, s), dtype=bool)
    ropes: list = []
    layer = [0]
    rope0, softmax0 = hostops.rope, hostops.softmax

    def rope(x, positions, cos, sin):
        out = rope0(x, positions, cos, sin)
        ropes.append(out)
        return out

    def softmax(x):
        i = layer[0]
        layer[0] += 1
        if i >= cfg.n_layers or len(ropes) != 2 * (i + 1) or tuple(x.shape) != (1, cfg.n_heads, s, s):
            raise RuntimeError(
                f"closed_loop_one_pass: unexpected softmax call {i} with scores {tuple(x.shape)}"
            )
        q = ropes[-2][0].to(torch.float32).numpy()
        k = ropes[-1][0].to(torch.float32).numpy()
        for j in range(cfg.n_kv_heads):
            masks[i, j] = policy.select(k[j], q[j * g : (j + 1) * g]).mask
        keep = torch.from_numpy(np.repeat(masks[i], g, axis=0))[None]
        return softmax0(torch.where(keep, x, torch.full_like(x, float("-inf"))))

    hostops.rope, hostops.softmax = rope, softmax
    try:
        with torch.no_grad():
            logits = model(toks, mode="int")[0]
    finally:
        hostops.rope, hostops.softmax = rope0, softmax0
    if layer[0] != cfg.n_layers:
        raise RuntimeError(f"closed_loop_one_pass: {layer[0]} softmax calls for {cfg.n_layers} layers")
    lp = torch.log_softmax(logits[:-1].to(torch.float64), dim=-1)
    return (-lp.gather(1, toks[0, 1:].reshape(-1, 1))[:, 0]).numpy(), masks


def window_ppl(model, tokens: np.ndarray, policy, loop: str = "closed") -> tuple[np.ndarray, np.ndarray]:
    """Per-position NLL (length S−1) of one window under ``policy`` and its masks ``(L, Hkv, S, S)``."""
    from models.kvpolicy import restricted_nll

    if loop == "closed":
        return closed_loop_one_pass(model, tokens, policy)
    if loop == "open":
        masks = _open_loop_masks(model, tokens, policy)
        return restricted_nll(model, tokens, masks), masks
    raise ValueError(f"loop {loop!r}: expected 'closed' or 'open'")


def policy_ppl(model, windows: list[np.ndarray], policies, loop: str = "closed", log=None) -> dict:
    """Dense and restricted per-byte perplexity of ``model`` over ``windows`` for each policy of ``policies``
    (:class:`models.kvpolicy.Policy` objects, one ``first`` for all), with their KV shares. ``log(text)``
    reports progress. Returns a JSON-ready dict (``dense`` and one ``rows`` entry per policy)."""
    from models.kvpolicy import restricted_nll

    if not windows:
        raise ValueError("no windows to evaluate")
    s = len(windows[0])
    if any(len(w) != s for w in windows):
        raise ValueError("windows differ in length")
    if s > model.config.max_seq:
        raise ValueError(f"context {s} exceeds the model's max_seq {model.config.max_seq}")
    firsts = {p.first for p in policies}
    if len(firsts) > 1:
        raise ValueError(f"policies disagree on the first scored step: {sorted(firsts)}")
    first = firsts.pop() if firsts else 16
    if not 0 <= first < s - 1:
        raise ValueError(f"first scored step {first} is outside 0..{s - 2} for context {s}")
    say = log or (lambda _t: None)
    t0 = time.time()
    dense = [restricted_nll(model, w, None) for w in windows]
    dense_nll = float(np.concatenate([d[first:] for d in dense]).mean())
    say(f"dense: ppl/byte {math.exp(dense_nll):.4f} ({time.time() - t0:.0f} s)")
    rows = []
    for pol in policies:
        t1 = time.time()
        nll, frac, sel, vis, last = [], [], 0.0, 0.0, []
        for w in windows:
            n, m = window_ppl(model, w, pol, loop)
            nll.append(n[first:])
            f, a, b, z = kv_shares(m, first)
            frac.append(f)
            sel, vis = sel + a, vis + b
            last.append(z)
        mean = float(np.concatenate(nll).mean())
        row = {
            "policy": pol.name,
            "setting": pol.describe(),
            "ppl_per_byte": round(math.exp(mean), 5),
            "ppl_vs_dense": round(math.exp(mean - dense_nll) - 1.0, 5),
            "retrieved_fraction": round(float(np.mean(frac)), 5),
            "kv_read_share": round(sel / vis, 5),
            "tokens_at_last_step": round(float(np.mean(last)), 2),
            "seconds": round(time.time() - t1, 1),
        }
        for k in ("alpha", "recent"):
            if hasattr(pol, k):
                row[k] = getattr(pol, k)
        if pol.budget is not None:
            row["budget"] = pol.budget
        rows.append(row)
        say(
            f"{row['setting']}: ppl/byte {row['ppl_per_byte']:.4f} ({100 * row['ppl_vs_dense']:+.2f} % vs "
            f"dense), KV read {100 * row['kv_read_share']:.1f} % ({row['seconds']:.0f} s)"
        )
    return {
        "context": s,
        "windows": len(windows),
        "first": first,
        "loop": loop,
        "mode": "int",
        "scored_predictions": len(windows) * (s - 1 - first),
        "dense": {"ppl_per_byte": round(math.exp(dense_nll), 5)},
        "rows": rows,
    }
