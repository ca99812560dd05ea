"""One cycle definition: ``tritium estimate`` costs a TLMM command with the top level's cycle model
(``sim.top_model.tlmm_run_cycles``, = RTL), bounded below only by its bytes through the shared DRAM; the
per-shape cache gives the uncached count; the DMA's read FIFO depth changes the estimate."""

import math

import pytest

pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")

from compiler import compile_model, load_model
from hw.config import config_from_dict, load_config
from hw.isa import TlmmCommand
from sim.top_model import tlmm_run_cycles
from tritium import estimate as E

pytestmark = pytest.mark.torch


def _with_memory(acfg, **fields):
    d = acfg.to_dict()
    d["memory"].update(fields)
    return config_from_dict(d, "test")


def _programs(repo, acfg):
    cm = compile_model(load_model(str(repo / "models" / "checkpoints" / "tiny.pt")), acfg)
    return [cm.program(9, 0), cm.program(1, 9)]  # a prefill, then a decode step


def _comp(t, c) -> int:
    """The engine's compute closed form of TLMM command ``c`` (streams fed directly)."""
    from hw.ternary import TlmmShape
    from sim.tlmm_model import tlmm_cycles

    return tlmm_cycles(
        t, TlmmShape(c.tokens, c.k_chunks * t.chunk_k, c.n_blocks * t.columns, c.k_chunks, c.n_blocks)
    )


def _configs(repo):
    base = load_config(repo / "configs" / "default.yaml")
    return {"default": base, "deep FIFO": _with_memory(base, read_fifo_beats=128)}


@pytest.mark.parametrize("which", ["default", "deep FIFO"])
def test_tlmm_cycles_are_the_top_models(repo, which):
    """Every TLMM command of a compiled tiny Program: the estimate's cycles = tlmm_run_cycles, unless its
    bytes through the shared DRAM take longer; its compute share is the engine's closed form."""
    acfg = _configs(repo)[which]
    dram = acfg.device.dram_gbs * 1e3 / acfg.clock_mhz  # bytes per cycle
    exact = 0
    for prog in _programs(repo, acfg):
        records: list = []
        cost = E.cost_program(prog, acfg, records=records)
        cmds = [c for c in prog.commands() if type(c).__name__ != "SyncCommand"]
        assert len(cmds) == len(records)
        tl = [(c, r) for c, r in zip(cmds, records, strict=True) if isinstance(c, TlmmCommand)]
        assert tl
        for cmd, rec in tl:
            run = tlmm_run_cycles(acfg, cmd)
            assert rec["cycles"] == max(run, math.ceil(rec["dram_bytes"] / dram)), cmd
            exact += rec["cycles"] == run
        assert cost.engine_cycles["tlmm"] == sum(r["cycles"] for _, r in tl)
        t = acfg.tlmm
        assert cost.compute_cycles["tlmm"] == sum(_comp(t, c) for c, _ in tl)
        f = acfg.clock_mhz * 1e6
        tlmm_s = cost.time_by["tlmm compute"] + cost.time_by["tlmm memory"]
        assert tlmm_s == pytest.approx(cost.engine_cycles["tlmm"] / f)
        mem = sum(r["cycles"] for c, r in tl if r["cycles"] > 2 * _comp(t, c))  # waits longer than computes
        assert cost.time_by["tlmm memory"] == pytest.approx(mem / f)
    assert exact > 0  # the cycle model, not the DRAM bound, sets most commands (not vacuous)


def test_cache_equals_uncached(repo):
    """The per-shape cache, filled from address-zero commands (as the DSE's fast evaluator builds them),
    returns every compiled command's own (uncached) count: addresses never change the cycles."""
    for acfg in _configs(repo).values():
        E._TLMM_RUN.clear()
        cmds = [c for p in _programs(repo, acfg) for c in p.commands() if isinstance(c, TlmmCommand)]
        assert any(c.act_base or c.wgt_base for c in cmds)
        for c in cmds:  # fill the cache from commands at address zero
            E.tlmm_command_cycles(acfg, TlmmCommand(c.tokens, c.k_chunks, c.n_blocks, wbuf=c.wbuf))
        for c in cmds:
            assert E.tlmm_command_cycles(acfg, c) == tlmm_run_cycles(acfg, c), c
    E._TLMM_RUN.clear()


def test_read_fifo_depth_changes_the_estimate(repo):
    """A slow memory (latency 60): a FIFO that covers the latency makes the TLMM commands, and so the step,
    faster than the default-rule FIFO (2·max_burst beats); both estimates are the cycle model's counts."""
    base = _with_memory(load_config(repo / "configs" / "default.yaml"), latency=60)
    deep = _with_memory(base, read_fifo_beats=128)
    assert base.memory.read_fifo_depth < deep.memory.read_fifo_depth
    pb, pd = _programs(repo, base)[1], _programs(repo, deep)[1]
    cb, cd = E.cost_program(pb, base), E.cost_program(pd, deep)
    assert cd.engine_cycles["tlmm"] < cb.engine_cycles["tlmm"]
    assert cd.seconds < cb.seconds
    assert cd.compute_cycles == cb.compute_cycles  # the engine's own work is the same
    assert cd.time_by["tlmm memory"] < cb.time_by["tlmm memory"]
