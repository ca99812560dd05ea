"""Modeled step times of a model's prefill and decode Programs on a config, against the DMA read FIFO depth
(``memory.read_fifo_beats``): the cycle model of the top level (sim/top_model.py, the RTL's cycle definition:
the DMA's read-ahead, gearbox and engines stepped cycle by cycle, host ops at their modeled latency, no
overlap unless the config sets it) next to ``tritium estimate``'s figure at the config's own depth (its TLMM
cost is the same cycle model, bounded by the shared DRAM; its host ops and GEMMs are costed in seconds).
Every figure is MODELED.

Run from the repository root::

    python examples/read_fifo_gain.py --model bitnet-0.7b --config configs/kv260.yaml \\
        --prompt 128 --context 128 1024 --fifo 0 64 128
"""

from __future__ import annotations

import dataclasses

from _common import workload_parser  # examples/_common.py (puts the checkout on sys.path)

from hw.config import config_from_dict, load_config  # noqa: E402
from hw.isa import GemmCommand, TlmmCommand  # noqa: E402
from sim.top_model import run_cycles, schedule  # noqa: E402
from tritium.estimate import _compiled, cost_program  # noqa: E402


def step_cycles_cached(prog, acfg, memo: dict) -> tuple[float, float]:
    """(whole-step cycles on the top-level model, TLMM run cycles): run lengths depend on a command's counts,
    not on its beat addresses (every run starts on a bus-beat boundary), so they are memoized on the counts."""
    runs, tlmm = [], 0
    for cmd in prog.commands():
        if isinstance(cmd, (TlmmCommand, GemmCommand)):
            key = dataclasses.replace(
                cmd,
                **{
                    f: 0
                    for f in ("act_base", "wgt_base", "res_base", "a_base", "b_base", "c_base")
                    if hasattr(cmd, f)
                },
            )
            if key not in memo:
                memo[key] = run_cycles(acfg, cmd)
            r = memo[key]
            tlmm += r if isinstance(cmd, TlmmCommand) else 0
        else:
            r = run_cycles(acfg, cmd, prog.host_ops)
        runs.append(r)
    return schedule(prog.commands(), runs, acfg.system.overlap).length, tlmm


def main() -> None:
    ap = workload_parser(__doc__)
    ap.add_argument(
        "--fifo", type=int, nargs="+", default=[0, 64, 128], help="read_fifo_beats values (0: rule)"
    )
    ap.add_argument("--overlap", action="store_true", help="compile and schedule with system.overlap true")
    args = ap.parse_args()
    base = load_config(args.config)
    if args.overlap:
        d = base.to_dict()
        d["system"]["overlap"] = True
        base = config_from_dict(d, args.config)
    f_hz = base.clock_mhz * 1e6
    steps = [("prefill", args.prompt, 0)] + [(f"decode@{c}", 1, c - 1) for c in args.context]
    cm = _compiled(args.model, base)  # the Programs do not depend on the FIFO depth (a cost field)
    progs = {label: cm.program(tokens, pos, logits="last") for label, tokens, pos in steps}
    print(
        f"{args.model} on {args.config} ({base.clock_mhz:g} MHz, memory latency {base.memory.latency}, "
        f"overlap {base.system.overlap}); MODELED: step ms on sim/top_model.py (TLMM run ms) per read_fifo_beats"
    )
    print(
        f"{'step':>14} {'estimate ms':>12} " + " ".join(f"{'F=' + str(f or 'rule'):>22}" for f in args.fifo)
    )
    for label, *_ in steps:
        prog = progs[label]
        est = cost_program(prog, base).seconds * 1e3
        cols = []
        for f in args.fifo:
            d = base.to_dict()
            d["memory"]["read_fifo_beats"] = f  # the Programs stay valid: the depth is not in them
            acfg = config_from_dict(d, args.config)
            cyc, tl = step_cycles_cached(prog, acfg, {})
            cols.append(f"{cyc / f_hz * 1e3:9.2f} ms (TLMM {tl / f_hz * 1e3:7.2f})")
        print(f"{label:>14} {est:12.2f} " + " ".join(f"{c:>22}" for c in cols))


if __name__ == "__main__":
    main()
