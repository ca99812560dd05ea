"""Byte geometry of the top level's TLMM DMA (activation, weight and result beats, read FIFO, gearbox),
shared by the RTL (hw/top.py) and the cycle model (sim/top_model.py). Pure Python: no Amaranth."""

from __future__ import annotations

from hw.config import AcceleratorConfig, ConfigError
from hw.program import tlmm_wgt_beat_bytes

__all__ = ["TopGeometry", "top_geometry"]


class TopGeometry:
    """Byte widths the DMA works with (checked against the bus)."""

    def __init__(self, acfg: AcceleratorConfig):
        t, mem = acfg.tlmm, acfg.memory
        self.W = mem.bus_bytes
        self.EA = t.chunk_k  # activation beat: G·T int8 in memory
        self.EW = tlmm_wgt_beat_bytes(t)  # packed weight beat
        self.ER = t.columns * t.acc_bits // 8  # result beat: Q little-endian int32
        self.fifo = max(8, 2 * mem.max_burst)  # read FIFO depth = beats requested ahead at most
        self.cap = 2 * self.W  # gearbox bytes
        for name, e in (("activation", self.EA), ("weight", self.EW), ("result", self.ER)):
            if e > self.W:
                raise ConfigError(
                    f"{acfg.source}: memory.bus_bytes: the top level's DMA needs a TLMM {name} beat "
                    f"({e} bytes) to fit one {self.W}-byte bus beat; widen the bus or shrink tlmm"
                )


def top_geometry(acfg: AcceleratorConfig) -> TopGeometry:
    return TopGeometry(acfg)
