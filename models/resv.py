"""ReSV (V-Rex) KV-cache retrieval: the golden references of the KV retrieval engine.

Two variants of the same algorithm (REFERENCES.md, V-Rex):

- :class:`ClusterTable` — **integer-exact**, the definition the RTL (hw/kv.py) and the numba model
  (sim/kv_model.py) must reproduce bit for bit, including the order in which selected clusters leave.
- :func:`float_select` — the algorithm in floating point (exact sort, float means), to show what the
  integer engine's approximations (bucket order, reciprocal ROM) cost.

Integer definition, per head, on the int8 codes the KV cache holds (``quantize_keys``; per-token scales
are ignored: a SimHash sign is scale-invariant and absmax codes have comparable norms):

1. **Signature** of a key k (dim int8): ``p_j = Σ_i h_ji·k_i`` over ``hyperplanes`` fixed ±1 hyperplanes
   (:func:`hyperplane_bits`, a splitmix64 stream from ``seed``); bit j = 1 iff ``p_j ≥ 0``.
2. **Clustering**: among the clusters that are not full (count < max_cluster_size), the nearest by Hamming
   distance to their signature (the signature of the key that opened it), lowest id on ties. Distance ≤
   ``hamming`` joins it; otherwise a new cluster opens (id = number of clusters) while fewer than
   ``max_clusters`` exist; otherwise the key joins the nearest non-full cluster anyway; if every cluster is
   full the key is dropped (result ``full``). Joining adds the key to the cluster's int key sums, count += 1.
3. **Scoring** of query q: ``dot_c = q · sum_c``; ``score_c = (dot_c · R[count_c]) >> 16`` (floor) with the
   reciprocal ROM ``R[n] = floor((2^16 + n//2) / n)`` — q · mean key without a divider.
4. **Threshold**: ``lo, hi`` = min, max score; weights ``w_c = (score_c − lo) · count_c`` (≥ 0: V-Rex's
   score·count with the row minimum subtracted, which the threshold unit computes anyway);
   row sum ``S = Σ w_c``; threshold ``Th = (alpha_q · S) >> 8``.
5. **Bucket order with early exit**: ``sh = max(0, bitlen(hi − lo) − log2(buckets))``, bucket of c =
   ``(score_c − lo) >> sh``. Clusters are linked into their buckets in id order (each bucket is a LIFO
   list, so a bucket is visited in decreasing id); the walk starts at the highest non-empty bucket, emits
   each cluster and adds its weight, and stops right after the cluster that brings the sum to ≥ Th.
   ``visited`` = clusters emitted; early-exit fraction = visited / clusters.
6. **V-Rex's literal rule**, reported beside ours (``visited_literal``): the same walk order, weights
   ``score_c · count_c`` without the row minimum, threshold ``(alpha_q · Σ score_c·count_c) >> 8``. With
   scores of either sign (q · mean key of int8 codes) the literal row sum mixes positive and negative terms
   and is often small, so the walk stops after very few clusters (and after one when the row sum is ≤ 0):
   the two fractions are different quantities. The engine implements ours, which keeps every weight ≥ 0
   so "the top clusters hold α of the mass" is meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw.config import KvConfig
from hw.kv_numerics import hyperplane_bits, hyperplane_matrix, reciprocal

__all__ = [
    "hyperplane_bits",
    "hyperplane_matrix",
    "quantize_keys",
    "reciprocal",
    "signature",
    "ClusterTable",
    "Selection",
    "float_select",
]


def quantize_keys(x) -> np.ndarray:
    """int8 codes of float vectors (…, dim), absmax per vector — the codes models.bitlinear.quantize_act
    gives the KV cache (same arithmetic in float32)."""
    import torch

    from models.bitlinear import quantize_act

    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    q, _ = quantize_act(t)
    return q.numpy().astype(np.int8)


def signature(key: np.ndarray, hp: np.ndarray) -> int:
    """SimHash signature of an int8 key as an int (bit j = projection j ≥ 0)."""
    proj = hp @ key.astype(np.int64)
    return sum(1 << j for j in range(hp.shape[0]) if proj[j] >= 0)


@dataclass
class Selection:
    clusters: list[int]  # selected cluster ids, in the order the engine emits them
    visited: int  # clusters visited before the early exit (= len(clusters))
    n_clusters: int  # clusters in the table
    threshold: int = 0
    row_sum: int = 0
    scores: list[int] = field(default_factory=list)
    visited_literal: int = 0  # clusters the same walk visits under V-Rex's literal score·count rule

    @property
    def exit_fraction(self) -> float:
        return self.visited / self.n_clusters if self.n_clusters else 0.0

    @property
    def exit_fraction_literal(self) -> float:
        return self.visited_literal / self.n_clusters if self.n_clusters else 0.0


class ClusterTable:
    """The integer-exact cluster table of one head (the engine's state between RESETs)."""

    def __init__(self, params: KvConfig):
        self.p = params
        self.hp = hyperplane_matrix(params)
        self.sigs: list[int] = []
        self.counts: list[int] = []
        self.sums: list[np.ndarray] = []
        self.members: list[list[int]] = []
        self.assign: list[int] = []  # cluster id per inserted key (−1: dropped, table full)

    @property
    def n(self) -> int:
        return len(self.sigs)

    @property
    def tokens_in_table(self) -> int:
        return sum(self.counts)

    def insert(self, key) -> tuple[int, bool, bool]:
        """Insert one int8 key; returns (cluster id, opened a new cluster, dropped because full)."""
        p = self.p
        key = np.asarray(key, dtype=np.int64)
        if key.shape != (p.dim,):
            raise ValueError(f"key has shape {key.shape}, expected ({p.dim},)")
        sig = signature(key, self.hp)
        best, best_d = -1, p.hyperplanes + 1
        for c in range(self.n):
            if self.counts[c] >= p.max_cluster_size:
                continue
            d = bin(sig ^ self.sigs[c]).count("1")
            if d < best_d:
                best, best_d = c, d
        token = len(self.assign)
        if best >= 0 and best_d <= p.hamming:
            cid, new = best, False
        elif self.n < p.max_clusters:
            cid, new = self.n, True
            self.sigs.append(sig)
            self.counts.append(0)
            self.sums.append(np.zeros(p.dim, dtype=np.int64))
            self.members.append([])
        elif best >= 0:
            cid, new = best, False
        else:
            self.assign.append(-1)
            return -1, False, True
        self.counts[cid] += 1
        self.sums[cid] += key
        self.members[cid].append(token)
        self.assign.append(cid)
        return cid, new, False

    def scores(self, q) -> list[int]:
        q = np.asarray(q, dtype=np.int64)
        return [(int(q @ self.sums[c]) * reciprocal(self.counts[c])) >> 16 for c in range(self.n)]

    def select(self, q) -> Selection:
        """WiCSum selection for one query row (int8 codes)."""
        p = self.p
        q = np.asarray(q, dtype=np.int64)
        if q.shape != (p.dim,):
            raise ValueError(f"query has shape {q.shape}, expected ({p.dim},)")
        n = self.n
        if n == 0:
            return Selection([], 0, 0)
        s = self.scores(q)
        lo, hi = min(s), max(s)
        w = [(s[c] - lo) * self.counts[c] for c in range(n)]
        row_sum = sum(w)
        th = (p.alpha_q * row_sum) >> 8
        sh = max(0, (hi - lo).bit_length() - (p.buckets - 1).bit_length())
        buckets: list[list[int]] = [[] for _ in range(p.buckets)]
        for c in range(n):
            buckets[(s[c] - lo) >> sh].append(c)
        order = [c for b in range(p.buckets - 1, -1, -1) for c in reversed(buckets[b])]
        visited = _walk(order, w, th)
        lit = [s[c] * self.counts[c] for c in range(n)]
        literal = _walk(order, lit, (p.alpha_q * sum(lit)) >> 8)
        return Selection(order[:visited], visited, n, th, row_sum, s, literal)

    def tokens(self, clusters) -> np.ndarray:
        """Sorted token indices (insertion order) of the given clusters."""
        toks = [t for c in clusters for t in self.members[c]]
        return np.array(sorted(toks), dtype=np.int64)


def _walk(order: list[int], weight: list[int], th: int) -> int:
    """Clusters the early-exit walk emits: along ``order``, stop right after the one whose weight brings
    the running sum to ≥ ``th`` (all of them if it never does)."""
    acc = 0
    for i, c in enumerate(order):
        acc += weight[c]
        if acc >= th:
            return i + 1
    return len(order)


def float_select(
    keys: np.ndarray,
    q: np.ndarray,
    hp: np.ndarray,
    hamming: int,
    alpha: float,
    max_cluster_size: int | None = None,
) -> tuple[np.ndarray, list[list[int]]]:
    """Float ReSV on float keys (S, dim) and one query: SimHash clustering (nearest within ``hamming``,
    unlimited clusters), score = q · mean key, clusters in exact descending score order until
    Σ (score − min)·count ≥ alpha · row sum. Returns (sorted selected token indices, clusters' members)."""
    sigs: list[np.ndarray] = []
    members: list[list[int]] = []
    for t, k in enumerate(keys):
        sig = (hp @ k) >= 0
        best, best_d = -1, hp.shape[0] + 1
        for c, s in enumerate(sigs):
            if max_cluster_size is not None and len(members[c]) >= max_cluster_size:
                continue
            d = int(np.count_nonzero(s != sig))
            if d < best_d:
                best, best_d = c, d
        if best >= 0 and best_d <= hamming:
            members[best].append(t)
        else:
            sigs.append(sig)
            members.append([t])
    if not members:
        return np.zeros(0, dtype=np.int64), members
    means = np.stack([keys[m].mean(axis=0) for m in members])
    s = means @ q
    counts = np.array([len(m) for m in members])
    w = (s - s.min()) * counts
    th = alpha * w.sum()
    acc, chosen = 0.0, []
    for c in np.argsort(-s, kind="stable"):
        chosen.append(int(c))
        acc += w[c]
        if acc >= th:
            break
    toks = sorted(t for c in chosen for t in members[c])
    return np.array(toks, dtype=np.int64), members
