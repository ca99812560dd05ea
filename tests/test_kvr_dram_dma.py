"""The table DMA of ``system.kv_tables: dram`` (hw/kv_sequencer.py; sim.kv_model.table_dma_cycles): the load
keeps up to ``memory.outstanding`` read requests in flight, limited by its FIFO's room; the write-back writes
only the header and the touched clusters' entry and key-sum beats (TableLayout.dirty_beats). The amaranth.sim
sequencer against KvrExecutor (tests/test_kvr_dram.py's check: list blocks, table bytes, cycles =
kvr_run_cycles) on memories where the FIFO credit binds (short bursts, several in flight, beats faster than the
table takes them) and where only one request may be in flight; and command by command: after every command
the images are equal where either was written, and the RTL wrote nothing outside the list block and the
dirty beats."""

import numpy as np
import pytest
import test_kvr_dram
from test_kvr_dram import _cfg, _with_tables
from test_kvr_sequencer import _program, _run_rtl

from hw.kv_numerics import list_capacity
from sim.kv_model import KvrExecutor, kvr_run_cycles, table_dma_cycles


@pytest.mark.parametrize(
    "bus,dim,memory",
    [
        (32, 40, {"max_burst": 2, "outstanding": 3, "latency": 9}),  # 13 bursts, a 6-beat FIFO
        (16, 40, {"max_burst": 3, "outstanding": 1, "beat_interval": 3}),  # one request at a time
    ],
)
def test_pipelined_table_load_matches_the_executor(bus, dim, memory):
    test_kvr_dram.test_dram_tables_match_the_executor_in_the_model_cycles(bus, dim, memory)


def test_outstanding_requests_shorten_the_load():
    """More requests in flight never lengthen the load; with a long latency they shorten it."""
    loads = [
        table_dma_cycles(_cfg(32, 40).kv, _cfg(32, 40, latency=60, max_burst=4, outstanding=o).memory)[0]
        for o in (1, 2, 4, 8)
    ]
    assert loads == sorted(loads, reverse=True) and loads[-1] < loads[0] / 2, loads


def test_write_back_of_the_touched_clusters_command_by_command():
    acfg = _cfg(32, 40, max_burst=2, outstanding=3, latency=9)  # 3 key-sum beats per cluster
    kv, W = acfg.kv, 32
    cmds, image = _program(acfg, np.random.default_rng(5))
    cmds, image, tl = _with_tables(acfg, cmds, image)
    rtl, ref = image.copy(), image.copy()
    ex = KvrExecutor(kv, W, tables_in_dram=True)
    grew = 0
    for cmd in cmds:
        before = rtl.copy()
        n0 = tl.unpack(before.reshape(-1)[cmd.tab_base * W :])[3]
        (run,) = _run_rtl(acfg, [cmd], rtl)
        ex.run(cmd, ref)
        assert run == kvr_run_cycles(kv, acfg.memory, ex.engine_cycles, True, cmd.inserts, ex.touched), cmd
        got, want = rtl.reshape(-1), ref.reshape(-1)
        lo, t0 = cmd.list_base * W, cmd.tab_base * W
        nw = 4 + list_capacity(kv) + cmd.inserts
        assert np.array_equal(got[lo : lo + 4 * nw], want[lo : lo + 4 * nw]), cmd  # the list block
        assert np.array_equal(got[t0 : t0 + tl.nbytes], want[t0 : t0 + tl.nbytes]), cmd  # the table
        allowed = np.zeros(rtl.shape[0], bool)
        nb = -(-4 * (4 + list_capacity(kv) + cmd.inserts) // W)
        allowed[cmd.list_base : cmd.list_base + nb] = True
        if cmd.inserts:
            allowed[[cmd.tab_base + b for b in tl.dirty_beats(ex.touched)]] = True
        assert np.array_equal(rtl[~allowed], before[~allowed]), cmd  # nothing else written
        n1 = tl.unpack(rtl.reshape(-1)[cmd.tab_base * W :])[3]
        grew += len(ex.touched) >= 2 and n1 > n0  # several clusters touched, new ones among them
    assert grew == 2  # each stream's prefill
