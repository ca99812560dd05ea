"""Resource and Fmax model of the engines as functions of the accelerator config — a FIT to real runs of our
RTL through the open flows (``configs/calibration/runs.csv``, written by :mod:`tritium.calibrate`).

Per device family (``ecp5``: Yosys synth_ecp5 on the ULX3S-85F; ``xcup``: Yosys synth_xilinx for the
KV260-class UltraScale+) and per engine, each resource is a least-squares fit (weighted by 1/measured, so the
error minimized is relative) over physically motivated features of the config:

TLMM (G, T tables, Q columns, M tokens, S stored table entries (3^G or (3^G+1)/2), E entry bits):
  * LUT ~ lookup multiplexers Q·T·E·((S−1)/3 [+1 in half mode: the negation]), table banks and their token
    select T·S·E·M, adder trees Q·T·sum_bits, constant
  * FF  ~ looked-up entries Q·T·E, table banks T·S·E·M, adder-tree registers Q·T·sum_bits, Q·M
  * BRAM (URAM) counted: the accumulator memory (tokens·ceil(max_n/Q) words of Q·32 bits) in 18 Kbit blocks
    (16K×1 … 512×36); on UltraScale+ in URAM288 (4K×72) when deeper than 2048 words (rules in _counted)
GEMM (R×C block, TK k_tile, W bus bytes):
  * DSP = R·C (one multiplier per int8 product, as the flow's pre-synthesis check assumes)
  * LUT ~ R·C (int32 accumulate + shadow), 8·W (beat-wide muxes and registers), bits of the operand buffers
    kept in distributed RAM (≤ 32 words deep), constant
  * FF  ~ R·C (accumulator + shadow), 8·W, constant
  * BRAM counted: operand buffers of ≥ 64 words in 18 Kbit blocks
Fmax (ECP5 only, from the place-and-route runs, timing-driven towards 100 MHz): clock period (ns) =
a + b·log2 T + c·log2 S + d·log2(Q·M) for the TLMM, a + b·log2(R·C) for the GEMM (see _fmax_features); a
system with both engines runs at the lower of the two. Few P&R runs back this (5 TLMM, 3 GEMM): a coarse fit.

``engine="all"`` (both engines in one design) is the sum of the two engines' figures (measured on the
KV260 config: 68,586 + 23,906 LUT alone vs 92,487 together). ``engine="top"`` (what the DSE's fit check
uses) adds the top level's command decoder and TLMM DMA (:func:`top_overhead`: gearbox and packer shifter
bits and register bits, scaled by one whole-top run per family; KV260: +18,259 LUT, 110,746 measured).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from hw import data_files

__all__ = [
    "CALIBRATION_CSV",
    "FAMILY_OF_BOARD",
    "ResourceModel",
    "load_model",
    "fit_report",
    "predict",
    "predict_board",
    "board_overflow",
]

CALIBRATION_CSV = data_files.calibration_csv()
FAMILY_OF_BOARD = {"ulx3s": "ecp5", "kv260": "xcup"}
RESOURCES = ("lut", "ff", "bram", "uram", "dsp")

# 18 Kbit block RAM geometries (depth, width) common to ECP5 DP16KD and UltraScale+ RAMB18E2.
_BRAM18 = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))


def _brams18(depth: int, width: int) -> int:
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in _BRAM18)


def _num(row: dict, k: str):
    v = row[k]
    try:
        return int(v)
    except ValueError:
        return float(v) if v not in ("", None) else None


@dataclass(frozen=True)
class _Cfg:
    """The config fields the resource model reads (from an AcceleratorConfig or a calibration row)."""

    group_size: int
    tables: int
    columns: int
    table_mode: str
    tokens: int
    act_bits: int
    max_k: int
    max_n: int
    rows: int
    cols: int
    k_tile: int
    bus_bytes: int
    buffers: int = 2  # gemm.buffers (calibration rows before the field existed: double buffering)

    @classmethod
    def of(cls, acfg) -> _Cfg:
        t, g = acfg.tlmm, acfg.gemm
        return cls(
            t.group_size,
            t.tables,
            t.columns,
            t.table_mode,
            t.tokens,
            t.act_bits,
            t.max_k,
            t.max_n,
            g.rows,
            g.cols,
            g.k_tile,
            acfg.memory.bus_bytes,
            g.buffers,
        )

    @classmethod
    def from_row(cls, row: dict) -> _Cfg:
        fields = [f for f in cls.__dataclass_fields__ if f in row or f != "buffers"]
        return cls(*(row[f] if f == "table_mode" else int(row[f]) for f in fields))


def _tlmm_derived(c: _Cfg) -> dict:
    entries = 3**c.group_size
    S = entries if c.table_mode == "full" else (entries + 1) // 2
    E = c.act_bits + 2
    sum_bits = E + math.ceil(math.log2(c.tables)) if c.tables > 1 else E
    chunk = c.group_size * c.tables
    index_bits = math.ceil(math.log2(entries))
    depth = c.tokens * math.ceil(c.max_n / c.columns)
    return {
        "S": S,
        "E": E,
        "sum_bits": sum_bits,
        "pool": chunk * c.act_bits + c.columns * c.tables * index_bits,
        "depth": depth,
    }


# Memory mapping rules read off the calibration runs (Yosys memory_libmap's choices for our RTL):
# * GEMM operand buffers (buffers·TK·R and buffers·TK·C bytes, bus_bytes wide): up to 32 words deep they become distributed
#   RAM (LUTs); from 64 words on, 18 Kbit block RAMs (e.g. ECP5 4x8/TK128: B 64 × 256 bit → 8 DP16KD).
# * TLMM accumulator memory (tokens·ceil(max_n/Q) words of Q·32 bits): block RAM; on UltraScale+ (-uram) a
#   memory deeper than 2048 words goes to URAM288 (4K × 72) instead (T=20 Q=12 4 tokens max_n 8192: 6 URAM,
#   0 BRAM; the kv260 config, 2048 deep: 57 RAMB18, 0 URAM).
_LUTRAM_MAX_DEPTH = 32


def _gemm_buffers(c: _Cfg) -> list[tuple[int, int]]:
    """(depth in words, width in bits) of the A and B operand buffers (``buffers`` tile slots each)."""
    W = c.bus_bytes
    return [(c.buffers * c.k_tile * n // W, 8 * W) for n in (c.rows, c.cols)]


def _counted(engine: str, family: str, c: _Cfg) -> dict:
    """Block RAM (18 Kbit units), URAM and DSP counts fixed by the config (not fitted)."""
    if engine == "tlmm":
        depth, width = _tlmm_derived(c)["depth"], c.columns * 32
        if family == "xcup" and depth > 2048:
            return {"bram18": 0, "uram": math.ceil(width / 72) * math.ceil(depth / 4096), "dsp": 0}
        return {"bram18": _brams18(depth, width), "uram": 0, "dsp": 0}
    bram = sum(_brams18(d, w) for d, w in _gemm_buffers(c) if d > _LUTRAM_MAX_DEPTH)
    return {"bram18": bram, "uram": 0, "dsp": c.rows * c.cols}


def _features(engine: str, resource: str, c: _Cfg) -> list[float]:
    """Features of the fitted resources (LUT, FF)."""
    if engine == "tlmm":
        d = _tlmm_derived(c)
        S, E, T, Q, M = d["S"], d["E"], c.tables, c.columns, c.tokens
        # a lookup is an S:1 multiplexer of E-bit entries (~(S-1)/3 LUT4 per bit), plus a negation in half mode
        mux = (S - 1) / 3 + (1 if c.table_mode == "half" else 0)
        if resource == "lut":
            return [Q * T * E * mux, T * S * E * M, Q * T * d["sum_bits"], 1.0]
        return [Q * T * E, T * S * E * M, Q * T * d["sum_bits"], Q * M]
    R, C, W = c.rows, c.cols, c.bus_bytes
    lutram_bits = sum(dd * w for dd, w in _gemm_buffers(c) if dd <= _LUTRAM_MAX_DEPTH)
    if resource == "lut":
        return [R * C, 8 * W, lutram_bits, 1.0]
    return [R * C, 8 * W, 1.0]


def _fmax_features(engine: str, c: _Cfg) -> list[float]:
    """Features of the clock period (ns). TLMM: the critical path is the adder tree over the T looked-up
    entries (depth log2 T) after the S:1 lookup multiplexer (log2 S), fed by the staging bank whose select
    and fanout grow with tokens and columns (log2 Q·M); GEMM: an operand register feeds a row or column of
    the R×C multipliers (fanout, log2 R·C)."""
    if engine == "tlmm":
        return [1.0, math.log2(c.tables), math.log2(_tlmm_derived(c)["S"]), math.log2(c.columns * c.tokens)]
    return [1.0, math.log2(c.rows * c.cols)]


def _lstsq_rel(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares minimizing the relative error (rows weighted by 1/y; zero targets weigh 1)."""
    w = 1.0 / np.where(y > 0, y, 1.0)
    coef, *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
    return coef


class ResourceModel:
    """Fitted per-family, per-engine models. ``predict(acfg, family, engine)`` → lut/ff/bram/dsp (+ fmax)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.coef: dict = {}
        self.fmax_coef: dict = {}
        for fam in ("ecp5", "xcup"):
            for eng in ("tlmm", "gemm"):
                train = [
                    r
                    for r in rows
                    if FAMILY_OF_BOARD.get(r["board"]) == fam and r["engine"] == eng and r["role"] == "train"
                ]
                if not train:
                    continue
                cfgs = [_Cfg.from_row(r) for r in train]
                # a P&R run of a config that also has a synthesis-only run repeats its figures: fit each once
                uniq = list({c: r for c, r in reversed(list(zip(cfgs, train, strict=True)))}.items())[::-1]
                for res in ("lut", "ff"):
                    X = np.array([_features(eng, res, c) for c, _ in uniq], float)
                    y = np.array([float(r[res]) for _, r in uniq])
                    self.coef[(fam, eng, res)] = _lstsq_rel(X, y)
                pr = [
                    (c, float(r["fmax_mhz"])) for c, r in zip(cfgs, train, strict=True) if r.get("fmax_mhz")
                ]
                if len(pr) >= len(_fmax_features(eng, cfgs[0])):
                    X = np.array([_fmax_features(eng, c) for c, _ in pr])
                    y = np.array([1000.0 / f for _, f in pr])  # period, ns
                    self.fmax_coef[(fam, eng)] = np.linalg.lstsq(X, y, rcond=None)[0]

    def families(self) -> set[str]:
        return {k[0] for k in self.coef}

    def _engine(self, c: _Cfg, family: str, engine: str) -> dict:
        out = {}
        for res in ("lut", "ff"):
            coef = self.coef.get((family, engine, res))
            if coef is None:
                raise KeyError(f"no calibration for {family}/{engine} (see {CALIBRATION_CSV.name})")
            out[res] = max(0.0, float(np.dot(coef, _features(engine, res, c))))
        n = _counted(engine, family, c)
        # ECP5 counts DP16KD (18 Kbit); UltraScale+ RAMB36 units (RAMB18 = ½), as hw.fpga reports them
        out["bram"] = n["bram18"] / 2 if family == "xcup" else float(n["bram18"])
        out["uram"] = float(n["uram"])
        out["dsp"] = float(n["dsp"])
        fc = self.fmax_coef.get((family, engine))
        out["fmax_mhz"] = None if fc is None else 1000.0 / float(np.dot(fc, _fmax_features(engine, c)))
        return out

    def predict_cfg(self, c: _Cfg, family: str, engine: str = "all") -> dict:
        engines = ("tlmm", "gemm") if engine == "all" else (engine,)
        parts = [self._engine(c, family, e) for e in engines]
        out = {r: sum(p[r] for p in parts) for r in RESOURCES}
        fm = [p["fmax_mhz"] for p in parts if p["fmax_mhz"] is not None]
        out["fmax_mhz"] = min(fm) if len(fm) == len(parts) else None
        return out

    def predict(self, acfg, family: str, engine: str = "all") -> dict:
        """``engine``: "tlmm", "gemm", "all" (both engines) or "top" (both engines + the top level's
        decoder and DMA: :func:`top_overhead`)."""
        if engine != "top":
            return self.predict_cfg(_Cfg.of(acfg), family, engine)
        out = self.predict_cfg(_Cfg.of(acfg), family, "all")
        for r, v in top_overhead(acfg, family).items():
            out[r] += v
        return out


# ---- the top level beyond the engines ----------------------------------------------------------------
# hw/top.py adds to the two engines a command decoder (three 64-bit command words, field views), the TLMM
# DMA — read sequencer, read FIFO (``fifo`` beats of W bytes), byte gearbox (``cap`` bytes, two shifters
# placing a W-byte beat at any ``align``-byte word, a W-byte offset shifter) and result packer (W + ER
# bytes) — and the memory-port multiplexers. Its LUTs and FFs scale with the shifter and register bits
# below (:func:`_top_bits`); one coefficient per resource and family, CALIBRATED from a synthesis run of
# ``--engine top`` minus the two engines of the same config (``TOP_CALIBRATION``). Block RAM: none (the
# read FIFO maps to distributed RAM in both runs; a deeper one is counted: :func:`read_fifo_resources`).


def _top_bits(acfg) -> dict[str, float]:
    """Mux bits (the gearbox's and packer's shifters and the port multiplexers) and register bits of the
    top level's decoder and DMA."""
    from hw.top_geometry import TopGeometry

    g = TopGeometry(acfg)
    W, cap, A = g.W, g.cap, g.align
    levels_fill = math.ceil(math.log2((cap - W) // A + 1))  # gearbox fill positions, in align-byte words
    levels_off = math.ceil(math.log2(W // A)) if W > A else 0
    levels_res = math.ceil(math.log2(W + 1))  # the packer places a result at any byte up to W
    mux = (
        2 * 8 * (cap + W) * levels_fill  # merged_p / merged_n: W-byte beat to any word of the gearbox
        + 8 * W * levels_off  # the run's leading offset
        + 8 * cap  # pop (two constant shifts) and the pop select
        + 8 * g.res_cap * levels_res  # result packer
        + 2 * 8 * W  # memory-port multiplexers (read data, write data) between the DMA and the GEMM
    )
    regs = 8 * cap + 8 * g.res_cap + 64 * 3 + 400  # gearbox, packer, command words, counters and addresses
    return {"mux": float(mux), "regs": float(regs)}


#: Per family: resources of the decoder + DMA per bit of :func:`_top_bits`, and the DSPs of the DMA's three
#: dispatch-time multiplications (M·EA, NB·EW, M·NB). Whole-top run minus both engines of the same config:
#: * xcup SOURCE: configs/kv260.yaml, Yosys 0.70 ``synth_xilinx -family xcup -flatten -uram -widemux 5``
#:   (``tritium bitstream --board kv260 --engine top --config configs/kv260.yaml``, 2026-12-01, the newest
#:   run: 4096-beat weight buffer, 128-beat read FIFO): the whole top 111,206 LUT, 68,353 FF, 36 RAMB36,
#:   32 URAM, 132 DSP; both engines in one design (``--engine all``, docs/results.md) 92,487 LUT, 66,627 FF,
#:   128 DSP. Overhead 18,719 LUT, 1,726 FF, 4 DSP, less the counted weight buffer (2,276 LUT, 42 FF, 1 DSP,
#:   :func:`weight_buffer_resources`) and deep read FIFO (1,400 LUT, 4 FF, :func:`read_fifo_resources`):
#:   15,043 LUT over 58,688 mux bits, 1,680 FF over 4,368 register bits, 3 DSP. (The run before it, with the
#:   weight buffer and the default FIFO, gives the same within 62 LUT: 109,868 − 92,487 − 2,276 = 15,105.
#:   An earlier run on the RTL before the gearbox shifted by whole ``align`` words gave 18,259 LUT: the
#:   model then erred ~3.5 % high on the whole top.)
#: * ecp5 SOURCE: configs/default.yaml on the ULX3S, synth_ecp5 (docs/results.md "Top level on ULX3S"): the
#:   whole top 46,330 LUT4, 19,650 FF, 15 DP16KD, 67 MULT18X18D; the engines (runs.csv e_t_def + e_g_def)
#:   15,966 + 21,472 LUT4, 7,620 + 10,926 FF, 15 DP16KD, 64 DSP. Overhead 8,892 LUT4 over 10,240 mux bits,
#:   1,104 FF over 1,488 register bits, 3 DSP. Measured on the RTL before the gearbox shifted by whole
#:   ``align`` words with a constant pop shift, so it errs high.
#: One run per family: a scale, not a validated fit.
TOP_CALIBRATION: dict[str, dict[str, float]] = {
    "xcup": {"lut_per_mux_bit": 15043 / 58688, "ff_per_reg_bit": 1680 / 4368, "dsp": 3},
    "ecp5": {"lut_per_mux_bit": 8892 / 10240, "ff_per_reg_bit": 1104 / 1488, "dsp": 3},
}


def weight_buffer_resources(acfg, family: str) -> dict[str, float]:
    """The TLMM DMA's weight buffer (``tlmm.weight_buffer_beats`` words of B = Q·T·index_bits bits; nothing
    without one), counted, not fitted. Memory: on UltraScale+ (``-uram``) URAM288 (4K × 72) side by side,
    ceil(B/72) × ceil(depth/4096); elsewhere 18 Kbit block RAMs (the family's ``bram`` unit: RAMB36 = 2 of
    them on xcup, DP16KD on ECP5). Logic: one LUT per weight bit (the 2:1 multiplexer that gives the
    engine the gearbox's or the buffer's beat) plus the three address/count registers and their adders, and
    one multiplier (the dispatch-time KC·NB of a reuse, as the DMA's other dispatch products).
    SOURCE: Yosys 0.70 ``synth_xilinx -family xcup -flatten -uram -widemux 5`` of the buffer alone (a 4096 ×
    144-bit memory with the RTL's write port, registered read port and output multiplexer, 2026-12-01):
    2 URAM288, 144 LUT3, no LUT RAM, no FFs (the read register is the URAM's); kv260's 4096 × 2240 is
    therefore 32 URAM288 and 2,240 LUTs."""
    t = acfg.tlmm
    D = t.weight_buffer_beats
    out = {"lut": 0.0, "ff": 0.0, "bram": 0.0, "uram": 0.0, "dsp": 0.0}
    if not D:
        return out
    out["dsp"] = 1.0
    width = t.columns * t.tables * t.index_bits
    abits = max(1, (D - 1).bit_length())
    out["lut"] = float(width + 3 * abits)  # the multiplexer; the counters' adders and compares
    out["ff"] = float(3 * (abits + 1) + 3)  # write and read addresses, words left; mode bits and valid
    if family == "xcup" and D > 2048:
        out["uram"] = float(math.ceil(width / 72) * math.ceil(D / 4096))
    else:
        n18 = _brams18(D, width)
        out["bram"] = n18 / 2 if family == "xcup" else float(n18)
    return out


def _fifo_luts(depth: int, width: int, family: str) -> float:
    """LUTs of a ``depth`` × ``width`` amaranth SyncFIFO on ``family``: its read port is asynchronous (first
    word fall-through), so it maps to distributed RAM, never to block RAM. xcup: RAM32M16 (8 LUTs, 32 × 14)
    up to 32 deep, else banks of RAM64M8 (8 LUTs, 64 × 7) and a read multiplexer of ceil(banks / 4) LUT6 a
    bit; ecp5: TRELLIS_DPR16X4 (16 × 4, 6 LUT4 as hw.fpga counts them) and a banks:1 read multiplexer of
    max(1, banks − 2) LUT4 a bit; the pointers and level ~20 LUTs. 0 for other families (no run).
    SOURCE: Yosys 0.70 on the SyncFIFO alone (2026-12-01): ``synth_xilinx -family xcup -flatten -uram
    -widemux 5``, 512 bits × 32 / 64 / 128 / 256: 316 / 615 / 1,723 / 2,910 LUT, no block RAM (counted
    316 / 612 / 1,716 / 2,900); ``synth_ecp5``, 256 bits × 32 / 128: 1,087 / 4,682 LUT4 (counted 1,044 /
    4,628)."""
    if family == "xcup":
        if depth <= 32:
            return 8.0 * math.ceil(width / 14) + 20
        banks = math.ceil(depth / 64)
        return 8.0 * banks * math.ceil(width / 7) + (width * math.ceil(banks / 4) if banks > 1 else 0) + 20
    if family == "ecp5":
        banks = math.ceil(depth / 16)
        return 6.0 * banks * math.ceil(width / 4) + (width * max(1, banks - 2) if banks > 1 else 0) + 20
    return 0.0


def read_fifo_resources(acfg, family: str) -> dict[str, float]:
    """The TLMM DMA's read FIFO beyond the default depth (``memory.read_fifo_beats`` set above
    max(8, 2·max_burst); nothing otherwise), counted (:func:`_fifo_luts`), not fitted: both
    :data:`TOP_CALIBRATION` runs had the default-rule FIFO (32 beats), whose LUTs are inside their scale, so
    the model adds the difference between the configured FIFO and the default one of the same width
    (kv260 at 128 beats: +1,400 LUT counted; the whole top measured +1,338, 109,868 → 111,206)."""
    from hw.top_geometry import TopGeometry

    out = {r: 0.0 for r in RESOURCES}
    mem = acfg.memory
    rule = max(8, 2 * mem.max_burst)
    depth, width = TopGeometry(acfg).fifo, 8 * mem.bus_bytes
    if depth != rule:
        out["lut"] = _fifo_luts(depth, width, family) - _fifo_luts(rule, width, family)
        out["ff"] = 2.0 * (math.ceil(math.log2(depth + 1)) - math.ceil(math.log2(rule + 1)))  # pointers
    return out


def top_overhead(acfg, family: str) -> dict[str, float]:
    """Modeled resources of the top level beyond the two engines (decoder + DMA) on ``family``
    (:data:`TOP_CALIBRATION`; zeros for a family without a top-level run), with the weight buffer
    (:func:`weight_buffer_resources`) and a read FIFO deeper than the default (:func:`read_fifo_resources`)."""
    cal = TOP_CALIBRATION.get(family)
    out = {r: 0.0 for r in RESOURCES}
    if cal is None:
        return out
    b = _top_bits(acfg)
    out["lut"] = cal["lut_per_mux_bit"] * b["mux"]
    out["ff"] = cal["ff_per_reg_bit"] * b["regs"]
    out["dsp"] = float(cal["dsp"])
    for part in (weight_buffer_resources(acfg, family), read_fifo_resources(acfg, family)):
        for r, v in part.items():
            out[r] += v
    return out


@lru_cache(maxsize=4)
def _load(path: str) -> ResourceModel:
    with open(path, newline="") as f:
        return ResourceModel(list(csv.DictReader(f)))


def load_model(path: str | Path = CALIBRATION_CSV) -> ResourceModel:
    return _load(str(Path(path).resolve()))


def predict(acfg, board: str, engine: str = "all", path: str | Path = CALIBRATION_CSV) -> dict:
    return load_model(path).predict(acfg, FAMILY_OF_BOARD[board], engine)


# iCE40 EBR (4 Kbit) geometries (depth, width): SB_RAM40_4K.
_EBR4 = ((256, 16), (512, 8), (1024, 4), (2048, 2))
#: The engines the model covers, per flow engine; "top" holds both engines (plus its DMA and command
#: decoder, not modeled): the prediction for "all" is a lower bound for it. None: no model (kv).
MODEL_ENGINE = {"tlmm": "tlmm", "gemm": "gemm", "all": "all", "top": "all"}


def predict_board(acfg, board: str, engine: str = "all", path: str | Path = CALIBRATION_CSV) -> dict | None:
    """Predicted use of ``board``'s resources (the keys of its capacity the model covers) by ``engine`` of
    ``acfg``, or None when the model has no fit for the engine (``kv``). ECP5 and UltraScale+ boards use
    their family's fit; an iCE40 board (no calibration runs) uses the ECP5 fit for LUTs and FFs (both are
    LUT4 fabrics; an iCE40 logic cell holds one LUT4 and one FF, so this is a lower bound) and counts the
    block RAMs in 4 Kbit EBRs and one SB_MAC16 per GEMM multiplier."""
    from hw.boards import BOARD_SPECS

    eng = MODEL_ENGINE.get(engine)
    if eng is None:
        return None
    b = BOARD_SPECS[board]
    m = load_model(path)
    c = _Cfg.of(acfg)
    if b.family in ("ecp5", "xcup"):
        p = m.predict_cfg(c, b.family, eng)
    elif b.family == "ice40":
        p = m.predict_cfg(c, "ecp5", eng)
        engines = ("tlmm", "gemm") if eng == "all" else (eng,)
        ebr = 0
        if "tlmm" in engines:
            ebr += min(
                math.ceil(c.columns * 32 / w) * math.ceil(_tlmm_derived(c)["depth"] / d) for d, w in _EBR4
            )
        if "gemm" in engines:
            ebr += sum(
                min(math.ceil(wd / w) * math.ceil(dp / d) for d, w in _EBR4)
                for dp, wd in _gemm_buffers(c)
                if dp > _LUTRAM_MAX_DEPTH
            )
        p = {**p, "bram": float(ebr), "dsp": float(c.rows * c.cols if "gemm" in engines else 0)}
    else:
        return None
    return {r: p[r] for r in b.capacity if r in p}


def board_overflow(acfg, board: str, engine: str = "all") -> tuple[dict | None, list[tuple[str, float, int]]]:
    """(prediction, [(resource, predicted, available)] of every resource over the board's capacity)."""
    from hw.boards import BOARD_SPECS

    p = predict_board(acfg, board, engine)
    if p is None:
        return None, []
    cap = BOARD_SPECS[board].capacity
    return p, [(r, p[r], cap[r]) for r in p if p[r] > cap[r]]


def held_out_errors(path: str | Path = CALIBRATION_CSV) -> list[dict]:
    """Per held-out run: measured and predicted figures (rows never used in the fit)."""
    m = load_model(path)
    out = []
    seen = set()
    for r in m.rows:
        fam = FAMILY_OF_BOARD.get(r["board"])
        if r["role"] != "heldout" or (fam, r["engine"], "lut") not in m.coef:
            continue
        c = _Cfg.from_row(r)
        dup = (fam, r["engine"], c) in seen  # a P&R run of a config already listed: its Fmax only
        seen.add((fam, r["engine"], c))
        p = m._engine(c, fam, r["engine"])
        row = {"name": r["name"], "family": fam, "engine": r["engine"]}
        for res in ("fmax_mhz",) if dup else (*RESOURCES, "fmax_mhz"):
            meas = _num(r, res) if r.get(res) not in (None, "") else None
            if res == "uram" and fam != "xcup":
                continue
            if meas is None or (res == "fmax_mhz" and p[res] is None):
                continue
            row[res] = (meas, p[res])
        out.append(row)
    return out


def fit_report(path: str | Path = CALIBRATION_CSV) -> str:
    """Text table: each held-out run's measured vs predicted figures and the relative error; a summary of
    the mean/max absolute relative error per family, engine and resource."""
    rows = held_out_errors(path)
    lines = [
        "Resource model (least-squares FIT to our RTL's synthesis/P&R runs), HELD-OUT runs (not in the fit):",
        f"{'run':12s} {'family':6s} {'engine':6s} " + " ".join(f"{r:>22s}" for r in (*RESOURCES, "fmax_mhz")),
    ]
    errs: dict = {}
    for row in rows:
        cells = []
        for res in (*RESOURCES, "fmax_mhz"):
            if res not in row:
                cells.append(f"{'-':>22s}")
                continue
            meas, pred = row[res]
            e = (pred - meas) / meas if meas else (0.0 if abs(pred) < 0.5 else float("inf"))
            if meas or pred >= 0.5:
                errs.setdefault((row["family"], row["engine"], res), []).append(abs(e))
            shown = f"{pred:,.0f}" if abs(pred) >= 100 else f"{pred:.3g}"
            cells.append(f"{meas:,g} vs {shown} ({100 * e:+.0f}%)".rjust(22))
        lines.append(f"{row['name']:12s} {row['family']:6s} {row['engine']:6s} " + " ".join(cells))
    lines += [
        "",
        "held-out |error|, mean (max), per family and engine:",
        f"{'family':6s} {'engine':6s} " + " ".join(f"{r:>12s}" for r in (*RESOURCES, "fmax_mhz")),
    ]
    for fam, eng in sorted({(f, e) for f, e, _ in errs}):
        cells = []
        for res in (*RESOURCES, "fmax_mhz"):
            v = errs.get((fam, eng, res))
            cells.append(f"{'-' if not v else f'{100 * np.mean(v):.0f}% ({100 * max(v):.0f}%)'}".rjust(12))
        lines.append(f"{fam:6s} {eng:6s} " + " ".join(cells))
    return "\n".join(lines)
