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

Long runs made of a few named stages (a co-simulation, a bitstream) use a staged bar and :func:`step`:

    with progress(desc="cosim gemm", stages=["elaborate", "Verilator build", "simulate"]):
        step("elaborate")                     # any code below, without a handle on the bar
        step("simulate", lambda: "3/8 cases") # text polled while the step runs

:func:`step` reports to the innermost open bar (:func:`current`): a staged bar counts the stages done; any
other bar only shows the step after its own stage. Once a step was reported, a ticker thread refreshes the
bar twice a second, so the step's elapsed seconds (and its polled text) move while a tool runs: a long
Verilator build or place-and-route shows a running clock, not a frozen bar. :func:`note` prints a log line
without tearing a bar. With bars off every call is a no-op (no thread, no polling).

Pure Python; every layer from sim up may use it (lower layers take a callback instead).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

__all__ = ["Progress", "progress", "track", "enabled", "set_enabled", "current", "step", "note"]

_forced: bool | None = None  # set_enabled(); None: decide from the environment and the terminal
_open: list[Progress] = []  # the bars open now, innermost last (see current())
#: Seconds between two refreshes of a bar that reported a step (its clock and polled text).
TICK_S = 0.5
#: A staged bar: what it did of how many stages, the time since it opened, then its stage and step.
STAGED_FORMAT = "{desc}: |{bar:12}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


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
    """A tqdm bar on stderr, or nothing at all when bars are off (every method is then a no-op).

    ``stages``: the names of the steps a staged bar counts (its total); :meth:`step` with one of them sets
    the count to that stage's place in the list (the stages before it are done)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        show: bool | None = None,
        initial: int = 0,
        stages: Iterable[str] | None = None,
    ):
        self._bar = None
        self._desc = desc
        self._stages = list(stages) if stages is not None else None
        self._stage = ""  # stage(): what the bar's owner runs now
        # step(): its name, detail and start
        self._step: tuple[str, Callable[[], str] | str | None, float] | None = None
        self._detail = ""  # the last text the step's detail gave
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._pid = os.getpid()  # a forked worker (the DSE's) must not draw its parent's bar
        if enabled() if show is None else show:
            from tqdm import tqdm

            staged = self._stages is not None
            self._bar = tqdm(
                total=len(self._stages) if staged else total,
                initial=initial,
                desc=desc,
                unit=unit,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.2,
                leave=False,
                bar_format=STAGED_FORMAT if staged else None,
            )
        _open.append(self)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def stage(self, name: str) -> None:
        """Show what runs now (after the bar's description); a step reported before is over."""
        self._stage, self._step = name, None
        self._show()

    def step(self, name: str, detail: Callable[[], str] | str | None = None) -> None:
        """Now at step ``name`` (a stage of a staged bar: the stages before it are done; another name is a
        step within the current stage), shown after the bar's own stage with its elapsed seconds and ``detail`` (a text, or a function polled at every
        refresh for one, e.g. cases finished; an exception keeps the last text). Starts the ticker."""
        if self._bar is None:
            return
        if self._stages is not None:
            if name in self._stages:
                done = self._stages.index(name)
                if done > self._bar.n:
                    self._bar.update(done - self._bar.n)
                self._stage = ""
            elif self._step is not None and self._step[0] in self._stages:
                self._stage = self._step[0]  # a step within the stage: shown after it
        self._step, self._detail = (name, detail, time.monotonic()), ""
        self._show()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name=f"progress {self._desc}", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            self._show()

    def _show(self) -> None:
        bar = self._bar
        if bar is None:
            return
        text = [self._stage] if self._stage else []
        st = self._step
        if st is not None:
            name, detail, t0 = st
            if callable(detail):
                try:
                    self._detail = str(detail())
                except Exception:  # a poll that failed this time (a file being rewritten): keep the last text
                    pass
            elif detail is not None:
                self._detail = detail
            text.append(" ".join(x for x in (name, self._detail, f"{time.monotonic() - t0:.0f} s") if x))
        bar.set_postfix_str(": ".join(text), refresh=True)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(timeout=2 * TICK_S)
        self._ticker = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self in _open:
            _open.remove(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(
    total: int | None = None,
    desc: str = "",
    unit: str = "step",
    show: bool | None = None,
    initial: int = 0,
    stages: Iterable[str] | None = None,
) -> Progress:
    """A :class:`Progress` bar of ``total`` steps (``None``: a counter) starting at ``initial``, or of the
    named ``stages`` (see :meth:`Progress.step`); ``show`` overrides :func:`enabled`."""
    return Progress(total, desc, unit, show, initial, stages)


_OFF = Progress(None, "", "", show=False)
_open.remove(_OFF)


def current() -> Progress:
    """The innermost bar this process opened (created and not yet closed), else a bar that shows nothing."""
    pid = os.getpid()
    mine = [b for b in _open if b._pid == pid]
    return mine[-1] if mine else _OFF


def step(name: str, detail: Callable[[], str] | str | None = None) -> None:
    """Report step ``name`` to the innermost open bar (:meth:`Progress.step`); nothing when none shows.
    For code deep in a run that has no handle on the bar (a co-simulation's build, its simulator)."""
    current().step(name, detail)


def note(msg: str, file=None) -> None:
    """Print a log line on ``file`` (default stderr); while a bar shows, above it (the bar is redrawn)."""
    file = sys.stderr if file is None else file
    if any(b.active and b._pid == os.getpid() for b in _open):
        from tqdm import tqdm

        tqdm.write(msg, file=file)
        file.flush()
    else:
        print(msg, file=file, flush=True)


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
