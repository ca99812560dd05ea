"""The top level's KVR sequencer (hw/kv_sequencer.py: the KV engine with table slots on the memory port) in
amaranth.sim, no Verilator, against sim.kv_model.KvrExecutor (the executor the runtime uses): KVR commands of
two streams over several steps (an insert-only prefill, then steps with two queries, window tiles and one
insert) on a sim.memory.BusMemory write the executor's list block word for word (the rest of the last beat
zero), and each command's cycles from its start to the decoder's done are sim.kv_model.kvr_run_cycles of
the executor's engine cycles — the top model's definition, also under a slower memory."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import config_from_dict, load_config
from hw.isa import KvrCommand
from hw.kv_numerics import list_capacity
from hw.kv_sequencer import KvrSequencer
from sim.kv_model import KvrExecutor, insert_cycles, kvr_cost, kvr_run_cycles, query_cycles
from sim.memory import BusMemory


def _cfg(bus: int, dim: int, tables: str = "onchip", **memory):
    """default.yaml with retrieval: ``tables`` onchip (2 slots) or dram (one working table)."""
    d = load_config("configs/default.yaml").to_dict()
    d["kv"].update(
        dim=dim, lanes=8, max_clusters=8, max_cluster_size=64, slots=2 if tables == "onchip" else 1
    )
    d["memory"].update(bus_bytes=bus, **memory)
    d["system"].update(attention="resv", kv_tables=tables)
    return config_from_dict(d, f"kvr-{tables}-{bus}-{dim}")


def _program(acfg, rng):
    """(commands, image): per stream an insert-only prefill of 20 keys, then three steps with two queries, one
    insert and window tiles; rows clustered around 4 centres per stream."""
    kv, W = acfg.kv, acfg.memory.bus_bytes
    rb = -(-kv.dim // W)
    centres = rng.integers(-100, 100, (2, 4, kv.dim))
    steps = [(20, 0, 0, 0), (1, 2, 1, 1), (1, 2, 2, 1), (1, 2, 0, 0)]
    cmds, rows, addr = [], [], 4
    for inserts, queries, win_tiles, win_tile in steps:
        for table in (0, 1):
            vecs = np.clip(
                centres[table, rng.integers(0, 4, inserts + queries)]
                + rng.integers(-30, 31, (inserts + queries, kv.dim)),
                -128,
                127,
            ).astype(np.int8)
            vbase = addr
            block = np.zeros(((inserts + queries) * rb, W), np.uint8)
            for i, v in enumerate(vecs):
                block.reshape(-1)[i * rb * W : i * rb * W + kv.dim] = v.view(np.uint8)
            rows.append((vbase, block))
            addr += block.shape[0] + 1
            lbase = addr
            addr += -(-4 * (4 + list_capacity(kv) + inserts) // W) + 2
            # fields in KvrCommand's order: table, inserts, queries, win_tiles, win_tile, vec_base, list_base
            cmds.append(KvrCommand(table, inserts, queries, win_tiles, win_tile, vbase, lbase, page_tile=3))
    image = np.full((addr + 4, W), 0xA5, np.uint8)  # list blocks are written over a pattern
    for base, block in rows:
        image[base : base + block.shape[0]] = block
    return cmds, image


def _run_rtl(acfg, cmds, image):
    """Each command started on an idle sequencer; returns the cycles from start to the decoder's done (the first
    cycle after the start with ``active`` low)."""
    dut = KvrSequencer(acfg)
    memory = BusMemory(image, acfg.memory)
    runs = []

    async def testbench(ctx):
        t = 0

        async def cycle(start=False):
            nonlocal t
            ctx.set(dut.start, int(start))
            ctx.set(dut.rreq.ready, memory.request_ready(t))
            beat = memory.read_beat(t)
            ctx.set(dut.rdata.valid, beat is not None)
            if beat is not None:
                ctx.set(dut.rdata.payload, memory.beat_word(beat))
            ctx.set(dut.wr.ready, memory.write_ready(t))
            req = None
            if ctx.get(dut.rreq.valid) and memory.request_ready(t):
                req = (ctx.get(dut.rreq.payload.addr), ctx.get(dut.rreq.payload.len_minus_one) + 1)
            wr = None
            if ctx.get(dut.wr.valid) and memory.write_ready(t):
                wr = (ctx.get(dut.wr.payload.addr), ctx.get(dut.wr.payload.data))
            assert beat is None or ctx.get(dut.rdata.ready)
            memory.commit(t, beat is not None, req, wr)
            await ctx.tick()
            t += 1

        for cmd in cmds:
            for name in ("inserts", "queries", "win_tiles", "table", "win_tile", "vec_base", "list_base"):
                ctx.set(getattr(dut.fields, name), getattr(cmd, name))
            ctx.set(dut.fields.page_tile, cmd.page_tile)
            ctx.set(dut.fields.tab_base, cmd.tab_base)  # dram tables (tests/test_kvr_dram.py)
            c = t
            await cycle(start=True)
            while ctx.get(dut.active):
                await cycle()
                assert t - c < 100_000
            runs.append(t - c)
            for _ in range(5):  # idle cycles between commands (the top's fetch of the next one)
                await cycle()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return runs


@pytest.mark.parametrize(
    "bus,dim,memory",
    [
        (32, 32, {}),  # one beat per row, 8 words per write beat
        (16, 40, {"latency": 7, "beat_interval": 2}),  # 3-beat rows, 4-word write beats, a slower memory
    ],
)
def test_sequencer_writes_the_executors_list_blocks_in_the_model_cycles(bus, dim, memory):
    acfg = _cfg(bus, dim, **memory)
    kv, W = acfg.kv, bus
    cmds, image = _program(acfg, np.random.default_rng(dim))
    rtl_image = image.copy()
    runs = _run_rtl(acfg, cmds, rtl_image)
    ex = KvrExecutor(kv, W)
    ref = image.copy()
    selected = 0
    for cmd, run in zip(cmds, runs, strict=True):
        ex.run(cmd, ref)
        nw = 4 + list_capacity(kv) + cmd.inserts
        lo, hi = cmd.list_base * W, cmd.list_base * W + 4 * nw
        got, want = rtl_image.reshape(-1), ref.reshape(-1)
        assert np.array_equal(got[lo:hi], want[lo:hi]), cmd
        assert not got[hi : -(-hi // W) * W].any()  # the last beat's rest is written zero
        assert run == kvr_run_cycles(kv, acfg.memory, ex.engine_cycles), cmd
        words = want[lo:hi].view("<u4")
        selected += int(words[0]) - 1 - cmd.win_tiles if cmd.queries else 0
        if cmd.queries == 0:
            assert words[0] == 0
    assert selected > 0
    # nothing outside the list blocks was written
    blocks = np.zeros(rtl_image.shape[0], bool)
    for cmd in cmds:
        nb = -(-4 * (4 + list_capacity(kv) + cmd.inserts) // W)
        blocks[cmd.list_base : cmd.list_base + nb] = True
    assert np.array_equal(rtl_image[~blocks], image[~blocks])


def test_kvr_cost_onchip_is_the_top_definition():
    """The estimate's closed form (kvr_cost, onchip) is 4 (fetch and dispatch) + kvr_run_cycles of the engine's
    unstalled schedule, which the executor's stepped engine cycles equal."""
    acfg = _cfg(32, 32)
    kv, mem = acfg.kv, acfg.memory
    cmds, image = _program(acfg, np.random.default_rng(1))
    ex = KvrExecutor(kv, 32)
    checked = 0
    for cmd in cmds:
        n = ex.tables[cmd.table].n if cmd.table in ex.tables else 0
        ex.run(cmd, image)
        q = ex.engine_cycles[: cmd.queries]
        ks = [c - query_cycles(kv, n, 0) for c in q]  # the selected count of each query
        assert all(query_cycles(kv, n, k) == c for k, c in zip(ks, q, strict=True))
        ins = [insert_cycles(kv, min(kv.max_clusters, m)) for m in range(n, n + cmd.inserts)]
        if all(a == b for a, b in zip(ins, ex.engine_cycles[cmd.queries :], strict=True)):
            cost = kvr_cost(kv, mem, n, ks, cmd.inserts, 69, 3 + len(ks), tables_in_dram=False)
            assert cost["cycles"] == 4 + kvr_run_cycles(kv, mem, ex.engine_cycles)
            checked += 1
    assert checked > 0
