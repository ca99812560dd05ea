"""DSE resume is exact: SIGKILL of the whole process group at many moments (during start-up, between an
evaluation's log record and its store, mid-batch), and Ctrl-C (SIGINT to the group) with two workers; after
the rerun, results.csv equals an uninterrupted run's row for row (no point twice, none missing, same values).
A tiny grid and a short NSGA-II run keep it fast (~1-2 min on 2 cores)."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import CLI, DSE_NSGA_PARAMETERS, DSE_SPEC, REPO, run_cli

from tritium.dse import load_spec, run_dse

GRID = {**DSE_SPEC, "name": "t-resume", "batch": 4, "seed": 3}
NSGA = {
    **GRID,
    "name": "t-resume-nsga",
    "sampler": "nsga2",
    "population": 6,
    "batch": 6,
    "budget": 24,
    "parameters": DSE_NSGA_PARAMETERS,
}


def _write(tmp_path: Path, d: dict) -> Path:
    p = tmp_path / f"{d['name']}.yaml"
    p.write_text(yaml.safe_dump(copy.deepcopy(d), sort_keys=False))
    return p


def _reference(tmp_path: Path, spec_path: Path) -> list[str]:
    run_dse(load_spec(spec_path), tmp_path / "ref", workers=0, progress=False, log=lambda s: None)
    return (tmp_path / "ref" / "results.csv").read_text().splitlines()


def _start(spec_path: Path, out: Path, workers: int = 2) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "dse", str(spec_path), "--out", str(out), "--workers", str(workers), "--no-progress"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )


def _log_lines(out: Path) -> int:
    p = out / "evaluations.jsonl"
    return len(p.read_bytes().splitlines()) if p.exists() else 0


def _stored(out: Path) -> int:
    db = out / "study.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as c:
            return c.execute("select count(*) from trials").fetchone()[0]
    except sqlite3.Error:
        return 0


def _kill_when(proc: subprocess.Popen, out: Path, what: str, n: float, timeout: float = 120) -> bool:
    """SIGKILL the process group once ``what`` (sleep seconds / log lines / stored rows) reaches n; False if
    the run ended first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if (
            (what == "sleep" and time.monotonic() - t0 >= n)
            or (what == "log" and _log_lines(out) >= n)
            or (what == "stored" and _stored(out) >= n)
        ):
            break
        time.sleep(0.01)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return True


def _check_equal(ref: list[str], out: Path, grid: bool = True) -> None:
    got = (out / "results.csv").read_text().splitlines()
    if grid:  # NSGA-II may propose a point again (so does the uninterrupted run)
        keys = [tuple(r[3:6]) for r in csv.reader(got[1:])]
        assert len(keys) == len(set(keys)), "a point appears twice"
    assert len(got) == len(ref), f"{len(got) - 1} rows, expected {len(ref) - 1}"
    assert got == ref


def _check_evaluated_once(out: Path) -> None:
    logged = [ln for ln in (out / "evaluations.jsonl").read_text().splitlines() if ln.endswith("}")]
    uids = [json.loads(x)["uid"] for x in logged]
    assert len(uids) == len(set(uids)), "a point was evaluated twice"


def _finish(spec_path: Path, out: Path) -> None:
    run_cli("dse", spec_path, "--out", out, "--workers", 2, "--no-progress", timeout=300)


# kill moments, one after the other on the same output folder: during start-up (before the study or the
# first evaluation exists), then after 1, 2, … evaluation records or stored rows — a kill right after a
# record is logged and before it is stored is the case the log replay covers.
# Seven moments (each kill costs a fresh DSE process start-up): two during start-up, then early, middle and
# late in the grid after a logged record and after a stored row.
GRID_KILLS = [
    ("sleep", 0.3),
    ("sleep", 2.0),
    ("log", 1),
    ("stored", 2),
    ("log", 11),
    ("stored", 13),
    ("log", 22),
]


def test_sigkill_at_many_moments_grid_resume_exact(tmp_path):
    p = _write(tmp_path, GRID)
    ref = _reference(tmp_path, p)
    out = tmp_path / "o"
    kills = 0
    for what, n in GRID_KILLS:
        if _kill_when(_start(p, out), out, what, n):
            kills += 1
    assert kills >= 5, f"only {kills} kill(s) landed before the run finished"
    _finish(p, out)
    _check_equal(ref, out)
    _check_evaluated_once(out)


def test_sigkill_nsga2_resume_exact(tmp_path):
    p = _write(tmp_path, NSGA)
    ref = _reference(tmp_path, p)
    out = tmp_path / "o"
    for what, n in [("log", 2), ("stored", 7), ("log", 13)]:
        assert _kill_when(_start(p, out), out, what, n)
    _finish(p, out)
    _check_equal(ref, out, grid=False)
    _check_evaluated_once(out)


def test_ctrl_c_two_workers_stops_fast_and_resumes_exact(tmp_path):
    p = _write(tmp_path, GRID)
    ref = _reference(tmp_path, p)
    out = tmp_path / "o"
    proc = _start(p, out)
    t0 = time.monotonic()
    while (stored := _stored(out)) < 3:
        assert proc.poll() is None and time.monotonic() - t0 < 120, "no evaluations"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    t1 = time.monotonic()
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("still running 10 s after SIGINT")
    took = time.monotonic() - t1
    err = proc.stderr.read()
    assert rc == 130, err[-2000:]
    assert took < 10
    print(f"Ctrl-C: exit {rc} after {took:.2f} s")
    assert _stored(out) >= stored, "finished points were lost"
    assert (out / "results.csv").exists(), "no results.csv of the points stored so far"
    _finish(p, out)
    _check_equal(ref, out)
    _check_evaluated_once(out)


SWALLOWED_CTRL_C = """
import gc, os, signal, sys, weakref
from sim.verilator import raise_pending_signal, terminate_children_on_signal
raise_pending_signal()  # no signal yet: nothing happens
terminate_children_on_signal()
class Box: pass
box = Box()
ref = weakref.ref(box, lambda r: os.kill(os.getpid(), signal.SIGINT))
del box  # the handler's KeyboardInterrupt is raised in the callback, and Python drops it
gc.collect()
print("still running", flush=True)
try:
    raise_pending_signal()
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""


def test_a_dropped_ctrl_c_is_raised_again():
    """The race behind a flaky Ctrl-C: SIGINT delivered while a garbage-collector callback runs (sqlalchemy
    registers some) raises KeyboardInterrupt there, Python prints 'Exception ignored' and goes on, yet the
    handler has already killed the children. raise_pending_signal() raises it again."""
    r = subprocess.run([CLI[0], "-c", SWALLOWED_CTRL_C], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in r.stderr and "KeyboardInterrupt" in r.stderr, r.stderr
    assert r.stdout.split() == ["still", "running", "KeyboardInterrupt"], (r.stdout, r.stderr)


def test_a_new_run_forgets_the_previous_runs_signal(monkeypatch):
    """tritium.cli.main may run twice in one process (a script, the tests): the second run's dead child is
    a crash report again, not the first run's Ctrl-C."""
    import sim.verilator as verilator

    monkeypatch.setattr(verilator, "_INSTALLED", True)  # the handlers stay as pytest has them
    monkeypatch.setattr(verilator, "_PENDING", signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        verilator.raise_pending_signal()
    verilator.terminate_children_on_signal()  # what main() calls at the start of each run
    try:
        verilator.raise_pending_signal()
    except KeyboardInterrupt:
        pytest.fail("the previous run's Ctrl-C was raised again in a new run")


def test_dead_worker_after_a_dropped_ctrl_c_is_an_interrupt(monkeypatch):
    """A worker found dead is a crash (RuntimeError) unless a signal arrived: then the sweep ends as the
    interrupt (exit 130, 'the same command resumes'), as an undropped Ctrl-C would."""
    import multiprocessing as mp

    import sim.verilator as verilator
    from tritium.dse import _Evaluators

    def take_a_job_and_die(conn):
        conn.recv()
        os._exit(0)

    def evaluators_with_a_dying_worker(before_the_job: bool):
        ev = _Evaluators.__new__(_Evaluators)
        here, there = mp.Pipe()
        if before_the_job:
            there.close()  # the job cannot even be sent
        else:
            mp.get_context("fork").Process(target=take_a_job_and_die, args=(there,), daemon=True).start()
            there.close()
        ev.workers, ev.procs = 1, [(None, here)]
        return ev

    for before in (True, False):
        monkeypatch.setattr(verilator, "_PENDING", None)
        with pytest.raises(RuntimeError, match="worker process died"):
            list(evaluators_with_a_dying_worker(before).run([("uid", {}, {}, {})]))
        monkeypatch.setattr(verilator, "_PENDING", signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            list(evaluators_with_a_dying_worker(before).run([("uid", {}, {}, {})]))
