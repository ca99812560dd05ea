"""Where KV retrieval starts to pay (modeled): decode tokens/s with dense attention and with ReSV retrieval
(``system.attention: resv``; docs/design.md, "KV retrieval in the loop") per context and per selected share.

Run from the repository root::

    python examples/retrieval_sweep.py [--model bitnet-0.7b] [--config configs/kv260.yaml] \
        [--context 512 1024 1536 2048] [--share 0.1 0.265 0.5]

For each context: the dense decode rate, then per share the retrieval decode rate, its speedup, the share of
the dense KV bytes it reads and the KVR engine's time per token. Every figure is modeled by ``tritium estimate``
(``--attention resv``); the retrieval step is charged its KVR commands, table/list/page traffic and host page
writes. ``system.kv_min_context`` is set to 1 here so every context retrieves (the config's threshold is where
the compiler would switch; this sweep shows where it should). Step Programs come from the Program cache.
"""

from __future__ import annotations

import argparse
import dataclasses

from compiler.cache import ProgramCache
from hw.config import load_config
from tritium.estimate import estimate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bitnet-0.7b")
    ap.add_argument("--config", default="configs/kv260.yaml")
    ap.add_argument("--context", type=int, nargs="+", default=[256, 512, 1024, 1536, 2048])
    ap.add_argument("--share", type=float, nargs="+", default=[0.1, 0.265, 0.5])
    ap.add_argument("--prompt", type=int, default=16)
    args = ap.parse_args(argv)
    base = load_config(args.config)
    cache = ProgramCache()
    print(f"{args.model} on {base.name}, decode (modeled); share = selected share of the table's clusters")
    print(
        f"{'context':>7}  {'dense tok/s':>11}  "
        + "  ".join(f"{'share ' + format(s, 'g'):>28}" for s in args.share)
    )
    for ctx in args.context:
        dense = estimate(args.model, base, args.prompt, ctx, cache=cache, attention="dense")
        cells = []
        for s in args.share:
            acfg = dataclasses.replace(
                base, system=dataclasses.replace(base.system, kv_selected_share=s, kv_min_context=1)
            )
            r = estimate(args.model, acfg, args.prompt, ctx, cache=cache, attention="resv")
            x = r["retrieval"]
            sp = dense["decode_s_per_token"] / r["decode_s_per_token"]
            cells.append(
                f"{r['decode_tokens_per_s']:6.2f} ({sp:4.2f}x, KV {x['kv_read_fraction']:4.0%}, "
                f"KVR {x['kv_seconds_per_token'] * 1e3:4.2f} ms)"
            )
        print(f"{ctx:>7}  {dense['decode_tokens_per_s']:>11.2f}  " + "  ".join(f"{c:>28}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
