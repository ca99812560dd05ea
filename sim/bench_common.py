"""Shared pieces of the cocotb benches (run inside the simulator; started by :mod:`sim.cosim`).

* :func:`load_cases` / :func:`start`: the prologue — read the case file the parent process wrote
  (``TRITIUM_CASES``), start the clock, hold reset for three cycles with the bench-driven handshakes low.
* :class:`Results`: the epilogue — collects one row per case and rewrites ``TRITIUM_RESULTS`` after every
  case, so a bench that dies mid-way (an RTL hang, a failed assertion) still leaves the rows it finished:
  the parent reports the missing cases as mismatches, not as a tool failure.
* :class:`StreamDriver`, :class:`StreamMonitor`: valid/ready stream driver and monitor gated by periodic
  patterns; :class:`MemoryPort`: a :class:`sim.memory.BusMemory` on an engine's rreq/rdata/wr streams.

All of them write simulator handles only when the value changes: simulator writes dominate a cycle's cost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from sim.memory import BusMemory

__all__ = ["load_cases", "start", "next_cycle", "Results", "StreamDriver", "StreamMonitor", "MemoryPort"]


def load_cases() -> tuple[dict[str, np.ndarray], dict]:
    """The case arrays and the JSON metadata (``meta``) of the case file named by ``TRITIUM_CASES``."""
    with np.load(os.environ["TRITIUM_CASES"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(str(arrays.pop("meta")))


async def start(dut, idle: Iterable) -> None:
    """Start a 100 MHz clock on ``dut.clk`` and reset for three cycles with the ``idle`` handles at 0."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for sig in idle:
        sig.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


def next_cycle(rel: int | None, guard: int, case: str, cmd_valid) -> int | None:
    """The cycle count since the command handshake, one rising edge later (None until the handshake):
    fail the case past ``guard`` cycles; drop the command's valid (``cmd_valid``) the cycle after it was
    taken."""
    if rel is None:
        return None
    rel += 1
    if rel > guard:
        raise AssertionError(f"case {case}: RTL did not finish within {guard} cycles")
    if rel == 1:
        cmd_valid.value = 0
    return rel


class Results:
    """The result rows of a bench; every :meth:`add` rewrites the result file (a JSON list of rows)."""

    def __init__(self, path: str | None = None):
        self.path = path or os.environ["TRITIUM_RESULTS"]
        self.rows: list[dict] = []
        self._write()

    def _write(self) -> None:
        with open(self.path, "w") as f:
            json.dump(self.rows, f, indent=1)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._write()

    def check(self, ok: Callable[[dict], bool]) -> None:
        """Fail the cocotb test if a row is not ``ok`` (the rows are already written)."""
        bad = [r["name"] for r in self.rows if not ok(r)]
        assert not bad, f"mismatching cases: {', '.join(bad)}"


class StreamDriver:
    """Presents a list of payload beats on a valid/ready stream, gated by a periodic valid pattern."""

    def __init__(self, bus, beats: list[int], pattern: np.ndarray, start: int = 1):
        self.valid, self.payload, self.ready = bus
        self.beats, self.pattern, self.pos, self.start = beats, pattern.tolist(), 0, start
        self._offered = False
        self._shown_valid = None
        self._shown_pos = -1

    def drive(self, rel: int) -> None:
        self._offered = (
            rel >= self.start and self.pos < len(self.beats) and bool(self.pattern[rel % len(self.pattern)])
        )
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


class MemoryPort:
    """Connects a BusMemory to the engine's rreq/rdata/wr streams."""

    def __init__(self, dut, memory: BusMemory, addr_bits: int):
        self.dut, self.mem = dut, memory
        self.mask = (1 << addr_bits) - 1
        self.addr_bits = addr_bits
        self._req_ready = self._wr_ready = False
        self._beat = None
        self._shown = {}

    def _set(self, handle, name: str, value: int) -> None:
        if self._shown.get(name) != value:
            handle.value = value
            self._shown[name] = value

    def drive(self, t: int) -> None:
        self._req_ready = self.mem.request_ready(t)
        self._beat = self.mem.read_beat(t)
        self._wr_ready = self.mem.write_ready(t)
        self._set(self.dut.rreq__ready, "rreq_ready", int(self._req_ready))
        self._set(self.dut.wr__ready, "wr_ready", int(self._wr_ready))
        self._set(self.dut.rdata__valid, "rdata_valid", int(self._beat is not None))
        if self._beat is not None:
            self._set(self.dut.rdata__payload, "rdata_payload", self.mem.beat_word(self._beat))

    def sample(self, t: int) -> None:
        delivered = self._beat is not None
        if delivered:
            assert int(self.dut.rdata__ready.value) == 1, "the engine must always accept read data"
        request = write = None
        if self._req_ready and int(self.dut.rreq__valid.value):
            p = int(self.dut.rreq__payload.value)
            request = (p & self.mask, (p >> self.addr_bits) + 1)
        if self._wr_ready and int(self.dut.wr__valid.value):
            p = int(self.dut.wr__payload.value)
            write = (p & self.mask, p >> self.addr_bits)
        self.mem.commit(t, delivered, request, write)
