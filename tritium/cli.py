"""The ``tritium`` command line. Every subcommand is documented in docs/cli.md.

Exit codes: 0 success; 1 a comparison failed (outputs or cycles differ, or the RTL left cases without a
result: it hung or the bench stopped; ``bitstream``: the routed Fmax missed the target); 2 bad input (config,
arguments); 3 a tool failed (the Verilator build, a simulator that could not start, Yosys, nextpnr) or a design
does not fit its board. SIGTERM/SIGINT end the
tools a run started and remove its temporary folders.

Engines (``cosim``, ``bitstream --engine``) come from the registry in sim/engines.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hw.config import ConfigError, load_config
from hw.files import output_dir
from hw.program import LM_HEAD_OPTIONS

EXIT_MISMATCH, EXIT_INPUT, EXIT_TOOL = 1, 2, 3


def _progress(msg: str) -> None:
    from sim.progress import note

    note(msg)  # stderr, above a progress bar if one shows


def _error(e: object, code: int = 2) -> int:
    """Print one clean error line (no terminal colour codes, first line only) and return ``code``."""
    from tritium.report import error_line

    print(f"tritium: error: {error_line(e)}", file=sys.stderr)
    return code


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"tritium {version('tritium')}"
    except PackageNotFoundError:
        return "tritium (not installed: version unknown; pip install -e . records it)"


def _model_arg(args) -> str:
    """``--model MODEL``; the positional MODEL of ``tritium compile`` is the deprecated spelling."""
    given = [m for m in (args.model, getattr(args, "model_positional", None)) if m is not None]
    if not given:
        raise ValueError("--model: required (a preset, a Hugging Face BitNet folder or a checkpoint)")
    if len(given) == 2 and given[0] != given[1]:
        raise ValueError(f"--model {given[0]!r} and a positional MODEL {given[1]!r}: give the model once")
    return given[0]


def _module_args(args, *model_only) -> tuple[int, ...] | None:
    """``--module FILE.py:FACTORY --input-shape SHAPE`` (a general module, compiler.load_module): the parsed
    shape, or None when no ``--module`` is given. The options that only a language model takes
    (``model_only``: (flag, value) pairs, None when not given) and ``--model`` are refused with it."""
    from compiler import parse_input_shape

    module, shape = getattr(args, "module", None), getattr(args, "input_shape", None)
    if module is None:
        if shape is not None:
            raise ValueError("--input-shape: only with --module FILE.py:FACTORY")
        return None
    if args.model is not None or getattr(args, "model_positional", None) is not None:
        raise ValueError("--module and --model: give one (a general module or a language model)")
    if shape is None:
        raise ValueError("--module: --input-shape ROWS,FEATURES is required (the example input's shape)")
    for flag, value in model_only:
        if value not in (None, False):
            raise ValueError(f"{flag}: a language-model option; a --module has no {flag}")
    return parse_input_shape(shape)


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def _positive(text: str) -> int:
    v = _non_negative(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


# ---------------------------------------------------------------- config
def _derived(section) -> dict:
    """The derived (read-only) properties of a config section: widths, depths and counts the RTL uses."""
    cls = type(section)
    return {
        name: getattr(section, name)
        for name in sorted(vars(cls))
        if isinstance(getattr(cls, name, None), property)
        and not name.startswith("_")
        and isinstance(getattr(section, name), (int, float, str, bool))
    }


def cmd_config(args) -> int:
    acfg = load_config(args.config or args.file)
    d = acfg.to_dict()
    derived = {
        name: _derived(getattr(acfg, name))
        for name, v in d.items()
        if isinstance(v, dict) and hasattr(acfg, name)
    }
    if args.json:
        print(
            json.dumps(
                {
                    "config": d,
                    "source": acfg.source,
                    "derived": derived,
                    "tlmm_derived": derived.get("tlmm", {}),  # the field name before every section was shown
                },
                indent=1,
            )
        )
        return 0
    print(f"{acfg.source}: valid ({acfg.name}, {acfg.clock_mhz:g} MHz)")
    for key, v in d.items():
        if not isinstance(v, dict):
            if key not in ("name", "clock_mhz"):
                print(f"  {key:<26} {v}")
            continue
        print(f"  [{key}]")
        for k, x in v.items():
            if isinstance(x, (list, tuple)) and x and isinstance(x[0], (dict, list, tuple)):
                x = f"{len(x)} entries (texts and ranges: --json)"
            print(f"    {k:<24} {x}")
        for k, x in derived.get(key, {}).items():
            print(f"    {k:<24} {x}  (derived)")
    return 0


# ---------------------------------------------------------------- cosim
def print_cosim_summary(rep) -> None:
    from sim.engines import engine
    from tritium.report import table

    eng = engine(rep.engine)
    rows = [
        [
            r["name"],
            rep.outputs_agree(r),
            r["rtl_cycles"],
            r["model_cycles"],
            r["rtl_cycles"] - r["model_cycles"],
        ]
        for r in rep.rows
    ]
    print(
        table(
            ["case", "outputs equal", "RTL cycles", "model cycles", "difference"],
            rows,
            title=f"{rep.engine.upper()} co-simulation — config {rep.config['name']} ({rep.config['source']})",
        )
    )
    print()
    print(
        table(
            [
                "config",
                "cases",
                "outputs equal",
                "RTL cycles",
                "model cycles",
                "difference",
                "Verilator cycles/s",
                "model cycles/s",
            ],
            [
                [
                    eng.summary(rep.config) if eng.summary else eng.description,
                    len(rep.rows),
                    rep.outputs_equal,
                    rep.rtl_cycles,
                    rep.model_cycles,
                    rep.rtl_cycles - rep.model_cycles,
                    rep.verilator_cycles_per_s,
                    rep.model_cycles_per_s,
                ]
            ],
        )
    )
    print(
        "\nRTL: Amaranth → Verilog → Verilator 5.048 under cocotb 2.1 (cycles counted at the stream "
        f"handshakes); model: numba cycle-stepped; reference: {eng.reference}."
    )
    for note in eng.notes:
        print(note)
    missing = [r["name"] for r in rep.rows if r.get("missing")]
    if missing:
        print(f"No RTL result (the bench stopped or the RTL hung) for: {', '.join(missing)}")
    print(
        "RESULT:", "PASS — bit-exact and cycle-exact" if rep.ok else "FAIL — see the rows marked NO / nonzero"
    )


def print_top_summary(rep) -> None:
    from models.data import decode
    from tritium.report import table

    j = rep.to_json()
    rows = [
        [k, v["commands"], v["rtl_cycles"], v["model_cycles"], v["rtl_cycles"] - v["model_cycles"]]
        for k, v in j["per_kind"].items()
    ]
    rows.append(
        [
            "all",
            sum(v["commands"] for v in j["per_kind"].values()),
            j["rtl_cycles"],
            j["model_cycles"],
            j["rtl_cycles"] - j["model_cycles"],
        ]
    )
    print(
        table(
            ["commands", "count", "RTL cycles", "model cycles", "difference"],
            rows,
            title=f"Top level: {j['layers']} decoder layer(s) of {rep.model or 'the model'}, "
            f"{len(rep.rtl_tokens)} greedy token(s), LM head {rep.lm_head} — config {rep.config['name']} "
            f"({rep.config['source']})",
        )
    )
    print()
    print(
        table(
            ["step", "tokens in", "RTL cycles", "logits == PyTorch int", "logits == numba models"],
            [
                [i, len(rep.prompt) if i == 0 else 1, c, a, b]
                for i, (c, a, b) in enumerate(
                    zip(j["step_cycles"], rep.logits_equal_torch, rep.logits_equal_model, strict=True)
                )
            ],
        )
    )
    print(
        f"\nprompt {decode(rep.prompt)!r} → RTL {decode(rep.rtl_tokens)!r}, PyTorch {decode(rep.torch_tokens)!r}, "
        f"models {decode(rep.model_tokens)!r}"
    )
    print(
        f"Every command's cycles (RTL: first word accepted → done; model: sim/top_model.py) and every step's "
        f"cycles (first word → the cycle after the last done; overlap {'on' if rep.overlap else 'off'}: "
        f"RTL {j['step_cycles']}, model {j['model_step_cycles']}) compared; host ops run by the bench on the "
        f"memory image, done after their modeled latency. Verilator {j['simulation_s']} s."
    )
    print(
        "RESULT:",
        "PASS — logits bit-exact, tokens equal, every command cycle-exact"
        if rep.ok
        else "FAIL — see the rows above",
    )


def print_cosim_breakdown(bd: dict, clock_mhz: float) -> None:
    """``cosim top --breakdown``: the RTL's cycles per layer and per op kind (sim/breakdown.py)."""
    from tritium.report import table

    for step, b in bd.items():
        if not b["steps"]:
            continue
        tot = b["totals"]
        for grouping, label in (("by_layer", "layer"), ("by_op_kind", "op kind")):
            rows = [
                [r["name"], r["commands"], r["rtl_cycles"], r["model_cycles"], r["time_s"] * 1e3]
                for r in b[grouping]
            ]
            rows.append(
                ["total", tot["commands"], tot["rtl_cycles"], tot["model_cycles"], tot["time_s"] * 1e3]
            )
            print()
            print(
                table(
                    [label, "commands", "RTL cycles", "model cycles", f"ms at {clock_mhz:g} MHz"],
                    rows,
                    title=f"{step} ({b['steps']} step(s)) by {label}: co-simulated RTL cycles",
                )
            )
    print(
        "RTL cycles: first command word accepted → done, per command (sim/top_bench.py); a HOST command's "
        "cycles are the accelerator's handshake only (the host op itself runs in the bench, untimed)."
    )


def cmd_cosim(args) -> int:
    from sim.cosim import COSIM_STAGES, TOP_CASE, TOP_STAGES, run_top_cosim
    from sim.engines import engine
    from sim.progress import progress
    from tritium.cosim_debug import case_names, rerun_command, select_case

    eng = engine(args.engine)
    acfg = load_config(args.config)
    if getattr(args, "overlap", None) is not None:
        if eng.stimulus != "program":
            raise ConfigError(f"--overlap: only for the top level, not {eng.name}")
        acfg = _with_overlap(acfg, args.overlap)
    if args.breakdown and eng.stimulus != "program":
        raise ConfigError(f"--breakdown: only for a program-driven engine (top), not {eng.name}")
    if eng.stimulus == "program":
        prompt = list(args.prompt.encode())
        if not prompt:
            raise ConfigError("--prompt: empty")
        if args.list_cases:
            print("\n".join(case_names(eng, [])))
            return 0
        if args.case is not None:
            select_case(eng, [], args.case, args)
        try:
            with progress(desc="cosim top", stages=TOP_STAGES):
                rep = run_top_cosim(
                    acfg,
                    args.checkpoint,
                    prompt,
                    args.tokens,
                    args.layers,
                    build_root=Path(args.build_dir),
                    quiet=False,
                    waves=args.waves,
                    lm_head=args.lm_head,
                )
        except ValueError as e:
            raise ConfigError(str(e)) from None
        out = rep.to_json()
        failed = [] if rep.ok else [{"name": TOP_CASE, **rep.artifacts}]
        if failed:
            out["rerun"] = rerun_command(args, TOP_CASE, args.waves or "fst")
        bd = None
        if args.breakdown:
            from sim.breakdown import cosim_breakdown

            bd = cosim_breakdown(rep.labels, rep.rtl_cycles, rep.model_cycles, acfg.clock_mhz)
            out["breakdown"] = bd
        if args.json:
            print(json.dumps(out, indent=1))
        else:
            print_top_summary(rep)
            if bd is not None:
                print_cosim_breakdown(bd, acfg.clock_mhz)
            if rep.artifacts.get("waves"):
                print(f"Waveform: {rep.artifacts['waves']}")
        _print_failures(args, failed)
        return 0 if rep.ok else EXIT_MISMATCH
    if args.workload not in eng.workloads:
        raise ConfigError(
            f"--workload {args.workload}: not a workload of the {eng.name} engine "
            f"(its workloads: {', '.join(eng.workloads)})"
        )
    try:
        cases = eng.make_cases(acfg, args.workload, args.seed, args.random)
    except ValueError as e:  # TraceError, a trace that does not fit the config
        raise ConfigError(str(e)) from None
    if args.list_cases:
        print("\n".join(case_names(eng, cases)))
        return 0
    if args.case is not None:
        cases = select_case(eng, cases, args.case, args)
    with progress(desc=f"cosim {eng.name}", stages=COSIM_STAGES):
        rep = eng.run_cosim(acfg, cases, build_root=Path(args.build_dir), quiet=False, waves=args.waves)
    failed = rep.failed_rows
    for r in failed:
        r["rerun"] = rerun_command(args, r["name"], args.waves or "fst")
    if args.json:
        out = rep.to_json()
        out["seed"] = args.seed
        print(json.dumps(out, indent=1))
    else:
        print_cosim_summary(rep)
        for r in rep.rows:
            if r.get("waves"):
                print(f"Waveform of {r['name']}: {r['waves']}")
    _print_failures(args, failed)
    return 0 if rep.ok else EXIT_MISMATCH


def _print_failures(args, failed: list[dict]) -> None:
    """Kept logs, waveforms and rerun commands of the failing cases: after the tables, or on stderr
    under --json (stdout stays one JSON document)."""
    from tritium.cosim_debug import failure_lines

    lines = failure_lines(args, failed)
    if lines:
        print("\n".join(lines), file=sys.stderr if args.json else sys.stdout, flush=True)


# ---------------------------------------------------------------- perf
def cmd_perf(args) -> int:
    from sim.progress import progress, step
    from tritium.figures import check_plot_path
    from tritium.perf import (
        bandwidth_sweep,
        default_tlmm_shape,
        gemm_report,
        parse_shape,
        plot_roofline,
        tlmm_bandwidth_sweep,
        tlmm_report,
    )
    from tritium.report import fmt_bytes, fmt_time, table

    if args.plot is not None:
        check_plot_path(args.plot)
    acfg = load_config(args.config)
    tlmm = args.engine == "tlmm"
    m, k, n = parse_shape(args.shape or (default_tlmm_shape(acfg) if tlmm else "1024x1024x1024"))
    stages = ("model", "bandwidth sweep", "plot") if args.plot else ("model",)
    with progress(desc=f"perf {args.engine}", stages=stages):
        step("model", f"{m}x{k}x{n}")
        rep = (tlmm_report if tlmm else gemm_report)(acfg, m, k, n)
        if args.plot:
            if not args.json:
                _progress(
                    f"[perf] sweeping memory bandwidth ({'stepped TLMM model' if tlmm else 'GEMM model'}) ..."
                )
            sweep = (tlmm_bandwidth_sweep if tlmm else bandwidth_sweep)(acfg, m, k, n)
            step("plot")
            files = plot_roofline(acfg, (m, k, n), sweep, Path(args.plot), engine=args.engine, own=rep)
            rep["plot"] = str(files["png"])
            rep["plot_files"] = [str(f) for f in files.values()]
            rep["sweep_points"] = len(sweep)
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    if tlmm:
        rows = [
            ["cycles", rep["cycles"], f"unstalled {rep['unstalled_cycles']:,}; {rep['commands']} command(s)"],
            ["time", fmt_time(rep["time_s"]), f"at {acfg.clock_mhz:g} MHz"],
            ["throughput", f"{rep['gops']:.3g} GOPS", f"peak {rep['peak_gops']:.3g} GOPS"],
            [
                "lookup-issue utilization",
                f"{rep['issue_utilization']:.2%}",
                "cycles with a lookup issue / cycles",
            ],
            ["weight-stream stall cycles", rep["weight_stall_cycles"], "FILL/LOOK cycles waiting for a beat"],
            ["result-credit stall cycles", rep["credit_stall_cycles"], ""],
            [
                "weight beats per cycle",
                f"{rep['weight_beats_per_cycle']:.3g}",
                f"{rep['weight_beat_bytes']} B/beat",
            ],
            [
                "DRAM bytes",
                fmt_bytes(rep["dram_weight_bytes"] + rep["dram_activation_bytes"] + rep["dram_result_bytes"]),
                f"weights {fmt_bytes(rep['dram_weight_bytes'])}, activations "
                f"{fmt_bytes(rep['dram_activation_bytes'])}, results {fmt_bytes(rep['dram_result_bytes'])}",
            ],
            ["ops per DRAM byte", f"{rep['ops_per_dram_byte']:.3g}", ""],
            ["memory bandwidth", f"{rep['bandwidth_gbs']:.3g} GB/s", "port, capped by the shared DRAM"],
            ["weight bandwidth to run unstalled", f"{rep['read_bandwidth_needed_gbs']:.3g} GB/s", ""],
        ]
        title = f"TLMM {m}x{k}x{n} (tokens x K x N) on {rep['block']}, {acfg.clock_mhz:g} MHz — config {acfg.name}"
    else:
        rows = [
            ["cycles", rep["cycles"], ""],
            ["time", fmt_time(rep["time_ms"] / 1e3), f"at {acfg.clock_mhz:g} MHz"],
            ["throughput", f"{rep['gops']:.3g} GOPS", f"peak {rep['peak_gops']:.3g} GOPS"],
            ["MAC utilization", f"{rep['mac_utilization']:.4%}", ""],
            ["load stall cycles", rep["load_stall_cycles"], ""],
            ["drain stall cycles", rep["drain_stall_cycles"], ""],
            ["tail cycles", rep["tail_cycles"], ""],
            ["DRAM read", fmt_bytes(rep["dram_read_bytes"]), ""],
            ["DRAM write", fmt_bytes(rep["dram_write_bytes"]), ""],
            ["ops per DRAM byte", f"{rep['ops_per_dram_byte']:.3g}", ""],
            ["memory bandwidth", f"{rep['bandwidth_gbs']:.3g} GB/s", ""],
            ["read bandwidth needed", f"{rep['read_bandwidth_needed_gbs']:.3g} GB/s", ""],
        ]
        title = (
            f"GEMM {m}x{k}x{n} on {rep['block']} block, k_tile {rep['k_tile']}, "
            f"{acfg.clock_mhz:g} MHz — config {acfg.name}"
        )
    print(table(["figure (modeled)", "value", "note"], rows, title=title))
    if args.plot:
        print(f"roofline: {rep['sweep_points']} bandwidth points → {', '.join(rep['plot_files'])}")
    return 0


# ---------------------------------------------------------------- compile
def cmd_compile(args) -> int:
    import time

    from compiler import CompileError, compile_model, load_model
    from sim.progress import progress
    from tritium.report import fmt_bytes, fmt_time

    shape = _module_args(args, ("--tokens", args.tokens), ("--pos", args.pos), ("--lm-head", args.lm_head))
    if shape is None:
        args.model = _model_arg(args)
        args.tokens = 16 if args.tokens is None else args.tokens
        args.pos = 0 if args.pos is None else args.pos
    output_dir(args.out, "--out")
    acfg = load_config(args.config)
    t0 = time.perf_counter()
    with progress(4, "compile", "stage") as bar:
        try:
            bar.stage("load model")
            if shape is not None:
                import torch

                from compiler import load_module

                model = load_module(args.module)
                args.model, args.pos, args.lm_head = args.module, 0, None
                example = (torch.zeros(shape),)
            else:
                model, example = load_model(args.model), None
            bar.update()
            bar.stage("capture + passes")
            if example is None:
                cm = compile_model(model, acfg, lm_head=args.lm_head)
            else:
                cm = compile_model(model, acfg, example_inputs=example)
            bar.update()
            bar.stage("lower the step")
            prog = cm.program(args.tokens, args.pos)
            args.tokens = prog.meta["tokens"]
            bar.update()
        except CompileError as e:
            bar.close()
            return _error(e)
        seconds = time.perf_counter() - t0
        bar.stage("save")
        out = prog.save(Path(args.out))
        bar.update()
    cmds = prog.commands()
    kinds = {
        k: sum(1 for c in cmds if type(c).__name__ == k)
        for k in ("TlmmCommand", "GemmCommand", "HostCommand")
    }
    summary = {
        "model": args.model,
        "config": acfg.name,
        "tokens": args.tokens,
        "pos": args.pos,
        "lm_head": args.lm_head,
        "out": str(out),
        "commands": len(cmds),
        "tlmm": kinds["TlmmCommand"],
        "gemm": kinds["GemmCommand"],
        "host": kinds["HostCommand"],
        "memory_mib": prog.meta["memory_beats"] * acfg.memory.bus_bytes / 2**20,
        "weights_materialized": prog.meta["weights_materialized"],
        "compile_s": round(seconds, 3),
        **{k: round(v, 3) for k, v in cm.timings.items()},
    }
    if shape is not None:
        summary["input_shape"] = list(shape)
    if args.json:
        print(json.dumps(summary, indent=1))
    elif shape is not None:
        print(
            f"compiled {args.module} for {acfg.name}: input {'x'.join(map(str, shape))} ({args.tokens} rows)"
        )
    else:
        print(f"compiled {args.model} for {acfg.name}: step of {args.tokens} token(s) at position {args.pos}")
    if not args.json:
        print(
            f"  {summary['commands']} commands ({summary['tlmm']} TLMM, {summary['gemm']} GEMM, "
            f"{summary['host']} HOST), memory {fmt_bytes(summary['memory_mib'] * 2**20)}, "
            f"{fmt_time(seconds)} (export {fmt_time(cm.timings['export_s'])})"
        )
        if not prog.meta["weights_materialized"]:
            print("  preset on meta tensors: shapes, commands and memory map only (no weight image)")
        print(f"  wrote {out}/program.json, program.npz, listing.txt")
    return 0


# ---------------------------------------------------------------- estimate
def cmd_estimate(args) -> int:
    from compiler import CompileError
    from compiler.cache import ProgramCache
    from tritium.estimate import estimate, format_breakdown, format_estimate, plot_breakdown, plot_estimates

    out = args.out if args.out is not None else args.plot_dir  # --plot DIR: the deprecated spelling
    acfg = _with_overlap(load_config(args.config), args.overlap)
    if out is not None and (args.attention or acfg.system.attention) == "resv":
        return _error(
            "estimate: --out plots dense attention only; with attention resv leave out --out "
            "(python examples/retrieval_sweep.py sweeps the context)"
        )
    if out is not None:
        output_dir(out, "--out" if args.out is not None else "--plot")
    shape = _module_args(
        args,
        ("--prompt", args.prompt),
        ("--context", args.context),
        ("--breakdown", args.breakdown),
        ("--out", out),
        ("--lm-head", args.lm_head),
        ("--attention", args.attention),
    )
    if shape is not None:
        from compiler import load_module
        from tritium.estimate import estimate_module, format_module_estimate

        try:
            r = estimate_module(load_module(args.module), acfg, shape, name=args.module)
        except CompileError as e:
            return _error(e)
        print(json.dumps(r, indent=1) if args.json else format_module_estimate(r))
        return 0
    if args.model is None:
        raise ValueError(
            "--model: required (a preset, a Hugging Face BitNet folder or a checkpoint), or --module"
        )
    cache = None if args.no_cache else ProgramCache(log=_progress)
    try:
        r = estimate(
            args.model,
            acfg,
            args.prompt,
            args.context,
            cache=cache,
            breakdown=args.breakdown,
            lm_head=args.lm_head,
            attention=args.attention,
        )
        plots = (
            [
                str(p)
                for p in plot_estimates(
                    args.model, acfg, Path(out), r["prompt"], r["context"], cache=cache, lm_head=args.lm_head
                )
            ]
            if out
            else []
        )
    except CompileError as e:
        return _error(e)
    if args.breakdown and out:
        plots += [str(p) for p in plot_breakdown(r, Path(out) / "breakdown")]
    r.pop("_steps")
    r["plots"] = plots
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(format_estimate(r))
    if args.breakdown:
        print()
        print(format_breakdown(r))
    for p in plots:
        print(f"plot: {p}")
    return 0


# ---------------------------------------------------------------- bitstream
def cmd_bitstream(args) -> int:
    from hw.boards import BOARD_SPECS
    from hw.fpga import BOARDS, FitError, FlowError, build_bitstream, flow_stages, fpga_engine
    from sim.engines import engine
    from sim.progress import progress, step

    eng = engine(args.engine)
    if args.board not in BOARDS:
        raise ConfigError(f"--board: unknown board {args.board!r}; choose one of {', '.join(BOARDS)}")
    board = BOARD_SPECS[args.board]
    acfg = load_config(args.config or fpga_engine(eng.hardware).default_config or board.default_config)
    clock = {}
    if args.clock_mhz is not None:
        clock = {"clock_mhz": _bitstream_clock(args.clock_mhz, eng.hardware)}
    if not args.force:
        refusal = _fit_refusal(acfg, args.board, eng.hardware, board_default=args.config is None)
        if refusal:
            return _error(refusal)
    output_dir(args.out, "--out")
    try:
        with progress(desc=f"bitstream {args.board} {eng.name}", stages=flow_stages(args.board)):
            report = build_bitstream(
                acfg, args.board, Path(args.out), log=_progress, engine=eng.hardware, step=step, **clock
            )
    except (FitError, FlowError) as e:
        return _error(e, EXIT_TOOL)
    print(json.dumps(report, indent=1))
    if report.get("meets_target") is False:  # every engine alike: a routed Fmax under the target fails
        return _error(
            f"timing not met: Fmax {report['fmax_mhz']} MHz < {report['target_mhz']:g} MHz on clock "
            f"{report.get('clock')}; critical path {report.get('critical_path')} (the bitstream "
            f"{report.get('bitstream')} is written, report.json beside it; do not deploy it at this clock)",
            EXIT_MISMATCH,
        )
    return 0


def _bitstream_clock(clock_mhz: float, engine: str) -> float:
    """``--clock-mhz``, checked before anything is built: only a complete board top (``deploy``) takes it, and
    its PLL must make the clock and the UART divisor fit the line rate (ValueError, one line: exit 2)."""
    from hw.fpga import fpga_engine

    if fpga_engine(engine).board_top is None:
        raise ValueError(
            f"--clock-mhz: only --engine deploy takes a clock; the {fpga_engine(engine).label} is timed at "
            "the config's clock_mhz"
        )
    from hw.deploy import deploy_clock

    try:
        deploy_clock(clock_mhz)
    except ValueError as e:
        raise ValueError(f"--clock-mhz {clock_mhz:g}: {e}") from None
    return clock_mhz


def _fit_refusal(acfg, board_name: str, engine: str, board_default: bool = False) -> str | None:
    """One line when the resource model (tritium/resources.py) predicts ``engine`` of ``acfg`` does not fit
    ``board_name``; None when it fits or the model has no fit for the engine."""
    from hw.boards import BOARD_SPECS
    from hw.fpga import fpga_engine
    from tritium.resources import board_overflow

    pred, over = board_overflow(acfg, board_name, engine)
    if not over:
        return None
    b = BOARD_SPECS[board_name]
    names = {"lut": "LUTs", "ff": "flip-flops", "bram": "block RAMs", "uram": "URAMs", "dsp": "DSPs"}
    parts = [f"{names.get(r, r)} {v:,.0f} > {cap:,}" for r, v, cap in over]
    first = over[0][0]
    lower = " (a lower bound for the top)" if engine == "top" else ""
    return (
        f"config {acfg.name!r} ({acfg.source}, {fpga_engine(engine).label}) does not fit board {board_name} "
        f"({b.device}), modeled before synthesis{lower}: {'; '.join(parts)}; shrink "
        f"{fpga_engine(engine).shrink.get(first, 'the engine')}"
        + ("" if board_default else f" (or leave out --config: {board_name} uses {b.default_config})")
        + "; --force synthesizes anyway"
    )


# ---------------------------------------------------------------- dse, calibrate
def cmd_dse(args) -> int:
    from tritium.dse import _mask_url, load_spec, run_dse

    spec = load_spec(args.spec)
    output_dir(args.out, "--out")
    if args.storage and not args.storage.startswith(
        ("sqlite:///", "postgresql://", "postgresql+psycopg2://")
    ):
        raise ValueError(
            f"--storage: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB, got "
            f"{_mask_url(args.storage)}"
        )
    try:
        run_dse(
            spec,
            Path(args.out),
            workers=args.workers,
            storage=args.storage,
            top=args.top,
            verify=args.verify,
            progress=not args.no_progress,
            log=_progress,
        )
    except Exception as e:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(e, SQLAlchemyError):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"tritium: error: storage {_mask_url(args.storage or 'sqlite')}: {first}", file=sys.stderr)
            return EXIT_TOOL
        raise
    return 0


def cmd_calibrate(args) -> int:
    from tritium.calibrate import run

    return run(args)


# ---------------------------------------------------------------- bench
def cmd_bench(args) -> int:
    from tritium.bench import run_bench

    acfg = load_config(args.config)
    result = run_bench(acfg, Path(args.build_dir), log=_progress)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


# ---------------------------------------------------------------- main
def _engine_help(engines) -> str:
    """``name: description`` of each engine, for --help (from the registry, sim/engines.py)."""
    return "; ".join(
        f"{e.name}: {e.description}" + (" (runs a compiled model)" if e.stimulus == "program" else "")
        for e in engines
    )


#: The grammar every subcommand follows (docs/cli.md, "One grammar").
GRAMMAR = """\
grammar (every subcommand): --config FILE  the accelerator config; --model MODEL  the model (preset,
Hugging Face BitNet folder or checkpoint); --out DIR  an output folder; --plot PATH  one figure (PATH's
suffix .png/.pdf/.svg picks the vector format; PNG + PDF/SVG + CSV of the data are written); --json  machine-
readable output on stdout. Positional arguments name what a command reads (a trace, a sweep spec, a
Program folder). Exit codes: 0 ok, 1 mismatch, 2 bad input, 3 tool failure, 130 interrupted."""


_OVERLAP_ARG = {
    "action": argparse.BooleanOptionalAction,
    "default": None,
    "help": "overlapped dispatch (system.overlap: a command goes when its engine is free, SYNCs from the data "
    "dependencies; docs/design.md 'Top level'); default: the config's system.overlap",
}


def _with_overlap(acfg, overlap):
    """The config with ``system.overlap`` set from ``--overlap`` / ``--no-overlap`` (None: unchanged)."""
    import dataclasses

    if overlap is None or overlap == acfg.system.overlap:
        return acfg
    return dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, overlap=overlap))


_LM_HEAD_ARG = {
    "choices": list(LM_HEAD_OPTIONS),
    "default": None,
    "help": "where the LM head runs: host_fp32 (host, float32 weights), host_fp16 (host, float16 "
    "weights), acc_int8 (GEMM engine, int8 weights per row + int8 activations; models/lm_head.py); "
    "default: the config's system.lm_head",
}


def build_parser() -> argparse.ArgumentParser:
    from hw.boards import BOARD_SPECS
    from sim.engines import board_engines, cosim_engines
    from tritium import calibrate
    from tritium.options import add_shared

    p = argparse.ArgumentParser(
        prog="tritium",
        description="Ternary LLM accelerator co-design toolkit.",
        epilog=GRAMMAR,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("config", help="validate a config and show every section and its derived parameters")
    c.add_argument("action", choices=["check"])
    c.add_argument("file", nargs="?", default=None, help="config YAML (default: configs/default.yaml)")
    c.add_argument("--config", default=None, help="the config YAML (same as FILE)")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=cmd_config)

    s = sub.add_parser("cosim", help="RTL (Verilator) ⇔ numba model ⇔ golden reference, bit and cycle exact")
    s.add_argument(
        "engine",
        choices=[e.name for e in cosim_engines()],
        help="engine to co-simulate (from sim/engines.py): " + _engine_help(cosim_engines()),
    )
    add_shared(s, "--config")
    s.add_argument("--seed", type=_non_negative, default=0, help="seed of the random cases (default 0)")
    s.add_argument("--random", type=_non_negative, default=4, help="number of random cases (default 4)")
    workloads = list(dict.fromkeys(w for e in cosim_engines() for w in e.workloads))
    s.add_argument(
        "--workload",
        choices=workloads,
        default="cases",
        help="cases: directed + random; bitnet: BitNet-0.7B slices (TLMM: layer projections; "
        "GEMM: one head's Q·Kᵀ at 256 tokens; KV: = traces); traces: KV replays of the "
        "committed traces/*.npz; all: both; each engine lists its workloads in "
        "sim/engines.py",
    )
    s.add_argument(
        "--model",
        "--checkpoint",  # the spelling before the one grammar (--model everywhere)
        dest="checkpoint",
        default="models/checkpoints/tiny.pt",
        help="top: trained checkpoint to compile and run (default models/checkpoints/tiny.pt; "
        "--checkpoint is the older spelling)",
    )
    s.add_argument("--layers", type=_positive, default=None, help="top: run only the first N decoder layers")
    s.add_argument(
        "--tokens",
        type=_positive,
        default=4,
        help="top: greedy tokens to generate (prefill + tokens-1 decode steps; default 4)",
    )
    s.add_argument("--prompt", default="def main(", help="top: prompt text (bytes; default 'def main(')")
    s.add_argument("--lm-head", **_LM_HEAD_ARG)
    s.add_argument("--overlap", **_OVERLAP_ARG)
    add_shared(s, "--build-dir")
    s.add_argument(
        "--breakdown",
        action="store_true",
        help="top: also the RTL's cycles per layer and per op kind (JSON 'breakdown')",
    )
    s.add_argument("--json", action="store_true", help="print a JSON report instead of tables")
    s.add_argument(
        "--waves",
        nargs="?",
        const="fst",
        choices=["fst", "vcd"],
        default=None,
        help="record every signal: one waveform per case in build/waves/<engine>/<case>.fst (=vcd for VCD); "
        "docs/waves.md",
    )
    s.add_argument("--case", default=None, metavar="NAME", help="run only the case NAME (see --list-cases)")
    s.add_argument("--list-cases", action="store_true", help="print the case names and exit")
    s.set_defaults(func=cmd_cosim)

    pf = sub.add_parser(
        "perf", help="modeled GEMM or TLMM performance (GOPS, utilization, stalls) and a roofline plot"
    )
    pf.add_argument(
        "engine",
        choices=["gemm", "tlmm"],
        help="gemm: the GEMM fast path; tlmm: the stepped TLMM model with its weight stream at the memory's rate",
    )
    add_shared(pf, "--config")
    pf.add_argument(
        "--shape",
        default=None,
        help="MxKxN (gemm default 1024x1024x1024; tlmm: tokens x K x N, default tlmm.tokens x 2048 x 2048)",
    )
    pf.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="also sweep memory bandwidth and write the roofline: PATH (.png/.pdf/.svg) + PNG + CSV",
    )
    pf.add_argument("--json", action="store_true", help="print JSON")
    pf.set_defaults(func=cmd_perf)

    co = sub.add_parser(
        "compile", help="lower a ternary LM (preset or checkpoint) into a Program + weight image"
    )
    add_shared(co, "--model")
    co.add_argument(
        "model_positional",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="deprecated spelling of --model MODEL",
    )
    add_shared(co, "--config")
    co.add_argument(
        "-o", "--out", required=True, help="output folder (program.json, program.npz, listing.txt)"
    )
    co.add_argument(
        "--tokens", type=_positive, default=None, help="tokens of the step (default 16: a prefill)"
    )
    co.add_argument(
        "--pos", type=_non_negative, default=None, help="position of the step's first token (default 0)"
    )
    add_shared(co, "--module", "--input-shape")
    co.add_argument("--lm-head", **_LM_HEAD_ARG)
    co.add_argument("--json", action="store_true", help="print a JSON summary")
    co.set_defaults(func=cmd_compile)

    es = sub.add_parser("estimate", help="modeled whole-model TTFT, tokens/s, J/token, bounds and plots")
    add_shared(es, "--model", "--module", "--input-shape", "--config")
    es.add_argument(
        "--prompt",
        type=_positive,
        default=None,
        help="prompt tokens of the prefill (default 64, at most the model's max_seq)",
    )
    es.add_argument(
        "--context",
        type=_positive,
        default=None,
        help="context length of the decode step (default 1024, at most the model's max_seq)",
    )
    es.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write the figures context, roofline-tlmm, roofline-gemm (each .png + .pdf + .csv) into DIR",
    )
    es.add_argument(
        "--plot", dest="plot_dir", default=None, metavar="DIR", help="deprecated spelling of --out DIR"
    )
    es.add_argument(
        "--breakdown",
        action="store_true",
        help="also per layer and per op kind: cycles, time, DRAM bytes, energy, bound (tables; JSON "
        "'breakdown'; with --out DIR also breakdown.png/.svg/.csv)",
    )
    es.add_argument(
        "--no-cache",
        action="store_true",
        help="compile afresh; neither read nor write the Program cache ($TRITIUM_CACHE_DIR, else "
        "$XDG_CACHE_HOME/tritium or ~/.cache/tritium)",
    )
    es.add_argument("--lm-head", **_LM_HEAD_ARG)
    es.add_argument(
        "--attention",
        choices=["dense", "resv"],
        default=None,
        help="decode attention: dense, or resv (KV retrieval: sinks + window + the clusters the KV engine "
        "selects, from system.kv_min_context on; docs/design.md, 'KV retrieval in the loop'); default: the "
        "config's system.attention",
    )
    es.add_argument("--overlap", **_OVERLAP_ARG)
    es.add_argument("--json", action="store_true", help="print JSON (no progress bar)")
    es.set_defaults(func=cmd_estimate)

    b = sub.add_parser(
        "bitstream",
        help="Yosys → nextpnr → bitstream of one engine, with a report (fit checked with the resource model first)",
    )
    b.add_argument(
        "--config",
        default=None,
        help="accelerator config YAML (default: the board's: "
        + ", ".join(f"{n} {bd.default_config}" for n, bd in BOARD_SPECS.items())
        + ")",
    )
    b.add_argument(
        "--board",
        default="ulx3s",
        help="ulx3s (ECP5-85F, default), icebreaker (iCE40 UP5K) or kv260 "
        "(K26, Yosys synth_xilinx resource estimate only)",
    )
    b.add_argument(
        "--engine",
        choices=[e.name for e in board_engines()],
        default="tlmm",
        help="engine to build (default tlmm; from sim/engines.py): "
        + _engine_help(board_engines())
        + "; outputs go to OUT/<board>-<config>-<engine>/",
    )
    b.add_argument("--out", default="build/bitstream", help="output folder (default build/bitstream)")
    b.add_argument(
        "--force",
        action="store_true",
        help="synthesize even when the resource model predicts the design does not fit the board",
    )
    b.add_argument(
        "--clock-mhz",
        type=float,
        default=None,
        help="--engine deploy only: the PLL clock of the ULX3S top (default hw/deploy.py's DEFAULT_CLOCK_MHZ); "
        "one the PLL cannot make, or at which the 2 MBd UART is off by > 1 %%, is refused",
    )
    b.set_defaults(func=cmd_bitstream)

    ds = sub.add_parser(
        "dse", help="design-space exploration: Optuna grid / NSGA-II over config fields (modeled)"
    )
    ds.add_argument("spec", help="sweep spec YAML (e.g. configs/sweeps/kv260-bitnet07b.yaml)")
    ds.add_argument(
        "--out",
        required=True,
        help="output folder: study.db, results.csv, pareto.png/.pdf/.csv, evaluations.jsonl",
    )
    ds.add_argument(
        "--workers",
        type=_non_negative,
        default=2,
        help="local evaluation processes (default 2; 0 evaluates in the main process)",
    )
    ds.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL shared by several invocations (postgresql://USER:PASS@HOST:PORT/DB); "
        "default sqlite:///OUT/study.db",
    )
    ds.add_argument(
        "--top", type=_non_negative, default=5, help="Pareto points in the printed table (default 5)"
    )
    ds.add_argument(
        "--verify",
        type=_non_negative,
        default=0,
        help="co-simulate the top K Pareto points (Verilator, ~1 min each; default 0)",
    )
    ds.add_argument("--no-progress", action="store_true", help="no progress bar")
    ds.set_defaults(func=cmd_dse)

    ca = sub.add_parser(
        "calibrate",
        help="run the resource-model calibration flows; fit; held-out error table",
        description=calibrate.__doc__.split("\n\n")[0],
    )
    calibrate.add_arguments(ca)
    ca.set_defaults(func=cmd_calibrate)

    from tritium.kv import register as register_kv

    register_kv(sub)
    __import__("tritium.run").run.register(sub)
    __import__("tritium.board").board.register(sub)

    be = sub.add_parser("bench", help="model vs Verilator speed on the BitNet-0.7B workload")
    add_shared(be, "--config", "--build-dir")
    be.add_argument("--json", action="store_true", help="also print the figures as JSON")
    be.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from sim.progress import set_enabled
    from sim.verilator import terminate_children_on_signal

    args = build_parser().parse_args(argv)
    terminate_children_on_signal()  # SIGTERM/SIGINT: end make/cc1plus/simulators, clean temp folders
    # machine-readable output: no progress bars (sim/progress.py)
    set_enabled(False if getattr(args, "json", False) else None)
    try:
        return args.func(args)
    except ConfigError as e:
        return _error(e)
    except ValueError as e:  # shape or argument checks from the contracts
        return _error(e)
    except KeyboardInterrupt:
        print("tritium: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        from sim.verilator import ToolError

        if isinstance(e, ToolError):
            return _error(e, EXIT_TOOL)
        raise
    finally:
        set_enabled(None)


if __name__ == "__main__":
    sys.exit(main())
