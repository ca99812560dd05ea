"""KV-cache selection policies behind one interface, and the metrics that compare them on recorded traces.

A policy sees one *stream*: the post-RoPE keys of one (layer, KV head), float32 ``(S, hd)``, and the queries
of the query heads that share it (GQA group), float32 ``(g, S, hd)``. Token t is decoded at step t; its key
is in the cache when its query runs, so the *visible prefix* at step t is tokens 0..t. :meth:`Policy.select`
returns a :class:`StreamSelection` whose ``mask[t, j]`` says whether token j ≤ t is attended at step t. Steps
t < ``first`` (default 16) are a prompt: every policy keeps the whole prefix there and they are not scored.

Budgets (:func:`budget_tokens`): an ``int`` is a token count per step, a ``float`` in (0, 1] a fraction of the
visible prefix (``max(1, round(f·(t+1)))`` tokens at step t), which matches policies at equal retrieved
fractions. Policies:

``full``       every visible token.
``streaming``  StreamingLLM: ``sinks`` (4) first tokens + the most recent ``budget − sinks`` tokens.
``h2o``        H2O: a cache of at most ``budget`` tokens; every step adds the new token, then evicts the token
               with the least accumulated attention outside the recent window (``recent`` = half the
               budget). The accumulated attention of a token is the sum over steps and the group's query
               heads of its softmax probability computed over the cache (float q/k), as in H2O.
``quest``      Quest: pages of ``page`` (16) consecutive tokens; per page the per-channel key min/max over its
               visible tokens; the page bound for query head h is Σ_i max(q_i·kmax_i, q_i·kmin_i), and a page
               scores the max over the group's heads. Pages are taken in descending score order while they
               fit the budget (at least one page), so a step keeps at most ``max(budget, page)`` tokens.
``resv``       V-Rex ReSV through the integer reference :mod:`models.resv`: keys quantized to int8 codes
               (``quantize_keys`` = ``quantize_act``) inserted in order into a ``ClusterTable``; at each scored
               step each query head's int8 query selects clusters (WiCSum, early exit); the union over the
               group's heads maps back to tokens. ``recent`` (default 0) adds the last ``recent`` tokens
               to every selection (a local window next to the retrieved clusters; not part of V-Rex). Its knob is ``alpha`` (the threshold fraction), so its
               retrieved fraction is data-dependent. Early-exit fraction = visited clusters / clusters in the
               table, per query (query head and step).

Metrics (:func:`evaluate`), per (layer, KV head) stream then averaged over streams: retrieved fraction
(selected / visible tokens, mean over scored steps), attention-mass recall (Σ of the full-attention
probabilities on the selected tokens, full attention = softmax over the visible keys of ``q·k/√hd`` in float64
from the float32 post-RoPE q/k; selection is per KV head, recall is averaged per query head), and for
``resv`` the early-exit fraction. :func:`restricted_nll` runs the model in **int mode** with attention
restricted to given masks (applied to the scores before the softmax, in every layer and head) and gives
per-byte NLL. Two ways to get the masks:

* *open loop*: the selections :func:`evaluate` makes on the trace, whose q/k come from the full-attention
  model; from layer 1 on they are slightly off, because a restricted layer changes what the next one sees;
* *closed loop* (:func:`closed_loop_nll`): layer by layer, the q/k of layer l are recomputed with layers
  < l already restricted, and the policy selects on those — what an engine in the loop would do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "POLICIES",
    "StreamSelection",
    "Policy",
    "FullPolicy",
    "StreamingPolicy",
    "H2OPolicy",
    "QuestPolicy",
    "ResvPolicy",
    "make_policy",
    "budget_tokens",
    "parse_budget",
    "full_attention",
    "evaluate",
    "restrict_attention",
    "restricted_nll",
    "closed_loop_nll",
    "capture_qk",
    "quest_bounds",
]

POLICIES = ("full", "streaming", "h2o", "quest", "resv")
FIRST = 16


def parse_budget(text: str | int | float | None) -> int | float | None:
    """``"64"`` → 64 tokens; ``"0.25"`` → a fraction; ValueError otherwise."""
    if text is None or isinstance(text, (int, float)) and not isinstance(text, bool):
        b = text
    else:
        s = str(text).strip()
        try:
            b = int(s)
        except ValueError:
            try:
                b = float(s)
            except ValueError:
                raise ValueError(
                    f"budget {text!r}: expected a token count (e.g. 64) or a fraction (e.g. 0.25)"
                ) from None
    if isinstance(b, int) and b < 1 or isinstance(b, float) and not 0 < b <= 1:
        raise ValueError(f"budget {text!r}: a token count must be ≥ 1, a fraction in (0, 1]")
    return b


def budget_tokens(budget: int | float | None, visible: int) -> int:
    """Tokens a policy may keep at a step with ``visible`` tokens (None: all)."""
    if budget is None:
        return visible
    if isinstance(budget, float):
        return min(visible, max(1, int(round(budget * visible))))
    return min(visible, int(budget))


@dataclass
class StreamSelection:
    """Selection of one stream: ``mask`` bool (S, S), row t = tokens attended at step t (rows < first full);
    ``visited`` (resv) the early-exit fraction of each scored query; ``clusters`` (resv) per scored step and
    query head the selected cluster ids, for checking the cycle model against the reference."""

    mask: np.ndarray
    visited: list[float] = field(default_factory=list)
    visited_literal: list[float] = field(default_factory=list)  # the same under V-Rex's literal rule
    clusters: list[list[int]] = field(default_factory=list)
    n_clusters: int = 0


def _prompt_mask(s: int) -> np.ndarray:
    return np.tril(np.ones((s, s), dtype=bool))


class Policy:
    name = "policy"

    def __init__(self, budget: int | float | None = None, first: int = FIRST):
        self.budget = parse_budget(budget)
        self.first = int(first)

    def describe(self) -> str:
        return f"{self.name}(budget={self.budget})"

    def select(self, keys: np.ndarray, queries: np.ndarray) -> StreamSelection:
        raise NotImplementedError

    def _k(self, t: int) -> int:
        return budget_tokens(self.budget, t + 1)


class FullPolicy(Policy):
    name = "full"

    def __init__(self, budget=None, first: int = FIRST):
        super().__init__(None, first)

    def select(self, keys, queries):
        return StreamSelection(_prompt_mask(keys.shape[0]))


class _PerStepPolicy(Policy):
    """A baseline that picks each scored step's tokens afresh: :meth:`_pick` marks in ``row`` (all False) the
    tokens step ``t`` attends, at most ``k`` (the budget at that step)."""

    def select(self, keys, queries):
        s = keys.shape[0]
        mask = _prompt_mask(s)
        for t in range(self.first, s):
            mask[t, :] = False
            self._pick(mask[t], keys, queries, t, self._k(t))
        return StreamSelection(mask)

    def _pick(self, row: np.ndarray, keys: np.ndarray, queries: np.ndarray, t: int, k: int) -> None:
        raise NotImplementedError


class StreamingPolicy(_PerStepPolicy):
    name = "streaming"

    def __init__(self, budget=0.25, first: int = FIRST, sinks: int = 4):
        super().__init__(budget, first)
        self.sinks = sinks

    def _pick(self, row, keys, queries, t, k):
        window = max(1, k - self.sinks)
        n_sink = min(self.sinks, k - window)
        row[:n_sink] = True
        row[t + 1 - window : t + 1] = True


def _softmax64(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def full_attention(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Causal float64 attention probabilities ``(g, S, S)`` of the float32 post-RoPE q/k (zeros above the
    diagonal)."""
    k = keys.astype(np.float64)
    q = queries.astype(np.float64)
    s = k.shape[0]
    scores = q @ k.T / math.sqrt(k.shape[1])
    scores = np.where(np.tril(np.ones((s, s), dtype=bool)), scores, -np.inf)
    return _softmax64(scores)


class H2OPolicy(Policy):
    name = "h2o"

    def __init__(self, budget=0.25, first: int = FIRST, recent_ratio: float = 0.5):
        super().__init__(budget, first)
        self.recent_ratio = recent_ratio

    def select(self, keys, queries):
        s, hd = keys.shape
        k = keys.astype(np.float64)
        q = queries.astype(np.float64)
        mask = _prompt_mask(s)
        acc = np.zeros(s)
        cache = np.zeros(s, dtype=bool)
        for t in range(s):
            cache[t] = True
            kt = t + 1 if t < self.first else self._k(t)
            recent = max(1, int(round(self.recent_ratio * kt)))
            while cache.sum() > kt:
                cand = np.flatnonzero(cache[: max(0, t + 1 - recent)])
                if cand.size == 0:  # budget smaller than the recent window: drop the oldest
                    cand = np.flatnonzero(cache)[:1]
                cache[cand[np.argmin(acc[cand])]] = False
            idx = np.flatnonzero(cache)
            sc = q[:, t, :] @ k[idx].T / math.sqrt(hd)
            acc[idx] += _softmax64(sc).sum(axis=0)
            if t >= self.first:
                mask[t] = cache
        return StreamSelection(mask)


def quest_bounds(keys: np.ndarray, queries_t: np.ndarray, t: int, page: int) -> np.ndarray:
    """Quest page bounds at step t: ``(g, n_pages)`` with ``Σ_i max(q_i·kmax_i, q_i·kmin_i)`` over the visible
    tokens (0..t) of each page."""
    n_pages = t // page + 1
    kv = keys[: t + 1].astype(np.float64)
    pad = n_pages * page - (t + 1)
    kmax = np.concatenate([kv, np.full((pad, kv.shape[1]), -np.inf)]).reshape(n_pages, page, -1).max(axis=1)
    kmin = np.concatenate([kv, np.full((pad, kv.shape[1]), np.inf)]).reshape(n_pages, page, -1).min(axis=1)
    q = queries_t.astype(np.float64)[:, None, :]  # (g, 1, hd)
    return np.maximum(q * kmax[None], q * kmin[None]).sum(axis=-1)


class QuestPolicy(_PerStepPolicy):
    name = "quest"

    def __init__(self, budget=0.25, first: int = FIRST, page: int = 16):
        super().__init__(budget, first)
        self.page = page

    def _pick(self, row, keys, queries, t, k):
        P = self.page
        score = quest_bounds(keys, queries[:, t, :], t, P).max(axis=0)
        taken = 0
        for i, p in enumerate(np.argsort(-score, kind="stable")):
            size = min(P, t + 1 - p * P)
            if i > 0 and taken + size > k:
                break
            row[p * P : p * P + size] = True
            taken += size


class ResvPolicy(Policy):
    """ReSV through :mod:`models.resv`; ``kvcfg`` is ``hw.config``'s KV section (``alpha`` overrides its alpha)."""

    name = "resv"

    def __init__(self, kvcfg, alpha: float | None = None, first: int = FIRST, recent: int = 0):
        super().__init__(None, first)
        if not isinstance(recent, int) or recent < 0:
            raise ValueError(f"recent {recent!r}: expected a non-negative token count")
        self.recent = recent
        if alpha is not None:
            if not 0 < float(alpha) <= 1:
                raise ValueError(f"alpha {alpha!r}: expected a number in (0, 1]")
            kvcfg = dataclasses.replace(kvcfg, alpha=float(alpha))
        self.kvcfg = kvcfg

    @property
    def alpha(self) -> float:
        return float(self.kvcfg.alpha)

    def describe(self) -> str:
        return f"resv(alpha={self.alpha:g}" + (f", recent={self.recent})" if self.recent else ")")

    def select(self, keys, queries):
        from models import resv

        s = keys.shape[0]
        params = self.kvcfg
        table = resv.ClusterTable(params)
        kq = np.asarray(resv.quantize_keys(keys))
        qq = np.asarray(resv.quantize_keys(queries))
        mask = _prompt_mask(s)
        out = StreamSelection(mask)
        for t in range(s):
            table.insert(kq[t])
            if t < self.first:
                continue
            chosen: set[int] = set()
            for h in range(qq.shape[0]):
                sel = table.select(qq[h, t])
                ids = [int(c) for c in sel.clusters]
                out.clusters.append(ids)
                chosen.update(ids)
                v = sel.visited
                nv = len(v) if hasattr(v, "__len__") else int(v)
                out.visited.append(nv / max(1, int(sel.n_clusters)))
                out.visited_literal.append(sel.exit_fraction_literal)
            toks = np.asarray(table.tokens(sorted(chosen)), dtype=np.int64)
            mask[t, :] = False
            mask[t, toks[toks <= t]] = True
            mask[t, max(0, t + 1 - self.recent) : t + 1] = True
            if not mask[t].any():  # nothing selected: the current token alone (softmax needs one key)
                mask[t, t] = True
        out.n_clusters = int(table.n)
        return out


def make_policy(
    name: str, budget=None, kvcfg=None, alpha: float | None = None, first: int = FIRST, **kw
) -> Policy:
    """A policy by name (see :data:`POLICIES`); ``budget`` for the baselines, ``kvcfg``/``alpha`` for resv."""
    if name == "full":
        return FullPolicy(first=first)
    if name == "resv":
        if kvcfg is None:
            raise ValueError("policy resv needs the accelerator config's kv section")
        return ResvPolicy(kvcfg, alpha=alpha, first=first, **kw)
    cls = {"streaming": StreamingPolicy, "h2o": H2OPolicy, "quest": QuestPolicy}.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    return cls(budget if budget is not None else 0.25, first=first, **kw)


def evaluate(trace, policy: Policy, scored: Callable[[int], None] | None = None) -> dict:
    """Select every (layer, KV head) stream of ``trace`` (an object with float32 ``keys (L,Hkv,S,hd)`` and
    ``queries (L,H,S,hd)``) and score it. Returns the means, the masks ``(L, Hkv, S, S)``
    (key ``masks``) and for resv ``clusters``: every scored query's cluster ids, in (layer, KV head, step,
    query head) order. ``scored`` (a progress bar's hook) is called with the number of streams done after
    each."""
    keys, queries = trace.keys, trace.queries
    L, hkv, s, _ = keys.shape
    g = queries.shape[1] // hkv
    first = policy.first
    if first < 0:
        raise ValueError(f"first scored step {first} is negative; give 0..{s - 1}")
    if s <= first:
        raise ValueError(f"trace of {s} tokens has no decode step after the first {first}")
    masks = np.zeros((L, hkv, s, s), dtype=bool)
    frac, rec, visited, literal, per_stream, clusters = [], [], [], [], [], []
    steps = np.arange(first, s)
    for layer in range(L):
        for j in range(hkv):
            qg = queries[layer, j * g : (j + 1) * g]
            sel = policy.select(keys[layer, j], qg)
            m = sel.mask
            if m.shape != (s, s) or np.triu(m, 1).any() or not m[steps].any(axis=1).all():
                raise RuntimeError(f"{policy.describe()}: invalid mask for layer {layer} head {j}")
            masks[layer, j] = m
            p = full_attention(keys[layer, j], qg)  # (g, S, S)
            f = m[steps].sum(axis=1) / (steps + 1)
            r = (p[:, steps, :] * m[steps][None]).sum(axis=-1)  # (g, steps)
            frac.append(float(f.mean()))
            rec.append(float(r.mean()))
            row = {"layer": layer, "kv_head": j, "retrieved_fraction": frac[-1], "recall": rec[-1]}
            clusters.extend(sel.clusters)
            if sel.visited:
                visited.append(float(np.mean(sel.visited)))
                row["early_exit_fraction"] = visited[-1]
                literal.append(float(np.mean(sel.visited_literal)))
                row["early_exit_fraction_literal"] = literal[-1]
                row["clusters"] = sel.n_clusters
            per_stream.append(row)
            if scored is not None:
                scored(len(per_stream))
    out = {
        "policy": policy.name,
        "setting": policy.describe(),
        "budget": policy.budget,
        "first": first,
        "steps": int(s - first),
        "retrieved_fraction": float(np.mean(frac)),
        "recall": float(np.mean(rec)),
        "streams": per_stream,
        "masks": masks,
    }
    if isinstance(policy, ResvPolicy):
        out["alpha"] = policy.alpha
        out["early_exit_fraction"] = float(np.mean(visited))
        out["early_exit_fraction_literal"] = float(np.mean(literal))
        out["mean_clusters"] = float(np.mean([r["clusters"] for r in per_stream]))
        out["clusters"] = clusters  # per scored query, in (layer, KV head, step, query head) order
    return out


@contextlib.contextmanager
def restrict_attention(masks: np.ndarray, n_heads: int):
    """Within the block, an int-mode forward of a :class:`models.lm.TernaryLM` over S tokens from position 0
    attends only where ``masks`` (bool ``(L, Hkv, S, S)``) is True: the scores of unselected keys are set to
    −inf before :func:`models.hostops.softmax`, which int-mode attention calls once per layer."""
    import torch

    from models import hostops

    original = hostops.softmax
    L, hkv = masks.shape[:2]
    per_head = torch.from_numpy(np.repeat(masks, n_heads // hkv, axis=1))  # (L, H, S, S)
    calls = [0]

    def softmax(x):
        layer = calls[0]
        calls[0] += 1
        if layer >= L or tuple(x.shape[-3:]) != tuple(per_head.shape[1:]):
            raise RuntimeError(
                f"restrict_attention: softmax call {layer} with scores {tuple(x.shape)} does not "
                f"match masks {tuple(masks.shape)}"
            )
        return original(torch.where(per_head[layer], x, torch.full_like(x, float("-inf"))))

    hostops.softmax = softmax
    try:
        yield calls
    finally:
        hostops.softmax = original


@contextlib.contextmanager
def capture_qk(model):
    """Within the block, every forward of ``model`` appends ``(q, k)`` per layer to the yielded list
    (float32 ``(B, H, T, hd)`` and ``(B, Hkv, T, hd)``, copies of :func:`models.hostops.rope`'s outputs:
    :class:`models.lm.Attention` calls it for q, then for k, once per layer)."""
    from models import hostops

    original = hostops.rope
    calls: list = []
    pairs: list = []

    def rope(x, positions, cos, sin):
        out = original(x, positions, cos, sin)
        calls.append(out.detach().clone())
        if len(calls) % 2 == 0:
            pairs.append((calls[-2], calls[-1]))
        return out

    hostops.rope = rope
    try:
        yield pairs
    finally:
        hostops.rope = original


def closed_loop_nll(model, tokens, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
    """Closed-loop restricted attention: for l = 0..L−1 run the int-mode model with layers < l restricted,
    take layer l's q/k and let ``policy`` select on them; then the NLL with every layer restricted.
    Returns ``(nll (S−1,), masks (L, Hkv, S, S))``."""
    import torch

    cfg = model.config
    s = len(tokens)
    toks = torch.as_tensor(np.asarray(tokens), dtype=torch.int64).reshape(1, -1)
    g = cfg.n_heads // cfg.n_kv_heads
    masks = np.broadcast_to(_prompt_mask(s), (cfg.n_layers, cfg.n_kv_heads, s, s)).copy()
    for layer in range(cfg.n_layers):
        with torch.no_grad(), capture_qk(model) as pairs, restrict_attention(masks, cfg.n_heads):
            model(toks, mode="int")
        q, k = (x[0].to(torch.float32).numpy() for x in pairs[layer])
        for j in range(cfg.n_kv_heads):
            masks[layer, j] = policy.select(k[j], q[j * g : (j + 1) * g]).mask
    return restricted_nll(model, tokens, masks), masks


def restricted_nll(model, tokens, masks: np.ndarray | None) -> np.ndarray:
    """Per-position NLL (nats, float64, length S−1) of ``tokens[1:]`` under the int-mode model with attention
    restricted to ``masks`` (None: full attention)."""
    import torch

    toks = torch.as_tensor(np.asarray(tokens), dtype=torch.int64).reshape(1, -1)
    with torch.no_grad():
        if masks is None:
            logits = model(toks, mode="int")[0]
        else:
            with restrict_attention(masks, model.config.n_heads) as calls:
                logits = model(toks, mode="int")[0]
            if calls[0] != masks.shape[0]:
                raise RuntimeError(
                    f"restrict_attention: {calls[0]} softmax calls for {masks.shape[0]} layers"
                )
    lp = torch.log_softmax(logits[:-1].to(torch.float64), dim=-1)
    return (-lp.gather(1, toks[0, 1:].reshape(-1, 1))[:, 0]).numpy()
