"""The selected share retrieval reads on recorded traces (measured, int reference): each stream of each trace
through ``models.retrieval.StreamState`` (the KVR command's exact selection: query first, then insert; the union
over the stream's query heads; sinks and the window always read), per decode step from ``--first`` on.

Run from the repository root::

    python examples/retrieval_trace_share.py [traces/tiny-val-*.npz] [--clusters 8] [--page 64] \
        [--sinks 4] [--window 16] [--alpha 0.3]

Prints, averaged over streams and steps: the share of the table's clusters selected (what the estimate's
``system.kv_selected_share`` assumes), the tokens attended / visible, the tiles read (n·P keys) / the dense
tiles, and the attention-mass recall of the row's tokens (full attention in float64 from the trace's float q/k,
as ``tritium kv replay`` measures it). Traces exist only for the tiny model at 256 tokens (head_dim 32, one KV
head per stream on the 2×64 GEMM), so this is the share at that length, not at 2048.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob

import numpy as np

from hw.config import load_config
from models.kvpolicy import full_attention
from models.resv import quantize_keys
from models.retrieval import StreamState
from traces.format import load_trace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="*")
    ap.add_argument("--clusters", type=int, default=8)
    ap.add_argument("--page", type=int, default=64)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--first", type=int, default=16)
    args = ap.parse_args(argv)
    paths = args.traces or sorted(glob.glob("traces/tiny-val-*.npz"))
    share, tokens, tiles, recall = [], [], [], []
    for path in paths:
        tr = load_trace(path)
        kv = dataclasses.replace(
            load_config("configs/default.yaml").kv,
            dim=tr.head_dim,
            max_clusters=args.clusters,
            max_cluster_size=args.page,
            alpha=args.alpha,
        )
        for layer in range(tr.n_layers):
            for j in range(tr.n_kv_heads):
                heads = list(tr.query_heads(j))
                kq = quantize_keys(tr.keys[layer, j])
                qq = quantize_keys(tr.queries[layer, heads])
                probs = full_attention(tr.keys[layer, j], tr.queries[layer, heads])  # (g, S, S)
                st = StreamState(kv, args.sinks, args.window)
                for p in range(tr.n_tokens):
                    if p < args.first:
                        st.insert(p, kq[p])
                        continue
                    n = st.table.n
                    row, sel, _ = st.step(p, [qq[h, p] for h in range(len(heads))], kq[p])
                    toks = row[row >= 0]
                    share.append(len(sel) / n if n else 0.0)
                    tokens.append(len(toks) / (p + 1))
                    tiles.append(row.size / (-(-(p + 1) // args.page) * args.page))
                    recall.append(float(probs[:, p, toks].sum(axis=-1).mean()))
    print(
        f"{len(paths)} trace(s), {len(share)} stream steps; clusters {args.clusters} x {args.page}, sinks "
        f"{args.sinks}, window {args.window}, alpha {args.alpha:g} (measured, int reference)"
    )
    print(f"selected share of clusters  {np.mean(share):.3f}")
    print(f"tokens attended / visible   {np.mean(tokens):.3f}")
    print(f"keys read / dense keys      {np.mean(tiles):.3f}")
    print(f"attention-mass recall       {np.mean(recall):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
