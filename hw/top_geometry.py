"""Byte geometry of the top level's TLMM DMA (activation, weight and result beats, read FIFO, gearbox),
shared by the RTL (hw/top.py) and the cycle model (sim/top_model.py). Pure Python: no Amaranth."""

from __future__ import annotations

import math

from hw.config import AcceleratorConfig
from hw.program import tlmm_wgt_beat_bytes

__all__ = ["TopGeometry", "top_geometry"]


class TopGeometry:
    """Byte widths the DMA works with.

    Engine beats may be wider or narrower than a bus beat, by any ratio (``configs/kv260.yaml``: 84-byte
    activation and 280-byte weight beats on a 64-byte bus). The gearbox holds ``cap`` = W + max(W, EA, EW)
    bytes, so a push of a whole bus beat is always possible while fewer than E bytes wait (no deadlock) and,
    with E > W, a bus beat can enter in every cycle. Every run starts at a byte address that is a multiple
    of ``align`` = gcd(W, EA, EW) (bases are beat addresses; runs advance by whole engine beats), so the
    gearbox's fill and a run's leading offset are multiples of ``align`` and its shifters move whole
    ``align``-byte words."""

    def __init__(self, acfg: AcceleratorConfig):
        t, mem = acfg.tlmm, acfg.memory
        self.W = mem.bus_bytes
        self.EA = t.chunk_k  # activation beat: G·T int8 in memory
        self.EW = tlmm_wgt_beat_bytes(t)  # packed weight beat
        self.ER = t.columns * t.acc_bits // 8  # result beat: Q little-endian int32
        self.fifo = max(8, 2 * mem.max_burst)  # read FIFO depth = beats requested ahead at most
        self.cap = self.W + max(self.W, self.EA, self.EW)  # gearbox bytes
        self.align = math.gcd(self.W, self.EA, self.EW)  # a power of two (W is)
        self.res_cap = self.W + self.ER  # result packer bytes


def top_geometry(acfg: AcceleratorConfig) -> TopGeometry:
    return TopGeometry(acfg)
