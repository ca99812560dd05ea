"""One way to make and save the figures of every command (perf, estimate, kv, dse).

Every figure is written as three files beside each other: ``STEM.png`` (raster, for a quick look),
``STEM.pdf`` or ``STEM.svg`` (vector, for a paper) and ``STEM.csv`` (the plotted data, one row per point,
so a figure can be redrawn with another tool). Each file is written under a temporary name and renamed
(:mod:`hw.files`), so an interrupted run never leaves a half-written figure.

The grammar (docs/cli.md): ``--plot PATH`` names one figure; PATH's suffix (``.png``, ``.pdf``, ``.svg``)
picks the vector format (``.svg`` → SVG, otherwise PDF); the PNG and the CSV are always written too.
Figures written into an ``--out DIR`` folder use PDF.

Style: :func:`new_figure` applies one style to every command's figures (sizes, fonts, grid); axes are
honest (:func:`honest_axes`: a linear y axis starts at zero).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from hw.files import atomic_path, atomic_write, output_file

__all__ = [
    "FIGURE_SUFFIXES",
    "VECTOR_FORMATS",
    "check_plot_path",
    "figure_files",
    "new_figure",
    "honest_axes",
    "save_figure",
]

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
VECTOR_FORMATS = ("pdf", "svg")

#: The one style of every figure: matplotlib rcParams applied by :func:`new_figure`.
STYLE = {
    "figure.dpi": 120,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.markersize": 4.5,
    "svg.hashsalt": "tritium",  # stable ids: the same figure gives the same SVG
    "svg.fonttype": "none",  # text stays text in SVGs (editable, searchable)
    "pdf.fonttype": 42,  # TrueType in PDFs (editable text, accepted by paper submission systems)
}


def check_plot_path(path: str | os.PathLike, flag: str = "--plot") -> Path:
    """Check a ``--plot PATH`` before any work (suffix .png, .pdf or .svg; writable); one-line error otherwise."""
    return output_file(path, flag, FIGURE_SUFFIXES)


def figure_files(path: str | os.PathLike, vector: str | None = None) -> dict[str, Path]:
    """``{"png", "pdf"|"svg", "csv"}`` → the files of the figure named ``path`` (its suffix dropped).
    ``vector``: the vector format; by default PATH's suffix picks it (.svg → svg, otherwise pdf)."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix.lower() in (*FIGURE_SUFFIXES, ".csv") else p
    vec = vector or ("svg" if p.suffix.lower() == ".svg" else "pdf")
    if vec not in VECTOR_FORMATS:
        raise ValueError(f"vector format {vec!r}: expected one of {', '.join(VECTOR_FORMATS)}")
    return {
        "png": stem.with_name(stem.name + ".png"),
        vec: stem.with_name(stem.name + f".{vec}"),
        "csv": stem.with_name(stem.name + ".csv"),
    }


def new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.2):
    """(fig, axes) in the shared style (``matplotlib`` on the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(1, ncols, figsize=(width, height), constrained_layout=True)
    return fig, ax


def honest_axes(ax, *, y_zero: bool = True, x_zero: bool = False) -> None:
    """Linear axes start at zero (a truncated axis makes small changes look steep); log axes are left alone."""
    if y_zero and ax.get_yscale() == "linear":
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(0.0, lo), hi if hi > 0 else 1.0)
    if x_zero and ax.get_xscale() == "linear":
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(0.0, lo), hi if hi > 0 else 1.0)


def _csv_text(columns: Sequence[str], rows: Iterable[Sequence]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if v is None else (repr(round(v, 12)) if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


def save_figure(
    fig, path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Sequence], vector: str | None = None
) -> dict[str, Path]:
    """Write ``fig`` as PNG + PDF/SVG and its data (``columns``, ``rows``) as CSV, each atomically; close
    the figure. Returns :func:`figure_files`' dict."""
    import matplotlib.pyplot as plt

    files = figure_files(path, vector)
    rows = list(rows)
    try:
        with plt.rc_context(STYLE):
            for fmt, p in files.items():
                if fmt == "csv":
                    with atomic_write(p, "w", encoding="utf-8", newline="") as f:
                        f.write(_csv_text(columns, rows))
                    continue
                meta = {"png": {"Software": None}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
                with atomic_path(p) as tmp:
                    fig.savefig(tmp, format=fmt, metadata=meta)
    finally:
        plt.close(fig)
    return files
