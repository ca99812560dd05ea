"""``tritium kv ppl``: perplexity at long context with restricted attention, and the share of the KV cache read.

    tritium kv ppl [--checkpoint CKPT] [--context N] [--windows W] [--offset B]
                   [--policy resv streaming h2o quest] [--alpha A ...] [--recent R ...] [--budget B ...]
                   [--loop closed|open] [--first F] [--config FILE] [--extend] [--json]

Every policy setting (each alpha × recent for ``resv``, each budget for a baseline) runs over the same ``W``
validation windows of ``N`` bytes; the figures and their definitions are :mod:`models.kvppl`'s (int mode,
closed loop by default). Exit 2 with one line on bad input.
"""

from __future__ import annotations

import json
import sys

from tritium.kv import _guard

__all__ = ["DEFAULT_LONG_CHECKPOINT", "run_ppl", "cmd_kv_ppl", "add_parser"]

DEFAULT_LONG_CHECKPOINT = "models/checkpoints/tiny-long.safetensors"


def run_ppl(
    checkpoint: str,
    acfg,
    context: int | None = None,
    windows: int = 2,
    offset: int = 0,
    policies=("resv",),
    alphas=None,
    recents=(0,),
    budgets=(0.3,),
    first: int | None = None,
    loop: str = "closed",
    extend: bool = False,
    log=None,
) -> dict:
    """Load ``checkpoint`` and evaluate every policy setting (:func:`models.kvppl.policy_ppl`); JSON-ready."""
    from models.kvpolicy import FIRST, POLICIES, make_policy, parse_budget
    from models.kvppl import policy_ppl, validation_windows
    from traces.record import file_sha256, load_model

    model = load_model(checkpoint)
    trained = model.config.max_seq
    context = trained if context is None else int(context)
    if context > trained:
        if not extend:
            raise ValueError(
                f"--context {context} exceeds the checkpoint's max_seq {trained} ({checkpoint}); "
                "--extend evaluates it there anyway (RoPE tables extended, positions it was not trained on)"
            )
        model = load_model(checkpoint, max_seq=context)
    first = FIRST if first is None else int(first)
    pols = []
    for name in policies:
        if name not in POLICIES or name == "full":
            raise ValueError(
                f"--policy {name!r}: choose among {', '.join(p for p in POLICIES if p != 'full')} "
                "(dense attention is always evaluated)"
            )
        if name == "resv":
            if acfg.kv.dim != model.config.head_dim:
                raise ValueError(
                    f"policy resv: kv.dim {acfg.kv.dim} of config {acfg.source} differs from the model's "
                    f"head_dim {model.config.head_dim}"
                )
            for a in alphas if alphas else [acfg.kv.alpha]:
                for r in recents:
                    pols.append(make_policy("resv", kvcfg=acfg.kv, alpha=a, first=first, recent=int(r)))
        else:
            pols += [make_policy(name, parse_budget(b), first=first) for b in budgets]
    wins = validation_windows(context, windows, offset)
    out = policy_ppl(model, wins, pols, loop=loop, log=log)
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "trained_max_seq": trained,
        "config": acfg.name,
        "offset": offset,
        **out,
    }


def _table(res: dict) -> str:
    from tritium.report import table

    rows = [["dense", "all visible tokens", f"{res['dense']['ppl_per_byte']:.4f}", "—", 1.0, 1.0]]
    for r in res["rows"]:
        rows.append(
            [
                r["policy"],
                r["setting"],
                f"{r['ppl_per_byte']:.4f}",
                f"{100 * r['ppl_vs_dense']:+.2f} %",
                r["retrieved_fraction"],
                r["kv_read_share"],
            ]
        )
    return table(
        ["policy", "setting", "ppl/byte", "vs dense", "retrieved fraction", "KV read share"],
        rows,
        title=f"{res['checkpoint']} at context {res['context']}: {res['windows']} validation window(s) from "
        f"byte {res['offset']}, decode steps {res['first']}..{res['context'] - 1} scored, int mode, "
        f"{res['loop']} loop — config {res['config']}",
    )


@_guard
def cmd_kv_ppl(args) -> int:
    from hw.config import load_config

    acfg = load_config(args.config)
    if args.windows < 1:
        raise ValueError(f"--windows {args.windows}: expected at least 1")

    def log(text: str) -> None:
        print(f"kv ppl: {text}", file=sys.stderr, flush=True)

    res = run_ppl(
        args.checkpoint,
        acfg,
        context=args.context,
        windows=args.windows,
        offset=args.offset,
        policies=args.policy,
        alphas=args.alpha,
        recents=args.recent,
        budgets=args.budget,
        first=args.first,
        loop=args.loop,
        extend=args.extend,
        log=log,
    )
    print(json.dumps(res, indent=1) if args.json else _table(res))
    return 0


def add_parser(sub, common) -> None:
    """Add ``ppl`` to the ``tritium kv`` actions (``common``: the --config/--first parent parser)."""
    from tritium.options import add_checkpoint, command

    what = "perplexity at long context with restricted attention vs dense, and the KV read share"
    p = command(sub, "ppl", cmd_kv_ppl, help=what, parents=[common])
    add_checkpoint(p, DEFAULT_LONG_CHECKPOINT, "model checkpoint")
    p.add_argument(
        "--context", type=int, default=None, help="window length in bytes (default: the model's max_seq)"
    )
    p.add_argument("--windows", type=int, default=2, help="validation windows (default 2)")
    p.add_argument("--offset", type=int, default=0, help="byte offset of the first window (default 0)")
    p.add_argument(
        "--policy",
        nargs="+",
        default=["resv"],
        metavar="NAME",
        help="policies: resv streaming h2o quest (default resv; dense is always evaluated)",
    )
    p.add_argument(
        "--alpha", type=float, nargs="+", default=None, help="resv: threshold fractions (default: kv.alpha)"
    )
    p.add_argument(
        "--recent",
        type=int,
        nargs="+",
        default=[0],
        help="resv: local windows of the last N tokens, one setting each (default 0)",
    )
    p.add_argument(
        "--budget",
        nargs="+",
        default=["0.3"],
        help="baselines: tokens per step or fractions of the visible prefix (default 0.3)",
    )
    p.add_argument(
        "--loop",
        choices=("closed", "open"),
        default="closed",
        help="closed: each layer selects on the restricted model's q/k (default); open: on the dense model's",
    )
    p.add_argument(
        "--extend",
        action="store_true",
        help="allow --context beyond the checkpoint's max_seq (RoPE extended; untrained positions)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
