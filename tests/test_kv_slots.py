"""On-chip table slots of the KV engine (``kv.slots``, ``system.kv_tables: onchip``; docs/design.md, "The RTL
top") in amaranth.sim, no Verilator: commands interleaved over three slots give, per command, the output beats
and cycles of the stepped model run on that slot's own state (sim.kv_model.TableState, what KvrExecutor keeps
per stream), and the ``count`` port shows each SEL's cluster count and each ASSIGN's count after the insert."""

import numpy as np
from amaranth.sim import Simulator

from hw.config import load_config
from hw.kv import KvRetrieval
from hw.kv_numerics import KIND_ASSIGN, KIND_END, KIND_FULL, KIND_SEL, OP_INSERT, OP_QUERY, OP_RESET
from sim.kv_model import TableState, run_commands

SMALL = load_config("configs/kv-small.yaml").kv  # dim 12, 4 lanes, an 8x8 table that overflows, 4 buckets


def _commands(kv, n: int, seed: int):
    """(slot, op, vector) commands over 3 slots: clustered keys, queries, one RESET of slot 1 midway."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-128, 128, (5, kv.dim))
    cmds = []
    for i in range(n):
        slot = int(rng.integers(0, 3))
        if i == n // 2:
            cmds.append((1, OP_RESET, None))
        v = np.clip(base[int(rng.integers(0, 5))] + rng.integers(-25, 26, kv.dim), -128, 127)
        cmds.append((slot, OP_QUERY if rng.random() < 0.3 else OP_INSERT, v.astype(np.int64)))
    return cmds


def test_slots_keep_separate_tables_cycle_exact():
    kv = SMALL
    cmds = _commands(kv, 60, 5)
    dut = KvRetrieval(kv, slots=3, top=True)
    got = []  # per command: [(kind, id, count)], cycles from the accept to the last output beat (inclusive)

    async def testbench(ctx):
        ctx.set(dut.out.ready, 1)
        for slot, op, v in cmds:
            ctx.set(dut.slot, slot)
            ctx.set(dut.cmd.payload, op)
            ctx.set(dut.cmd.valid, 1)
            assert ctx.get(dut.cmd.ready)  # IDLE after the previous command's last output beat
            await ctx.tick()  # the accept cycle (the model's cycle 0)
            ctx.set(dut.cmd.valid, 0)
            if op == OP_RESET:
                got.append(None)
                continue
            cycles, beats = 1, []
            for b in range(kv.beats):
                ctx.set(dut.vec.payload, [int(x) for x in v[b * kv.lanes : (b + 1) * kv.lanes]])
                ctx.set(dut.vec.valid, 1)
                await ctx.tick()
                cycles += 1
            ctx.set(dut.vec.valid, 0)
            while True:
                valid, kind, ident, count = (
                    ctx.get(dut.out.valid),
                    ctx.get(dut.out.payload.kind),
                    ctx.get(dut.out.payload.id),
                    ctx.get(dut.count),
                )
                await ctx.tick()
                cycles += 1
                if valid:
                    beats.append((kind, ident, count))
                    if kind in (KIND_ASSIGN, KIND_FULL, KIND_END):
                        break
            got.append((beats, cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()

    tables = [TableState(kv) for _ in range(3)]
    sels = 0
    for (slot, op, v), g in zip(cmds, got, strict=True):
        t = tables[slot]
        if op == OP_RESET:
            run_commands(kv, [("reset",)], table=t)  # empties the slot's counts, not its RAM (as the RTL)
            assert t.n == 0
            continue
        run = run_commands(kv, [("insert" if op == OP_INSERT else "query", v)], table=t)
        beats, cycles = g
        assert cycles == run.cycles, (slot, op)
        assert [(k, i) for k, i, _ in beats] == list(
            zip(run.out_kind.tolist(), run.out_id.tolist(), strict=True)
        )
        for kind, ident, count in beats:
            if kind in (KIND_SEL, KIND_ASSIGN):
                assert count == t.cnts[ident]  # queries do not change counts; an ASSIGN's is after it
                sels += kind == KIND_SEL
    assert sels > 0 and len({s for s, _, _ in cmds}) == 3
    assert any(t.n != tables[0].n for t in tables[1:])  # the slots hold different tables
