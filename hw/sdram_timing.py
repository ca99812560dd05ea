"""The ULX3S SDRAM's datasheet timing and its conversion to controller cycles (docs/board.md, "SDRAM timing").
Amaranth-free: the controller (hw/sdram.py), its tests' behavioural model and the board simulation's model
read the same numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["REFRESH_MARGIN", "SdramPart", "SdramCycles", "AS4C32M16SB_7", "sdram_cycles"]


#: cycles the refresh request comes before tREFI runs out: the longest access (a row change and a burst)
REFRESH_MARGIN = 64


@dataclass(frozen=True)
class SdramPart:
    """One SDR SDRAM part: geometry and datasheet timing (ns, µs)."""

    name: str
    source: str
    banks: int
    row_bits: int
    col_bits: int  # the columns the controller uses (see docs/board.md: 9 = 32 MB)
    t_rc: float
    t_rfc: float
    t_rcd: float
    t_rp: float
    t_ras: float
    t_wr: float
    t_mrd: float
    t_refi_us: float
    t_init_us: float
    init_refreshes: int
    t_ck_cl2: float  # minimum clock period at CAS latency 2
    t_ck_cl3: float

    @property
    def bytes(self) -> int:
        return self.banks << (self.row_bits + self.col_bits + 1)


# Alliance Memory AS4C32M16SB datasheet (rev 1.0, June 2016), table 16, speed grade -7; geometry 4 banks ×
# 8192 rows (A12:0) × 1024 columns, of which the controller uses 512 (the 32 MB of the ULX3S v3.0.x boards'
# parts; check another part's datasheet against these figures).
AS4C32M16SB_7 = SdramPart(
    name="AS4C32M16SB-7 (32 MB used)",
    source="Alliance Memory AS4C32M16SB datasheet rev 1.0 (2016), table 16, -7",
    banks=4,
    row_bits=13,
    col_bits=9,
    t_rc=63.0,
    t_rfc=63.0,
    t_rcd=21.0,
    t_rp=21.0,
    t_ras=42.0,
    t_wr=14.0,
    t_mrd=14.0,
    t_refi_us=7.8,
    t_init_us=200.0,
    init_refreshes=8,
    t_ck_cl2=10.0,
    t_ck_cl3=7.0,
)


@dataclass(frozen=True)
class SdramCycles:
    """The part's timing in whole cycles of the controller clock."""

    cl: int
    rc: int
    rfc: int
    rcd: int
    rp: int
    ras: int
    wr: int
    mrd: int
    refi: int  # the controller's refresh interval (cycles between REFRESH requests)
    init: int  # power-up wait
    init_refreshes: int


def sdram_cycles(part: SdramPart, clock_mhz: float, *, init_cycles: int | None = None) -> SdramCycles:
    """``part``'s timing at ``clock_mhz``: every minimum rounded up to whole cycles (at least 1; tMRD at least
    2), CAS latency 2 when the clock allows it (else 3), the refresh request every tREFI less ``REFRESH_MARGIN``
    cycles for the access in progress. ``init_cycles`` overrides the 200 µs power-up wait (unit tests).
    ValueError when the clock is faster than the part."""
    period = 1000.0 / clock_mhz
    if period < part.t_ck_cl3:
        raise ValueError(
            f"SDRAM {part.name}: {clock_mhz:g} MHz is faster than its {1000 / part.t_ck_cl3:g} MHz"
        )

    def cyc(ns: float, least: int = 1) -> int:
        return max(least, math.ceil(ns / period - 1e-9))

    return SdramCycles(
        cl=2 if period >= part.t_ck_cl2 else 3,
        rc=cyc(part.t_rc),
        rfc=cyc(part.t_rfc),
        rcd=cyc(part.t_rcd),
        rp=cyc(part.t_rp),
        ras=cyc(part.t_ras),
        wr=cyc(part.t_wr),
        mrd=cyc(part.t_mrd, 2),
        refi=int(part.t_refi_us * clock_mhz) - REFRESH_MARGIN,
        init=cyc(part.t_init_us * 1000.0) if init_cycles is None else init_cycles,
        init_refreshes=part.init_refreshes,
    )
