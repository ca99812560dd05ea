"""Integrated top level: compiled Programs of the trained tiny model run through the RTL (command decoder,
TLMM DMA, engines, one memory port) with the bench as host; logits bit-exact against PyTorch int mode and the
executor on the numba models, greedy tokens equal, every command's cycles equal to sim/top_model.py."""

import dataclasses

import pytest
from conftest import assert_one_line_error, run_cli, top_one_layer

from hw.config import load_config
from hw.isa import TlmmCommand
from hw.ternary import tlmm_shape
from sim.tlmm_model import tlmm_cycles
from sim.top_model import FETCH_DISPATCH, command_cycles


@pytest.mark.torch
@pytest.mark.verilator
def test_one_decoder_layer_prefill_and_decode(repo):
    rep = top_one_layer(load_config(repo / "configs" / "default.yaml"), b"import os", 2)
    kinds = {k for step in rep.commands for k in step}
    assert kinds == {"tlmm", "gemm", "host"}


@pytest.mark.torch
@pytest.mark.verilator
def test_starved_memory_keeps_cycles_exact(repo):
    """Memory timing is not hardware (same RTL build): long latency, one request in flight, a beat every
    other cycle — the DMA's FIFO runs dry and the engines stall; the model must follow."""
    base = load_config(repo / "configs" / "default.yaml")
    acfg = dataclasses.replace(
        base, memory=dataclasses.replace(base.memory, latency=45, outstanding=1, beat_interval=2)
    )
    top_one_layer(acfg, b"x = 1", 1)
    # slower memory → more cycles than the same TLMM commands on the default memory
    cmd = TlmmCommand(tokens=2, k_chunks=6, n_blocks=32, act_base=3, wgt_base=1000, res_base=5000)
    assert command_cycles(acfg, cmd) > command_cycles(base, cmd)


# Other beat widths through the top (configs/small-g2-half.yaml): tests/test_overlap.py's co-simulation, which
# runs that config with overlap on (one Verilator build for both).


def test_tlmm_in_the_top_costs_at_least_the_engine():
    acfg = load_config()
    for m, kc, nb in ((1, 1, 1), (2, 6, 32), (1, 15, 88), (2, 3, 7)):
        cmd = TlmmCommand(tokens=m, k_chunks=kc, n_blocks=nb, act_base=7, wgt_base=333, res_base=9000)
        shape = tlmm_shape(acfg.tlmm, m, kc * acfg.tlmm.chunk_k, nb * acfg.tlmm.columns)
        assert command_cycles(acfg, cmd) >= FETCH_DISPATCH + tlmm_cycles(acfg.tlmm, shape)


def test_cli_top_bad_layers():
    assert_one_line_error(run_cli("cosim", "top", "--layers", 9, expect=2), "--layers: 9 outside 1..4")
