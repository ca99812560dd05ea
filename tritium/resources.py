"""Resource and Fmax model of the engines as functions of the accelerator config — a FIT to real runs of our
RTL through the open flows (``configs/calibration/runs.csv``, written by :mod:`tritium.calibrate`).

Per device family (``ecp5``: Yosys synth_ecp5 on the ULX3S-85F; ``xcup``: Yosys synth_xilinx for the
KV260-class UltraScale+) and per engine, each resource is a least-squares fit (weighted by 1/measured, so the
error minimized is relative) over physically motivated features of the config:

TLMM (G, T tables, Q columns, M tokens, S stored table entries (3^G or (3^G+1)/2), E entry bits):
  * LUT ~ lookup multiplexers Q·T·E·((S−1)/3 [+1 in half mode: the negation]), table banks and their token
    select T·S·E·M, adder trees Q·T·sum_bits, constant
  * FF  ~ looked-up entries Q·T·E, table banks T·S·E·M, adder-tree registers Q·T·sum_bits, Q·M
  * BRAM = the block RAMs of the accumulator memory (tokens·ceil(max_n/Q) words of Q·acc_bits), counted
    from the 18 Kbit block geometries (16K×1 … 512×36), times a fitted factor
GEMM (R×C block, TK k_tile, W bus bytes):
  * DSP = R·C (one multiplier per int8 product, as the flow's pre-synthesis check assumes)
  * LUT ~ R·C (int32 accumulate + shadow), 8·W (beat-wide muxes and registers), operand-buffer bits
    2·TK·(R+C)·8 (distributed RAM), constant
  * FF  ~ R·C (accumulator + shadow), 8·W, constant
  * BRAM ~ operand-buffer bits / 18 Kbit, constant
Fmax (ECP5 only, from the place-and-route runs): clock period = a + b·log2(x) per engine, x = Q·T·S (lookup
mux inputs) for the TLMM and R·C for the GEMM; a system with both engines runs at the lower of the two.

``engine="all"`` (both engines in one design) is the sum of the two engines' figures (measured on the
KV260 config: 68,586 + 23,906 LUT alone vs 92,487 together).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["CALIBRATION_CSV", "FAMILY_OF_BOARD", "ResourceModel", "load_model", "fit_report", "predict"]

CALIBRATION_CSV = Path(__file__).resolve().parent.parent / "configs" / "calibration" / "runs.csv"
FAMILY_OF_BOARD = {"ulx3s": "ecp5", "kv260": "xcup"}
RESOURCES = ("lut", "ff", "bram", "dsp")

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

    @classmethod
    def of(cls, acfg) -> _Cfg:
        t, g = acfg.tlmm, acfg.gemm
        return cls(t.group_size, t.tables, t.columns, t.table_mode, t.tokens, t.act_bits, t.max_k, t.max_n,
                   g.rows, g.cols, g.k_tile, acfg.memory.bus_bytes)

    @classmethod
    def from_row(cls, row: dict) -> _Cfg:
        return cls(*(row[f] if f == "table_mode" else int(row[f]) for f in cls.__dataclass_fields__))


def _tlmm_derived(c: _Cfg) -> dict:
    entries = 3 ** c.group_size
    S = entries if c.table_mode == "full" else (entries + 1) // 2
    E = c.act_bits + 2
    sum_bits = E + math.ceil(math.log2(c.tables)) if c.tables > 1 else E
    chunk = c.group_size * c.tables
    index_bits = math.ceil(math.log2(entries))
    depth = c.tokens * math.ceil(c.max_n / c.columns)
    return {"S": S, "E": E, "sum_bits": sum_bits, "pool": chunk * c.act_bits + c.columns * c.tables * index_bits,
            "depth": depth}


def _features(engine: str, resource: str, c: _Cfg) -> list[float]:
    if engine == "tlmm":
        d = _tlmm_derived(c)
        S, E, T, Q, M = d["S"], d["E"], c.tables, c.columns, c.tokens
        # a lookup is an S:1 multiplexer of E-bit entries (~(S-1)/3 LUT4 per bit), plus a negation in half mode
        mux = (S - 1) / 3 + (1 if c.table_mode == "half" else 0)
        if resource == "lut":
            return [Q * T * E * mux, T * S * E * M, Q * T * d["sum_bits"], 1.0]
        if resource == "ff":
            return [Q * T * E, T * S * E * M, Q * T * d["sum_bits"], Q * M]
        if resource == "bram":
            return [_brams18(d["depth"], Q * 32)]
        return [0.0]
    R, C, TK, W = c.rows, c.cols, c.k_tile, c.bus_bytes
    buf_bits = 2 * TK * (R + C) * 8
    if resource == "lut":
        return [R * C, 8 * W, buf_bits, 1.0]
    if resource == "ff":
        return [R * C, 8 * W, 1.0]
    if resource == "bram":
        return [buf_bits / 18432, 1.0]
    return [R * C]


def _fmax_x(engine: str, c: _Cfg) -> float:
    if engine == "tlmm":
        return math.log2(c.columns * c.tables * _tlmm_derived(c)["S"])
    return math.log2(c.rows * c.cols)


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
                train = [r for r in rows if FAMILY_OF_BOARD.get(r["board"]) == fam and r["engine"] == eng
                         and r["role"] == "train"]
                if not train:
                    continue
                cfgs = [_Cfg.from_row(r) for r in train]
                for res in RESOURCES:
                    X = np.array([_features(eng, res, c) for c in cfgs], float)
                    y = np.array([float(r[res]) for r in train])
                    if res == "dsp" or (res == "bram" and eng == "tlmm") or (not y.any()):
                        # counted, not fitted: DSP = R·C; accumulator BRAMs from the block geometry
                        coef = np.zeros(X.shape[1])
                        coef[0] = 1.0 if y.any() else 0.0
                    else:
                        coef = _lstsq_rel(X, y)
                    self.coef[(fam, eng, res)] = coef
                pr = [(c, float(r["fmax_mhz"])) for c, r in zip(cfgs, train, strict=True) if r.get("fmax_mhz")]
                if len(pr) >= 2:
                    X = np.array([[1.0, _fmax_x(eng, c)] for c, _ in pr])
                    y = np.array([1000.0 / f for _, f in pr])       # period, ns
                    self.fmax_coef[(fam, eng)] = np.linalg.lstsq(X, y, rcond=None)[0]

    def families(self) -> set[str]:
        return {k[0] for k in self.coef}

    def _engine(self, c: _Cfg, family: str, engine: str) -> dict:
        out = {}
        for res in RESOURCES:
            coef = self.coef.get((family, engine, res))
            if coef is None:
                raise KeyError(f"no calibration for {family}/{engine} (see {CALIBRATION_CSV.name})")
            v = float(np.dot(coef, _features(engine, res, c)))
            out[res] = max(0.0, v)
        if family == "xcup":
            out["bram"] = out["bram"] / 2          # reported in RAMB36 units (RAMB18 = ½)
        fc = self.fmax_coef.get((family, engine))
        out["fmax_mhz"] = None if fc is None else 1000.0 / float(fc[0] + fc[1] * _fmax_x(engine, c))
        return out

    def predict_cfg(self, c: _Cfg, family: str, engine: str = "all") -> dict:
        engines = ("tlmm", "gemm") if engine == "all" else (engine,)
        parts = [self._engine(c, family, e) for e in engines]
        out = {r: sum(p[r] for p in parts) for r in RESOURCES}
        fm = [p["fmax_mhz"] for p in parts if p["fmax_mhz"] is not None]
        out["fmax_mhz"] = min(fm) if len(fm) == len(parts) else None
        return out

    def predict(self, acfg, family: str, engine: str = "all") -> dict:
        return self.predict_cfg(_Cfg.of(acfg), family, engine)


@lru_cache(maxsize=4)
def _load(path: str) -> ResourceModel:
    with open(path, newline="") as f:
        return ResourceModel(list(csv.DictReader(f)))


def load_model(path: str | Path = CALIBRATION_CSV) -> ResourceModel:
    return _load(str(Path(path).resolve()))


def predict(acfg, board: str, engine: str = "all", path: str | Path = CALIBRATION_CSV) -> dict:
    return load_model(path).predict(acfg, FAMILY_OF_BOARD[board], engine)


def held_out_errors(path: str | Path = CALIBRATION_CSV) -> list[dict]:
    """Per held-out run: measured and predicted figures (rows never used in the fit)."""
    m = load_model(path)
    out = []
    for r in m.rows:
        fam = FAMILY_OF_BOARD.get(r["board"])
        if r["role"] != "heldout" or (fam, r["engine"], "lut") not in m.coef:
            continue
        p = m._engine(_Cfg.from_row(r), fam, r["engine"])
        row = {"name": r["name"], "family": fam, "engine": r["engine"]}
        for res in (*RESOURCES, "fmax_mhz"):
            meas = _num(r, res)
            if meas is None or (res == "fmax_mhz" and p[res] is None):
                continue
            row[res] = (meas, p[res])
        out.append(row)
    return out


def fit_report(path: str | Path = CALIBRATION_CSV) -> str:
    """Text table: each held-out run's measured vs predicted figures and the relative error; a summary of
    the mean/max absolute relative error per family, engine and resource."""
    rows = held_out_errors(path)
    lines = ["Resource model (least-squares FIT to our RTL's synthesis/P&R runs), HELD-OUT runs (not in the fit):",
             f"{'run':12s} {'family':6s} {'engine':6s} " + " ".join(f"{r:>22s}" for r in (*RESOURCES, "fmax_mhz"))]
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
            cells.append(f"{meas:g} vs {pred:.0f} ({100 * e:+.0f}%)".rjust(22))
        lines.append(f"{row['name']:12s} {row['family']:6s} {row['engine']:6s} " + " ".join(cells))
    lines.append("mean |error| (max) per family/engine/resource: " + "; ".join(
        f"{f}/{e}/{r} {100 * np.mean(v):.0f}% ({100 * max(v):.0f}%)" for (f, e, r), v in sorted(errs.items())))
    return "\n".join(lines)
