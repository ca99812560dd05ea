"""Bad-input battery for the command line: every case must end in one short error line on stderr, exit 2
(bad input), no Python traceback, no hang, bounded memory, and no half-written output left behind.

The config/YAML cases live in tests/test_bad_input.py, Program damage in tests/test_program.py, DSE
kill/resume in tests/test_dse_resume.py; this file holds the cases that cross commands."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import conftest
import numpy as np
import pytest

from traces.format import load_trace, save_trace

REPO = Path(__file__).resolve().parent.parent
TRACE = REPO / "traces/tiny-val-0.npz"
CKPT = REPO / "models/checkpoints/tiny.pt"
MEMORY_LIMIT = 2 << 30  # address space per CLI run (numba/LLVM map more than they use)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``tritium ARGS`` in a fresh process with a memory ceiling and a time bound."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return conftest.run_cli(
        *args, expect=None, cwd=cwd or REPO, env=env, timeout=timeout, preexec_fn=_limit_memory
    )


def assert_bad_input(p: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one short line on stderr naming what is wrong, no traceback."""
    err = p.stderr.strip()
    assert p.returncode == 2, (p.returncode, p.stdout[-500:], err[-2000:])
    assert "Traceback" not in p.stderr, err[-2000:]
    lines = err.splitlines()
    assert 1 <= len(lines) <= 3 and len(err) < 600, err[-2000:]
    for n in needles:
        assert n in err, (n, err)


# ---------------------------------------------------------------- tritium kv
def test_kv_replay_negative_first_is_refused():
    p = run_cli(
        "kv", "replay", str(TRACE), "--policy", "streaming", "--budget", "16", "--first", "-5", "--json"
    )
    assert_bad_input(p, "-5")
    assert "Infinity" not in p.stdout


def test_kv_replay_first_past_the_trace_is_refused():
    p = run_cli("kv", "replay", str(TRACE), "--policy", "full", "--first", "100000")
    assert_bad_input(p, "100000")


def test_kv_out_of_vocabulary_tokens_with_checkpoint(tmp_path):
    pytest.importorskip("torch")
    short = load_trace(TRACE).prefix(24)
    short.tokens[5] = 4000  # the tiny model's vocabulary is 256 bytes
    path = save_trace(short, tmp_path / "oov.npz")
    p = run_cli("kv", "replay", str(path), "--policy", "full", "--checkpoint", str(CKPT))
    assert_bad_input(p, "4000", "vocabulary")


@pytest.mark.parametrize("kind", ["file", "empty", "unwritable"])
def test_kv_output_paths(tmp_path, kind):
    if kind == "file":
        out = tmp_path / "taken"
        out.write_text("x")
        target = str(out / "recall.png")
    elif kind == "empty":
        target = ""
    else:
        if os.geteuid() == 0:
            target = "/proc/tritium-cannot-write-here/recall.png"
        else:
            ro = tmp_path / "ro"
            ro.mkdir()
            ro.chmod(0o500)
            target = str(ro / "recall.png")
    p = run_cli("kv", "plot", str(TRACE), "--out", target, cwd=tmp_path)
    assert_bad_input(p, "--out")
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*tmp*"))


def test_kv_report_out_is_a_file(tmp_path):
    f = tmp_path / "report"
    f.write_text("not a folder")
    p = run_cli("kv", "report", str(TRACE), "--out", str(f))
    assert_bad_input(p, "--out", "not a folder")
    assert f.read_text() == "not a folder"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from hw.files import atomic_write, write_text

    target = tmp_path / "result.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("new, half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    np.testing.assert_equal(oct(target.stat().st_mode & 0o777), oct(0o666 & ~_umask()))


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
