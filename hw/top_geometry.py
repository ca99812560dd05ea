"""Byte geometry of the top level's TLMM DMA (activation, weight and result beats, read FIFO, gearbox),
shared by the RTL (hw/top.py) and the cycle model (sim/top_model.py). Pure Python: no Amaranth."""

from __future__ import annotations

import math

from hw.config import AcceleratorConfig
from hw.program import tlmm_wgt_beat_bytes

__all__ = ["TopGeometry", "top_geometry", "WBUF_READ_LATENCY"]

#: The weight buffer's read port (``tlmm.weight_buffer_beats`` > 0): a read issued in cycle c delivers its
#: word into the buffer's output register in cycle c + 1, which is the engine's ``wgt`` beat (valid) until
#: the engine takes it; a read is issued whenever words are left and the register is empty or being taken,
#: so a reuse command offers one weight beat per cycle from cycle 2 of its run. hw/top.py builds this port
#: and sim/top_model.py steps it; both read the latency from here.
WBUF_READ_LATENCY = 1


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
        self.fifo = mem.read_fifo_depth  # read FIFO depth = beats requested ahead at most
        self.cap = self.W + max(self.W, self.EA, self.EW)  # gearbox bytes
        self.align = math.gcd(self.W, self.EA, self.EW)  # a power of two (W is)
        self.res_cap = self.W + self.ER  # result packer bytes
        self.wbuf_beats = t.weight_buffer_beats  # weight buffer words (0: none)
        self.wbuf_bits = t.columns * t.tables * t.index_bits  # a word: one engine weight beat's indices


def top_geometry(acfg: AcceleratorConfig) -> TopGeometry:
    return TopGeometry(acfg)
