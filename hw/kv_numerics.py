"""KV retrieval engine constants shared by the reference (models/resv.py), the numba model
(sim/kv_model.py) and the RTL (hw/kv.py): command and output codes, the splitmix64 hyperplane stream and
the reciprocal ROM. Pure Python — importing this does not import Amaranth."""

from __future__ import annotations

import numpy as np

from hw.config import KvConfig

__all__ = [
    "OP_RESET",
    "OP_INSERT",
    "OP_QUERY",
    "KIND_ASSIGN",
    "KIND_SEL",
    "KIND_END",
    "KIND_FULL",
    "hyperplane_bits",
    "hyperplane_matrix",
    "reciprocal",
    "list_capacity",
]

#: Command codes on the engine's ``cmd`` stream.
OP_RESET, OP_INSERT, OP_QUERY = 0, 1, 2
#: Output beat kinds: a key's cluster assignment, a selected cluster, end of a selection, table full.
KIND_ASSIGN, KIND_SEL, KIND_END, KIND_FULL = 0, 1, 2, 3

_MASK64 = (1 << 64) - 1


def list_capacity(kv: KvConfig) -> int:
    """Entries a retrieval stream's list holds at most (docs/design.md, "KV retrieval in the loop"): tile 0,
    two window tiles, every cluster."""
    return 3 + kv.max_clusters


#: A list block's header (word 0 = its entry count n, three reserved words); the uint32 entries follow.
LIST_HEADER_BYTES = 16


def list_buffer_beats(kv: KvConfig, bus_bytes: int) -> int:
    """Bus beats of a list of :func:`list_capacity` entries: the RTL top's tile-list buffer (hw/top.py)."""
    return -(-(LIST_HEADER_BYTES + 4 * list_capacity(kv)) // bus_bytes)


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def hyperplane_bits(dim: int, hyperplanes: int, seed: int) -> np.ndarray:
    """(hyperplanes, dim) uint8: 1 = +1, 0 = −1. Bit i of hyperplane j is bit 0 of the (j·dim+i)-th
    splitmix64 output from ``seed`` — defined here so RTL constants and models never depend on a library's
    random stream."""
    out = np.empty(hyperplanes * dim, dtype=np.uint8)
    state = seed & _MASK64
    for n in range(out.size):
        state, z = _splitmix64(state)
        out[n] = z & 1
    return out.reshape(hyperplanes, dim)


def hyperplane_matrix(kv: KvConfig) -> np.ndarray:
    """(hyperplanes, dim) int64 of ±1 for a KV config."""
    return hyperplane_bits(kv.dim, kv.hyperplanes, kv.seed).astype(np.int64) * 2 - 1


def reciprocal(n: int) -> int:
    """Reciprocal ROM entry round(2^16 / n), n ≥ 1."""
    return ((1 << 16) + n // 2) // n
