"""The ULX3S top's clock choice (``tritium bitstream --engine deploy --clock-mhz``): the PLL and UART divisor it
gives, the one-line refusals, the flow's timing fields parsed from a small fake nextpnr report, and the CLI's
exit code when timing is not met. No place-and-route runs here (docs/board.md, "Timing", has the measured one).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("amaranth", reason="the sim or fpga extra")

from hw import deploy  # noqa: E402
from hw.config import load_config  # noqa: E402
from tritium import cli  # noqa: E402


@pytest.mark.parametrize(
    "mhz, clki, fb, div, divisor",
    [(40, 5, 8, 15, 20), (50, 1, 2, 12, 25)],  # yowasp-ecppll -i 25 -o 40 / -o 50 give the same dividers
)
def test_pll_and_divisor(mhz, clki, fb, div, divisor):
    pll, d = deploy.deploy_clock(mhz)
    assert pll["f_out_mhz"] == pytest.approx(mhz, abs=1e-9)
    assert (pll["CLKI_DIV"], pll["CLKFB_DIV"], pll["CLKOP_DIV"]) == (clki, fb, div)
    assert 400 <= pll["vco_mhz"] <= 800 and 25 / clki >= 3.125
    assert 25 / clki * fb == pytest.approx(mhz)  # feedback from CLKOP: f = f_in / CLKI_DIV * CLKFB_DIV
    assert d == divisor and mhz * 1e6 / d == 2_000_000  # 2 MBd exactly


@pytest.mark.parametrize("mhz", [40, 50])
def test_deploy_top_follows_the_clock(mhz):
    top = deploy.DeployTop(load_config("configs/ulx3s.yaml"), clock_mhz=mhz)
    f = top.report_fields()
    assert top.clock_mhz == f["clock_mhz"] == mhz and top.divisor == f["uart_divisor"] == mhz // 2
    assert top.core.divisor == top.divisor and top.core.clock_mhz == mhz
    # the SDRAM timing is counted in cycles of this clock (tRC 63 ns, refresh every 7.8 µs less 64)
    assert (
        f["sdram_cycles"]["rc"] == -(-63 * mhz // 1000) and f["sdram_cycles"]["refi"] == int(7.8 * mhz) - 64
    )
    assert f["pll"]["CLKOP_DIV"] == top.pll["CLKOP_DIV"] and f["baud"] == 2_000_000


def test_default_clock_is_consistent():
    """The board top, the board simulation (its SDRAM timing and prediction) and the docs share one default."""
    top = deploy.DeployTop(load_config("configs/ulx3s.yaml"))
    assert top.clock_mhz == deploy.DEFAULT_CLOCK_MHZ
    assert top.divisor * deploy.DEFAULT_BAUD == deploy.DEFAULT_CLOCK_MHZ * 1e6


@pytest.mark.parametrize(
    "mhz, words",
    [
        (45, "off by 2.3 %"),  # 22.5 cycles per bit
        (24, "PLL: no EHXPLLL setting gives 24 MHz"),  # 2 MBd would be exact, but the PFD would be 1 MHz
        (150, "10 to 143 MHz"),
        (float("nan"), "10 to 143 MHz"),
    ],
)
def test_bad_clock_one_line(mhz, words):
    with pytest.raises(ValueError) as info:
        deploy.deploy_clock(mhz)
    assert words in str(info.value) and "\n" not in str(info.value)


def _fake_flow(seen, report):
    def fake(acfg, board, out_dir, log=print, engine="tlmm", pnr=True, step=None, **kw):
        seen.append((acfg.name, board, engine, kw))
        return report

    return fake


def test_cli_clock_option(monkeypatch, tmp_path, capsys):
    import hw.fpga

    seen = []
    ok = {"meets_target": True, "fmax_mhz": 44.0, "target_mhz": 40.0}
    monkeypatch.setattr(hw.fpga, "build_bitstream", _fake_flow(seen, ok))
    base = ["bitstream", "--board", "ulx3s", "--config", "configs/ulx3s.yaml", "--out", str(tmp_path)]
    assert cli.main([*base, "--engine", "deploy", "--clock-mhz", "40"]) == 0
    assert seen[-1] == ("ulx3s", "ulx3s", "deploy", {"clock_mhz": 40.0})
    assert cli.main([*base, "--engine", "deploy"]) == 0
    assert seen[-1][3] == {}  # the top's own default
    # without --config the deploy top is built for its own config (the SDRAM's 16-bit port), not the board's
    bare = ["bitstream", "--board", "ulx3s", "--out", str(tmp_path)]
    assert cli.main([*bare, "--engine", "deploy"]) == 0 and seen[-1][0] == "ulx3s"
    assert cli.main([*bare, "--engine", "tlmm"]) == 0 and seen[-1][0] == "default"
    capsys.readouterr()

    n = len(seen)
    for args, words in (
        (["--engine", "deploy", "--clock-mhz", "45"], "--clock-mhz 45: UART"),
        (["--engine", "deploy", "--clock-mhz", "24"], "--clock-mhz 24: PLL"),
        (["--engine", "tlmm", "--clock-mhz", "40"], "only --engine deploy takes a clock"),
    ):
        assert cli.main([*base, *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert len(seen) == n  # refused before the flow


def test_cli_exits_1_when_timing_is_not_met(monkeypatch, tmp_path, capsys):
    import hw.fpga

    fail = {
        "meets_target": False,
        "fmax_mhz": 47.1,
        "target_mhz": 50.0,
        "clock": "clk",
        "critical_path": "a.Q -> b.DI: 21.2 ns",
        "bitstream": str(tmp_path / "top.bit"),
    }
    monkeypatch.setattr(hw.fpga, "build_bitstream", _fake_flow([], fail))
    args = ["bitstream", "--board", "ulx3s", "--config", "configs/ulx3s.yaml", "--engine", "deploy"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 1
    cap = capsys.readouterr()
    assert json.loads(cap.out) == fail  # the report is still printed
    assert cap.err.count("\n") == 1 and "timing not met: Fmax 47.1 MHz < 50 MHz" in cap.err


def test_flow_refuses_a_clock_for_an_lfsr_top(tmp_path):
    from hw.fpga import build_bitstream

    with pytest.raises(ValueError, match="only a complete board top"):
        build_bitstream(load_config("configs/ulx3s.yaml"), "ulx3s", tmp_path, engine="tlmm", clock_mhz=40)
    assert not any(tmp_path.iterdir())


def _seg(kind, delay, cell_from, cell_to, net="", port_from="Q", port_to="A"):
    return {
        "type": kind,
        "from": {"cell": cell_from, "port": port_from, "loc": [1, 1]},
        "to": {"cell": cell_to, "port": port_to, "loc": [2, 2]},
        "delay": delay,
        "net": net,
        "sources": [],
    }


def test_timing_fields_from_a_fake_report(tmp_path):
    """The routed Fmax of the design clock (not the oscillator's, not an I/O path) and the critical path's
    endpoints, from nextpnr's ``--report`` JSON."""
    from hw.fpga import _timing

    src = "core.acc.dma.count_TRELLIS_FF_Q"
    dst = "core.sdram.state_TRELLIS_FF_Q_DI_LUT4_Z"
    report = {
        "fmax": {
            # the SDRAM clock (CLKOS) has the same constraint: the design clock is picked by name
            "$glbnet$sd_clk.sdram_clk_clk": {"achieved": 630.9, "constraint": 50.0},
            "$glbnet$clk": {"achieved": 46.3, "constraint": 50.0},
        },
        "critical_paths": [
            {"from": "<async>", "to": "posedge $glbnet$clk", "path": [_seg("routing", 3.0, "pin", src)]},
            {
                "from": "posedge $glbnet$clk",
                "to": "posedge $glbnet$clk",
                "path": [
                    _seg("clk-to-q", 0.5, src, src, port_from="CLK", port_to="Q"),
                    _seg("routing", 12.1, src, dst, net="core.acc.dma.count"),
                    _seg("logic", 6.4, dst, dst, port_from="A", port_to="Z"),
                    _seg("setup", 2.6, dst, dst + "_DI", port_from="Z", port_to="DI"),
                ],
            },
        ],
    }
    (tmp_path / "r.json").write_text(json.dumps(report))
    (tmp_path / "pnr.log").write_text("")
    fmax, clock, summary, ends = _timing(tmp_path / "r.json", tmp_path / "pnr.log", 50.0, "clk")
    assert (fmax, clock) == (46.3, "$glbnet$clk")
    assert ends == {"from": "core.acc.dma.count.CLK", "to": "core.sdram.state.DI", "delay_ns": 21.6}
    assert summary.startswith("core.acc.dma.count.CLK -> core.sdram.state.DI: 21.60 ns")

    # no JSON report: the log's "Max frequency" line, no endpoints
    (tmp_path / "pnr.log").write_text(
        "Info: Max frequency for clock '$glbnet$sd_clk.sdram_clk_clk': 630.91 MHz (PASS at 50.00 MHz)\n"
        "Info: Max frequency for clock                  '$glbnet$clk': 48.01 MHz (FAIL at 50.00 MHz)\n"
        "Info: Max frequency for clock '$glbnet$sd_clk.sdram_clk_clk': 640.00 MHz (PASS at 50.00 MHz)\n"
    )
    fmax, clock, summary, ends = _timing(tmp_path / "none.json", tmp_path / "pnr.log", 50.0, "clk")
    assert (fmax, clock, summary, ends) == (48.01, "$glbnet$clk", "n/a", None)


def test_sdram_controller_at_the_default_clock():
    """The SDRAM controller against the timing-checking chip model of tests/test_board_units.py at the deploy
    top's clock (40 MHz: tRCD, tRP one cycle each, the shortest waits its counters take)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_board_units", Path(__file__).with_name("test_board_units.py")
    )
    units = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(units)
    units.test_sdram_controller(deploy.DEFAULT_CLOCK_MHZ)
