"""cocotb testbench of the TLMM engine (runs inside the simulator; started by :mod:`sim.cosim`).

Shape of the bench: stream drivers (sim/bench_common.py) for ``cmd``, ``act`` and ``wgt``, a stream monitor on ``res``, and a
scoring that compares the monitored results with the golden reference and the numba model computed by
the parent process, and the RTL cycle count with the model's. One cooperative loop clocks all of them:
each cycle, after the rising edge every driver drives, after ReadOnly every component samples the
handshakes that will happen at the next edge. The valid/ready patterns are the same periodic patterns the
model is given, indexed by the cycles since the command was accepted (docs/design.md, cycle definition).
"""

from __future__ import annotations

import time

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from hw.config import config_from_dict
from hw.isa import TlmmCommand
from hw.ternary import pack_fields
from sim.bench_common import Results, StreamDriver, StreamMonitor, load_cases, next_cycle, start


class CommandDriver:
    """Presents one command (hw.isa encoding) and records the cycle it is accepted in."""

    def __init__(self, dut, command: TlmmCommand):
        self.dut = dut
        self.word = command.engine_payload()
        self.accepted = False

    def drive(self) -> None:
        self.dut.cmd__valid.value = int(not self.accepted)
        self.dut.cmd__payload.value = self.word

    def sample(self) -> bool:
        if not self.accepted and int(self.dut.cmd__ready.value):
            self.accepted = True
            return True
        return False


def _unpack(word: int, count: int, width: int) -> list[int]:
    mask, sign = (1 << width) - 1, 1 << (width - 1)
    out = []
    for i in range(count):
        v = (word >> (i * width)) & mask
        out.append(v - (1 << width) if v & sign else v)
    return out


def _score(
    name: str,
    y_rtl: np.ndarray,
    y_ref: np.ndarray,
    y_model: np.ndarray,
    n: int,
    rtl_cycles: int,
    model_cycles: int,
    wall: float,
) -> dict:
    """One case's result row: the RTL results against the reference and the model."""
    pad_zero = bool((y_rtl[:, n:] == 0).all())
    return {
        "name": name,
        "rtl_equals_reference": bool(np.array_equal(y_rtl[:, :n], y_ref)) and pad_zero,
        "rtl_equals_model": bool(np.array_equal(y_rtl[:, :n], y_model)),
        "model_equals_reference": bool(np.array_equal(y_model, y_ref)),
        "rtl_cycles": int(rtl_cycles),
        "model_cycles": int(model_cycles),
        "rtl_wall_s": wall,
    }


@cocotb.test()
async def tlmm_cases(dut):
    """Run every case of the case file through the RTL and score it."""
    arrays, meta = load_cases()
    cfg = config_from_dict(meta["config"], "<cosim>").tlmm
    Q = cfg.columns
    results = Results()  # from here on a stopped bench is a mismatch, not a tool failure
    await start(dut, (dut.cmd__valid, dut.act__valid, dut.wgt__valid, dut.res__ready))

    for i, case in enumerate(meta["cases"]):
        act = arrays[f"c{i}_act"]
        wgt = arrays[f"c{i}_wgt"]
        kc_n, m_n, nb_n = act.shape[0], act.shape[1], wgt.shape[1]
        act_beats = [pack_fields(act[kc, m], cfg.act_bits) for kc in range(kc_n) for m in range(m_n)]
        wgt_beats = [pack_fields(wgt[kc, nb], cfg.index_bits) for kc in range(kc_n) for nb in range(nb_n)]
        cmd = CommandDriver(dut, TlmmCommand(tokens=m_n, k_chunks=kc_n, n_blocks=nb_n))
        act_drv = StreamDriver(
            (dut.act__valid, dut.act__payload, dut.act__ready), act_beats, arrays[f"c{i}_act_pat"]
        )
        wgt_drv = StreamDriver(
            (dut.wgt__valid, dut.wgt__payload, dut.wgt__ready), wgt_beats, arrays[f"c{i}_wgt_pat"]
        )
        mon = StreamMonitor((dut.res__valid, dut.res__payload, dut.res__ready), arrays[f"c{i}_res_pat"])
        parts = (act_drv, wgt_drv, mon)
        n_res = nb_n * m_n
        rel = None  # cycles since the command was accepted
        t0 = time.perf_counter()
        guard = 64 + 8 * int(case["model_cycles"])
        while len(mon.beats) < n_res:
            await RisingEdge(dut.clk)
            if rel is None:
                cmd.drive()
            rel = next_cycle(rel, guard, case["name"], dut.cmd__valid)
            for p in parts:
                p.drive(rel if rel is not None else 0)
            await ReadOnly()
            if rel is None:
                if cmd.sample():
                    rel = 0
                continue
            for p in parts:
                p.sample(rel)
        wall = time.perf_counter() - t0
        await RisingEdge(dut.clk)
        dut.act__valid.value = 0
        dut.wgt__valid.value = 0
        dut.res__ready.value = 0
        y_rtl = np.zeros((m_n, nb_n * Q), dtype=np.int64)
        for j, beat in enumerate(mon.beats):
            nb, m = divmod(j, m_n)
            y_rtl[m, nb * Q : (nb + 1) * Q] = _unpack(beat, Q, cfg.acc_bits)
        results.add(
            _score(
                case["name"],
                y_rtl,
                arrays[f"c{i}_ref"],
                arrays[f"c{i}_model"],
                case["n"],
                mon.last_rel,
                case["model_cycles"],
                wall,
            )
        )
        # the engine must be idle again the cycle after its last result
        await ReadOnly()
        assert int(dut.cmd__ready.value) == 1, f"case {case['name']}: engine not idle after its last result"

    results.check(
        lambda r: r["rtl_equals_reference"] and r["rtl_equals_model"] and r["rtl_cycles"] == r["model_cycles"]
    )
