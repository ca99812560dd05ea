"""The external memory the engines see, as the co-simulation testbenches drive it (ARCHITECTURE.md
contract 4): a memory image of ``bus_bytes``-wide beats (a beat's bytes little-endian in the bus word) whose
timing is :mod:`sim.mem_kernel` — the same rule functions the numba models step, so the cycles the benches
measure on the RTL and the cycles the models predict come from one definition of the rules.
"""

from __future__ import annotations

import numpy as np

from hw.config import MemoryConfig
from sim import mem_kernel as mk

# The bench steps the memory once per simulated cycle from Python: it calls the rule functions' Python
# source (numba's py_func) — the same definition the kernels compile — because a call into compiled code
# with tuple arguments costs several microseconds of argument typing, far more than the rule itself.
_request_ready = mk.mem_request_ready.py_func
_read_valid = mk.mem_read_valid.py_func
_read_addr = mk.mem_read_addr.py_func
_deliver = mk.mem_deliver.py_func
_request = mk.mem_request.py_func
_write_ready = mk.mem_write_ready.py_func
_write = mk.mem_write.py_func

__all__ = ["BusMemory"]


class BusMemory:
    """Cycle-level memory model used by the testbenches: an image plus the state and ring of sim.mem_kernel."""

    def __init__(self, image: np.ndarray, mem: MemoryConfig):
        if image.ndim != 2 or image.shape[1] != mem.bus_bytes or image.dtype != np.uint8:
            raise ValueError(
                f"memory image must be (beats, {mem.bus_bytes}) uint8, got {image.shape} {image.dtype}"
            )
        self.image = image
        self.mem = mem
        self.state, self.ring = mk.mem_new(mk.mem_timing(mem))

    @property
    def read_beats(self) -> int:
        return int(self.state.read_beats)

    @property
    def write_beats(self) -> int:
        return int(self.state.write_beats)

    # -- what the memory offers in cycle t (before the handshakes) --
    def request_ready(self, t: int) -> bool:
        return bool(_request_ready(self.state))

    def read_beat(self, t: int) -> int | None:
        """Address of the beat delivered in cycle t, or None."""
        if not _read_valid(self.state, self.ring, t):
            return None
        return int(_read_addr(self.state, self.ring))

    def write_ready(self, t: int) -> bool:
        return bool(_write_ready(self.state, t))

    def beat_word(self, addr: int) -> int:
        if not 0 <= addr < len(self.image):
            raise IndexError(f"read of beat {addr} outside the {len(self.image)}-beat image")
        return int.from_bytes(self.image[addr].tobytes(), "little")

    # -- what happened at the end of cycle t --
    def commit(
        self, t: int, delivered: bool, request: tuple[int, int] | None, write: tuple[int, int] | None
    ) -> None:
        if delivered:
            if not self.state.in_flight:
                raise RuntimeError(f"memory: a read beat delivered in cycle {t} with no request in flight")
            self.state, _ = _deliver(self.state, self.ring, t)
        if request is not None:
            addr, length = request
            self.state = _request(self.state, self.ring, t, addr, length)
        if write is not None:
            addr, word = write
            if not 0 <= addr < len(self.image):
                raise IndexError(f"write of beat {addr} outside the {len(self.image)}-beat image")
            self.image[addr] = np.frombuffer(word.to_bytes(self.mem.bus_bytes, "little"), dtype=np.uint8)
            self.state = _write(self.state, t)
