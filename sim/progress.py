"""Progress bars for long runs, one helper for every command (tqdm, on stderr).

A bar shows only when it helps a person watching: stderr is a terminal and progress has not been turned off
(``tritium ... --json`` turns it off, so machine-readable output stays clean; bars never write to stdout).
Otherwise ``TRITIUM_PROGRESS=1`` forces bars on (``0`` off) whatever stderr is.

    from sim.progress import progress, track
    with progress(total=3, desc="estimate", unit="step") as bar:
        bar.stage("compile")      # names what runs now
        ...
        bar.update()
    for case in track(cases, desc="cases"):
        ...

Pure Python; every layer from sim up may use it (lower layers take a callback instead).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator

__all__ = ["Progress", "progress", "track", "enabled", "set_enabled"]

_forced: bool | None = None  # set_enabled(); None: decide from the environment and the terminal


def set_enabled(on: bool | None) -> None:
    """Turn bars off (``False``, what ``--json`` does), on (``True``) or back to automatic (``None``)."""
    global _forced
    _forced = on


def enabled() -> bool:
    """Whether a bar would show now: :func:`set_enabled` first (``--json`` turns bars off whatever else
    says), then ``TRITIUM_PROGRESS`` (1/0), then whether stderr is a terminal."""
    if _forced is not None:
        return _forced
    env = os.environ.get("TRITIUM_PROGRESS", "").strip()
    if env in ("0", "1"):
        return env == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Progress:
    """A tqdm bar on stderr, or nothing at all when bars are off (every method is then a no-op)."""

    def __init__(self, total: int | None, desc: str, unit: str, show: bool | None = None, initial: int = 0):
        self._bar = None
        self._desc = desc
        if enabled() if show is None else show:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.2,
                leave=False,
            )

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def stage(self, name: str) -> None:
        """Show what runs now (after the bar's description)."""
        if self._bar is not None:
            self._bar.set_postfix_str(name, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(
    total: int | None = None, desc: str = "", unit: str = "step", show: bool | None = None, initial: int = 0
) -> Progress:
    """A :class:`Progress` bar of ``total`` steps (``None``: a counter) starting at ``initial``; ``show``
    overrides :func:`enabled`."""
    return Progress(total, desc, unit, show, initial)


def track(
    items: Iterable, desc: str = "", total: int | None = None, unit: str = "it", show: bool | None = None
) -> Iterator:
    """Iterate ``items`` with a bar (total from ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(total, desc, unit, show) as bar:
        for x in items:
            yield x
            bar.update()
