"""The one CLI grammar (docs/cli.md): every subcommand's --help, --version, calibrate as a real subcommand,
bitstream's board default config and its fit check before synthesis, config check of every section, clean
one-line errors, one unit formatter."""

import argparse
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tritium import cli

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=REPO, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "tritium.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def _commands(parser: argparse.ArgumentParser, prefix=()):
    """Every (sub)command path of the parser, found by walking its subparsers (no hard-coded list)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


def test_every_subcommand_help_exits_0(capsys):
    paths = list(_commands(cli.build_parser()))
    names = {p[0] for p in paths}
    assert {
        "config",
        "cosim",
        "perf",
        "compile",
        "estimate",
        "bitstream",
        "dse",
        "calibrate",
        "kv",
        "run",
    } <= names
    assert ("kv", "report") in paths
    for path in paths:
        with pytest.raises(SystemExit) as e:
            cli.main([*path, "--help"])
        assert e.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: tritium " + " ".join(path)), (path, out[:200])


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"tritium {version('tritium')}"


def test_calibrate_is_a_subcommand_sharing_the_module_parser(capsys):
    from tritium import calibrate

    def options(p):
        return sorted(s for a in p._actions for s in a.option_strings)

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "calibrate"
    ]
    assert options(sub) == options(calibrate.build_parser())
    assert {"--runs", "--fit", "--list", "--board", "--only"} <= set(options(sub))
    assert cli.main(["calibrate", "--list"]) == 0
    assert "e_t_def" in capsys.readouterr().out


@pytest.mark.parametrize("entry", [["-m", "tritium.cli", "calibrate"], ["-m", "tritium.calibrate"]])
def test_calibrate_fit_missing_csv_is_one_line(tmp_path, entry):
    missing = tmp_path / "nope.csv"
    r = subprocess.run(
        [sys.executable, *entry, "--fit", str(missing)], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("tritium: error: --fit: ") and str(missing) in r.stderr


def test_calibrate_fit_of_the_shipped_csv_from_any_folder(tmp_path, capsys):
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)  # configs/calibration/runs.csv is found as the shipped file (hw/data_files.py)
    try:
        assert cli.main(["calibrate", "--fit"]) == 0
    finally:
        os.chdir(cwd)
    assert "HELD-OUT" in capsys.readouterr().out


def test_bitstream_refuses_a_design_that_does_not_fit_before_synthesis(tmp_path):
    out = tmp_path / "bit"
    r = run_cli("bitstream", "--board", "icebreaker", "--config", "configs/default.yaml", "--out", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    line = r.stderr
    assert "does not fit board icebreaker" in line and "modeled before synthesis" in line
    assert "LUTs 14,8" in line and "> 5,280" in line and "--force" in line
    assert not out.exists(), "nothing may be written (no synthesis started)"


def test_bitstream_board_default_config_and_force(monkeypatch, tmp_path):
    import hw.fpga

    seen = []

    def fake_build(acfg, board, out_dir, log=print, engine="tlmm", pnr=True, step=None):
        seen.append((acfg.name, board, engine))
        return {"board": board, "config": acfg.name}

    monkeypatch.setattr(hw.fpga, "build_bitstream", fake_build)
    assert cli.main(["bitstream", "--board", "icebreaker", "--out", str(tmp_path)]) == 0
    assert seen[-1] == ("icebreaker", "icebreaker", "tlmm")  # the board's default config, not default.yaml
    assert cli.main(["bitstream", "--board", "ulx3s", "--out", str(tmp_path)]) == 0
    assert seen[-1][0] == "default"
    n = len(seen)
    assert (
        cli.main(
            ["bitstream", "--board", "icebreaker", "--config", "configs/default.yaml", "--out", str(tmp_path)]
        )
        == 2
    )
    assert len(seen) == n  # refused: the flow was never called
    assert (
        cli.main(
            [
                "bitstream",
                "--board",
                "icebreaker",
                "--config",
                "configs/default.yaml",
                "--force",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert seen[-1] == ("default", "icebreaker", "tlmm")


def test_makefile_uses_the_cli_board_default():
    text = (REPO / "Makefile").read_text()
    assert "configs/icebreaker.yaml" not in text and "BOARD_CONFIG" not in text
    from hw.boards import BOARD_SPECS

    assert BOARD_SPECS["icebreaker"].default_config == "configs/icebreaker.yaml"
    assert BOARD_SPECS["kv260"].default_config == "configs/kv260.yaml"


def test_config_check_shows_every_section(capsys):
    assert cli.main(["config", "check", "configs/kv260.yaml"]) == 0
    out = capsys.readouterr().out
    for section in ("[tlmm]", "[gemm]", "[kv]", "[memory]", "[device]"):
        assert section in out, section
    assert "macs" in out and "alpha_q" in out and "dram_gbs" in out
    assert cli.main(["config", "check", "--config", "configs/kv260.yaml", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert set(j["derived"]) >= {"tlmm", "gemm", "kv", "memory"} and j["derived"]["gemm"]["macs"] == 128


def test_compile_model_option_and_deprecated_positional():
    ns = argparse.Namespace(model="tiny", model_positional=None)
    assert cli._model_arg(ns) == "tiny"
    assert cli._model_arg(argparse.Namespace(model=None, model_positional="tiny")) == "tiny"
    with pytest.raises(ValueError, match="--model"):
        cli._model_arg(argparse.Namespace(model=None, model_positional=None))
    with pytest.raises(ValueError, match="give the model once"):
        cli._model_arg(argparse.Namespace(model="tiny", model_positional="bitnet-2b"))


def test_error_lines_carry_no_terminal_codes():
    from tritium.report import error_line

    msg = "x.pt: not a torch checkpoint (Weights only load failed, \x1b[1mdo those steps\x1b[0m. )\nmore"
    assert error_line(msg) == "x.pt: not a torch checkpoint (Weights only load failed, do those steps. )"


@pytest.mark.torch
def test_checkpoint_error_line_is_clean(tmp_path):
    torch = pytest.importorskip("torch")
    bad = tmp_path / "bad.pt"
    torch.save({"a": argparse.Namespace()}, bad)  # a global the weights-only unpickler refuses
    r = run_cli("compile", "--model", str(bad), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "\x1b" not in r.stderr and "bad.pt" in r.stderr


def test_units_stay_readable_for_small_numbers():
    from tritium.report import fmt_bytes, fmt_energy, fmt_time

    assert fmt_energy(1.83e-4) == "183 µJ"
    assert fmt_energy(0.0421) == "42.1 mJ"
    assert fmt_energy(2.5) == "2.50 J"
    assert fmt_energy(0.99996) == "1.00 J"
    assert fmt_energy(0) == "0 J"
    assert fmt_time(3.86e-4) == "386 µs" and fmt_time(0.0344) == "34.4 ms"
    assert fmt_bytes(641 * 1024) == "641 KiB" and fmt_bytes(12) == "12 B"


def test_deprecated_spellings_still_parse():
    p = cli.build_parser()
    a = p.parse_args(["estimate", "--model", "tiny", "--plot", "d"])
    assert a.out is None and a.plot_dir == "d"
    a = p.parse_args(["cosim", "top", "--checkpoint", "x.pt"])
    assert a.checkpoint == "x.pt" == p.parse_args(["cosim", "top", "--model", "x.pt"]).checkpoint
    a = p.parse_args(["compile", "tiny", "-o", "d"])
    assert (
        cli._model_arg(a) == "tiny" == cli._model_arg(p.parse_args(["compile", "--model", "tiny", "-o", "d"]))
    )
    a = p.parse_args(["calibrate", "--out", "r.csv", "--build", "b"])
    assert (a.runs, a.build_dir) == ("r.csv", "b")
    a = p.parse_args(["kv", "plot", "t.npz", "--out", "r.png"])
    assert (a.plot, a.out_png) == (None, "r.png")


def test_help_states_the_grammar(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "--model MODEL" in out and "--out DIR" in out and "--plot PATH" in out
