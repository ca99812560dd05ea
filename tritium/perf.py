"""`tritium perf gemm`: modeled performance of one GEMM on the temporal GEMM engine, and a roofline sweep
over memory bandwidth. Every figure here is *modeled* (the cycle model's fast path, which is tested equal
to the stepped model, which is co-simulated cycle-exact against the RTL)."""

from __future__ import annotations

from pathlib import Path

from hw.config import AcceleratorConfig, ConfigError, config_from_dict
from hw.gemm_layout import gemm_shape
from hw.isa import GemmCommand
from sim.gemm_model import gemm_fast

__all__ = ["parse_shape", "gemm_report", "bandwidth_sweep", "plot_roofline"]


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
) -> list[dict]:
    """Achieved GOPS against memory bandwidth: every legal bus width × beat interval (modeled)."""
    rows = []
    w = 4
    while w <= 128:
        for iv in intervals:
            c = _with_memory(acfg, bus_bytes=w, beat_interval=iv)
            if c is not None:
                r = gemm_report(c, m, k, n)
                rows.append(
                    {
                        "bus_bytes": w,
                        "beat_interval": iv,
                        "bandwidth_gbs": r["bandwidth_gbs"],
                        "gops": r["gops"],
                        "mac_utilization": r["mac_utilization"],
                        "ops_per_dram_byte": r["ops_per_dram_byte"],
                        "cycles": r["cycles"],
                    }
                )
        w *= 2
    return sorted(rows, key=lambda r: (r["bandwidth_gbs"], r["bus_bytes"]))


def plot_roofline(acfg: AcceleratorConfig, shape: tuple[int, int, int], rows: list[dict], path: Path) -> Path:
    """PNG: achieved GOPS (modeled) against memory bandwidth, with the compute and bandwidth roofs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = gemm_report(acfg, *shape)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    widths = sorted({r["bus_bytes"] for r in rows})
    cmap = plt.get_cmap("viridis", max(2, len(widths)))
    for i, w in enumerate(widths):
        pts = [r for r in rows if r["bus_bytes"] == w]
        ax.plot(
            [r["bandwidth_gbs"] for r in pts],
            [r["gops"] for r in pts],
            "o",
            ms=4,
            color=cmap(i),
            label=f"{8 * w}-bit bus, interval 1..{max(r['beat_interval'] for r in pts)}",
        )
    bw = [r["bandwidth_gbs"] for r in rows]
    lo, hi = min(bw) / 1.5, max(bw) * 1.5
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ai = own["ops_per_dram_byte"]
    ax.plot(
        xs,
        [min(own["peak_gops"], ai * x) for x in xs],
        "k--",
        lw=1,
        label=f"roofline: peak {own['peak_gops']:.1f} GOPS, {ai:.1f} ops/DRAM byte",
    )
    ax.plot([own["bandwidth_gbs"]], [own["gops"]], "r*", ms=14, label=f"this config ({acfg.name})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"memory bandwidth, GB/s (bus bytes / beat interval × {acfg.clock_mhz:g} MHz)")
    ax.set_ylabel("achieved GOPS (modeled)")
    m, k, n = shape
    ax.set_title(
        f"Temporal GEMM {acfg.gemm.rows}×{acfg.gemm.cols} block, k_tile {acfg.gemm.k_tile}: "
        f"{m}×{k}×{n} int8 GEMM"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
