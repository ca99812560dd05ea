"""Writing outputs safely: every file Tritium writes appears complete or not at all, and output paths are
checked before long work starts. Pure Python (no Amaranth); every layer may use it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutputPathError", "atomic_path", "atomic_write", "write_text", "output_dir", "output_file"]


class OutputPathError(ValueError):
    """An output path that cannot be written (exit 2 on the CLI); the message names the flag and the path."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder, same suffix) to write; on success it is renamed over
    ``path`` in one step, on any error (or Ctrl-C) it is removed — a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kw) -> Iterator:
    """``open(path, mode)`` that writes a temporary file, fsyncs it and renames it into place on success."""
    if "w" not in mode:
        raise ValueError(f"atomic_write: mode {mode!r} does not write")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kw) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically; returns the path."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


def output_dir(path: str | os.PathLike | None, flag: str) -> Path:
    """Check an output folder given by ``flag`` before any work: not empty, not an existing file, creatable
    and writable. Creates it; raises :class:`OutputPathError` with one line otherwise."""
    if path is None or str(path).strip() == "":
        raise OutputPathError(f"{flag}: an output folder is required (got an empty path)")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{flag}: {p} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"{flag}: cannot create folder {p} ({e.strerror or e})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag}: folder {p} is not writable")
    return p


def output_file(path: str | os.PathLike | None, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Check an output file given by ``flag`` before any work: not empty, not a folder, its folder creatable
    and writable, and (if ``suffixes``) one of those suffixes. Raises :class:`OutputPathError` otherwise."""
    if path is None or str(path).strip() == "":
        raise OutputPathError(f"{flag}: an output file is required (got an empty path)")
    p = Path(path)
    if p.is_dir() or str(path).endswith(os.sep):
        raise OutputPathError(f"{flag}: {p} is a folder; give a file name")
    if suffixes and p.suffix.lower() not in suffixes:
        raise OutputPathError(f"{flag}: {p}: expected a file ending in {' or '.join(suffixes)}")
    output_dir(p.parent if str(p.parent) else Path("."), flag)
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputPathError(f"{flag}: {p} is not writable")
    return p
