"""Where the data shipped with Tritium lives: configs, energy tables, sweep specs, calibration runs, recorded
KV traces and the trained tiny checkpoint. Amaranth-free (ground layer).

Every shipped file has a *repository name* — its path from the repository root, e.g. ``configs/default.yaml``,
``traces/tiny-val-0.npz``, ``models/checkpoints/tiny.pt`` — whose first component is the Python package that
carries it as package data. :func:`data_path` finds it through :mod:`importlib.resources`, so it works from a
checkout and from a non-editable install alike. :func:`resolve` is the one rule for user-supplied paths: the
path as given (relative to the working directory) first, then the shipped file of that repository name.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path, PurePosixPath

__all__ = [
    "DataFileError",
    "data_path",
    "resolve",
    "default_config",
    "energy_dir",
    "calibration_csv",
    "tiny_checkpoint",
    "trace_files",
]

#: Top-level folders of the repository whose files are shipped as package data (each one is a package).
DATA_PACKAGES = ("configs", "traces", "models")


class DataFileError(FileNotFoundError):
    """A shipped data file is missing from this installation."""


def _split(name: str | os.PathLike) -> tuple[str, tuple[str, ...]] | None:
    """``configs/energy/ecp5.yaml`` → ``("configs", ("energy", "ecp5.yaml"))``; None if not a shipped name."""
    p = PurePosixPath(Path(name).as_posix())
    parts = [x for x in p.parts if x not in ("", ".")]
    if p.is_absolute() or not parts or ".." in parts or parts[0] not in DATA_PACKAGES:
        return None
    return parts[0], tuple(parts[1:])


def _packaged(name: str | os.PathLike) -> Path | None:
    split = _split(name)
    if split is None:
        return None
    pkg, rest = split
    try:
        root = resources.files(pkg)
    except ModuleNotFoundError:
        return None
    target = root
    for part in rest:  # one part at a time: Python 3.10's Traversable.joinpath takes one
        target = target.joinpath(part)
    # Tritium's packages are installed as plain folders (no zip imports), so a Traversable is a real path.
    return Path(str(target))


def data_path(name: str) -> Path:
    """The shipped file of repository name ``name`` (e.g. ``"configs/default.yaml"``); it must exist."""
    p = _packaged(name)
    if p is None:
        raise DataFileError(
            f"{name}: not a shipped data file (names start with one of {', '.join(DATA_PACKAGES)})"
        )
    if not p.exists():
        raise DataFileError(
            f"{name}: shipped data file missing from this installation ({p}); reinstall tritium"
        )
    return p


def resolve(path: str | os.PathLike) -> Path:
    """A user-supplied path: as given if it exists, else the shipped file of that repository name if there is
    one, else the path unchanged (so the caller's error message names what the user wrote)."""
    p = Path(path)
    if p.exists():
        return p
    shipped = _packaged(p)
    if shipped is not None and shipped.exists():
        return shipped
    return p


def default_config() -> Path:
    """``configs/default.yaml``."""
    return data_path("configs/default.yaml")


def energy_dir() -> Path:
    """The folder of the per-family energy tables, ``configs/energy``."""
    return data_path("configs/energy")


def calibration_csv() -> Path:
    """The committed resource-model calibration runs, ``configs/calibration/runs.csv``."""
    return data_path("configs/calibration/runs.csv")


def tiny_checkpoint() -> Path:
    """The trained tiny model, ``models/checkpoints/tiny.pt`` (its perplexities beside it in ``tiny.json``)."""
    return data_path("models/checkpoints/tiny.pt")


def trace_files() -> list[Path]:
    """The recorded KV traces ``traces/*.npz``, sorted by name."""
    return sorted(data_path("traces").glob("*.npz"))
