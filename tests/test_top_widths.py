"""The top level's gearbox with engine beats wider than the bus by non-integer ratios (issue 15, part 6: the
KV260 design, whose 84-byte activation and 280-byte weight beats meet a 64-byte bus).

Fast tests (no Verilator) check the geometry and the cycle model over the class of widths; one co-simulation
runs a trained model through the RTL on configs/top-wide-beats.yaml — the kv260 width relationships (every
TLMM beat wider than the bus, non-integer ratios, runs at odd byte offsets) at a size Verilator builds and
runs in about a minute — with logits bit-exact and every command's cycles equal to sim/top_model.py."""

import math

import pytest
from conftest import top_one_layer

from hw.config import config_from_dict, load_config
from hw.isa import TlmmCommand
from hw.ternary import tlmm_shape
from hw.top_geometry import TopGeometry
from sim.tlmm_model import tlmm_cycles
from sim.top_model import FETCH_DISPATCH, command_cycles


def _widths(acfg):
    g = TopGeometry(acfg)
    return g.W, g.EA, g.EW, g.ER


def test_kv260_geometry_is_accepted(repo):
    g = TopGeometry(load_config(repo / "configs" / "kv260.yaml"))
    assert (g.W, g.EA, g.EW, g.ER) == (64, 84, 280, 64)
    assert g.cap == 64 + 280 and g.align == 4


def test_wide_beats_config_has_the_kv260_relationships(repo):
    W, EA, EW, ER = _widths(load_config(repo / "configs" / "top-wide-beats.yaml"))
    for e in (EA, EW, ER):
        assert e > W and e % W != 0  # wider than a bus beat, not a multiple of it
    assert EW > 2 * W and math.gcd(W, EA, EW) == 1  # several bus beats per weight beat; byte-wise shifts


@pytest.mark.parametrize(
    "tlmm,bus",
    [
        ({}, None),  # kv260 as shipped: 84 / 280 / 64 on 64
        ({"tokens": 1}, None),  # decode: one weight beat per LOOK cycle, bus-bound
        ({"columns": 12, "tables": 20}, 32),  # 60 / 150 / 48 on 32: everything wider, three ratios
        ({"columns": 3, "tables": 5, "group_size": 2}, 4),  # 10 / 8 / 12 bytes on a 4-byte bus
    ],
)
def test_model_finishes_and_costs_at_least_the_engine(repo, tlmm, bus):
    """The cycle model's gearbox never deadlocks with wide beats (the model returns), and a command in the
    top costs at least the engine alone with ideal streams, plus the bus time of its beats' bytes."""
    d = load_config(repo / "configs" / "kv260.yaml").to_dict()
    d["tlmm"].update(tlmm)
    if bus is not None:
        d["memory"]["bus_bytes"] = bus
        side = 1 << (bus.bit_length() // 2)  # a GEMM block that divides the bus and covers a beat
        d["gemm"] = {"rows": bus // side, "cols": side, "k_tile": 16}
    acfg = config_from_dict(d, "<test>")
    W, EA, EW, _ = _widths(acfg)
    for m, kc, nb in ((1, 1, 1), (1, 3, 22), (min(3, acfg.tlmm.tokens), 5, 7), (acfg.tlmm.tokens, 2, 9)):
        for act_base, wgt_base in ((0, 0), (3, 1001)):
            cmd = TlmmCommand(
                tokens=m, k_chunks=kc, n_blocks=nb, act_base=act_base, wgt_base=wgt_base, res_base=9000
            )
            shape = tlmm_shape(acfg.tlmm, m, kc * acfg.tlmm.chunk_k, nb * acfg.tlmm.columns)
            got = command_cycles(acfg, cmd)
            assert got >= FETCH_DISPATCH + tlmm_cycles(acfg.tlmm, shape)
            assert got >= FETCH_DISPATCH + kc * (nb * EW + m * EA) // W


@pytest.mark.torch
@pytest.mark.verilator
def test_wide_beats_run_bit_exact_and_cycle_exact(repo):
    """A prefill of 5 tokens (token chunks of 3 and 2) and one decode step of the trained tiny model's first
    layer: the gearbox assembles 21-, 44-byte beats from 16-byte bus beats and the packer writes 40-byte
    results across bus beats; logits, tokens and every command's cycles must match."""
    rep = top_one_layer(load_config(repo / "configs" / "top-wide-beats.yaml"), b"x = 1", 2)
    assert {k for step in rep.commands for k in step} == {"tlmm", "gemm", "host"}


# ---- resources: the top level beyond the engines -------------------------------------------------------


def test_top_overhead_is_added_to_the_engines(repo):
    from tritium.resources import load_model, top_overhead

    # the calibration run's design: configs/kv260.yaml as shipped (4096-beat weight buffer, 128-beat read
    # FIFO; both counted by their own functions, tests/test_wbuf.py and tests/test_read_fifo.py)
    acfg = load_config(repo / "configs" / "kv260.yaml")
    m = load_model()
    both, top = m.predict(acfg, "xcup", "all"), m.predict(acfg, "xcup", "top")
    over = top_overhead(acfg, "xcup")
    assert over["lut"] > 10_000 and over["ff"] > 1_000 and over["dsp"] == 4  # 3 in the DMA, 1 for the buffer
    for r in ("lut", "ff", "bram", "dsp"):
        assert top[r] == pytest.approx(both[r] + over[r])
    # calibrated on this config's whole-top Yosys run: 111,206 LUT, 68,353 FF, 132 DSP (modeled within 2 %)
    assert top["lut"] == pytest.approx(111_206, rel=0.02) and top["ff"] == pytest.approx(68_353, rel=0.02)
    assert top["dsp"] == 132
    # a wider gearbox costs more; ECP5 is calibrated on its own run
    small = load_config(repo / "configs" / "top-wide-beats.yaml")
    assert 0 < top_overhead(small, "xcup")["lut"] < over["lut"]
    assert top_overhead(acfg, "ecp5")["lut"] > over["lut"]  # LUT4s: a 2:1 mux per LUT, not 4:1


@pytest.mark.torch
def test_dse_fit_check_counts_the_top_level(repo, tmp_path):
    """kv260 with 8 tokens: both engines fit the K26 (modeled) but the whole top does not; the DSE screen
    rejects it as ``fit`` and reports the top-level figures."""
    import yaml

    from tritium.dse import load_spec, screen
    from tritium.resources import load_model

    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "kv-top",
                "base": str(repo / "configs" / "kv260.yaml"),
                "board": "kv260",
                "parameters": {"tlmm.tokens": [4, 8]},
                "workload": {"model": "tiny", "prompt": 16, "context": 40},
                "objectives": [{"decode_tokens_per_s": "max"}],
                "budget": 2,
                "sampler": "grid",
            }
        )
    )
    spec = load_spec(spec_path)
    status, _, m4, _ = screen(spec, {"tlmm.tokens": 4})
    acfg = load_config(repo / "configs" / "kv260.yaml")
    assert status == "ok" and m4["lut"] == pytest.approx(
        load_model().predict(acfg, "xcup", "top")["lut"], abs=0.1
    )
    status, reason, m8, d8 = screen(spec, {"tlmm.tokens": 8})
    assert load_model().predict(config_from_dict(d8, "<t>"), "xcup", "all")["lut"] < 117_120
    assert status == "fit" and "lut" in reason and m8["lut"] > 117_120
