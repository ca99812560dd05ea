"""Early-exit fraction under both rules (issue 16 part 5): ours (weights (score − min)·count, what the KV
engine computes) and V-Rex's literal score·count, walked in the same order so only the weighting differs."""

from pathlib import Path

import numpy as np
import pytest

from hw.config import load_config
from models import resv

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kvcfg():
    return load_config(REPO / "configs/default.yaml").kv


def _table(kvcfg, keys):
    t = resv.ClusterTable(kvcfg)
    for k in keys:
        t.insert(k)
    return t


def _literal_by_hand(t, q, alpha_q):
    """V-Rex's rule written out: descending the engine's order, Σ score·count until ≥ α·row sum."""
    sel = t.select(q)
    s = t.scores(q)
    w = [s[c] * t.counts[c] for c in range(t.n)]
    th = (alpha_q * sum(w)) >> 8
    lo = min(s)
    sh = max(0, (max(s) - lo).bit_length() - (t.p.buckets - 1).bit_length())
    order = sorted(range(t.n), key=lambda c: (-((s[c] - lo) >> sh), -c))
    acc = 0
    for i, c in enumerate(order):
        acc += w[c]
        if acc >= th:
            return sel, i + 1
    return sel, len(order)


def test_literal_rule_matches_its_definition(kvcfg):
    rng = np.random.default_rng(5)
    keys = rng.integers(-127, 128, size=(96, kvcfg.dim))
    t = _table(kvcfg, keys)
    for _ in range(40):
        q = rng.integers(-127, 128, size=kvcfg.dim)
        sel, lit = _literal_by_hand(t, q, kvcfg.alpha_q)
        assert sel.visited_literal == lit
        assert sel.exit_fraction_literal == pytest.approx(lit / t.n)
        assert 1 <= sel.visited <= t.n and 1 <= sel.visited_literal <= t.n


def test_the_two_rules_differ_when_scores_have_both_signs(kvcfg):
    """Keys around 12 random directions: for a query along one of them about half the clusters score
    negative, so the literal row sum is small and its walk never ends later than ours (which shifts every
    weight to ≥ 0), and over several queries it ends earlier."""
    rng = np.random.default_rng(7)
    dirs = rng.integers(-60, 61, size=(12, kvcfg.dim))
    t = _table(
        kvcfg, [np.clip(dirs[i % 12] + rng.integers(-6, 7, size=kvcfg.dim), -127, 127) for i in range(96)]
    )
    ours, literal = [], []
    for j in range(12):
        q = dirs[j] + rng.integers(-6, 7, size=kvcfg.dim)
        assert min(t.scores(q)) < 0 < max(t.scores(q))
        sel = t.select(q)
        ours.append(sel.visited)
        literal.append(sel.visited_literal)
    assert all(lit <= v for lit, v in zip(literal, ours, strict=True))
    assert sum(literal) < sum(ours)
