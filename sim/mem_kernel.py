"""The external memory's timing rules (ARCHITECTURE.md contract 4), written once as numba functions over a
small int64 state array. The numba engine models (sim.gemm_model, sim.top_model, the KV table load of
sim.kv_model) step it inside their kernels, and the testbenches' :class:`sim.memory.BusMemory` calls the same compiled functions from Python,
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

The state is an immutable :class:`MemState` (scalars and the :class:`MemTiming` it runs with: after
inlining, numba keeps it in registers) plus a ring of the requests in flight (an int64 array). A cycle is
used in two halves: first the queries (``mem_request_ready``, ``mem_read_valid``, ``mem_write_ready``: what
the memory offers in cycle t, from the state at the start of t), then the commits of the handshakes that
happened, in this order: ``mem_deliver`` (the beat offered), ``mem_request``, ``mem_write``; each returns
the new state.

numba's cache does not notice edits to this module in the kernels that call it (numba issue #1833): after
changing it, clear the caches (``make clean`` removes the ``__pycache__`` folders).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from hw.config import MemoryConfig

__all__ = [
    "MemTiming",
    "MemState",
    "mem_timing",
    "mem_new",
    "mem_request_ready",
    "mem_read_valid",
    "mem_read_addr",
    "mem_deliver",
    "mem_request",
    "mem_write_ready",
    "mem_write",
]

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


class MemState(NamedTuple):
    """The memory's registers (the requests in flight live in the ring array next to it)."""

    head: int  # ring slot of the oldest request in flight
    in_flight: int  # requests in flight
    last_read: int  # cycle of the last delivered read beat
    last_write: int  # cycle of the last accepted write beat
    read_requests: int  # counters since mem_new
    read_beats: int
    write_beats: int
    tm: MemTiming  # timing (constant)


# ring slot s = words 4s .. 4s+3: beat address, length, accept cycle, beats delivered
_ADDR, _LEN, _ACCEPT, _DONE = range(4)


@njit(cache=True)
def mem_new(tm: MemTiming) -> tuple[MemState, np.ndarray]:
    """An idle memory with timing ``tm``: (state, ring)."""
    ms = MemState(0, 0, NEVER, NEVER, 0, 0, 0, tm)
    return ms, np.zeros(4 * tm.outstanding, np.int64)


@njit(cache=True, boundscheck=False, inline="always")
def mem_request_ready(ms: MemState) -> bool:
    """A read request would be accepted in this cycle."""
    return ms.in_flight < ms.tm.outstanding


@njit(cache=True, boundscheck=False, inline="always")
def mem_read_valid(ms: MemState, ring: np.ndarray, t: int) -> bool:
    """A read beat is delivered in cycle t."""
    return (
        ms.in_flight > 0
        and t >= ring[4 * ms.head + _ACCEPT] + ms.tm.latency
        and t >= ms.last_read + ms.tm.beat_interval
    )


@njit(cache=True, boundscheck=False, inline="always")
def mem_read_addr(ms: MemState, ring: np.ndarray) -> int:
    """Beat address of the next read beat (valid while a request is in flight)."""
    h = 4 * ms.head
    return ring[h + _ADDR] + ring[h + _DONE]


@njit(cache=True, boundscheck=False, inline="always")
def mem_deliver(ms: MemState, ring: np.ndarray, t: int) -> tuple[MemState, int]:
    """Commit the read beat delivered in cycle t (``mem_read_valid`` was true): (new state, its address)."""
    h = 4 * ms.head
    addr = ring[h + _ADDR] + ring[h + _DONE]
    ring[h + _DONE] += 1
    head, n = ms.head, ms.in_flight
    if ring[h + _DONE] == ring[h + _LEN]:
        head = (head + 1) % ms.tm.outstanding
        n -= 1
    return MemState(
        head, n, t, ms.last_write, ms.read_requests, ms.read_beats + 1, ms.write_beats, ms.tm
    ), addr


@njit(cache=True, boundscheck=False, inline="always")
def mem_request(ms: MemState, ring: np.ndarray, t: int, addr: int, length: int) -> MemState:
    """Commit the read request accepted in cycle t (``mem_request_ready`` was true)."""
    s = 4 * ((ms.head + ms.in_flight) % ms.tm.outstanding)
    ring[s + _ADDR] = addr
    ring[s + _LEN] = length
    ring[s + _ACCEPT] = t
    ring[s + _DONE] = 0
    return MemState(
        ms.head,
        ms.in_flight + 1,
        ms.last_read,
        ms.last_write,
        ms.read_requests + 1,
        ms.read_beats,
        ms.write_beats,
        ms.tm,
    )


@njit(cache=True, boundscheck=False, inline="always")
def mem_write_ready(ms: MemState, t: int) -> bool:
    """A write beat would be accepted in cycle t."""
    return t >= ms.last_write + ms.tm.beat_interval


@njit(cache=True, boundscheck=False, inline="always")
def mem_write(ms: MemState, t: int) -> MemState:
    """Commit the write beat accepted in cycle t (``mem_write_ready`` was true)."""
    return MemState(
        ms.head, ms.in_flight, ms.last_read, t, ms.read_requests, ms.read_beats, ms.write_beats + 1, ms.tm
    )
