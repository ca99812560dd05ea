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
    "TABLE_ENTRY_BYTES",
    "TableLayout",
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


#: Bytes of one cluster's entry in a table in DRAM: its signature (uint64, the ``hyperplanes`` low bits), its
#: count (uint16 at byte 8), zeros.
TABLE_ENTRY_BYTES = 16


class TableLayout:
    """A cluster table in DRAM (``system.kv_tables: dram``; docs/design.md, "KV retrieval in the loop",
    **Tables**): the state the engine must restore, at the KVR's ``tab_base``, in whole bus beats of
    ``bus_bytes`` (little-endian):

    - beat 0, the header: word 0 = n (clusters in use), word 1 = ntok (keys in the table), the rest 0;
    - ``sig_beats`` beats of ``max_clusters`` entries of :data:`TABLE_ENTRY_BYTES` (cluster c at byte
      ``16·c`` of the section): signature, count;
    - ``sum_beats`` beats of the key sums: per cluster ``cluster_beats`` = ceil(dim · ``sum_bytes`` /
      ``bus_bytes``) beats (cluster c's from beat ``c · cluster_beats`` of the section), its ``dim`` signed
      ``sum_bytes``-byte values (int16 while ``kv.sum_bits`` ≤ 16, else int32) from the first, zeros after, so
      a cluster's sums are whole beats the write-back can write alone, and the engine's key-sum beat b of
      cluster c (``lanes`` values) is sub-beat ``b mod K`` of the section's beat ``c · cluster_beats + b div K``
      (K = bus_bytes / (lanes · sum_bytes) when :meth:`rtl_fits`).

    An all-zero table is the empty table (n = 0): the image starts zeroed there, which is how a generation
    starts. The whole table is what the RTL top loads before a KVR; after one with inserts it writes back the
    header, the entry beats of the clusters the inserts touched and those clusters' key-sum beats
    (:meth:`dirty_beats`)."""

    def __init__(self, kv: KvConfig, bus_bytes: int):
        self.kv, self.bus_bytes = kv, bus_bytes
        self.sum_bytes = 2 if kv.sum_bits <= 16 else 4
        cm, w = kv.max_clusters, bus_bytes
        self.header_beats = 1
        self.sig_beats = -(-cm * TABLE_ENTRY_BYTES // w)
        self.cluster_beats = -(-kv.dim * self.sum_bytes // w)
        self.sum_beats = cm * self.cluster_beats
        self.beats = self.header_beats + self.sig_beats + self.sum_beats
        self.sig_offset = w * self.header_beats
        self.sum_offset = w * (self.header_beats + self.sig_beats)

    @property
    def nbytes(self) -> int:
        return self.beats * self.bus_bytes

    def dirty_beats(self, touched) -> list[int]:
        """The beats (ascending, each once) the RTL top writes back after a KVR whose inserts touched the
        clusters ``touched``: the header, the entry beats holding a touched cluster, each touched cluster's
        key-sum beats."""
        e = self.bus_bytes // TABLE_ENTRY_BYTES
        sig = sorted({1 + c // e for c in touched})
        cb, s0 = self.cluster_beats, self.header_beats + self.sig_beats
        return [0, *sig, *(s0 + c * cb + i for c in sorted(set(touched)) for i in range(cb))]

    def rtl_fits(self) -> str | None:
        """Why the RTL top's table DMA cannot move this layout (None: it can): a bus beat must hold whole
        entries and whole engine key-sum beats."""
        w, eb = self.bus_bytes, self.kv.lanes * self.sum_bytes
        if w % TABLE_ENTRY_BYTES or w < 8:
            return f"memory.bus_bytes {w} must be a multiple of {TABLE_ENTRY_BYTES} (whole table entries)"
        if w % eb:
            return f"memory.bus_bytes {w} must be a multiple of a key-sum beat (kv.lanes × {self.sum_bytes} = {eb})"
        return None

    def pack(self, sigs, cnts, sums, n: int, ntok: int) -> np.ndarray:
        """The table's bytes (uint8, :attr:`nbytes`) from its state: sigs, cnts (max_clusters,), sums
        (max_clusters, dim)."""
        kv = self.kv
        raw = np.zeros(self.nbytes, np.uint8)
        raw[:8] = np.array([n, ntok], "<u4").view(np.uint8)
        ent = np.zeros((kv.max_clusters, TABLE_ENTRY_BYTES), np.uint8)
        ent[:, :8] = np.asarray(sigs, np.int64).astype("<i8").view(np.uint8).reshape(-1, 8)
        ent[:, 8:10] = np.asarray(cnts, np.int64).astype("<u2").view(np.uint8).reshape(-1, 2)
        raw[self.sig_offset : self.sig_offset + ent.size] = ent.reshape(-1)
        st = "<i2" if self.sum_bytes == 2 else "<i4"
        s = np.asarray(sums, np.int64).astype(st).view(np.uint8).reshape(kv.max_clusters, -1)
        sec = raw[self.sum_offset :].reshape(kv.max_clusters, -1)
        sec[:, : s.shape[1]] = s
        return raw

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """(sigs, cnts, sums, n, ntok) of a table's bytes (:meth:`pack`'s inverse); a bad header (n above
        max_clusters, ntok above max_clusters · max_cluster_size) is a ValueError."""
        kv = self.kv
        raw = np.asarray(raw, np.uint8).reshape(-1)[: self.nbytes]
        n, ntok = (int(x) for x in raw[:8].view("<u4"))
        if n > kv.max_clusters or ntok > kv.max_clusters * kv.max_cluster_size:
            raise ValueError(
                f"KV table header n={n}, ntok={ntok} is out of range (a table region not zeroed?)"
            )
        ent = raw[self.sig_offset : self.sig_offset + kv.max_clusters * TABLE_ENTRY_BYTES].reshape(-1, 16)
        sigs = ent[:, :8].copy().view("<i8").reshape(-1).astype(np.int64)
        cnts = ent[:, 8:10].copy().view("<u2").reshape(-1).astype(np.int64)
        st = "<i2" if self.sum_bytes == 2 else "<i4"
        sec = raw[self.sum_offset : self.nbytes].reshape(kv.max_clusters, -1)[:, : kv.dim * self.sum_bytes]
        sums = sec.copy().reshape(-1).view(st).astype(np.int64)
        return sigs, cnts, sums.reshape(kv.max_clusters, kv.dim), n, ntok
