"""`make bench`: how fast the numba model is against the Verilator RTL simulation, on the same work, for
every engine of the registry (sim/engines.py), plus compile, estimate and DSE throughput.

Figures are measured on this machine (wall clock, ``time.perf_counter``). The Verilator rate is the
co-simulation's: Verilator-compiled RTL driven cycle by cycle from cocotb, timed inside the bench's cycle
loop (Verilog elaboration and the C++ build excluded). The model rate excludes the one-time stream layout
(weight packing), which the compiler does ahead of time for a real Program.
"""

from __future__ import annotations

import time
from pathlib import Path

from hw import data_files
from hw.config import AcceleratorConfig
from hw.isa import GemmCommand
from hw.ternary import tlmm_shape, tlmm_streams
from sim.cosim import run_tlmm_cosim, warm_up_model
from sim.engines import Engine, cosim_engines
from sim.tlmm_cases import bitnet_workload
from sim.tlmm_model import run_tlmm_streams, tlmm_cycles
from tritium.report import table

# BitNet b1.58-large (0.7B) linear layers of one decoder layer: (name, N, K)
BITNET_07B_LAYER = (
    ("q_proj", 1536, 1536),
    ("k_proj", 1536, 1536),
    ("v_proj", 1536, 1536),
    ("o_proj", 1536, 1536),
    ("gate_proj", 4096, 1536),
    ("up_proj", 4096, 1536),
    ("down_proj", 1536, 4096),
)


def _time_model(cfg, cases, min_seconds: float = 1.0) -> tuple[float, int, int]:
    """Run the stepped model over the cases until min_seconds pass; returns (seconds, cycles, lookups)."""
    prepared = [tlmm_streams(cfg, c.w, c.x) for c in cases]
    warm_up_model(cfg)
    seconds, cycles, lookups = 0.0, 0, 0
    while seconds < min_seconds:
        for shape, act, wgt in prepared:
            t0 = time.perf_counter()
            run = run_tlmm_streams(cfg, shape, act, wgt)
            seconds += time.perf_counter() - t0
            cycles += run.cycles
            lookups += run.events["lookups"]
    return seconds, cycles, lookups


def _time_fast_path(cfg, repeats: int = 2000) -> tuple[float, int]:
    """Closed-form cycles of a whole BitNet-0.7B decoder layer (1 token); returns (seconds/call, cycles)."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        total = sum(
            tlmm_cycles(cfg, tlmm_shape(cfg, 1, min(k, cfg.max_k), min(n, cfg.max_n)))
            for _, n, k in BITNET_07B_LAYER
        )
    return (time.perf_counter() - t0) / repeats, total


def _timed(step, items, min_seconds: float = 1.0) -> tuple[float, int]:
    """Call ``step`` on each item, round after round, until the calls have taken ``min_seconds``; returns the
    seconds they took and the sum of what they returned (cycles)."""
    seconds, total = 0.0, 0
    while seconds < min_seconds:
        for item in items:
            t0 = time.perf_counter()
            total += step(item)
            seconds += time.perf_counter() - t0
    return seconds, total


def _model_vs_rtl(
    name: str, model_cps: float, rep, model_how: str, match_how: str, same: str | None = None
) -> tuple[dict, list[list]]:
    """What every engine's bench reports, as result entries and as table rows: the model's and the Verilator
    RTL's cycles per second, their ratio (with ``same``, what both ran), and whether the RTL matched the model."""
    rtl_cps = rep.verilator_cycles_per_s
    figures = {
        "model_cycles_per_s": model_cps,
        "verilator_cycles_per_s": rtl_cps,
        "rtl_matches_model": rep.ok,
    }
    rows = [
        [f"{name} model cycles/s", model_cps, model_how],
        [f"{name} Verilator cycles/s", rtl_cps, "cocotb-driven Verilator RTL, measured"],
    ]
    if same:
        rows.append(["model / Verilator", model_cps / max(1.0, rtl_cps), same])
    rows.append(["RTL == model", rep.ok, match_how])
    return figures, rows


def run_bench(acfg: AcceleratorConfig, build_root: Path, log=print) -> dict:
    """Every registered engine (sim/engines.py), then the compiler and the DSE; returns the figures. The
    first engine's (the TLMM's) figures are at the top level of the result, every other engine's under its
    name. An engine without a detailed bench here gets :func:`_bench_generic`."""
    from sim.progress import progress

    result: dict = {}
    engines = cosim_engines()
    with progress(len(engines) + 2, "bench", "part") as bar:
        for e in engines:
            bar.stage(e.name)
            bench = _DETAILED.get(e.name)
            figures = bench(acfg, build_root, log) if bench else _bench_generic(e, acfg, build_root, log)
            bar.update()
            if figures is None:
                continue
            if result:
                result[e.name] = figures
            else:
                result.update(figures)
            print()
        bar.stage("compile + estimate")
        result["compile"] = _bench_compile(acfg, log)
        bar.update()
        print()
        bar.stage("dse")
        result["dse"] = _bench_dse(log)
        bar.update()
    return result


def _bench_generic(e: Engine, acfg: AcceleratorConfig, build_root: Path, log=print) -> dict | None:
    """Any case-driven engine: its ``bitnet`` workload (else its first) through the co-simulation, whose
    report times the model and the RTL on the same cases."""
    if e.stimulus != "cases":
        log(f"[bench] {e.name}: no speed bench for a program-driven engine; skipped")
        return None
    workload = "bitnet" if "bitnet" in e.workloads else e.workloads[0]
    cases = e.make_cases(acfg, workload)
    log(f"[bench] {e.name}: model and Verilator RTL on its {workload} workload ...")
    rep = e.run_cosim(acfg, cases, build_root, quiet=True)
    figures, rows = _model_vs_rtl(
        e.name,
        rep.model_cycles_per_s,
        rep,
        "numba model inside the co-simulation, measured",
        "outputs and cycles",
    )
    print(
        table(
            ["figure", "value", "how"],
            rows,
            title=f"tritium bench — {e.name}, config {acfg.name}: {workload} workload",
        )
    )
    return {"workload": [c.name for c in cases], **figures}


def _bench_tlmm(acfg: AcceleratorConfig, build_root: Path, log=print) -> dict:
    """TLMM engine: stepped model vs Verilator on the BitNet-0.7B workload, and the closed-form fast path."""
    cfg = acfg.tlmm
    cases = bitnet_workload(cfg)
    log("[bench] numba model on the BitNet-0.7B workload ...")
    m_s, m_cycles, m_lookups = _time_model(cfg, cases)
    fast_s, layer_cycles = _time_fast_path(cfg)
    log("[bench] Verilator RTL on the same workload ...")
    rep = run_tlmm_cosim(acfg, cases, build_root, quiet=True)
    model_cps = m_cycles / m_s
    rtl_cps = rep.verilator_cycles_per_s
    result = {
        "config": acfg.name,
        "workload": [c.name for c in cases],
        "model_cycles_per_s": model_cps,
        "model_lookups_per_s": m_lookups / m_s,
        "verilator_cycles_per_s": rtl_cps,
        "model_over_verilator": model_cps / rtl_cps if rtl_cps else float("inf"),
        "rtl_matches_model": rep.ok,
        "fast_path_us_per_layer": fast_s * 1e6,
        "bitnet07b_layer_cycles_1tok": layer_cycles,
        "bitnet07b_layer_ms_1tok_modeled": layer_cycles / (acfg.clock_mhz * 1e3),
    }
    print(
        table(
            ["figure", "value", "how"],
            [
                ["model cycles/s", model_cps, "numba stepped model, measured"],
                ["model lookups/s", m_lookups / m_s, "table lookups executed by the model, measured"],
                ["Verilator cycles/s", rtl_cps, "cocotb-driven Verilator RTL, measured"],
                ["model / Verilator", result["model_over_verilator"], "speed ratio, same work"],
                ["RTL == model", rep.ok, "outputs and cycles of the benchmark cases"],
                ["fast path µs / layer", fast_s * 1e6, "closed-form cycles of one BitNet-0.7B layer"],
                ["BitNet-0.7B layer cycles", layer_cycles, "1 token, 7 ternary linears, modeled"],
                [
                    f"BitNet-0.7B layer ms @ {acfg.clock_mhz:g} MHz",
                    result["bitnet07b_layer_ms_1tok_modeled"],
                    "modeled, TLMM compute only (no DRAM limit)",
                ],
            ],
            title=f"tritium bench — config {acfg.name}: {', '.join(result['workload'])}",
        )
    )
    return result


def _bench_dse(log=print, points: int = 1000, workers: int = 2) -> dict:
    """Design-space exploration throughput: the committed BitNet-0.7B / KV260 sweep (prefill 128 + decode at
    context 128 per point, NSGA-II, fail-fast screening, SQLite study), ``points`` trials, fresh study."""
    import tempfile

    from tritium.dse import load_spec, run_dse

    spec = load_spec(data_files.data_path("configs/sweeps/kv260-bitnet07b.yaml"))
    spec.budget = points
    log(f"[bench] DSE: {points} points of {spec.name} on {workers} worker processes ...")
    with tempfile.TemporaryDirectory(prefix="tritium-bench-dse-") as d:
        t0 = time.perf_counter()
        r = run_dse(spec, Path(d), workers=workers, progress=False, log=lambda s: None)
        total = time.perf_counter() - t0
    per_min = 60 * r["stored"] / r["seconds"]
    out = {
        "spec": spec.name,
        "points": r["stored"],
        "evaluated": r["evaluated"],
        "loop_s": r["seconds"],
        "total_s": total,
        "points_per_min": per_min,
        "points_per_min_incl_startup": 60 * r["stored"] / total,
        "evaluated_per_min": 60 * r["evaluated"] / r["seconds"],
    }
    print(
        table(
            ["figure", "value", "how"],
            [
                [
                    "DSE points/min",
                    per_min,
                    f"{r['stored']} points ({r['evaluated']} evaluated, the rest rejected "
                    f"before evaluation) / sampling-loop wall time, {workers} workers",
                ],
                [
                    "DSE evaluated points/min",
                    60 * r["evaluated"] / r["seconds"],
                    "points that passed the screen and were evaluated (prefill + decode modeled)",
                ],
                [
                    "DSE points/min incl. start-up",
                    out["points_per_min_incl_startup"],
                    "including model capture, worker start, CSV and Pareto plot",
                ],
            ],
            title=f"tritium bench — design-space exploration, {spec.model} prefill {spec.prompt} + decode at "
            f"context {spec.context} per point (target ≥ 1000 points/min), measured",
        )
    )
    return out


def _bench_compile(acfg: AcceleratorConfig, log=print) -> dict:
    """Compile time of the published presets on meta tensors (capture + passes + a 64-token prefill step)."""
    from compiler import compile_model
    from models.presets import build_model

    rows, out = [], {}
    for name in ("bitnet-0.7b", "bitnet-2b"):
        log(f"[bench] compiling {name} on meta tensors ...")
        t0 = time.perf_counter()
        cm = compile_model(build_model(name, device="meta"), acfg)
        prog = cm.program(64, 0)
        seconds = time.perf_counter() - t0
        n = len(prog.commands())
        out[name] = {"seconds": seconds, "commands": n, **cm.timings}
        rows.append(
            [
                name,
                seconds,
                cm.timings["export_s"],
                n,
                prog.meta["memory_beats"] * acfg.memory.bus_bytes / 2**20,
            ]
        )
    print(
        table(
            ["preset", "compile s (target < 30)", "of which torch.export s", "commands", "memory MiB"],
            rows,
            title="tritium bench — compile on meta tensors (64-token prefill step), measured",
        )
    )
    out["estimate"] = _bench_estimate(acfg, log)
    return out


def _bench_estimate(acfg: AcceleratorConfig, log=print) -> dict:
    """Time of one `tritium estimate` (prefill 64 + decode at context 1024) per preset, first and repeated."""
    from tritium.estimate import clear_cache, estimate

    rows, out = [], {}
    for name in ("bitnet-0.7b", "bitnet-2b"):
        log(f"[bench] estimating {name} ...")
        clear_cache()  # a cold estimate includes capture and passes
        t0 = time.perf_counter()
        r = estimate(name, acfg, 64, 1024)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        estimate(name, acfg, 64, 1024)
        warm = time.perf_counter() - t0
        out[name] = {"cold_s": cold, "warm_s": warm, "decode_tokens_per_s": r["decode_tokens_per_s"]}
        rows.append([name, cold, warm, r["decode_tokens_per_s"], r["ttft_s"]])
    print(
        table(
            [
                "preset",
                "estimate s, first (incl. torch.export)",
                "estimate s, again (target < 2)",
                "decode tok/s (modeled)",
                "TTFT s (modeled)",
            ],
            rows,
            title=f"tritium bench — whole-model estimate, prompt 64, context 1024, config {acfg.name}, measured",
        )
    )
    return out


def _bench_kv(acfg: AcceleratorConfig, build_root: Path, log=print) -> dict:
    """KV retrieval engine: stepped model vs Verilator on replays of the committed traces."""
    from sim.cosim import run_kv_cosim
    from sim.kv_cases import trace_cases
    from sim.kv_model import encode_commands, run_kv

    cases = trace_cases(acfg.kv, data_files.trace_files()[:2], heads=2)
    encoded = [encode_commands(acfg.kv, c.commands) for c in cases]
    run_kv(acfg.kv, *encoded[0])  # compile outside the timing
    log("[bench] KV: numba stepped model on trace replays ...")
    seconds, cycles = _timed(lambda ops_vec: run_kv(acfg.kv, *ops_vec)[4], encoded)
    log("[bench] KV: Verilator RTL on the same replays ...")
    rep = run_kv_cosim(acfg, cases, build_root, quiet=True)
    figures, rows = _model_vs_rtl(
        "KV",
        cycles / seconds,
        rep,
        "numba stepped model, measured",
        "every output beat and its cycle",
        "same replays",
    )
    title = f"tritium bench — KV retrieval, config {acfg.name}: {len(cases)} trace replays"
    print(table(["figure", "value", "how"], rows, title=title))
    return {"workload": [c.name for c in cases], **figures}


def _bench_top(acfg: AcceleratorConfig, build_root: Path, log=print) -> dict:
    """Top level: one decoder layer of the tiny model, prefill of 8 bytes, through the RTL; and the time the
    top cycle model takes for the same Program."""
    from sim.cosim import run_top_cosim
    from sim.top_model import step_cycles

    log("[bench] top level: one layer of the tiny model through the RTL ...")
    rep = run_top_cosim(
        acfg, data_files.tiny_checkpoint(), list(b"def f(x)"), 1, layers=1, build_root=build_root, quiet=True
    )
    from compiler import compile_model, load_model
    from sim.cosim import truncated_model

    prog = compile_model(truncated_model(load_model(str(data_files.tiny_checkpoint())), 1), acfg).program(
        8, 0, logits="last"
    )
    step_cycles(prog)
    t0 = time.perf_counter()
    total = step_cycles(prog)
    model_s = time.perf_counter() - t0
    j = rep.to_json()
    rtl = j["step_cycles"][0]
    out = {
        "rtl_cycles": rtl,
        "model_cycles": total,
        "rtl_matches_model": rep.ok,
        "verilator_s": j["simulation_s"],
        "verilator_cycles_per_s": rtl / max(1e-9, j["simulation_s"]),
        "model_ms": model_s * 1e3,
    }
    print(
        table(
            ["figure", "value", "how"],
            [
                ["top: RTL cycles (1 layer, 8-token prefill)", rtl, "Verilator, the whole step"],
                ["top: model cycles", total, "sim/top_model.py whole step"],
                ["logits, tokens, cycles equal", rep.ok, "RTL vs PyTorch int vs numba models"],
                [
                    "Verilator cycles/s (whole run)",
                    out["verilator_cycles_per_s"],
                    "cocotb bench incl. process start, torch import, host ops; measured",
                ],
                ["top model ms for the Program", out["model_ms"], "measured"],
            ],
            title=f"tritium bench — top level, config {acfg.name}",
        )
    )
    return out


def _bench_gemm(acfg: AcceleratorConfig, build_root: Path, log=print) -> dict:
    """GEMM engine: stepped model vs Verilator on one attention head's Q·Kᵀ, and the fast path on 1024³."""
    from sim.cosim import run_gemm_cosim
    from sim.gemm_cases import bitnet_attention_case
    from sim.gemm_model import gemm_fast, run_gemm
    from tritium.perf import gemm_report

    case = bitnet_attention_case(acfg)
    log("[bench] GEMM: numba stepped model ...")
    run_gemm(acfg, case.a[:1, :1], case.b[:1, :1])  # compile outside the timing
    seconds, cycles = _timed(lambda c: run_gemm(acfg, c.a, c.b).cycles, [case])
    log("[bench] GEMM: Verilator RTL on the same GEMM ...")
    rep = run_gemm_cosim(acfg, [case], build_root, quiet=True)
    cmd = GemmCommand(-(-1024 // acfg.gemm.rows), -(-1024 // acfg.gemm.cols), -(-1024 // acfg.gemm.k_tile))
    gemm_fast(acfg, cmd)
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        gemm_fast(acfg, cmd)
    fast_ms = (time.perf_counter() - t0) / reps * 1e3
    big = gemm_report(acfg, 1024, 1024, 1024)
    figures, rows = _model_vs_rtl(
        "GEMM",
        cycles / seconds,
        rep,
        "numba stepped model (data + memory), measured",
        "outputs and cycles",
        "same GEMM",
    )
    out = {
        "workload": case.name,
        **figures,
        "fast_path_ms_1024cubed": fast_ms,
        "cycles_1024cubed": big["cycles"],
        "mac_utilization_1024cubed": big["mac_utilization"],
        "gops_1024cubed_modeled": big["gops"],
    }
    print(
        table(
            ["figure", "value", "how"],
            [
                *rows,
                [
                    "fast path ms, 1024³ GEMM",
                    fast_ms,
                    "recurrence over requests/tiles, measured (target < 10 ms)",
                ],
                ["1024³ cycles", big["cycles"], "modeled"],
                ["1024³ MAC utilization", f"{big['mac_utilization']:.4%}", "modeled (target ≥ 95%)"],
                [f"1024³ GOPS @ {acfg.clock_mhz:g} MHz", big["gops"], "modeled"],
            ],
            title=f"tritium bench — GEMM {acfg.gemm.rows}x{acfg.gemm.cols}, config {acfg.name}: {case.name}",
        )
    )
    return out


#: Engines with a detailed speed bench (fast paths, event rates); any other gets :func:`_bench_generic`.
_DETAILED = {"tlmm": _bench_tlmm, "gemm": _bench_gemm, "kv": _bench_kv, "top": _bench_top}
