"""cocotb testbench of the KV retrieval engine (runs inside the simulator; started by :mod:`sim.cosim`).

Each case is a command list that starts with RESET. A command driver offers the commands back to back
(valid whenever one is left), a stream driver offers the key/query beats on ``vec`` gated by the case's
periodic valid pattern, and a monitor takes ``out`` beats gated by its ready pattern — the conventions of
:mod:`sim.kv_model` (cycle 0 = the first cycle the bench drives). The scoreboard compares every output beat
(kind, id, new) and the cycle it left in with the model's, and the decoded results with the reference's.
"""

from __future__ import annotations

import time

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from hw.config import config_from_dict
from hw.ternary import pack_fields
from sim.bench_common import Results, StreamDriver, StreamMonitor, load_cases, start


@cocotb.test()
async def kv_cases(dut):
    """Run every case of the case file through the RTL and score it."""
    arrays, meta = load_cases()
    kv = config_from_dict(meta["config"], "<cosim>").kv
    id_w = kv.max_clusters.bit_length()
    results = Results()  # from here on a stopped bench is a mismatch, not a tool failure
    await start(dut, (dut.cmd__valid, dut.vec__valid, dut.out__ready))

    for i, case in enumerate(meta["cases"]):
        ops = arrays[f"c{i}_ops"].tolist()
        vec = arrays[f"c{i}_vec"]
        terminal_needed = sum(1 for o in ops if o in (1, 2))
        cmd = StreamDriver(
            (dut.cmd__valid, dut.cmd__payload, dut.cmd__ready), ops, np.ones(1, np.int8), start=0
        )
        vdrv = StreamDriver(
            (dut.vec__valid, dut.vec__payload, dut.vec__ready),
            [pack_fields(v, 8) for v in vec],
            arrays[f"c{i}_vec_pat"],
            start=0,
        )
        mon = StreamMonitor(
            (dut.out__valid, dut.out__payload, dut.out__ready), arrays[f"c{i}_out_pat"], start=0
        )
        parts = (cmd, vdrv, mon)
        guard = 64 + 4 * int(case["model_cycles"])
        terminal = 0
        t0 = time.perf_counter()
        rel = 0
        while cmd.pos < len(ops) or terminal < terminal_needed:
            await RisingEdge(dut.clk)
            if rel > guard:
                raise AssertionError(f"case {case['name']}: RTL did not finish within {guard} cycles")
            for p in parts:
                p.drive(rel)
            await ReadOnly()
            n_before = len(mon.beats)
            for p in parts:
                p.sample(rel)
            if len(mon.beats) > n_before and (mon.beats[-1] & 3) != 1:  # ASSIGN, END or FULL
                terminal += 1
            rel += 1
        wall = time.perf_counter() - t0
        await RisingEdge(dut.clk)
        for sig in (dut.cmd__valid, dut.vec__valid, dut.out__ready):
            sig.value = 0
        beats = np.array(
            [[b & 3, (b >> 2) & ((1 << id_w) - 1), (b >> (2 + id_w)) & 1] for b in mon.beats], dtype=np.int64
        ).reshape(-1, 3)
        model = arrays[f"c{i}_model"]
        rtl_cycles = mon.last_rel + 1
        results.add(
            {
                "name": case["name"],
                "rtl_equals_model": bool(beats.shape == model.shape and np.array_equal(beats, model)),
                "beat_cycles_equal": mon.cycles == arrays[f"c{i}_model_cyc"].tolist(),
                "rtl_cycles": int(rtl_cycles),
                "model_cycles": int(case["model_cycles"]),
                "rtl_wall_s": wall,
            }
        )
        await ReadOnly()
        assert int(dut.cmd__ready.value) == 1, f"case {case['name']}: engine not idle after its last output"

    results.check(
        lambda r: r["rtl_equals_model"] and r["beat_cycles_equal"] and r["rtl_cycles"] == r["model_cycles"]
    )
