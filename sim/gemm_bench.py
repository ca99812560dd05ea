"""cocotb testbench of the temporal GEMM engine (runs inside the simulator; started by :mod:`sim.cosim`).

The bench loads each case's memory image into a :class:`sim.memory.BusMemory` (served by
:class:`sim.bench_common.MemoryPort`), presents the command, and
serves the engine's read requests and write beats under the case's memory timing. One loop clocks the
bench: after each rising edge the memory drives ready/valid/data for the cycle, after ReadOnly it samples
the handshakes that happen at the next edge. Cycle 0 is the command handshake (docs/design.md).
The scoreboard compares the output read back from memory with the reference and the numba model.
"""

from __future__ import annotations

import time

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from hw.config import config_from_dict
from hw.gemm_layout import GemmShape, unpack_c
from hw.isa import GemmCommand
from sim.bench_common import MemoryPort, Results, load_cases, next_cycle, start
from sim.memory import BusMemory


@cocotb.test()
async def gemm_cases(dut):
    """Run every case of the case file through the RTL and score it."""
    arrays, meta = load_cases()
    acfg = config_from_dict(meta["config"], "<cosim>")
    geo = acfg.gemm_geometry
    results = Results()  # from here on a stopped bench is a mismatch, not a tool failure
    await start(dut, (dut.cmd__valid, dut.rreq__ready, dut.rdata__valid, dut.wr__ready))

    for i, case in enumerate(meta["cases"]):
        mcfg = config_from_dict(
            {**meta["config"], "memory": {**meta["config"]["memory"], **case["timing"]}}, "<case>"
        ).memory
        memory = BusMemory(arrays[f"c{i}_image"].copy(), mcfg)
        port = MemoryPort(dut, memory, mcfg.addr_bits)
        cmd = GemmCommand(**case["command"])
        n_writes = cmd.m_tiles * cmd.n_tiles * geo.out_beats(cmd.requant)
        dut.cmd__payload.value = cmd.engine_payload()
        rel = None
        last_write = -1
        t0 = time.perf_counter()
        guard = 64 + 4 * int(case["model_cycles"])
        while memory.write_beats < n_writes:
            await RisingEdge(dut.clk)
            if rel is None:
                dut.cmd__valid.value = 1
            rel = next_cycle(rel, guard, case["name"], dut.cmd__valid)
            port.drive(rel if rel is not None else 0)
            await ReadOnly()
            if rel is None:
                if int(dut.cmd__ready.value):
                    rel = 0
                port.sample(0)
                continue
            before = memory.write_beats
            port.sample(rel)
            if memory.write_beats != before:
                last_write = rel
        wall = time.perf_counter() - t0
        await RisingEdge(dut.clk)
        dut.rreq__ready.value = 0
        dut.rdata__valid.value = 0
        dut.wr__ready.value = 0
        await ReadOnly()
        idle = int(dut.cmd__ready.value) == 1
        shape = GemmShape(*case["shape"])
        out = memory.image[cmd.c_base : cmd.c_base + n_writes]
        try:
            y = unpack_c(out, geo, shape, cmd.requant)
            pad_ok = True
        except ValueError:
            y, pad_ok = None, False
        ref, model = arrays[f"c{i}_ref"], arrays[f"c{i}_model"]
        results.add(
            {
                "name": case["name"],
                "rtl_equals_reference": pad_ok and bool(np.array_equal(y, ref)),
                "rtl_equals_model": pad_ok and bool(np.array_equal(y, model)),
                "model_equals_reference": bool(np.array_equal(model, ref)),
                "rtl_cycles": last_write,
                "model_cycles": int(case["model_cycles"]),
                "rtl_read_beats": memory.read_beats,
                "model_read_beats": int(case["model_read_beats"]),
                "idle_after": idle,
                "rtl_wall_s": wall,
            }
        )
        # reset the handshake state the port remembers (handles were forced low above)
        await RisingEdge(dut.clk)

    results.check(
        lambda r: (
            r["rtl_equals_reference"]
            and r["rtl_equals_model"]
            and r["rtl_cycles"] == r["model_cycles"]
            and r["idle_after"]
        )
    )
