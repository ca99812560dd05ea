"""Restricted attention of KV retrieval in the loop: the reference definition (docs/design.md, "KV retrieval in
the loop").

A *stream* is one layer's attention group (g KV heads); its keys and queries are the concatenation of the g
heads' int8 codes. :class:`StreamState` is the stream's ClusterTable (:mod:`models.resv`, the engine's exact
integers) plus where every key sits: token t ≥ ``sinks`` is inserted at its own step and becomes the next
slot of its cluster's page. A retrieval step at position p (:meth:`StreamState.step`) queries first (the
table holds tokens < p), then inserts p, and returns the **row** the attention runs over: tile 0, the window
tiles, then the selected clusters' pages in the stream's union order, P slots each, with the token of every
slot or −1 where the slot is invalid. :func:`list_block` is the KVR command's memory image of the same step
(what the engine writes at ``list_base``), so the executor can be compared word for word.

Valid slots (the host softmax's rule): a page slot i < the cluster's count before the step; a slot of tile 0
or of a window tile holding token t ≤ p with t < sinks, or t > p − window unless sinks ≤ t < p and t's
cluster is selected (then the page holds it; no token is read twice).
"""

from __future__ import annotations

import numpy as np

from hw.config import KvConfig
from hw.kv_numerics import list_capacity
from models.resv import ClusterTable

__all__ = [
    "LIST_HEADER_WORDS",
    "list_capacity",
    "union_order",
    "window_tiles",
    "StreamState",
    "list_block",
    "RetrievalCache",
]

LIST_HEADER_WORDS = 4


def union_order(selections) -> list[int]:
    """The stream's selection: the first query's clusters in emit order, then each later query's new ones."""
    out: list[int] = []
    seen: set[int] = set()
    for sel in selections:
        for c in sel:
            if c not in seen:
                seen.add(c)
                out.append(int(c))
    return out


def window_tiles(p: int, window: int, page: int) -> list[int]:
    """Token-major tiles of the window p − window + 1 .. p other than tile 0, ascending."""
    lo = max(0, p - window + 1) // page
    return [d for d in range(lo, p // page + 1) if d != 0]


class StreamState:
    """One stream's table and pages (see the module doc)."""

    def __init__(self, kv: KvConfig, sinks: int, window: int):
        self.kv, self.sinks, self.window, self.page = kv, sinks, window, kv.max_cluster_size
        self.table = ClusterTable(kv)
        self.cluster_of: dict[int, int] = {}  # token → cluster (−1: dropped)
        self.pages: list[list[int]] = []  # cluster → its tokens, in slot order

    def insert(self, token: int, key) -> tuple[int, int]:
        """Insert token ``token``'s key (tokens < sinks are not inserted: (−1, 0)); returns (cluster, slot)."""
        if token < self.sinks:
            return -1, 0
        cid, new, full = self.table.insert(key)
        if full:
            self.cluster_of[token] = -1
            return -1, 0
        if new:
            self.pages.append([])
        slot = len(self.pages[cid])
        self.pages[cid].append(token)
        self.cluster_of[token] = cid
        return cid, slot

    def select(self, queries) -> list[int]:
        return union_order([self.table.select(q).clusters for q in queries])

    def row(self, p: int, selected: list[int]) -> np.ndarray:
        """Token per slot of the step's row (−1: invalid), for a step at position p with ``selected``."""
        P, S, W = self.page, self.sinks, self.window
        chosen = set(selected)
        out = []
        for d in [0, *window_tiles(p, W, P)]:
            for i in range(P):
                t = d * P + i
                ok = t <= p and (
                    t < S or (t > p - W and not (S <= t < p and self.cluster_of.get(t, -1) in chosen))
                )
                out.append(t if ok else -1)
        for c in selected:
            members = self.pages[c]
            out.extend(members + [-1] * (P - len(members)))
        return np.array(out, dtype=np.int64)

    def step(self, p: int, queries, key) -> tuple[np.ndarray, list[int], tuple[int, int]]:
        """A retrieval step at position p: select with ``queries`` (int8 rows), then insert token p's
        ``key``. Returns (row, selected clusters, (cluster, slot) of p)."""
        selected = self.select(queries)
        counts = [len(self.pages[c]) for c in selected]
        row = self.row(p, selected)
        assert all(len(self.pages[c]) == n for c, n in zip(selected, counts, strict=True))
        return row, selected, self.insert(p, key)


def list_block(
    kv: KvConfig,
    tiles: list[int],
    selected: list[int],
    counts: list[int],
    page_tile: int,
    inserted: list[tuple[int, int]],
) -> np.ndarray:
    """The KVR command's list block as uint32 words: header (n, 0, 0, 0), ``list_capacity`` entries
    ``tile | valid << 16`` (dense tiles valid = P; pages valid = the cluster's count before the inserts; unused
    entries 0), then one word per insert ``cluster (int16, −1 dropped) | slot << 16``. ``selected`` empty
    and ``tiles`` empty (an insert-only command): n = 0."""
    P = kv.max_cluster_size
    cap = list_capacity(kv)
    entries = [d | P << 16 for d in tiles] + [
        (page_tile + c) | n << 16 for c, n in zip(selected, counts, strict=True)
    ]
    words = np.zeros(LIST_HEADER_WORDS + cap + len(inserted), dtype=np.uint32)
    words[0] = len(entries)
    words[LIST_HEADER_WORDS : LIST_HEADER_WORDS + len(entries)] = entries
    for i, (cid, slot) in enumerate(inserted):
        words[LIST_HEADER_WORDS + cap + i] = (cid & 0xFFFF) | slot << 16
    return words


class RetrievalCache:
    """The retrieval state an int-mode :class:`models.lm.KVCache` carries (``cache.retrieval``): one
    :class:`StreamState` per (layer, attention group). ``group`` is ``compiler.tiling.attention_group``'s g
    for the model on its config (the stream is g KV heads); ``min_context`` is ``system.kv_min_context``."""

    def __init__(self, kv: KvConfig, sinks: int, window: int, min_context: int, group: int, n_layers: int):
        self.kv, self.sinks, self.window, self.min_context, self.group = kv, sinks, window, min_context, group
        self.streams: dict[tuple[int, int], StreamState] = {}
        self.n_layers = n_layers
        self.rows: list = []  # (layer, stream, p, row, selected) of every retrieval step, for inspection

    def state(self, layer: int, j: int) -> StreamState:
        if (layer, j) not in self.streams:
            self.streams[layer, j] = StreamState(self.kv, self.sinks, self.window)
        return self.streams[layer, j]

    def _stream_rows(self, x, j: int, t: int):
        """int8 rows (numpy) of stream j at token index t of ``x`` (B=1, heads, T, hd): the concatenation of
        heads j·g .. j·g+g−1."""
        g = self.group
        return x[0, j * g : (j + 1) * g, t, :].reshape(-1).numpy().astype(np.int64)

    def insert_new(self, layer: int, kq_new, start: int) -> None:
        """Insert the step's new keys (a dense step: prefill or below ``min_context``)."""
        n_streams = kq_new.shape[1] // self.group
        for t in range(kq_new.shape[2]):
            for j in range(n_streams):
                self.state(layer, j).insert(start + t, self._stream_rows(kq_new, j, t))

    def attend(self, layer: int, qq, sq, kq, sk, vq, sv, kq_new, p: int, rep: int, score_div: float):
        """Restricted int-mode attention of one decode step at position p (module doc), or None when the
        step is dense (then the new key is inserted here too). Shapes as in models.lm.Attention (B = 1,
        T = 1; kq/sk/vq/sv the whole token-major cache, kv heads not repeated)."""
        import torch

        from models import hostops
        from models.bitlinear import int_matmul, quantize_act

        if qq.shape[0] != 1:
            raise ValueError("retrieval attention: batch size 1 only")
        if qq.shape[2] != 1 or p + 1 < self.min_context:
            self.insert_new(layer, kq_new, p - kq_new.shape[2] + 1)
            return None
        g = self.group
        n_streams = kq.shape[1] // g
        out = torch.zeros_like(qq, dtype=torch.float32)
        for j in range(n_streams):
            queries = [
                np.concatenate(
                    [qq[0, (j * g + i) * rep + r, 0, :].numpy().astype(np.int64) for i in range(g)]
                )
                for r in range(rep)
            ]
            st = self.state(layer, j)
            row, selected, _ = st.step(p, queries, self._stream_rows(kq_new, j, 0))
            self.rows.append((layer, j, p, row, selected))
            valid = torch.from_numpy(row >= 0)
            idx = torch.from_numpy(np.where(row >= 0, row, 0))
            for i in range(g):
                kvh = j * g + i
                kr, skr = kq[0, kvh, idx], sk[0, kvh, idx]  # (n, hd), (n, 1)
                vr = torch.where(valid[:, None], vq[0, kvh, idx], torch.zeros_like(vq[0, kvh, idx]))
                svr = sv[0, kvh, idx]
                for r in range(rep):
                    h = kvh * rep + r
                    q1, s1 = qq[0, h], sq[0, h]  # (1, hd), (1, 1)
                    scores = int_matmul(q1, kr.transpose(0, 1)).to(torch.float32) * (s1 * skr.transpose(0, 1))
                    scores = scores / score_div
                    scores = torch.where(valid[None, :], scores, torch.full_like(scores, float("-inf")))
                    pr = hostops.softmax(scores) * svr.transpose(0, 1)
                    pq, sp = quantize_act(pr)
                    out[0, h] = int_matmul(pq, vr).to(torch.float32) * sp
        return out
