"""The table load of ``system.kv_tables: dram`` keeps up to ``memory.outstanding`` read requests in flight,
limited by its FIFO's room (hw/kv_sequencer.py; sim.kv_model.table_dma_cycles): the amaranth.sim sequencer
against KvrExecutor (tests/test_kvr_dram.py's check: list blocks, table bytes, cycles = kvr_run_cycles) on
memories where the FIFO credit binds (short bursts, several in flight, beats faster than the table takes them)
and where only one request may be in flight."""

import pytest
import test_kvr_dram
from test_kvr_dram import _cfg

from sim.kv_model import table_dma_cycles


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
