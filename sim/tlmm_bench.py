"""cocotb testbench of the TLMM engine (runs inside the simulator; started by :mod:`sim.cosim`).

Shape of the bench: stream drivers for ``cmd``, ``act`` and ``wgt``, a stream monitor on ``res``, and a
scoreboard that compares the monitored results with the golden reference and the numba model computed by
the parent process, and the RTL cycle count with the model's. One cooperative loop clocks all of them:
each cycle, after the rising edge every driver drives, after ReadOnly every component samples the
handshakes that will happen at the next edge. The valid/ready patterns are the same periodic patterns the
model is given, indexed by the cycles since the command was accepted (docs/design.md, cycle definition).
"""

from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from hw.config import config_from_dict
from hw.isa import TlmmCommand
from hw.ternary import pack_fields


class StreamDriver:
    """Presents a list of payload beats on a valid/ready stream, gated by a periodic valid pattern.

    Handles are written only when their value changes: simulator writes dominate the cost of a cycle."""

    def __init__(self, bus, beats: list[int], pattern: np.ndarray, start: int = 1):
        self.valid, self.payload, self.ready = bus
        self.beats, self.pattern, self.pos, self.start = beats, pattern.tolist(), 0, start
        self._offered = False
        self._shown_valid = None
        self._shown_pos = -1

    def drive(self, rel: int) -> None:
        self._offered = (rel >= self.start and self.pos < len(self.beats)
                         and bool(self.pattern[rel % len(self.pattern)]))
        if self._offered != self._shown_valid:
            self.valid.value = int(self._offered)
            self._shown_valid = self._offered
        if self._offered and self._shown_pos != self.pos:
            self.payload.value = self.beats[self.pos]
            self._shown_pos = self.pos

    def sample(self, rel: int) -> None:
        if self._offered and int(self.ready.value):
            self.pos += 1


class StreamMonitor:
    """Takes beats from a valid/ready stream, gated by a periodic ready pattern; records the cycles."""

    def __init__(self, bus, pattern: np.ndarray, start: int = 1):
        self.valid, self.payload, self.ready = bus
        self.pattern, self.start = pattern.tolist(), start
        self.beats: list[int] = []
        self.cycles: list[int] = []
        self.last_rel = -1
        self._taking = False
        self._shown = None

    def drive(self, rel: int) -> None:
        self._taking = rel >= self.start and bool(self.pattern[rel % len(self.pattern)])
        if self._taking != self._shown:
            self.ready.value = int(self._taking)
            self._shown = self._taking

    def sample(self, rel: int) -> None:
        if self._taking and int(self.valid.value):
            self.beats.append(int(self.payload.value))
            self.cycles.append(rel)
            self.last_rel = rel


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


class Scoreboard:
    """Compares one case's RTL results with the reference and the model."""

    def __init__(self):
        self.rows: list[dict] = []

    def check(self, name: str, y_rtl: np.ndarray, y_ref: np.ndarray, y_model: np.ndarray, n: int,
              rtl_cycles: int, model_cycles: int, wall: float) -> None:
        pad_zero = bool((y_rtl[:, n:] == 0).all())
        self.rows.append({
            "name": name,
            "rtl_equals_reference": bool(np.array_equal(y_rtl[:, :n], y_ref)) and pad_zero,
            "rtl_equals_model": bool(np.array_equal(y_rtl[:, :n], y_model)),
            "model_equals_reference": bool(np.array_equal(y_model, y_ref)),
            "rtl_cycles": int(rtl_cycles),
            "model_cycles": int(model_cycles),
            "rtl_wall_s": wall,
        })


@cocotb.test()
async def tlmm_cases(dut):
    """Run every case of the case file through the RTL and score it."""
    case_file = os.environ["TRITIUM_CASES"]
    result_file = os.environ["TRITIUM_RESULTS"]
    with np.load(case_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    cfg = config_from_dict(meta["config"], "<cosim>").tlmm
    Q = cfg.columns

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for sig in (dut.cmd__valid, dut.act__valid, dut.wgt__valid, dut.res__ready):
        sig.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0

    board = Scoreboard()
    for i, case in enumerate(meta["cases"]):
        act = arrays[f"c{i}_act"]
        wgt = arrays[f"c{i}_wgt"]
        kc_n, m_n, nb_n = act.shape[0], act.shape[1], wgt.shape[1]
        act_beats = [pack_fields(act[kc, m], cfg.act_bits) for kc in range(kc_n) for m in range(m_n)]
        wgt_beats = [pack_fields(wgt[kc, nb], cfg.index_bits) for kc in range(kc_n) for nb in range(nb_n)]
        cmd = CommandDriver(dut, TlmmCommand(tokens=m_n, k_chunks=kc_n, n_blocks=nb_n))
        act_drv = StreamDriver((dut.act__valid, dut.act__payload, dut.act__ready), act_beats,
                               arrays[f"c{i}_act_pat"])
        wgt_drv = StreamDriver((dut.wgt__valid, dut.wgt__payload, dut.wgt__ready), wgt_beats,
                               arrays[f"c{i}_wgt_pat"])
        mon = StreamMonitor((dut.res__valid, dut.res__payload, dut.res__ready), arrays[f"c{i}_res_pat"])
        parts = (act_drv, wgt_drv, mon)
        n_res = nb_n * m_n
        rel = None       # cycles since the command was accepted
        t0 = time.perf_counter()
        guard = 64 + 8 * int(case["model_cycles"])
        while len(mon.beats) < n_res:
            await RisingEdge(dut.clk)
            if rel is None:
                cmd.drive()
            else:
                rel += 1
                if rel > guard:
                    raise AssertionError(f"case {case['name']}: RTL did not finish within {guard} cycles")
                if rel == 1:
                    dut.cmd__valid.value = 0
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
            y_rtl[m, nb * Q:(nb + 1) * Q] = _unpack(beat, Q, cfg.acc_bits)
        board.check(case["name"], y_rtl, arrays[f"c{i}_ref"], arrays[f"c{i}_model"], case["n"],
                    mon.last_rel, case["model_cycles"], wall)
        # the engine must be idle again the cycle after its last result
        await ReadOnly()
        assert int(dut.cmd__ready.value) == 1, f"case {case['name']}: engine not idle after its last result"

    with open(result_file, "w") as f:
        json.dump(board.rows, f, indent=1)
    bad = [r["name"] for r in board.rows
           if not (r["rtl_equals_reference"] and r["rtl_equals_model"] and r["rtl_cycles"] == r["model_cycles"])]
    assert not bad, f"mismatching cases: {', '.join(bad)}"
