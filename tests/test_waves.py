"""Waveforms and debugging of ``tritium cosim`` (docs/waves.md): a failing case keeps its simulator log and
prints the command that reruns exactly that case with waves, and that command, run as printed, fails the
same case the same way and leaves a waveform; ``--case`` rejects an unknown name (exit 2); the Verilator
build cache keys on every option, tracing included.

The failing case comes from the test hook ``TRITIUM_TEST_FAIL_CASE`` (sim.cosim.FAIL_CASE_HOOK), which
raises one case's model cycle count by one. Cost: one untraced GEMM build (shared with
tests/test_cosim_gemm.py: same config, same build folder) and one traced build."""

import json
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cosim import FAIL_CASE_HOOK, VerilatorOptions, build_folder, build_key

CONFIG = "configs/gemm-2x8-w16.yaml"
CASE = "1x1x1"  # the smallest GEMM case


def _cli(repo: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    env.pop("WAVES", None)
    return subprocess.run(
        [sys.executable, "-m", "tritium.cli", *args], capture_output=True, text=True, cwd=repo, env=env
    )


def _rerun_line(stderr: str, case: str) -> str:
    """The command printed after ``FAILED <case>`` (under --json the failures go to stderr)."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"FAILED {case}"):
            prefix = "  rerun with waves: "
            assert lines[i + 1].startswith(prefix), lines[i + 1]
            return lines[i + 1][len(prefix) :]
    raise AssertionError(f"no FAILED {case} line in:\n{stderr[-3000:]}")


def _check_waveform(path: Path) -> None:
    """A real trace: an FST header block (type 0, length 329, end time > 0) or a VCD with value changes."""
    data = path.read_bytes()
    if path.suffix == ".fst":
        kind, length, start, end = data[0], *struct.unpack(">QQQ", data[1:25])
        assert (kind, length) == (0, 329) and end > start, (kind, length, start, end)
    else:
        assert path.suffix == ".vcd"
        text = data.decode(errors="replace")
        assert "$enddefinitions" in text and "cmd__valid" in text and "\n#" in text


@pytest.mark.verilator
def test_failing_case_keeps_log_and_rerun_command_reproduces_it_with_waves(repo):
    build = str(repo / "build" / "cosim")
    hook = {FAIL_CASE_HOOK: CASE}
    # 1. the directed cases, untraced: only the hooked case fails; its simulator log is kept
    first = _cli(
        repo,
        "cosim",
        "gemm",
        "--config",
        CONFIG,
        "--random",
        "0",
        "--build-dir",
        build,
        "--json",
        env_extra=hook,
    )
    assert first.returncode == 1, first.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(first.stdout)["case_results"]}
    bad = rows[CASE]
    assert bad["rtl_cycles"] + 1 == bad["model_cycles"] and bad["rtl_equals_model"]
    assert all(r["rtl_cycles"] == r["model_cycles"] for n, r in rows.items() if n != CASE)
    kept_log = Path(bad["log"])
    assert kept_log.is_file() and f"mismatching cases: {CASE}" in kept_log.read_text()
    assert f"log {kept_log}" in first.stderr
    cmd = _rerun_line(first.stderr, CASE)
    assert cmd == bad["rerun"]

    # 2. the rerun command, run as printed (``tritium`` is ``python -m tritium.cli``), same environment
    argv = shlex.split(cmd)
    assert argv[:3] == ["tritium", "cosim", "gemm"] and argv[-3:] == ["--case", CASE, "--waves"]
    again = _cli(repo, *argv[1:], "--json", env_extra=hook)
    assert again.returncode == 1, again.stderr[-3000:]
    out = json.loads(again.stdout)
    (row,) = out["case_results"]
    assert row["name"] == CASE
    assert (row["rtl_cycles"], row["model_cycles"], row["rtl_equals_model"]) == (
        bad["rtl_cycles"],
        bad["model_cycles"],
        bad["rtl_equals_model"],
    )
    wave, log = Path(row["waves"]), Path(row["log"])
    assert wave.parent == repo / "build" / "waves" / "gemm" and wave.stem == CASE
    _check_waveform(wave)
    assert f"mismatching cases: {CASE}" in log.read_text()
    assert str(wave) in again.stderr and _rerun_line(again.stderr, CASE) == cmd
    # the traced build is a folder of its own (see test_build_key_covers_every_option)
    fmt = wave.suffix[1:]
    specs = [
        json.loads((d / "build.json").read_text())
        for d in Path(build).glob(f"gemm-*-{fmt}")
        if (d / "build.json").exists()
    ]
    assert any(s["waves"] is True and s["trace"] == fmt for s in specs)
    kept_log.unlink()


def test_unknown_case_exits_2_listing_the_cases(repo):
    r = _cli(repo, "cosim", "gemm", "--config", CONFIG, "--random", "1", "--case", "no-such-case")
    assert r.returncode == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert "--case 'no-such-case'" in line and f"cases: {CASE}, K=1," in line and "random-0-0" in line
    listed = _cli(repo, "cosim", "gemm", "--config", CONFIG, "--random", "1", "--list-cases")
    assert listed.returncode == 0 and listed.stdout.split()[0] == CASE and "random-0-0" in listed.stdout
    top = _cli(repo, "cosim", "top", "--case", "step0")
    assert top.returncode == 2 and "cases: generation" in top.stderr


def test_build_key_covers_every_option(tmp_path):
    text = "module gemm(); endmodule\n"
    plain, fst, vcd = VerilatorOptions(), VerilatorOptions("fst"), VerilatorOptions("vcd")
    keys = {build_key("gemm", text, o)[0] for o in (plain, fst, vcd)}
    assert len(keys) == 3  # tracing on/off and the trace format each change the key
    assert build_key("gemm", text, VerilatorOptions())[0] == build_key("gemm", text, plain)[0]
    others = [
        VerilatorOptions(flags=("-Wno-fatal",)),
        VerilatorOptions(defines=(("X", "1"),)),
        VerilatorOptions(timescale=("1ns", "1ns")),
    ]
    assert len({build_key("gemm", text, o)[0] for o in [plain, *others]}) == 4
    assert build_key("gemm", text + " ", plain)[0] != build_key("gemm", text, plain)[0]
    assert build_folder(tmp_path, "gemm", text, plain) != build_folder(tmp_path, "gemm", text, fst)
    assert build_folder(tmp_path, "gemm", text, fst).name.endswith("-fst")
    assert "--trace-fst" in fst.build_args and "--trace-fst" not in vcd.build_args + plain.build_args
    with pytest.raises(ValueError, match="waveform format"):
        VerilatorOptions("lxt")


def test_one_case_per_simulator_gets_its_own_arrays_and_file_name():
    import numpy as np

    from sim.cosim import _case_arrays, safe_name

    arrays = {f"c{i}_{k}": np.full(1, 10 * i + j) for i in (0, 1, 11) for j, k in enumerate(("act", "ref"))}
    arrays["image"] = np.zeros(2)
    one = _case_arrays(arrays, 1)
    assert sorted(one) == ["c0_act", "c0_ref", "image"] and one["c0_ref"][0] == 11
    assert _case_arrays(arrays, 11)["c0_act"][0] == 110  # c1_ is not a prefix of c11_
    assert safe_name("bitnet0.7b-QK^T-head-256x96x256") == "bitnet0.7b-QK_T-head-256x96x256"
    assert safe_name("K=1") == "K=1" and safe_name("../x y") == "_x_y"
