"""The external memory the engines see, as the co-simulation testbench drives it (ARCHITECTURE.md contract 4).

Rules (in accelerator cycles, counted from the command accept; :mod:`sim.gemm_model` implements the same
rules inside its kernel, and the co-simulation checks that the two give identical cycle counts):

- **Read requests** (beat address, length in beats) are accepted in cycle t iff fewer than
  ``outstanding`` requests are in flight at the start of t. A request is in flight from its accept until
  its last beat has been delivered.
- **Read data**: the oldest request in flight delivers its next beat in cycle t iff t ≥ accept + ``latency``
  and t ≥ (previous beat) + ``beat_interval``. The reader always takes the beat (ready = 1).
- **Writes**: a write beat is accepted in cycle t iff t ≥ (previous accepted write) + ``beat_interval``.
- Memory is an array of ``bus_bytes``-wide beats; a beat's bytes are little-endian in the bus word.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from hw.config import MemoryConfig

__all__ = ["BusMemory"]

_NEVER = -(1 << 40)


class BusMemory:
    """Cycle-level memory model used by the testbenches."""

    def __init__(self, image: np.ndarray, mem: MemoryConfig):
        if image.ndim != 2 or image.shape[1] != mem.bus_bytes or image.dtype != np.uint8:
            raise ValueError(f"memory image must be (beats, {mem.bus_bytes}) uint8, got {image.shape} {image.dtype}")
        self.image = image
        self.mem = mem
        self.queue: deque[list[int]] = deque()   # [addr, len, accept cycle, beats delivered]
        self.last_read = _NEVER
        self.last_write = _NEVER
        self.read_beats = 0
        self.write_beats = 0

    # -- what the memory offers in cycle t (before the handshakes) --
    def request_ready(self, t: int) -> bool:
        return len(self.queue) < self.mem.outstanding

    def read_beat(self, t: int) -> int | None:
        """Address of the beat delivered in cycle t, or None."""
        if not self.queue:
            return None
        addr, _, accepted, done = self.queue[0]
        if t >= accepted + self.mem.latency and t >= self.last_read + self.mem.beat_interval:
            return addr + done
        return None

    def write_ready(self, t: int) -> bool:
        return t >= self.last_write + self.mem.beat_interval

    def beat_word(self, addr: int) -> int:
        if not 0 <= addr < len(self.image):
            raise IndexError(f"read of beat {addr} outside the {len(self.image)}-beat image")
        return int.from_bytes(self.image[addr].tobytes(), "little")

    # -- what happened at the end of cycle t --
    def commit(self, t: int, delivered: bool, request: tuple[int, int] | None,
               write: tuple[int, int] | None) -> None:
        if delivered:
            head = self.queue[0]
            head[3] += 1
            self.last_read = t
            self.read_beats += 1
            if head[3] == head[1]:
                self.queue.popleft()
        if request is not None:
            addr, length = request
            self.queue.append([addr, length, t, 0])
        if write is not None:
            addr, word = write
            if not 0 <= addr < len(self.image):
                raise IndexError(f"write of beat {addr} outside the {len(self.image)}-beat image")
            self.image[addr] = np.frombuffer(word.to_bytes(self.mem.bus_bytes, "little"), dtype=np.uint8)
            self.last_write = t
            self.write_beats += 1
