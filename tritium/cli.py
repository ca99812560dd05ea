"""The ``tritium`` command line. Every subcommand is documented in docs/cli.md.

Exit codes: 0 success; 1 a comparison failed (outputs or cycles differ, or the RTL left cases without a
result: it hung or the bench stopped); 2 bad input (config, arguments); 3 a tool failed (the Verilator build,
a simulator that could not start, Yosys, nextpnr) or a design does not fit its board. SIGTERM/SIGINT end the
tools a run started and remove its temporary folders.

Engines (``cosim``, ``bitstream --engine``) come from the registry in sim/engines.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hw.config import ConfigError, load_config
from hw.files import output_dir, output_file
from hw.program import LM_HEAD_OPTIONS

EXIT_MISMATCH, EXIT_INPUT, EXIT_TOOL = 1, 2, 3


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
def cmd_config(args) -> int:
    acfg = load_config(args.file)
    t = acfg.tlmm
    derived = {
        "table_entries": t.table_entries,
        "stored_entries": t.stored_entries,
        "zero_index": t.zero_index,
        "index_bits": t.index_bits,
        "entry_bits": t.entry_bits,
        "sum_bits": t.sum_bits,
        "chunk_k": t.chunk_k,
        "lookups_per_cycle": t.lookups_per_cycle,
        "acc_depth": t.acc_depth,
        "drain_cycles": t.drain_cycles,
    }
    if args.json:
        print(
            json.dumps({"config": acfg.to_dict(), "source": acfg.source, "tlmm_derived": derived}, indent=1)
        )
    else:
        print(f"{acfg.source}: valid ({acfg.name}, {acfg.clock_mhz:g} MHz)")
        for k, v in {**acfg.to_dict()["tlmm"], **derived}.items():
            print(f"  tlmm.{k:<18} {v}")
    return 0


# ---------------------------------------------------------------- cosim
def print_cosim_summary(rep) -> None:
    from sim.engines import engine
    from tritium.report import table

    eng = engine(rep.engine)
    rows = [
        [
            r["name"],
            r["rtl_equals_reference"] and r["rtl_equals_model"] and r["model_equals_reference"],
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
            title=f"Top level: {j['layers']} decoder layer(s) of the tiny model, {len(rep.rtl_tokens)} greedy "
            f"token(s) — config {rep.config['name']} ({rep.config['source']})",
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
        f"Every command's cycles compared (RTL: first word accepted → done; model: sim/top_model.py); host ops "
        f"run by the bench on the memory image. Verilator {j['simulation_s']} s."
    )
    print(
        "RESULT:",
        "PASS — logits bit-exact, tokens equal, every command cycle-exact"
        if rep.ok
        else "FAIL — see the rows above",
    )


def cmd_cosim(args) -> int:
    from sim.cosim import run_top_cosim
    from sim.engines import engine

    eng = engine(args.engine)
    acfg = load_config(args.config)
    if eng.stimulus == "program":
        prompt = list(args.prompt.encode())
        if not prompt:
            raise ConfigError("--prompt: empty")
        try:
            rep = run_top_cosim(
                acfg,
                args.checkpoint,
                prompt,
                args.tokens,
                args.layers,
                build_root=Path(args.build_dir),
                quiet=False,
                lm_head=args.lm_head,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if args.json:
            print(json.dumps(rep.to_json(), indent=1))
        else:
            print_top_summary(rep)
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
    rep = eng.run_cosim(acfg, cases, build_root=Path(args.build_dir), quiet=False)
    if args.json:
        out = rep.to_json()
        out["seed"] = args.seed
        print(json.dumps(out, indent=1))
    else:
        print_cosim_summary(rep)
    return 0 if rep.ok else EXIT_MISMATCH


# ---------------------------------------------------------------- perf
def cmd_perf(args) -> int:
    from tritium.perf import bandwidth_sweep, gemm_report, parse_shape, plot_roofline
    from tritium.report import table

    if args.plot is not None:
        output_file(args.plot, "--plot", (".png",))
    acfg = load_config(args.config)
    m, k, n = parse_shape(args.shape)
    rep = gemm_report(acfg, m, k, n)
    sweep = bandwidth_sweep(acfg, m, k, n) if args.plot else []
    if args.plot:
        rep["plot"] = str(plot_roofline(acfg, (m, k, n), sweep, Path(args.plot)))
        rep["sweep_points"] = len(sweep)
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    rows = [
        [key, f"{rep[key]:.4%}" if key == "mac_utilization" else rep[key]]
        for key in (
            "cycles",
            "time_ms",
            "gops",
            "peak_gops",
            "mac_utilization",
            "load_stall_cycles",
            "drain_stall_cycles",
            "tail_cycles",
            "dram_read_bytes",
            "dram_write_bytes",
            "ops_per_dram_byte",
            "bandwidth_gbs",
            "read_bandwidth_needed_gbs",
        )
    ]
    print(
        table(
            ["figure (modeled)", "value"],
            rows,
            title=f"GEMM {m}x{k}x{n} on {rep['block']} block, k_tile {rep['k_tile']}, "
            f"{acfg.clock_mhz:g} MHz — config {acfg.name}",
        )
    )
    if args.plot:
        print(f"roofline: {len(sweep)} bandwidth points → {rep['plot']}")
    return 0


# ---------------------------------------------------------------- compile
def cmd_compile(args) -> int:
    import time

    from compiler import CompileError, compile_model, load_model

    output_dir(args.out, "--out")
    acfg = load_config(args.config)
    t0 = time.perf_counter()
    try:
        model = load_model(args.model)
        cm = compile_model(model, acfg, lm_head=args.lm_head)
        prog = cm.program(args.tokens, args.pos)
    except CompileError as e:
        print(f"tritium: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    seconds = time.perf_counter() - t0
    out = prog.save(Path(args.out))
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
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"compiled {args.model} for {acfg.name}: step of {args.tokens} token(s) at position {args.pos}")
        print(
            f"  {summary['commands']} commands ({summary['tlmm']} TLMM, {summary['gemm']} GEMM, "
            f"{summary['host']} HOST), memory {summary['memory_mib']:.2f} MiB, {seconds:.2f} s "
            f"(export {cm.timings['export_s']:.2f} s)"
        )
        if not prog.meta["weights_materialized"]:
            print("  preset on meta tensors: shapes, commands and memory map only (no weight image)")
        print(f"  wrote {out}/program.json, program.npz, listing.txt")
    return 0


# ---------------------------------------------------------------- estimate
def cmd_estimate(args) -> int:
    from compiler import CompileError
    from tritium.estimate import estimate, format_estimate, plot_estimates

    if args.plot is not None:
        output_dir(args.plot, "--plot")
    acfg = load_config(args.config)
    try:
        r = estimate(args.model, acfg, args.prompt, args.context, lm_head=args.lm_head)
        plots = (
            [str(p) for p in plot_estimates(args.model, acfg, Path(args.plot), lm_head=args.lm_head)]
            if args.plot
            else []
        )
    except CompileError as e:
        print(f"tritium: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    r.pop("_steps")
    r["plots"] = plots
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(format_estimate(r))
    for p in plots:
        print(f"plot: {p}")
    return 0


# ---------------------------------------------------------------- bitstream
def cmd_bitstream(args) -> int:
    from hw.fpga import BOARDS, FitError, FlowError, build_bitstream
    from sim.engines import engine

    eng = engine(args.engine)
    if args.board not in BOARDS:
        raise ConfigError(f"--board: unknown board {args.board!r}; choose one of {', '.join(BOARDS)}")
    output_dir(args.out, "--out")
    acfg = load_config(args.config)
    try:
        report = build_bitstream(acfg, args.board, Path(args.out), log=_progress, engine=eng.hardware)
    except (FitError, FlowError) as e:
        print(f"tritium: error: {e}", file=sys.stderr)
        return EXIT_TOOL
    print(json.dumps(report, indent=1))
    return 0


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
    from tritium.calibrate import main as calibrate_main

    return calibrate_main(args.rest)


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


_LM_HEAD_ARG = {
    "choices": list(LM_HEAD_OPTIONS),
    "default": "host_fp32",
    "help": "where the LM head runs: host_fp32 (host, float32 weights; default), host_fp16 (host, float16 "
    "weights), acc_int8 (GEMM engine, int8 weights per row + int8 activations; models/lm_head.py)",
}


def build_parser() -> argparse.ArgumentParser:
    from sim.engines import board_engines, cosim_engines

    p = argparse.ArgumentParser(prog="tritium", description="Ternary LLM accelerator co-design toolkit.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cfg_help = "accelerator config YAML (default: configs/default.yaml)"

    c = sub.add_parser("config", help="validate a config and show its derived parameters")
    c.add_argument("action", choices=["check"])
    c.add_argument("file", nargs="?", default=None, help="config YAML (default: configs/default.yaml)")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=cmd_config)

    s = sub.add_parser("cosim", help="RTL (Verilator) ⇔ numba model ⇔ golden reference, bit and cycle exact")
    s.add_argument(
        "engine",
        choices=[e.name for e in cosim_engines()],
        help="engine to co-simulate (from sim/engines.py): " + _engine_help(cosim_engines()),
    )
    s.add_argument("--config", default=None, help=cfg_help)
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
        "--checkpoint",
        default="models/checkpoints/tiny.pt",
        help="top: trained checkpoint to compile and run (default models/checkpoints/tiny.pt)",
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
    s.add_argument("--build-dir", default="build/cosim", help="Verilator build cache (default build/cosim)")
    s.add_argument("--json", action="store_true", help="print a JSON report instead of tables")
    s.set_defaults(func=cmd_cosim)

    pf = sub.add_parser(
        "perf", help="modeled GEMM performance (GOPS, utilization, stalls) and a roofline plot"
    )
    pf.add_argument("engine", choices=["gemm"], help="engine")
    pf.add_argument("--config", default=None, help=cfg_help)
    pf.add_argument("--shape", default="1024x1024x1024", help="GEMM MxKxN (default 1024x1024x1024)")
    pf.add_argument(
        "--plot", default=None, metavar="PNG", help="also sweep memory bandwidth and write a roofline PNG"
    )
    pf.add_argument("--json", action="store_true", help="print JSON")
    pf.set_defaults(func=cmd_perf)

    co = sub.add_parser(
        "compile", help="lower a ternary LM (preset or checkpoint) into a Program + weight image"
    )
    co.add_argument(
        "model", help="preset name (bitnet-0.7b, bitnet-2b, tiny: meta tensors) or checkpoint .pt"
    )
    co.add_argument("--config", default=None, help=cfg_help)
    co.add_argument(
        "-o", "--out", required=True, help="output folder (program.json, program.npz, listing.txt)"
    )
    co.add_argument("--tokens", type=_positive, default=16, help="tokens of the step (default 16: a prefill)")
    co.add_argument(
        "--pos", type=_non_negative, default=0, help="position of the step's first token (default 0)"
    )
    co.add_argument("--lm-head", **_LM_HEAD_ARG)
    co.add_argument("--json", action="store_true", help="print a JSON summary")
    co.set_defaults(func=cmd_compile)

    es = sub.add_parser("estimate", help="modeled whole-model TTFT, tokens/s, J/token, bounds and plots")
    es.add_argument(
        "--model",
        required=True,
        help="preset (bitnet-0.7b, bitnet-2b, tiny), Hugging Face BitNet folder or checkpoint",
    )
    es.add_argument("--config", default=None, help=cfg_help)
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
        "--plot", default=None, metavar="DIR", help="write context.png, roofline-tlmm.png, roofline-gemm.png"
    )
    es.add_argument("--lm-head", **_LM_HEAD_ARG)
    es.add_argument("--json", action="store_true", help="print JSON")
    es.set_defaults(func=cmd_estimate)

    b = sub.add_parser("bitstream", help="Yosys → nextpnr → bitstream of one engine, with a report")
    b.add_argument("--config", default=None, help=cfg_help)
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
    b.set_defaults(func=cmd_bitstream)

    ds = sub.add_parser(
        "dse", help="design-space exploration: Optuna grid / NSGA-II over config fields (modeled)"
    )
    ds.add_argument("spec", help="sweep spec YAML (e.g. configs/sweeps/kv260-bitnet07b.yaml)")
    ds.add_argument(
        "--out", required=True, help="output folder: study.db, results.csv, pareto.png, evaluations.jsonl"
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
        add_help=False,
    )
    ca.add_argument(
        "rest", nargs=argparse.REMAINDER, help="arguments of python -m tritium.calibrate (--help)"
    )
    ca.set_defaults(func=cmd_calibrate)

    from tritium.kv import register as register_kv

    register_kv(sub)
    __import__("tritium.run").run.register(sub)

    be = sub.add_parser("bench", help="model vs Verilator speed on the BitNet-0.7B workload")
    be.add_argument("--config", default=None, help=cfg_help)
    be.add_argument("--build-dir", default="build/cosim", help="Verilator build cache (default build/cosim)")
    be.add_argument("--json", action="store_true", help="also print the figures as JSON")
    be.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from sim.verilator import terminate_children_on_signal

    args = build_parser().parse_args(argv)
    terminate_children_on_signal()  # SIGTERM/SIGINT: end make/cc1plus/simulators, clean temp folders
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"tritium: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except ValueError as e:  # shape or argument checks from the contracts
        print(f"tritium: error: {e}", file=sys.stderr)
        return EXIT_INPUT
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
            print(f"tritium: error: {e}", file=sys.stderr)
            return EXIT_TOOL
        raise


if __name__ == "__main__":
    sys.exit(main())
