"""`tritium perf gemm|tlmm`: modeled performance of one matmul on one engine, and a roofline sweep over
memory bandwidth. Every figure here is *modeled*.

- GEMM: the cycle model's fast path (tested equal to the stepped model, which is co-simulated cycle-exact
  against the RTL), with its own memory traffic under the config's memory model.
- TLMM: the stepped numba model (:func:`sim.tlmm_model.run_tlmm`, co-simulated cycle-exact against the RTL)
  on random ternary weights and activations, its weight stream fed at the memory's rate: one weight beat of
  ``tlmm_wgt_beat_bytes`` bytes whenever the port (``bus_bytes / beat_interval`` bytes per cycle, capped by
  the shared DRAM ``device.dram_gbs``) has delivered that many bytes (a periodic valid pattern, the same
  mechanism the co-simulation uses to stall the RTL). Activations and results are not throttled (they are a
  small share of the bytes: see ``dram_*_bytes``). Stalls are the model's own counters.
"""

from __future__ import annotations

from pathlib import Path

from hw.config import AcceleratorConfig, ConfigError, config_from_dict
from hw.gemm_layout import gemm_shape
from hw.isa import GemmCommand
from sim.gemm_model import gemm_fast

__all__ = [
    "parse_shape",
    "gemm_report",
    "bandwidth_sweep",
    "tlmm_report",
    "tlmm_bandwidth_sweep",
    "default_tlmm_shape",
    "plot_roofline",
]


def parse_shape(text: str) -> tuple[int, int, int]:
    """'1024x1024x1024' → (M, K, N); ValueError names the argument."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        m, k, n = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shape: expected MxKxN with three positive integers, got {text!r}") from None
    if min(m, k, n) < 1:
        raise ValueError(f"--shape: dimensions must be >= 1, got {text!r}")
    return m, k, n


def gemm_report(acfg: AcceleratorConfig, m: int, k: int, n: int, requant: bool = False) -> dict:
    """Cycles, time, achieved GOPS, MAC utilization, stalls and DRAM traffic of one M×K×N GEMM (modeled)."""
    geo, mem = acfg.gemm_geometry, acfg.memory
    s = gemm_shape(geo, m, k, n)
    t = gemm_fast(acfg, GemmCommand(s.m_tiles, s.n_tiles, s.k_tiles, requant=requant))
    f = acfg.clock_mhz * 1e6
    seconds = t.cycles / f
    ops = 2 * m * k * n
    rd = t.events["read_beats"] * mem.bus_bytes
    wr = t.events["write_beats"] * mem.bus_bytes
    need = (geo.a_beats + geo.b_beats) * mem.bus_bytes / geo.k_tile  # bytes/cycle the block consumes
    return {
        "shape": [m, k, n],
        "config": acfg.name,
        "clock_mhz": acfg.clock_mhz,
        "block": f"{geo.rows}x{geo.cols}",
        "k_tile": geo.k_tile,
        "cycles": t.cycles,
        "time_ms": seconds * 1e3,
        "gops": ops / seconds / 1e9,
        "peak_gops": 2 * acfg.gemm.macs * f / 1e9,
        "mac_utilization": t.utilization(acfg, m, k, n),
        "load_stall_cycles": t.events["load_stall_cycles"],
        "drain_stall_cycles": t.events["drain_stall_cycles"],
        "tail_cycles": t.events["tail_cycles"],
        "dram_read_bytes": rd,
        "dram_write_bytes": wr,
        "ops_per_dram_byte": ops / (rd + wr),
        "bandwidth_gbs": mem.bytes_per_cycle * f / 1e9,
        "read_bandwidth_needed_gbs": need * f / 1e9,
        "modeled": True,
    }


def _with_memory(acfg: AcceleratorConfig, **fields) -> AcceleratorConfig | None:
    """The config with other memory fields, or None if the engine cannot be built that way."""
    d = acfg.to_dict()
    d["memory"] = {**d["memory"], **fields}
    try:
        return config_from_dict(d, acfg.source)
    except ConfigError:
        return None


def bandwidth_sweep(
    acfg: AcceleratorConfig,
    m: int,
    k: int,
    n: int,
    intervals: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
    report=None,
) -> list[dict]:
    """Achieved GOPS against memory bandwidth: every legal bus width × beat interval (modeled).
    ``report``: the engine's report function (default :func:`gemm_report`)."""
    from sim.progress import step

    report = report or gemm_report
    points = [
        (w, iv, c)
        for w in (4, 8, 16, 32, 64, 128)
        for iv in intervals
        if (c := _with_memory(acfg, bus_bytes=w, beat_interval=iv)) is not None
    ]
    rows: list[dict] = []
    step("bandwidth sweep", lambda: f"{len(rows)}/{len(points)} points")  # polled by a progress bar
    for w, iv, c in points:
        r = report(c, m, k, n)
        rows.append(
            {
                "bus_bytes": w,
                "beat_interval": iv,
                "bandwidth_gbs": r["bandwidth_gbs"],
                "gops": r["gops"],
                "utilization": r.get("mac_utilization", r.get("issue_utilization")),
                "ops_per_dram_byte": r["ops_per_dram_byte"],
                "cycles": r["cycles"],
            }
        )
    return sorted(rows, key=lambda r: (r["bandwidth_gbs"], r["bus_bytes"]))


# ---------------------------------------------------------------- TLMM
def default_tlmm_shape(acfg: AcceleratorConfig) -> str:
    """``tlmm.tokens`` × min(2048, max_k) × min(2048, max_n): one weight-sharing batch of a BitNet-sized
    projection."""
    t = acfg.tlmm
    return f"{t.tokens}x{min(2048, t.max_k)}x{min(2048, t.max_n)}"


def _rate_pattern(rate: float):
    """A periodic valid pattern delivering ``rate`` (0 < rate <= 1) beats per cycle, ones spread evenly."""
    from fractions import Fraction

    import numpy as np

    if rate >= 1:
        return np.ones(1, np.uint8)
    f = Fraction(rate).limit_denominator(256)
    if (
        f == 0
    ):  # slower than 1/256: round up to the slowest pattern (a stall is never under-counted by >0.4 %)
        f = Fraction(1, 256)
    a, b = f.numerator, f.denominator
    return np.array([((i + 1) * a) // b - (i * a) // b for i in range(b)], np.uint8)


_TLMM_DATA: dict = {}


def tlmm_report(acfg: AcceleratorConfig, m: int, k: int, n: int, seed: int = 0) -> dict:
    """Cycles, time, GOPS, lookup-issue utilization, stalls and DRAM bytes of one M×K×N ternary matmul
    (tokens × K × N) on the TLMM engine, from the stepped model with its weight stream at the memory's
    rate (module doc). M above ``tlmm.tokens`` runs as ceil(M / tokens) commands one after another."""
    import numpy as np

    from hw.program import tlmm_wgt_beat_bytes
    from hw.ternary import tlmm_shape
    from sim.tlmm_model import run_tlmm, tlmm_cycles

    t, mem = acfg.tlmm, acfg.memory
    f = acfg.clock_mhz * 1e6
    port = mem.bus_bytes / mem.beat_interval  # bytes per cycle
    dram = acfg.device.dram_gbs * 1e9 / f
    bw = min(port, dram)
    wb = tlmm_wgt_beat_bytes(t)
    pattern = _rate_pattern(bw / wb)
    tiles = [t.tokens] * (m // t.tokens) + ([m % t.tokens] if m % t.tokens else [])
    totals = {"cycles": 0, "ideal": 0, "issues": 0, "stall_cycles": 0, "bubble_cycles": 0}
    runs: dict = {}
    for tok in tiles:
        if tok not in runs:
            tlmm_shape(t, tok, k, n)  # the engine's limits; ValueError names them
            key = (tok, k, n, seed)
            if key not in _TLMM_DATA:
                rng = np.random.default_rng(seed)
                lo, hi = -(1 << (t.act_bits - 1)), (1 << (t.act_bits - 1)) - 1
                _TLMM_DATA.clear()
                _TLMM_DATA[key] = (
                    rng.integers(-1, 2, (n, k)).astype(np.int8),
                    rng.integers(lo, hi + 1, (tok, k)).astype(np.int64),
                )
            w, x = _TLMM_DATA[key]
            runs[tok] = run_tlmm(t, w, x, wgt_pattern=pattern)
        r = runs[tok]
        totals["cycles"] += r.cycles
        totals["ideal"] += tlmm_cycles(t, r.shape)
        totals["issues"] += r.shape.k_chunks * r.shape.n_blocks * r.shape.tokens
        totals["stall_cycles"] += r.events["stall_cycles"]
        totals["bubble_cycles"] += r.events["bubble_cycles"]
    kc, nb = -(-k // t.chunk_k), -(-n // t.columns)
    wbytes = len(tiles) * kc * nb * wb
    abytes = kc * m * t.chunk_k
    rbytes = nb * m * t.columns * 4
    seconds = totals["cycles"] / f
    ops = 2 * m * k * n
    need = wb / (t.tokens * (1 + nb) + 1) * nb  # weight bytes per cycle the unstalled engine consumes
    return {
        "shape": [m, k, n],
        "config": acfg.name,
        "clock_mhz": acfg.clock_mhz,
        "block": f"G{t.group_size} T{t.tables} Q{t.columns}, {t.tokens} token(s)",
        "commands": len(tiles),
        "cycles": totals["cycles"],
        "unstalled_cycles": totals["ideal"],
        "time_s": seconds,
        "gops": ops / seconds / 1e9,
        "peak_gops": 2 * t.group_size * t.lookups_per_cycle * f / 1e9,
        "issue_utilization": totals["issues"] / totals["cycles"],
        "weight_stall_cycles": totals["bubble_cycles"],
        "credit_stall_cycles": totals["stall_cycles"],
        "weight_beat_bytes": wb,
        "weight_beats_per_cycle": float(pattern.mean()),
        "dram_weight_bytes": wbytes,
        "dram_activation_bytes": abytes,
        "dram_result_bytes": rbytes,
        "ops_per_dram_byte": ops / (wbytes + abytes + rbytes),
        "bandwidth_gbs": bw * f / 1e9,
        "read_bandwidth_needed_gbs": need * f / 1e9,
        "modeled": True,
    }


def tlmm_bandwidth_sweep(acfg: AcceleratorConfig, m: int, k: int, n: int) -> list[dict]:
    """Achieved GOPS against memory bandwidth for the TLMM (stepped model per point; see the module doc)."""
    rows = bandwidth_sweep(acfg, m, k, n, intervals=(1, 2, 4, 8, 16), report=tlmm_report)
    return rows


# ---------------------------------------------------------------- roofline figure
def plot_roofline(
    acfg: AcceleratorConfig,
    shape: tuple[int, int, int],
    rows: list[dict],
    path: Path,
    engine: str = "gemm",
    own: dict | None = None,
) -> dict:
    """Roofline figure (PNG + PDF/SVG + CSV, :func:`tritium.figures.save_figure`): achieved GOPS (modeled)
    against memory bandwidth for every swept memory, the compute and bandwidth roofs, and this config's
    point. Returns the files written."""
    from tritium.figures import new_figure, save_figure

    own = own or (gemm_report if engine == "gemm" else tlmm_report)(acfg, *shape)
    fig, ax = new_figure(width=6.8, height=4.4)
    widths = sorted({r["bus_bytes"] for r in rows})
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("viridis", max(2, len(widths)))
    for i, w in enumerate(widths):
        pts = [r for r in rows if r["bus_bytes"] == w]
        ax.plot(
            [r["bandwidth_gbs"] for r in pts],
            [r["gops"] for r in pts],
            "o",
            ms=max(
                3.5, 9 - 1.3 * i
            ),  # wider buses drawn smaller on top: points at equal bandwidth stay visible
            markeredgecolor="white",
            markeredgewidth=0.5,
            color=cmap(i),
            label=f"{8 * w}-bit bus, beat interval {min(r['beat_interval'] for r in pts)}.."
            f"{max(r['beat_interval'] for r in pts)}",
        )
    bw = [r["bandwidth_gbs"] for r in rows] + [own["bandwidth_gbs"]]
    lo, hi = min(bw) / 1.5, max(bw) * 1.5
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ai = own["ops_per_dram_byte"]
    ax.plot(
        xs,
        [min(own["peak_gops"], ai * x) for x in xs],
        "k--",
        lw=1,
        label=f"roofline: peak {own['peak_gops']:.3g} GOPS, {ai:.3g} ops per DRAM byte",
    )
    ax.plot(
        [own["bandwidth_gbs"]],
        [own["gops"]],
        "r*",
        ms=13,
        label=f"config {acfg.name}: {own['gops']:.3g} GOPS at {own['bandwidth_gbs']:.3g} GB/s",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    cap = f", at most device.dram_gbs {acfg.device.dram_gbs:g}" if engine == "tlmm" else ""
    ax.set_xlabel(f"memory bandwidth (GB/s) = bus bytes / beat interval × {acfg.clock_mhz:g} MHz{cap}")
    ax.set_ylabel("achieved throughput (GOPS, modeled)")
    m, k, n = shape
    if engine == "gemm":
        what = (
            f"temporal GEMM {acfg.gemm.rows}×{acfg.gemm.cols} block, k_tile {acfg.gemm.k_tile}: "
            f"{m}×{k}×{n} int8 GEMM"
        )
    else:
        t = acfg.tlmm
        what = f"TLMM G{t.group_size} T{t.tables} Q{t.columns}: {m} token(s) × K {k} × N {n} ternary matmul"
    ax.set_title(f"{what} (modeled)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    data = [
        [engine, r["bus_bytes"], r["beat_interval"], r["bandwidth_gbs"], r["gops"], r["ops_per_dram_byte"], 0]
        for r in rows
    ]
    data.append(
        [engine, acfg.memory.bus_bytes, acfg.memory.beat_interval, own["bandwidth_gbs"], own["gops"], ai, 1]
    )
    return save_figure(
        fig,
        path,
        [
            "engine",
            "bus_bytes",
            "beat_interval",
            "bandwidth_gbs",
            "gops_modeled",
            "ops_per_dram_byte",
            "this_config",
        ],
        data,
    )
