"""KVR with ``system.kv_tables: dram`` (docs/design.md, "The RTL top"): the top level's sequencer
(hw/kv_sequencer.py) loads the stream's table from ``tab_base`` (hw.kv_numerics.TableLayout) into the engine's
one working table, runs the command and writes the table back, in amaranth.sim against
sim.kv_model.KvrExecutor with the same layout: list blocks word for word, the tables' bytes in memory equal after
every command, nothing else written, and each command's cycles sim.kv_model.kvr_run_cycles with the table DMA —
the definition the top model and kvr_cost use."""

import dataclasses

import numpy as np
import pytest
from test_kvr_sequencer import _cfg as _seq_cfg
from test_kvr_sequencer import _program, _run_rtl

from hw.kv_numerics import TableLayout, list_capacity
from sim.kv_model import KvrExecutor, expected_touched, kvr_cost, kvr_run_cycles, table_dma_cycles


def _cfg(bus: int, dim: int, **memory):
    return _seq_cfg(bus, dim, "dram", **memory)


def _with_tables(acfg, cmds, image):
    """The image with two zeroed (empty) table regions after it; the commands with their ``tab_base``."""
    tl = TableLayout(acfg.kv, acfg.memory.bus_bytes)
    base = image.shape[0]
    image = np.concatenate([image, np.zeros((2 * tl.beats + 2, image.shape[1]), np.uint8)])
    cmds = [dataclasses.replace(c, tab_base=base + c.table * (tl.beats + 1)) for c in cmds]
    return cmds, image, tl


@pytest.mark.parametrize(
    "bus,dim,memory",
    [
        (32, 32, {"max_burst": 4}),  # 2 entries and 2 key-sum beats per bus beat; 7-beat table in 2 bursts
        (16, 40, {"latency": 7, "beat_interval": 2}),  # 1 entry and 1 key-sum beat per bus beat, slow memory
    ],
)
def test_dram_tables_match_the_executor_in_the_model_cycles(bus, dim, memory):
    acfg = _cfg(bus, dim, **memory)
    kv, W = acfg.kv, bus
    cmds, image = _program(acfg, np.random.default_rng(dim))
    cmds, image, tl = _with_tables(acfg, cmds, image)
    rtl_image = image.copy()
    runs = _run_rtl(acfg, cmds, rtl_image)
    ex = KvrExecutor(kv, W, tables_in_dram=True)
    ref = image.copy()
    assert not ex.tables  # dram: the state is the image's
    got, want = rtl_image.reshape(-1), ref.reshape(-1)
    for i, (cmd, run) in enumerate(zip(cmds, runs, strict=True)):
        ex.run(cmd, ref)
        # the RTL image is the final one: compare the table after the stream's last command only
        nw = 4 + list_capacity(kv) + cmd.inserts
        lo, hi = cmd.list_base * W, cmd.list_base * W + 4 * nw
        assert np.array_equal(got[lo:hi], want[lo:hi]), cmd
        assert run == kvr_run_cycles(kv, acfg.memory, ex.engine_cycles, True, cmd.inserts, ex.touched), (
            i,
            cmd,
        )
    for table in (0, 1):
        base = cmds[table].tab_base * W
        t = want[base : base + tl.nbytes]
        assert np.array_equal(got[base : base + tl.nbytes], t), table
        sigs, cnts, sums, n, ntok = tl.unpack(t)
        assert n > 1 and ntok == 23 and cnts.sum() == ntok  # 20 + 3 keys, all in the table
    blocks = np.zeros(rtl_image.shape[0], bool)  # nothing outside the list blocks and the tables was written
    for cmd in cmds:
        nb = -(-4 * (4 + list_capacity(kv) + cmd.inserts) // W)
        blocks[cmd.list_base : cmd.list_base + nb] = True
        blocks[cmd.tab_base : cmd.tab_base + tl.beats] = True
    assert np.array_equal(rtl_image[~blocks], image[~blocks])


def test_layout_round_trip_and_empty_table():
    acfg = _cfg(32, 40)
    kv = acfg.kv
    tl = TableLayout(kv, 32)
    assert (tl.beats, tl.sig_beats, tl.sum_beats, tl.cluster_beats) == (
        1 + 4 + 24,
        4,
        24,
        3,
    )  # 80 B in 3 beats
    assert tl.unpack(np.zeros(tl.nbytes, np.uint8))[3:] == (0, 0)  # zeroed = empty
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 1 << kv.hyperplanes, kv.max_clusters)
    cnts = rng.integers(0, 65, kv.max_clusters)
    sums = rng.integers(-(1 << 14), 1 << 14, (kv.max_clusters, kv.dim))
    raw = tl.pack(sigs, cnts, sums, 5, 77)
    s2, c2, u2, n, ntok = tl.unpack(raw)
    assert (n, ntok) == (5, 77) and (s2 == sigs).all() and (c2 == cnts).all() and (u2 == sums).all()
    bad = raw.copy()
    bad[:4] = 255
    with pytest.raises(ValueError, match="table header"):
        tl.unpack(bad)


def test_kvr_cost_dram_is_the_top_definition():
    """kvr_cost with tables in DRAM = its onchip cycles + the table's load and (with inserts) the write-back of
    the clusters it expects the inserts to touch (one per insert, each in its own entry beat); it reads the
    whole table and writes those beats."""
    acfg = _cfg(32, 32)
    kv, mem = acfg.kv, acfg.memory
    tab = TableLayout(kv, 32)
    for inserts, touched in ((0, []), (1, [0]), (3, [0, 2, 4])):  # 2 entries per beat
        assert expected_touched(kv, mem, inserts) == touched
        load, wb = table_dma_cycles(kv, mem, touched)
        d = kvr_cost(kv, mem, 5, [2, 3], inserts, 0, 7, tables_in_dram=True)
        o = kvr_cost(kv, mem, 5, [2, 3], inserts, 0, 7, tables_in_dram=False)
        assert d["cycles"] == o["cycles"] + load + (wb if inserts else 0)
        assert d["read_bytes"] == o["read_bytes"] + tab.nbytes
        written = (1 + len(touched) + len(touched) * tab.cluster_beats) if inserts else 0
        assert d["write_bytes"] == o["write_bytes"] + 32 * written
    assert table_dma_cycles(kv, mem, [0, 1])[1] < table_dma_cycles(kv, mem, [0, 2])[1]  # one entry beat


def test_dirty_beats_are_ascending_and_each_once():
    tl = TableLayout(_cfg(32, 40).kv, 32)  # 2 entries per entry beat, 3 key-sum beats per cluster
    assert tl.dirty_beats([]) == [0]
    assert tl.dirty_beats([3, 0, 1]) == [0, 1, 2, 5, 6, 7, 8, 9, 10, 14, 15, 16]
    with pytest.raises(ValueError, match="touched"):
        kvr_run_cycles(tl.kv, _cfg(32, 40).memory, [10], True, 1)
