"""Modeled cycles of a decode step with and without KV retrieval, executed (not estimated): the trained tiny
model compiled for a resv variant of configs/kv260.yaml (kv.dim 32, 8 clusters of 64, sinks 2, window 8,
kv_min_context 64; the config of tests/test_retrieval_exec.py), a prefill of random printable bytes, then decode
steps through ``sim.runtime.Runtime`` (KVR on the KV model, GEMM_LIST on the stepped GEMM model); prints each
step's engine cycles per kind for dense attention (``compile_model(..., retrieval=False)``) and for retrieval.

Run from the repository root::

    python examples/retrieval_exec_cycles.py [--prompt 60] [--steps 12]
"""

from __future__ import annotations

import argparse

import numpy as np

from compiler import compile_model
from hw.config import config_from_dict, load_config
from models.checkpoint import load_checkpoint
from sim.runtime import Runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt", type=int, default=60)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    base = load_config("configs/kv260.yaml").to_dict()
    base["kv"].update(dim=32, lanes=8, max_clusters=8, max_cluster_size=64)
    base["system"].update(attention="resv", kv_min_context=64, kv_sinks=2, kv_window=8)
    acfg = config_from_dict(base, "tiny-resv")
    model = load_checkpoint("models/checkpoints/tiny.pt")
    toks = np.random.default_rng(3).integers(32, 127, args.prompt + args.steps)
    for retrieval in (False, True):
        cm = compile_model(model, acfg, retrieval=retrieval)
        p0 = cm.program(args.prompt, 0)
        rt = Runtime(p0)
        rt.run(p0, toks[: args.prompt])
        for pos in range(args.prompt, args.prompt + args.steps):
            _, st = rt.run(cm.program(1, pos), toks[pos : pos + 1])
            print(f"{'resv ' if retrieval else 'dense'} pos {pos}: cycles {st.cycles} (modeled)")


if __name__ == "__main__":
    main()
