"""``tritium kv``: replay recorded KV traces through the retrieval policies and the KV engine's cycle model.

    tritium kv replay TRACE [--config FILE] [--policy resv|streaming|h2o|quest|full] [--budget B] [--alpha A]
                      [--checkpoint PT] [--json]
    tritium kv plot TRACE... [--config FILE] --plot PATH      (PATH .png/.pdf/.svg; + PNG + CSV)
    tritium kv report TRACE... [--config FILE] [--checkpoint PT] --out DIR [--json]
    tritium kv ppl [--checkpoint CKPT] [--context N] [--policy ...] [--alpha ...] [--json]   (tritium/kv_ppl.py)

Hook into the main parser with :func:`register` (adds the ``kv`` subcommand; each handler returns an exit
code: 0 ok, 2 bad input with one line on stderr). Figures (definitions in :mod:`models.kvpolicy`): retrieved
fraction, attention-mass recall, ReSV early-exit fraction, and for ``resv`` the KV engine's cycles and
**modeled** dynamic energy from the numba model (:mod:`sim.kv_model`) running the whole trace: per (layer,
KV head) a RESET, the keys inserted in order and, at every scored decode step, one QUERY per query head of
the group. The model's selected clusters are checked against the integer reference (``model_matches_reference``).
Perplexity (``--checkpoint``): the int-mode model over the trace's tokens with attention restricted to the
selected tokens, per byte, over the predictions made at scored steps; ``ppl_per_byte`` is closed loop (each
layer selects on the q/k the restricted model computes), ``ppl_per_byte_open_loop`` uses the selections made
on the recorded (full-attention) q/k (:mod:`models.kvpolicy`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from hw.files import output_dir, write_text

__all__ = [
    "register",
    "replay",
    "sweep",
    "plot_recall",
    "report",
    "report_table",
    "SWEEP_BUDGETS",
    "SWEEP_ALPHAS",
]

EXIT_INPUT = 2
SWEEP_BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
SWEEP_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
DEFAULT_CHECKPOINT = "models/checkpoints/tiny.pt"


def _resv_commands(trace, kv, first: int):
    from models.resv import quantize_keys

    cmds = []
    L, hkv = trace.keys.shape[:2]
    g = trace.group
    for layer in range(L):
        kq = np.asarray(quantize_keys(trace.keys[layer]))
        qq = np.asarray(quantize_keys(trace.queries[layer]))
        for j in range(hkv):
            cmds.append(("reset",))
            for t in range(trace.n_tokens):
                cmds.append(("insert", kq[j, t]))
                if t >= first:
                    cmds.extend(("query", qq[h, t]) for h in range(j * g, j * g + g))
    return cmds


def _check_trace_fits(trace, acfg) -> None:
    if trace.head_dim != acfg.kv.dim:
        raise ValueError(
            f"{trace.path}: head_dim {trace.head_dim} differs from kv.dim {acfg.kv.dim} of config "
            f"{acfg.source}"
        )


def _model_for(trace, checkpoint):
    from traces.record import file_sha256, load_model

    sha = file_sha256(checkpoint)
    if sha != trace.meta.get("checkpoint_sha256"):
        raise ValueError(
            f"{checkpoint}: sha256 differs from the checkpoint trace {trace.path} was recorded with"
        )
    model = load_model(checkpoint, max_seq=max(trace.n_tokens, 1))
    vocab = model.config.vocab
    tokens = np.asarray(trace.tokens)
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        bad = int(tokens.max()) if int(tokens.max()) >= vocab else int(tokens.min())
        raise ValueError(
            f"{trace.path}: token id {bad} is outside the checkpoint's vocabulary 0..{vocab - 1}"
        )
    return model


def _ppl(nll: np.ndarray, first: int) -> float:
    return float(math.exp(nll[first:].mean()))


def replay(
    trace,
    acfg,
    policy: str = "resv",
    budget=None,
    alpha: float | None = None,
    first: int | None = None,
    model=None,
    cycles: bool = True,
    full_nll: np.ndarray | None = None,
    recent: int = 0,
) -> dict:
    """Run one policy over a :class:`traces.format.Trace`; returns the figures (JSON-ready dict).

    ``budget``: token count or fraction for the baselines; ``alpha`` overrides ``acfg.kv.alpha`` for resv.
    ``model`` (a loaded TernaryLM): also the restricted-attention perplexity (int mode). ``cycles``: for resv,
    run the KV engine's cycle model over the whole trace."""
    from models.kvpolicy import FIRST, closed_loop_nll, evaluate, make_policy, parse_budget, restricted_nll
    from sim.progress import step

    first = FIRST if first is None else first
    if policy == "resv":
        _check_trace_fits(trace, acfg)
    extra = {"recent": recent} if policy == "resv" and recent else {}
    pol = make_policy(policy, parse_budget(budget), kvcfg=acfg.kv, alpha=alpha, first=first, **extra)
    done, streams = [0], trace.n_layers * trace.n_kv_heads  # polled by a progress bar (sim/progress.py)
    step("select + score", lambda: f"{done[0]}/{streams} streams")
    ev = evaluate(trace, pol, scored=lambda k: done.__setitem__(0, k))
    masks = ev.pop("masks")
    ref = ev.pop("clusters", None)
    out = {
        "trace": trace.path,
        "tokens": trace.n_tokens,
        "config": acfg.name,
        **ev,
        "early_exit_fraction": ev.get("early_exit_fraction"),
        "early_exit_fraction_literal": ev.get("early_exit_fraction_literal"),
        "cycles": None,
        "energy_j_modeled": None,
    }
    if policy == "resv" and cycles:
        from sim.kv_model import kv_energy_j, run_commands

        step("KV-engine cycles")
        cmds = _resv_commands(trace, acfg.kv, first)
        run = run_commands(acfg.kv, cmds)
        got = [r for c, r in zip(cmds, run.results, strict=True) if c[0] == "query"]
        out["cycles"] = run.cycles
        out["queries"] = len(got)
        out["inserts"] = sum(1 for c in cmds if c[0] == "insert")
        out["cycles_per_query_step"] = run.cycles / max(
            1, (trace.n_tokens - first) * trace.n_layers * trace.n_kv_heads
        )
        out["energy_j_modeled"] = kv_energy_j(acfg, run.events)
        out["events"] = run.events
        out["model_matches_reference"] = got == ref
        out["time_s_modeled"] = run.cycles / (acfg.clock_mhz * 1e6)
    if model is not None:
        step("perplexity")
        base = full_nll if full_nll is not None else restricted_nll(model, trace.tokens, None)
        if policy == "full":
            closed = opened = base
        else:
            opened = restricted_nll(model, trace.tokens, masks)
            closed, _ = closed_loop_nll(model, trace.tokens, pol)
        out["ppl_per_byte"] = _ppl(closed, first)
        out["ppl_per_byte_open_loop"] = _ppl(opened, first)
        out["ppl_per_byte_full"] = _ppl(base, first)
        out["ppl_mode"] = "int, closed loop (open loop: the trace's selections)"
    return out


#: The stages of :func:`replay` as ``tritium kv replay``'s progress bar counts them.
REPLAY_STAGES = ("select + score", "KV-engine cycles", "perplexity")


# ---------------------------------------------------------------- sweeps, plot, report
SWEEP_POLICIES = ("streaming", "h2o", "quest", "resv", "full")


def sweep_replays(n_traces: int, budgets=SWEEP_BUDGETS, alphas=SWEEP_ALPHAS) -> int:
    """How many replays :func:`sweep` runs (for a progress bar)."""
    return n_traces * sum(
        len(alphas) if n == "resv" else 1 if n == "full" else len(budgets) for n in SWEEP_POLICIES
    )


def report_replays(n_traces: int, recent: int = 8) -> int:
    """How many replays :func:`report` runs (for a progress bar)."""
    return n_traces * (5 + (1 if recent else 0))


def sweep(
    traces, acfg, budgets=SWEEP_BUDGETS, alphas=SWEEP_ALPHAS, first: int | None = None, bar=None
) -> dict:
    """Recall vs retrieved fraction of every policy: each baseline at each budget fraction, resv at each
    alpha, full once; values are means over the traces. → ``{policy: [(knob, fraction, recall), ...]}``.
    ``bar``: a sim.progress bar advanced once per replay."""
    res: dict[str, list] = {}
    for name in SWEEP_POLICIES:
        knobs = alphas if name == "resv" else budgets if name != "full" else [None]
        pts = []
        for knob in knobs:
            rs = []
            for t in traces:
                if bar is not None:
                    bar.stage(f"sweep {name} {'' if knob is None else f'{knob:g}'}")
                rs.append(
                    replay(
                        t,
                        acfg,
                        name,
                        budget=None if name == "resv" else knob,
                        alpha=knob if name == "resv" else None,
                        first=first,
                        cycles=False,
                    )
                )
                if bar is not None:
                    bar.update()
            pts.append(
                (
                    knob,
                    float(np.mean([r["retrieved_fraction"] for r in rs])),
                    float(np.mean([r["recall"] for r in rs])),
                )
            )
        res[name] = pts
    return res


def plot_recall(points: dict, out: Path, title: str) -> dict:
    """Recall against retrieved fraction for every policy (PNG + PDF/SVG + CSV of the points,
    :func:`tritium.figures.save_figure`); ReSV's points are labelled with their alpha, above and to the
    left of its curve on a white box so no baseline curve runs through a label. Returns the files."""
    from tritium.figures import new_figure, save_figure

    fig, ax = new_figure(width=6.4, height=4.6)
    style = {
        "resv": ("o-", "C3", "ReSV (alpha swept; labels: alpha)"),
        "streaming": ("s--", "C0", "StreamingLLM (4 sinks + window)"),
        "h2o": ("^--", "C1", "H2O (heavy hitters + recent)"),
        "quest": ("d--", "C2", "Quest (16-token pages)"),
        "full": ("*", "k", "full attention"),
    }
    rows = []
    for name, pts in points.items():
        fmt, color, label = style.get(name, (".-", None, name))
        ax.plot([p[1] for p in pts], [p[2] for p in pts], fmt, color=color, label=label, ms=5, zorder=3)
        knob = "alpha" if name == "resv" else "budget_fraction"
        rows += [[name, knob, "" if k is None else k, x, y] for k, x, y in pts]
        if name == "resv":
            for i, (k, x, y) in enumerate(pts):
                ax.annotate(
                    f"α={k:g}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(-8, 12 + 8 * (i % 2)) if x > 0.15 else (6, 14 + 8 * (i % 2)),
                    ha="right" if x > 0.15 else "left",
                    fontsize=7,
                    color="C3",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9},
                    arrowprops={"arrowstyle": "-", "color": "C3", "lw": 0.5},
                    zorder=4,
                )
    ax.set_xlabel("retrieved fraction (selected / visible tokens)")
    ax.set_ylabel("attention-mass recall")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title(title)
    return save_figure(fig, out, ["policy", "knob", "value", "retrieved_fraction", "recall"], rows)


def report(
    traces,
    acfg,
    checkpoint: str | None = DEFAULT_CHECKPOINT,
    first: int | None = None,
    recent: int = 8,
    bar=None,
) -> dict:
    """docs/results.md's KV table: ReSV at the config's alpha on every trace, then every baseline at the
    budget that matches ReSV's retrieved fraction on that trace (a fraction of the visible prefix), full attention.
    Means over traces of retrieved fraction, recall, early-exit fraction, perplexity (int mode), cycles and
    modeled energy. ``recent`` > 0 adds a row for ReSV with a local window of that many tokens. ``bar``: a
    sim.progress bar advanced once per replay (:func:`report_replays` of them)."""
    from sim.progress import progress

    bar = bar if bar is not None else progress(show=False)
    names = ("resv", *((f"resv+recent{recent}",) if recent else ()), "streaming", "h2o", "quest", "full")
    rows: dict[str, list] = {n: [] for n in names}
    for i, t in enumerate(traces):
        where = f"trace {i + 1}/{len(traces)}"
        bar.stage(f"{where}: model")
        model = _model_for(t, checkpoint) if checkpoint else None
        full_nll = None
        if model is not None:
            from models.kvpolicy import restricted_nll

            full_nll = restricted_nll(model, t.tokens, None)
        bar.stage(f"{where}: resv")
        r = replay(t, acfg, "resv", first=first, model=model, full_nll=full_nll)
        bar.update()
        rows["resv"].append(r)
        f = r["retrieved_fraction"]
        for name in ("streaming", "h2o", "quest", "full"):
            bar.stage(f"{where}: {name}")
            rows[name].append(replay(t, acfg, name, budget=f, first=first, model=model, full_nll=full_nll))
            bar.update()
        if recent:
            bar.stage(f"{where}: resv+recent{recent}")
            rows[f"resv+recent{recent}"].append(
                replay(t, acfg, "resv", first=first, model=model, full_nll=full_nll, recent=recent)
            )
            bar.update()
    summary = []
    for name, rs in rows.items():

        def mean(k, rs=rs):
            return float(np.mean([r[k] for r in rs])) if rs and rs[0].get(k) is not None else None

        summary.append(
            {
                "policy": name,
                "setting": f"alpha={acfg.kv.alpha:g}"
                if name == "resv"
                else f"alpha={acfg.kv.alpha:g} + last {recent} tokens"
                if name.startswith("resv+")
                else "budget = ReSV's fraction per trace"
                if name != "full"
                else "all tokens",
                "retrieved_fraction": mean("retrieved_fraction"),
                "recall": mean("recall"),
                "early_exit_fraction": mean("early_exit_fraction"),
                "early_exit_fraction_literal": mean("early_exit_fraction_literal"),
                "ppl_per_byte": mean("ppl_per_byte"),
                "ppl_per_byte_open_loop": mean("ppl_per_byte_open_loop"),
                "cycles": mean("cycles"),
                "energy_j_modeled": mean("energy_j_modeled"),
            }
        )
    return {
        "config": acfg.name,
        "config_source": acfg.source,
        "checkpoint": checkpoint,
        "traces": [t.path for t in traces],
        "first": rows["resv"][0]["first"] if traces else None,
        "summary": summary,
        "per_trace": {
            n: [{k: v for k, v in r.items() if k not in ("streams", "events")} for r in rs]
            for n, rs in rows.items()
        },
    }


def report_table(rep: dict) -> str:
    """Markdown table of :func:`report`'s summary."""
    from tritium.report import fmt_energy

    head = (
        "| policy | setting | retrieved fraction | recall | early-exit fraction | early-exit, V-Rex literal | "
        "ppl/byte closed loop | "
        "ppl/byte open loop | KV-engine cycles (modeled) | energy (modeled) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    for s in rep["summary"]:
        e = s["energy_j_modeled"]
        lines.append(
            f"| {s['policy']} | {s['setting']} | {f(s['retrieved_fraction'], '.3f')} | "
            f"{f(s['recall'], '.3f')} | {f(s['early_exit_fraction'], '.3f')} | "
            f"{f(s['early_exit_fraction_literal'], '.3f')} | {f(s['ppl_per_byte'], '.3f')} | "
            f"{f(s['ppl_per_byte_open_loop'], '.3f')} | "
            f"{f(s['cycles'], ',.0f')} | {'—' if e is None else fmt_energy(e)} |"
        )
    return "\n".join(lines)


REPORT_COLUMNS = (
    (
        "policy",
        "the KV selection policy: resv (ReSV clusters, early exit), resv+recentN (ReSV plus the last N "
        "tokens), streaming (StreamingLLM: 4 sink tokens + a recent window), h2o (heavy hitters + recent "
        "tokens), quest (16-token pages by an upper bound of q·k), full (every visible token)",
    ),
    (
        "setting",
        "the policy's knob: ReSV's threshold fraction alpha (kv.alpha of the config), or a baseline's "
        "budget set per trace to ReSV's retrieved fraction on that trace (matched budget)",
    ),
    (
        "retrieved fraction",
        "selected tokens / visible tokens, mean over scored decode steps, (layer, KV head) "
        "streams and traces",
    ),
    (
        "recall",
        "attention-mass recall: the share of the full-attention softmax probability (float64, from the "
        "trace's float32 post-RoPE q/k) that falls on the selected tokens, mean over query heads, steps, traces",
    ),
    (
        "early-exit fraction",
        "ReSV only: clusters visited / clusters in the table, per query (lower: earlier exit)",
    ),
    (
        "early-exit, V-Rex literal",
        "ReSV only: the same walk stopped under V-Rex's literal rule (weights score·count, no row "
        "minimum); a different quantity, see docs/results.md",
    ),
    (
        "ppl/byte closed loop",
        "perplexity per byte of the checkpoint in int mode with attention restricted to "
        "the selection, each layer selecting on the q/k the restricted model computes (what an engine in the loop "
        "sees); predictions at scored steps only",
    ),
    ("ppl/byte open loop", "the same with the selections made on the trace's recorded full-attention q/k"),
    (
        "KV-engine cycles (modeled)",
        "ReSV only: cycles of the KV engine's numba model (sim/kv_model.py, "
        "co-simulated cycle-exact against the RTL) for the whole trace: per (layer, KV head) a RESET, every key "
        "inserted, one QUERY per query head at every scored step",
    ),
    (
        "energy (modeled)",
        "ReSV only: the KV engine's dynamic energy from its event counts × the device "
        "family's energy table (configs/energy/), for the same run; SI units (µJ, mJ)",
    ),
)


def report_markdown(rep: dict, table_md: str | None = None) -> str:
    """report.md: what was run (config, checkpoint, traces, first scored step), the table, and what each
    column means."""
    lines = [
        f"# KV policies at matched budgets — config {rep['config']}",
        "",
        f"Config `{rep['config_source']}`; checkpoint for perplexity: "
        + (f"`{rep['checkpoint']}`" if rep.get("checkpoint") else "none (perplexity columns empty)")
        + f"; decode steps from {rep['first']} on are scored (earlier tokens are a prompt with full "
        "attention). Values are means over the traces. Cycles and energy are modeled.",
        "",
        "Traces (recorded attention q/k of every layer and head while the model read a text; "
        "traces/README.md):",
        "",
        *[f"- `{t}`" for t in rep["traces"]],
        "",
        table_md if table_md is not None else report_table(rep),
        "",
        "Columns:",
        "",
        *[f"- **{name}**: {text}." for name, text in REPORT_COLUMNS],
        "",
        "`recall.png` (`.pdf`, data in `recall.csv`): recall against retrieved fraction of every policy over a "
        "sweep of its knob (baselines: budget fractions; ReSV: alpha, labelled on its points).",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
def _load_traces(paths):
    from traces.format import load_trace

    return [load_trace(p) for p in paths]


def _err(msg: str) -> int:
    from tritium.report import error_line

    print(f"tritium: error: {error_line(msg)}", file=sys.stderr)
    return EXIT_INPUT


def _guard(fn):
    def run(args) -> int:
        from hw.config import ConfigError
        from models.checkpoint import CheckpointError
        from traces.format import TraceError

        try:
            return fn(args)
        except (TraceError, ConfigError, CheckpointError, ValueError) as e:
            return _err(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)

    return run


@_guard
def cmd_kv_replay(args) -> int:
    from hw.config import load_config
    from models.kvpolicy import parse_budget

    acfg = load_config(args.config)
    budget = parse_budget(args.budget) if args.budget is not None else None
    (trace,) = _load_traces([args.trace])
    model = _model_for(trace, args.checkpoint) if args.checkpoint else None
    if args.recent and args.policy != "resv":
        raise ValueError("--recent applies to --policy resv only")
    from sim.progress import progress

    with progress(desc="kv replay", stages=REPLAY_STAGES):
        r = replay(
            trace,
            acfg,
            args.policy,
            budget=budget,
            alpha=args.alpha,
            first=args.first,
            model=model,
            recent=args.recent,
        )
    if args.json:
        r.pop("streams")
        print(json.dumps(r, indent=1))
        return 0
    from tritium.report import fmt_energy, fmt_time, table

    rows = [["retrieved fraction", r["retrieved_fraction"]], ["attention-mass recall", r["recall"]]]
    if r["early_exit_fraction"] is not None:
        rows += [
            ["early-exit fraction (visited / clusters)", r["early_exit_fraction"]],
            ["early-exit fraction, V-Rex's literal score·count rule", r["early_exit_fraction_literal"]],
            ["clusters per stream (mean)", r["mean_clusters"]],
            ["KV-engine cycles (modeled)", r["cycles"]],
            ["KV-engine time at clock (modeled)", fmt_time(r["time_s_modeled"])],
            ["KV-engine dynamic energy (modeled)", fmt_energy(r["energy_j_modeled"])],
            ["model clusters = reference clusters", r["model_matches_reference"]],
        ]
    if "ppl_per_byte" in r:
        rows += [
            ["ppl/byte, restricted attention (int mode, closed loop)", r["ppl_per_byte"]],
            ["ppl/byte, restricted attention (int mode, open loop)", r["ppl_per_byte_open_loop"]],
            ["ppl/byte, full attention (int mode)", r["ppl_per_byte_full"]],
        ]
    print(
        table(
            ["figure", "value"],
            rows,
            title=f"{Path(trace.path).name}: {r['setting']}, decode steps {r['first']}..{trace.n_tokens - 1}, "
            f"{trace.n_layers} layers x {trace.n_kv_heads} KV heads — config {acfg.name}",
        )
    )
    return 0


@_guard
def cmd_kv_plot(args) -> int:
    from hw.config import load_config
    from tritium.figures import check_plot_path

    flag, path = ("--plot", args.plot) if args.plot is not None else ("--out", args.out_png)
    if path is None:
        raise ValueError("--plot: required (the figure to write: PATH.png, .pdf or .svg)")
    check_plot_path(path, flag)
    acfg = load_config(args.config)
    traces = _load_traces(args.traces)
    from sim.progress import progress

    with progress(sweep_replays(len(traces)), "kv plot", "replay") as bar:
        pts = sweep(traces, acfg, first=args.first, bar=bar)
    files = plot_recall(pts, Path(path), _plot_title(traces, acfg, args.first))
    print(f"plot: {', '.join(str(f) for f in files.values())}")
    return 0


def _plot_title(traces, acfg, first) -> str:
    from models.kvpolicy import FIRST

    model = traces[0].meta.get("model", "?") if traces else "?"
    return (
        f"KV policies on {len(traces)} trace(s) of {model} — config {acfg.name}\n"
        f"scored decode steps from {FIRST if first is None else first} on, mean over traces"
    )


@_guard
def cmd_kv_report(args) -> int:
    from hw.config import load_config

    output_dir(args.out, "--out")
    acfg = load_config(args.config)
    traces = _load_traces(args.traces)
    from sim.progress import progress

    total = report_replays(len(traces), args.recent) + sweep_replays(len(traces))
    with progress(total, "kv report", "replay", show=False if args.json else None) as bar:
        rep = report(
            traces, acfg, checkpoint=args.checkpoint or None, first=args.first, recent=args.recent, bar=bar
        )
        pts = sweep(traces, acfg, first=args.first, bar=bar)
    out = Path(args.out)
    rep["sweep"] = {k: [list(p) for p in v] for k, v in pts.items()}
    files = plot_recall(pts, out / "recall.png", _plot_title(traces, acfg, args.first))
    rep["plot"] = str(files["png"])
    rep["plot_files"] = [str(f) for f in files.values()]
    md = report_table(rep)
    write_text(out / "report.json", json.dumps(rep, indent=1) + "\n")
    write_text(out / "report.md", report_markdown(rep, md))
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(md)
        print(
            f"\n{len(traces)} trace(s); perplexity: int mode, restricted attention; energy and cycles: "
            f"modeled (sim/kv_model.py). Wrote {out}/report.json, report.md, recall.png/.pdf/.csv"
        )
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``kv`` (``replay``, ``plot``, ``report``) to the ``tritium`` subparsers; returns the ``kv`` parser."""
    from models.kvpolicy import POLICIES
    from tritium.options import add_checkpoint, add_shared, command

    # the options every action takes
    common = argparse.ArgumentParser(add_help=False)
    add_shared(common, "--config")
    common.add_argument(
        "--first",
        type=int,
        default=None,
        help="first scored decode step; earlier tokens are a prompt with full attention (default 16)",
    )
    # plot and report: over several traces
    several = argparse.ArgumentParser(add_help=False, parents=[common])
    several.add_argument("traces", nargs="+", help="trace .npz files")
    kv = subparsers.add_parser(
        "kv", help="KV-cache retrieval: replay traces through ReSV and baseline policies"
    )
    sub = kv.add_subparsers(dest="kv_command", required=True, metavar="ACTION")

    r = command(
        sub,
        "replay",
        cmd_kv_replay,
        help="one policy over one trace: fraction, recall, early exit, cycles, energy",
        parents=[common],
    )
    r.add_argument("trace", help="trace .npz (traces/*.npz)")
    r.add_argument("--policy", choices=POLICIES, default="resv", help="policy (default resv)")
    r.add_argument(
        "--budget",
        default=None,
        help="baselines: tokens per step (e.g. 64) or a fraction of the visible prefix (e.g. 0.25; "
        "default 0.25)",
    )
    r.add_argument("--alpha", type=float, default=None, help="resv: threshold fraction (default: kv.alpha)")
    r.add_argument(
        "--recent",
        type=int,
        default=0,
        help="resv: also keep the last N tokens at every step (local window; default 0)",
    )
    add_checkpoint(r, None, "also the int-mode perplexity with restricted attention, with this checkpoint")
    r.add_argument("--json", action="store_true", help="print JSON")

    p = command(
        sub,
        "plot",
        cmd_kv_plot,
        help="figure of recall vs retrieved fraction for every policy (budget/alpha sweeps)",
        parents=[several],
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="figure to write: PATH (.png/.pdf/.svg) + PNG + CSV of the points",
    )
    p.add_argument("--out", dest="out_png", default=None, metavar="PNG", help="deprecated spelling of --plot")

    rp = command(
        sub,
        "report",
        cmd_kv_report,
        help="policies at matched budgets: table (report.md), report.json, recall.png",
        parents=[several],
    )
    add_checkpoint(rp, DEFAULT_CHECKPOINT, "checkpoint for perplexity, '' skips it")
    rp.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: report.md, report.json, recall.png/.pdf/.csv",
    )
    rp.add_argument(
        "--recent",
        type=int,
        default=8,
        help="also a row for ReSV plus the last N tokens (default 8; 0: no such row)",
    )
    rp.add_argument("--json", action="store_true", help="print the report as JSON")

    from tritium.kv_ppl import add_parser as add_ppl

    add_ppl(sub, common)
    return kv
