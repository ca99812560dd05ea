"""The external memory's timing rules (ARCHITECTURE.md contract 4), written once as numba functions over a
small int64 state array. The numba engine models (sim.gemm_model, sim.top_model) step it inside their
kernels, and the testbenches' :class:`sim.memory.BusMemory` calls the same compiled functions from Python,
so the benches that drive the RTL and the models cannot disagree on the rules.

Rules, in accelerator cycles (cycle 0 = the command accept; every command starts with an idle memory):

- **Read requests** (beat address, length in beats) are accepted in cycle t iff fewer than ``outstanding``
  requests are in flight at the start of t. A request is in flight from its accept until its last beat has
  been delivered.
- **Read data**: the oldest request in flight delivers its next beat in cycle t iff t ≥ accept + ``latency``
  and t ≥ (previous beat) + ``beat_interval``; beats come in request order. The reader always takes it.
- **Writes**: a write beat is accepted in cycle t iff t ≥ (previous accepted write) + ``beat_interval``.
- ``max_burst`` is the engines' rule (they split loads into bursts of at most that many beats); the memory
  accepts any length.

A cycle is used in two halves: first the queries (``mem_request_ready``, ``mem_read_valid``,
``mem_write_ready``: what the memory offers in cycle t, from the state at the start of t), then the commits
of the handshakes that happened, in this order: ``mem_deliver`` (the beat offered), ``mem_request``,
``mem_write``.

numba's cache does not notice edits to this module in the kernels that call it (numba issue #1833): after
changing it, clear the caches (``make clean`` removes the ``__pycache__`` folders).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from hw.config import MemoryConfig

__all__ = ["MemTiming", "mem_timing", "mem_new", "mem_request_ready", "mem_read_valid", "mem_read_addr",
           "mem_deliver", "mem_request", "mem_write_ready", "mem_write", "MEM_READ_REQUESTS", "MEM_READ_BEATS",
           "MEM_WRITE_BEATS", "MEM_IN_FLIGHT"]

NEVER = -(1 << 40)


class MemTiming(NamedTuple):
    """The memory section of the config as the kernels take it (built only by :func:`mem_timing`)."""

    latency: int
    outstanding: int
    beat_interval: int
    max_burst: int


def mem_timing(mem: MemoryConfig) -> MemTiming:
    """The kernels' view of ``memory`` (hw.config.MemoryConfig)."""
    return MemTiming(int(mem.latency), int(mem.outstanding), int(mem.beat_interval), int(mem.max_burst))


# State array: a header, then a ring of ``outstanding`` request slots of 4 words.
_HEAD = 0              # ring slot of the oldest request in flight
MEM_IN_FLIGHT = 1      # requests in flight
_LAST_READ = 2         # cycle of the last delivered read beat
_LAST_WRITE = 3        # cycle of the last accepted write beat
MEM_READ_REQUESTS = 4  # counters since mem_new
MEM_READ_BEATS = 5
MEM_WRITE_BEATS = 6
_LATENCY = 7           # timing (constant)
_OUTSTANDING = 8
_INTERVAL = 9
_SLOTS = 10
_ADDR, _LEN, _ACCEPT, _DONE = range(4)   # slot words: beat address, length, accept cycle, beats delivered


@njit(cache=True)
def mem_new(tm: MemTiming) -> np.ndarray:
    """An idle memory with timing ``tm``."""
    ms = np.zeros(_SLOTS + 4 * tm.outstanding, np.int64)
    ms[_LAST_READ] = NEVER
    ms[_LAST_WRITE] = NEVER
    ms[_LATENCY] = tm.latency
    ms[_OUTSTANDING] = tm.outstanding
    ms[_INTERVAL] = tm.beat_interval
    return ms


@njit(cache=True, boundscheck=False)
def mem_request_ready(ms: np.ndarray) -> bool:
    """A read request would be accepted in this cycle."""
    return ms[MEM_IN_FLIGHT] < ms[_OUTSTANDING]


@njit(cache=True, boundscheck=False)
def mem_read_valid(ms: np.ndarray, t: int) -> bool:
    """A read beat is delivered in cycle t."""
    h = _SLOTS + 4 * ms[_HEAD]
    return ms[MEM_IN_FLIGHT] > 0 and t >= ms[h + _ACCEPT] + ms[_LATENCY] and t >= ms[_LAST_READ] + ms[_INTERVAL]


@njit(cache=True, boundscheck=False)
def mem_read_addr(ms: np.ndarray) -> int:
    """Beat address of the next read beat (valid while a request is in flight)."""
    h = _SLOTS + 4 * ms[_HEAD]
    return ms[h + _ADDR] + ms[h + _DONE]


@njit(cache=True, boundscheck=False)
def mem_deliver(ms: np.ndarray, t: int) -> int:
    """Commit the read beat delivered in cycle t (``mem_read_valid`` was true); returns its beat address."""
    h = _SLOTS + 4 * ms[_HEAD]
    addr = ms[h + _ADDR] + ms[h + _DONE]
    ms[h + _DONE] += 1
    ms[_LAST_READ] = t
    ms[MEM_READ_BEATS] += 1
    if ms[h + _DONE] == ms[h + _LEN]:
        ms[_HEAD] = (ms[_HEAD] + 1) % ms[_OUTSTANDING]
        ms[MEM_IN_FLIGHT] -= 1
    return addr


@njit(cache=True, boundscheck=False)
def mem_request(ms: np.ndarray, t: int, addr: int, length: int) -> None:
    """Commit the read request accepted in cycle t (``mem_request_ready`` was true)."""
    s = _SLOTS + 4 * ((ms[_HEAD] + ms[MEM_IN_FLIGHT]) % ms[_OUTSTANDING])
    ms[s + _ADDR] = addr
    ms[s + _LEN] = length
    ms[s + _ACCEPT] = t
    ms[s + _DONE] = 0
    ms[MEM_IN_FLIGHT] += 1
    ms[MEM_READ_REQUESTS] += 1


@njit(cache=True, boundscheck=False)
def mem_write_ready(ms: np.ndarray, t: int) -> bool:
    """A write beat would be accepted in cycle t."""
    return t >= ms[_LAST_WRITE] + ms[_INTERVAL]


@njit(cache=True, boundscheck=False)
def mem_write(ms: np.ndarray, t: int) -> None:
    """Commit the write beat accepted in cycle t (``mem_write_ready`` was true)."""
    ms[_LAST_WRITE] = t
    ms[MEM_WRITE_BEATS] += 1
