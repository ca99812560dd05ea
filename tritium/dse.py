"""Design-space exploration (`tritium dse SPEC --out DIR`).

A sweep spec (YAML, see :func:`load_spec` and docs/dse.md) names a base config, the
config fields to vary, a workload (model preset, prompt, context), objectives, constraints, a budget and a
sampler. Optuna drives the search: its grid sampler or NSGA-II, a persistent study (SQLite in DIR by
default; ``--storage postgresql://…`` shares one study between invocations on many machines).

Determinism: trials are asked and told in the main process only, in batches of a fixed size (the NSGA-II
population, or ``batch`` for the grid), with a seeded sampler; worker processes only evaluate, and results
are told in trial order. So the same spec and seed give the same trials and the same CSV, whatever
``--workers`` is.

Evaluation (:class:`FastEvaluator`) is the cost definition of :mod:`tritium.estimate`, applied fast: the
step Programs of a decoder LM repeat the same few command shapes (all layers are identical), so the
evaluator derives the multiset of command shapes the compiler's lowering emits for a config
(``compiler.lower``'s tiling rules), costs each distinct command once with ``cost_program`` (cached per
shape and the config fields it depends on) and multiplies by its count; host ops (config-independent) are
costed once per device. ``tests/test_dse.py`` checks the result equals :func:`tritium.estimate.estimate`.

Fail fast: a point whose config does not validate, whose weights and KV cache do not fit the address space,
whose modeled resources (:mod:`tritium.resources`, a fit to our RTL's synthesis runs) exceed the board, or
that violates a resource constraint is rejected before evaluation; performance constraints are checked after.
The reason is the ``reason`` column of the CSV (``status``: ok, invalid, memory, fit, constraint).

Resume: the study keeps every finished trial. Workers append each finished evaluation to
``DIR/evaluations.jsonl`` before the main process tells it; on restart, trials left RUNNING by a dead run
of this machine are told from that log when their evaluation had finished, else evaluated now — no finished
point is lost or evaluated twice.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hw import data_files
from hw.config import AcceleratorConfig, ConfigError, config_from_dict, load_config

__all__ = ["SpecError", "Spec", "load_spec", "FastEvaluator", "Workload", "build_workload", "run_dse",
           "METRICS"]


class SpecError(ValueError):
    """A bad sweep spec: the message is one line naming the file and the field."""


#: metric → (description, natural direction). Objectives and constraints may use any of them.
METRICS = {
    "decode_tokens_per_s": ("decode tokens/s at the workload's context (modeled)", "maximize"),
    "prefill_tokens_per_s": ("prefill tokens/s (modeled)", "maximize"),
    "ttft_s": ("time to first token, s (modeled)", "minimize"),
    "j_per_token": ("decode energy per token, J (modeled)", "minimize"),
    "avg_power_w": ("average decode power, W (modeled)", "minimize"),
    "dram_bytes_per_token": ("DRAM bytes per decoded token (modeled)", "minimize"),
    "memory_mib": ("weights + KV cache footprint, MiB", "minimize"),
    "lut": ("LUTs, both engines (resource model fit)", "minimize"),
    "ff": ("flip-flops, both engines (resource model fit)", "minimize"),
    "bram": ("block RAMs, both engines (resource model fit)", "minimize"),
    "dsp": ("DSP blocks, both engines (resource model fit)", "minimize"),
    "fmax_mhz": ("Fmax, lower of the two engines (fit; ECP5 only)", "maximize"),
    "clock_mhz": ("the config's clock", "maximize"),
}
RESOURCE_METRICS = ("lut", "ff", "bram", "dsp", "fmax_mhz", "memory_mib", "clock_mhz")
PERF_METRICS = tuple(m for m in METRICS if m not in RESOURCE_METRICS)
_OPS = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b,
        ">": lambda a, b: a > b, "==": lambda a, b: a == b}
_DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
_SPEC_KEYS = {"name", "base", "board", "fit_margin", "parameters", "workload", "objectives", "constraints",
              "budget", "sampler", "population", "batch", "seed", "clock"}


# ====================================================================================================
# Spec
# ====================================================================================================

@dataclass
class Constraint:
    metric: str
    op: str
    value: float | str          # a number, or another metric's name (e.g. "fmax_mhz >= clock_mhz")
    text: str

    def holds(self, m: dict) -> bool | None:
        a = m.get(self.metric)
        b = m.get(self.value) if isinstance(self.value, str) else self.value
        if a is None or b is None:
            return None
        return _OPS[self.op](a, b)


@dataclass
class Spec:
    path: str
    name: str
    base_path: Path
    base: dict
    board: str | None
    fit_margin: float
    parameters: dict[str, list]
    model: str
    prompt: int
    context: int
    objectives: list[tuple[str, str]]
    constraints: list[Constraint]
    budget: int
    sampler: str
    population: int
    batch: int
    seed: int
    raw: dict = field(default_factory=dict)
    clock: str = "config"       # "fmax": each point runs at its modeled Fmax (ECP5 boards)

    @property
    def fingerprint(self) -> str:
        data = {k: v for k, v in self.raw.items() if k != "budget"}
        data["base_config"] = self.base
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def config_dict(self, params: dict) -> dict:
        d = copy.deepcopy(self.base)
        for path, value in params.items():
            node = d
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return d

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.parameters.values())


def _err(path, fieldname: str, msg: str) -> SpecError:
    return SpecError(f"{path}: {fieldname}: {msg}")


def _int_field(path, raw, key, lo, hi, default=None) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _err(path, key, f"expected an integer in {lo}..{hi}, got {v!r}")
    if not lo <= v <= hi:
        raise _err(path, key, f"{v} is out of range, allowed {lo}..{hi}")
    return v


def _values(path, pname: str, v) -> list:
    where = f"parameters.{pname}"
    if isinstance(v, list):
        vals = v
    elif isinstance(v, dict):
        if set(v) - {"min", "max", "step"} or not {"min", "max"} <= set(v):
            raise _err(path, where, f"a range is {{min, max[, step]}} (integers), got {v!r}")
        lo, hi, st = v["min"], v["max"], v.get("step", 1)
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi, st)) or st < 1 or hi < lo:
            raise _err(path, where, f"a range needs integers min <= max and step >= 1, got {v!r}")
        vals = list(range(lo, hi + 1, st))
    else:
        raise _err(path, where, f"expected a list of values or {{min, max, step}}, got {v!r}")
    if not vals:
        raise _err(path, where, "no values")
    for x in vals:
        if not isinstance(x, (int, float, str)) or isinstance(x, bool):
            raise _err(path, where, f"values must be numbers or strings, got {x!r}")
    if len(set(vals)) != len(vals):
        raise _err(path, where, f"duplicate values in {vals}")
    return vals


def load_spec(path: str | Path) -> Spec:
    """Read and check a sweep spec; any problem → :class:`SpecError` naming the file and the field."""
    path = data_files.resolve(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: top level: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise _err(path, "top level", f"expected a mapping of fields, got {type(raw).__name__}")
    for k in raw:
        if k not in _SPEC_KEYS:
            raise _err(path, k, f"unknown field (known: {', '.join(sorted(_SPEC_KEYS))})")
    for k in ("name", "base", "parameters", "workload", "objectives", "budget"):
        if k not in raw:
            raise _err(path, k, "required field is missing")
    name = raw["name"]
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise _err(path, "name", f"expected a non-empty name of letters, digits, '-', '_', '.', got {name!r}")
    # base config: relative to the spec's folder, else to the working directory / repository
    b = raw["base"]
    if not isinstance(b, str) or not b:
        raise _err(path, "base", f"expected a config file path, got {b!r}")
    cands = [path.parent / b, data_files.resolve(b)]
    base_path = next((c for c in cands if c.exists()), None)
    if base_path is None:
        raise _err(path, "base", f"config file {b!r} not found (relative to {path.parent} or the working directory)")
    try:
        base_cfg = load_config(base_path)
    except ConfigError as e:
        raise _err(path, "base", f"invalid config: {e}") from None
    base = base_cfg.to_dict()
    # parameters
    params = raw["parameters"]
    if not isinstance(params, dict) or not params:
        raise _err(path, "parameters", "expected a non-empty mapping of dotted config fields to values")
    parameters = {}
    for pname, v in params.items():
        if not isinstance(pname, str):
            raise _err(path, f"parameters.{pname}", "expected a dotted config field name such as tlmm.tables")
        node = base
        for part in pname.split("."):
            if not isinstance(node, dict) or part not in node:
                raise _err(path, f"parameters.{pname}", "no such config field (e.g. tlmm.tables, gemm.rows, "
                           "memory.bus_bytes, clock_mhz)")
            node = node[part]
        if isinstance(node, dict) or pname in ("name",):
            raise _err(path, f"parameters.{pname}", "not a scalar config field")
        vals = _values(path, pname, v)
        for x in vals:    # a value invalid on its own (wrong type, out of range) is a spec error
            d = copy.deepcopy(base)
            nd = d
            *parents, leaf = pname.split(".")
            for p in parents:
                nd = nd[p]
            nd[leaf] = x
            try:
                config_from_dict(d, source=str(path))
            except ConfigError as e:
                msg = str(e)
                if f": {pname}: " in msg and ("out of range" in msg or "expected" in msg):
                    raise _err(path, f"parameters.{pname}", f"value {x!r}: {msg.split(': ', 2)[-1]}") from None
        parameters[pname] = vals
    # board
    board = raw.get("board")
    from tritium.resources import FAMILY_OF_BOARD
    if board is not None and board not in FAMILY_OF_BOARD:
        raise _err(path, "board", f"expected one of {', '.join(sorted(FAMILY_OF_BOARD))} (boards with a calibrated "
                   f"resource model), got {board!r}")
    if board is not None:
        from tritium.resources import CALIBRATION_CSV, load_model
        missing = [e for e in ("tlmm", "gemm")
                   if (FAMILY_OF_BOARD[board], e, "lut") not in load_model().coef]
        if missing:
            raise _err(path, "board", f"the resource model has no {FAMILY_OF_BOARD[board]} calibration of the "
                       f"{' and '.join(missing)} engine yet ({CALIBRATION_CSV}; run tritium calibrate)")
    fm = raw.get("fit_margin", 1.0)
    if isinstance(fm, bool) or not isinstance(fm, (int, float)) or not 0 < fm <= 1.5:
        raise _err(path, "fit_margin", f"expected a number in (0, 1.5] (share of the device usable), got {fm!r}")
    # workload
    w = raw["workload"]
    if not isinstance(w, dict):
        raise _err(path, "workload", "expected a mapping with model, prompt, context")
    for k in w:
        if k not in ("model", "prompt", "context"):
            raise _err(path, f"workload.{k}", "unknown field (known: context, model, prompt)")
    from models.presets import PRESETS
    model = w.get("model")
    if model not in PRESETS:
        raise _err(path, "workload.model", f"expected a preset ({', '.join(PRESETS)}), got {model!r}")
    max_seq = PRESETS[model].max_seq
    prompt = _int_field(path, w, "prompt", 1, max_seq) if "prompt" in w else 128
    context = _int_field(path, w, "context", 1, max_seq) if "context" in w else 128
    # objectives
    objs = raw["objectives"]
    if not isinstance(objs, list) or not objs:
        raise _err(path, "objectives", "expected a non-empty list like [{decode_tokens_per_s: max}, {lut: min}]")
    objectives = []
    for i, o in enumerate(objs):
        if isinstance(o, str):
            o = {o: METRICS.get(o, ("", "minimize"))[1]}
        if not isinstance(o, dict) or len(o) != 1:
            raise _err(path, f"objectives[{i}]", f"expected one 'metric: max|min' mapping, got {o!r}")
        (m, d), = o.items()
        if m not in METRICS:
            raise _err(path, f"objectives[{i}]", f"unknown metric {m!r} (known: {', '.join(METRICS)})")
        if d not in _DIRECTIONS:
            raise _err(path, f"objectives[{i}].{m}", f"expected max or min, got {d!r}")
        if m in [x for x, _ in objectives]:
            raise _err(path, f"objectives[{i}]", f"metric {m} appears twice")
        objectives.append((m, _DIRECTIONS[d]))
    # constraints
    cons = raw.get("constraints", []) or []
    if not isinstance(cons, list):
        raise _err(path, "constraints", "expected a list of strings like 'lut <= 100000'")
    constraints = []
    for i, c in enumerate(cons):
        parts = c.split() if isinstance(c, str) else []
        if len(parts) != 3 or parts[1] not in _OPS:
            raise _err(path, f"constraints[{i}]", f"expected 'METRIC OP VALUE' with OP one of "
                       f"{', '.join(_OPS)}, got {c!r}")
        m, op, v = parts
        if m not in METRICS:
            raise _err(path, f"constraints[{i}]", f"unknown metric {m!r} (known: {', '.join(METRICS)})")
        try:
            val: float | str = float(v)
        except ValueError:
            if v not in METRICS:
                raise _err(path, f"constraints[{i}]", f"{v!r} is neither a number nor a metric") from None
            val = v
        if m in ("fmax_mhz",) or val == "fmax_mhz":
            if board is None or FAMILY_OF_BOARD[board] != "ecp5":
                raise _err(path, f"constraints[{i}]", "fmax_mhz is modeled for ECP5 boards only (board: ulx3s)")
        constraints.append(Constraint(m, op, val, c))
    for m, _ in objectives:
        if m == "fmax_mhz" and (board is None or FAMILY_OF_BOARD[board] != "ecp5"):
            raise _err(path, "objectives", "fmax_mhz is modeled for ECP5 boards only (board: ulx3s)")
        if m in ("lut", "ff", "bram", "dsp") and board is None:
            raise _err(path, "objectives", f"{m} needs a board (the resource model's device family)")
    for c in constraints:
        if c.metric in ("lut", "ff", "bram", "dsp") and board is None:
            raise _err(path, "constraints", f"{c.metric} needs a board (the resource model's device family)")
    budget = _int_field(path, raw, "budget", 1, 10_000_000)
    sampler = raw.get("sampler", "nsga2")
    if sampler not in ("grid", "nsga2"):
        raise _err(path, "sampler", f"expected grid or nsga2, got {sampler!r}")
    population = _int_field(path, raw, "population", 2, 100_000, 32)
    batch = _int_field(path, raw, "batch", 1, 100_000, 8)
    seed = _int_field(path, raw, "seed", 0, 2**32 - 1, 0)
    clock = raw.get("clock", "config")
    if clock not in ("config", "fmax"):
        raise _err(path, "clock", f"expected config (each point's clock_mhz) or fmax (its modeled Fmax), got {clock!r}")
    if clock == "fmax" and (board is None or FAMILY_OF_BOARD[board] != "ecp5"):
        raise _err(path, "clock", "fmax needs an ECP5 board (board: ulx3s): Fmax is modeled from its P&R runs")
    if clock == "fmax":
        from tritium.resources import load_model
        if any(("ecp5", e) not in load_model().fmax_coef for e in ("tlmm", "gemm")):
            raise _err(path, "clock", "the resource model has no Fmax fit yet (needs the P&R calibration runs)")
    if clock == "fmax" and "clock_mhz" in parameters:
        raise _err(path, "parameters.clock_mhz", "cannot be swept with clock: fmax")
    return Spec(str(path), name, base_path, base, board, float(fm), parameters, model, prompt, context,
                objectives, constraints, budget, sampler, population, batch, seed, raw, clock)


# ====================================================================================================
# Fast evaluator
# ====================================================================================================

@dataclass
class _Step:
    tokens: int
    pos: int
    host_prog: object          # a minimal Program-like object: the step's host ops and the tensors they read


@dataclass
class Workload:
    """What the evaluator needs of a compiled model, config-independent and picklable."""

    model: str
    prompt: int
    context: int
    max_seq: int
    tlmm_ops: list            # [(k, n, count)]
    attention: list           # [(n_heads, n_kv_heads, head_dim, count)]
    steps: dict               # "prefill" / "decode" → _Step


class _HostProgram:
    """Duck-typed Program for ``cost_program``: only the given commands, host ops and tensors."""

    def __init__(self, commands, host_ops=(), tensors=None):
        self._commands = list(commands)
        self.host_ops = list(host_ops)
        self.tensors = tensors or {}

    def commands(self):
        return self._commands


_WORKLOADS: dict = {}


def build_workload(model: str, prompt: int, context: int, acfg: AcceleratorConfig) -> Workload:
    """Capture the model once (on meta tensors) and record its TLMM ops, attention ops and host ops."""
    key = (model, prompt, context)
    if key in _WORKLOADS:
        return _WORKLOADS[key]
    from hw.isa import HostCommand
    from tritium.estimate import _compiled

    cm = _compiled(model, acfg)
    g = cm.graph
    max_seq = cm.lowering.mc["max_seq"]
    if not 1 <= prompt <= max_seq or not 1 <= context <= max_seq:
        raise ValueError(f"prompt {prompt} / context {context} must be in 1..{max_seq} (the model's max_seq)")
    tl = Counter((op.attrs["k"], op.attrs["n"]) for op in g.ops if op.kind == "tlmm")
    at = Counter((op.attrs["n_heads"], op.attrs["n_kv_heads"], op.attrs["head_dim"]) for op in g.ops
                 if op.kind == "attention")
    steps = {}
    for label, (T, pos) in (("prefill", (prompt, 0)), ("decode", (1, context - 1))):
        prog = cm.program(T, pos, logits="last")
        names = set()
        for op in prog.host_ops:
            names.update(op.inputs[:1])
            names.update(op.outputs[:1])
            if "weight" in op.attrs:
                names.add(op.attrs["weight"])
        tensors = {n: prog.tensors[n] for n in names if n in prog.tensors}
        steps[label] = _Step(T, pos, _HostProgram([HostCommand(i) for i in range(len(prog.host_ops))],
                                                  prog.host_ops, tensors))
    wl = Workload(model, prompt, context, max_seq, sorted((k, n, c) for (k, n), c in tl.items()),
                  sorted((h, hk, hd, c) for (h, hk, hd), c in at.items()), steps)
    _WORKLOADS[key] = wl
    return wl


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


class FastEvaluator:
    """``estimate()``'s figures for one workload and many configs, from per-command-shape costs."""

    def __init__(self, workload: Workload):
        self.w = workload
        self._cmd_cache: dict = {}
        self._host_cache: dict = {}
        self._energy: dict = {}

    def _tlmm_slices(self, t, k: int, n: int):
        # compiler.lower.Lowering.tlmm_slices
        ks = max(t.chunk_k, t.max_k // t.chunk_k * t.chunk_k)
        ns = max(t.columns, t.max_n // t.columns * t.columns)
        return ([min(k, a + ks) - a for a in range(0, k, ks)], [min(n, a + ns) - a for a in range(0, n, ns)])

    def commands(self, acfg: AcceleratorConfig, step: _Step) -> Counter:
        """Multiset of the step's TLMM and GEMM commands (addresses zero: costs do not depend on them)."""
        from hw.gemm_layout import gemm_shape
        from hw.isa import GemmCommand, TlmmCommand

        t, geo = acfg.tlmm, acfg.gemm_geometry
        T, pos = step.tokens, step.pos
        out: Counter = Counter()
        for k, n, cnt in self.w.tlmm_ops:          # compiler.lower.Lowering._lower_tlmm
            kss, nss = self._tlmm_slices(t, k, n)
            for m0 in range(0, T, t.tokens):
                m = min(t.tokens, T - m0)
                for kl in kss:
                    for nl in nss:
                        out[TlmmCommand(m, _ceil(kl, t.chunk_k), _ceil(nl, t.columns))] += cnt
        ctx = pos + T
        for h, hkv, hd, cnt in self.w.attention:   # compiler.lower.Lowering._lower_attention
            M = (h // hkv) * T
            sq = gemm_shape(geo, M, hd, ctx)
            sp = gemm_shape(geo, M, ctx, geo.cols)
            out[GemmCommand(sq.m_tiles, sq.n_tiles, sq.k_tiles)] += hkv * cnt
            out[GemmCommand(sp.m_tiles, sp.n_tiles, sp.k_tiles)] += hkv * _ceil(hd, geo.cols) * cnt
        return out

    def memory_beats(self, acfg: AcceleratorConfig) -> int:
        """Beats of the persistent region (packed weights + KV cache), as compiler.lower allocates it."""
        from hw.program import tlmm_wgt_beat_bytes

        t, geo, W = acfg.tlmm, acfg.gemm_geometry, acfg.memory.bus_bytes
        wb = tlmm_wgt_beat_bytes(t)
        beats = 0
        for k, n, cnt in self.w.tlmm_ops:
            kss, nss = self._tlmm_slices(t, k, n)
            beats += cnt * sum(max(1, _ceil(_ceil(kl, t.chunk_k) * _ceil(nl, t.columns) * wb, W))
                               for kl in kss for nl in nss)
        cap = self.w.max_seq
        for _h, hkv, hd, cnt in self.w.attention:
            kb = _ceil(cap, geo.cols) * _ceil(hd, geo.k_tile) * geo.b_beats
            vb = _ceil(hd, geo.cols) * _ceil(cap, geo.k_tile) * geo.b_beats
            beats += cnt * (hkv * (kb + vb) + 2 * max(1, _ceil(hkv * cap * 4, W)))
        return beats

    def _energy_of(self, family: str) -> dict:
        from sim.energy import load_energy

        if family not in self._energy:
            self._energy[family] = load_energy(family)
        return self._energy[family]

    def step_cost(self, acfg: AcceleratorConfig, step: _Step):
        from hw.isa import TlmmCommand
        from tritium.estimate import StepCost, cost_program

        energy = self._energy_of(acfg.device.family)
        total = StepCost()
        parts = []
        hkey = (id(step), acfg.device, acfg.clock_mhz)
        if hkey not in self._host_cache:
            self._host_cache[hkey] = cost_program(step.host_prog, acfg, energy)
        parts.append((self._host_cache[hkey], 1))
        tkey = (acfg.tlmm, acfg.memory, acfg.clock_mhz, acfg.device)
        gkey = (acfg.gemm, acfg.memory, acfg.clock_mhz, acfg.device)
        for cmd, cnt in self.commands(acfg, step).items():
            key = (tkey if isinstance(cmd, TlmmCommand) else gkey, cmd)
            c = self._cmd_cache.get(key)
            if c is None:
                c = self._cmd_cache[key] = cost_program(_HostProgram([cmd]), acfg, energy)
            parts.append((c, cnt))
        for c, n in parts:
            total.seconds += n * c.seconds
            total.host_seconds += n * c.host_seconds
            total.dram_bytes += n * c.dram_bytes
            total.commands += n * c.commands
            for d in ("engine_cycles", "compute_cycles", "time_by", "dram_bytes_by", "energy_j", "busy_issue"):
                dst, src = getattr(total, d), getattr(c, d)
                for k, v in src.items():
                    dst[k] += n * v
        total.energy_j["static"] = acfg.device.static_w * total.seconds
        if len(self._cmd_cache) > 200_000:
            self._cmd_cache.clear()
        return total

    def estimate(self, acfg: AcceleratorConfig) -> dict:
        """The same dict as :func:`tritium.estimate.estimate` (figures equal up to float rounding)."""
        from tritium.estimate import summarize

        pre = self.step_cost(acfg, self.w.steps["prefill"])
        dec = self.step_cost(acfg, self.w.steps["decode"])
        return summarize(self.w.model, acfg, self.w.prompt, self.w.context, pre, dec)


# ====================================================================================================
# One design point: fail-fast screening, then evaluation
# ====================================================================================================

STATUSES = ("ok", "invalid", "memory", "fit", "constraint", "error")


def screen(spec: Spec, params: dict, evaluator: FastEvaluator | None = None) -> tuple[str, str, dict, dict | None]:
    """(status, reason, resource metrics, config dict) before any long evaluation."""
    from hw.boards import BOARD_SPECS
    from tritium.resources import FAMILY_OF_BOARD, load_model

    d = spec.config_dict(params)
    d["name"] = spec.name
    try:
        acfg = config_from_dict(d, source=f"{spec.path} point")
    except ConfigError as e:
        return "invalid", str(e).split(": ", 1)[-1], {}, None
    m: dict = {"clock_mhz": acfg.clock_mhz}
    if evaluator is not None:
        beats = evaluator.memory_beats(acfg)
        m["memory_mib"] = beats * acfg.memory.bus_bytes / 2**20
        if beats > 1 << acfg.memory.addr_bits:
            return ("memory", f"weights + KV cache need {beats} beats > 2^memory.addr_bits = "
                    f"{1 << acfg.memory.addr_bits}", m, d)
    if spec.board:
        fam = FAMILY_OF_BOARD[spec.board]
        r = load_model().predict(acfg, fam, "all")
        m.update({k: (round(v, 1) if v is not None else None) for k, v in r.items()})
        cap = BOARD_SPECS[spec.board].capacity
        over = [f"{k} {r[k]:.0f} > {spec.fit_margin:g}·{cap[k]}" for k in ("lut", "ff", "bram", "uram", "dsp")
                if k in cap and r[k] > spec.fit_margin * cap[k]]
        if over:
            return "fit", f"does not fit {spec.board} (modeled): " + "; ".join(over), m, d
        if spec.clock == "fmax" and r["fmax_mhz"]:
            d["clock_mhz"] = m["clock_mhz"] = float(f"{r['fmax_mhz']:.1f}")
    for c in spec.constraints:
        if c.metric in RESOURCE_METRICS and (isinstance(c.value, float) or c.value in RESOURCE_METRICS):
            if c.holds(m) is False:
                return "constraint", f"violates {c.text} ({c.metric} = {m[c.metric]:g})", m, d
    return "ok", "", m, d


def evaluate_point(evaluator: FastEvaluator, spec: Spec, cfg_dict: dict, res: dict) -> tuple[str, str, dict]:
    acfg = config_from_dict(cfg_dict, source=f"{spec.path} point")
    est = evaluator.estimate(acfg)
    m = dict(res)
    for k in PERF_METRICS:
        m[k] = est[k]
    for c in spec.constraints:
        if c.holds(m) is False:
            return "constraint", f"violates {c.text} ({c.metric} = {m[c.metric]:.4g})", m
    return "ok", "", m


# ---- worker processes -------------------------------------------------------------------------------

_W: dict = {}


def _worker_init(spec: Spec, workload: Workload, log_path: str, parent: int) -> None:
    try:           # die with the main process (Linux): no orphan evaluates and logs after a kill
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass
    if parent and os.getppid() != parent:
        os._exit(0)
    _W.update(spec=spec, ev=FastEvaluator(workload), log=log_path, parent=parent)


def _worker_eval(job: tuple) -> tuple:
    uid, cfg_dict, res, meta = job
    try:
        status, reason, m = evaluate_point(_W["ev"], _W["spec"], cfg_dict, res)
    except Exception as e:        # a bug must not kill the sweep; it is recorded
        status, reason, m = "error", f"{type(e).__name__}: {e}".splitlines()[0], dict(res)
    if _W["parent"] and os.getppid() != _W["parent"]:
        os._exit(0)
    _append_log(_W["log"], {"uid": uid, "status": status, "reason": reason, "metrics": m, "pid": os.getpid(),
                            **meta})
    return uid, status, reason, m


def _append_log(path: str, rec: dict) -> None:
    line = (json.dumps(rec, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(path: Path) -> list[dict]:
    """Records of ``evaluations.jsonl`` (a line cut by a kill is skipped)."""
    out = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


# ====================================================================================================
# The sweep
# ====================================================================================================

def _mask_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://")[0] + "://***"


def _sqlite_pragmas() -> None:
    """WAL journal, synchronous=NORMAL for SQLite studies: a commit survives a killed process (not a power
    cut), at a fraction of the fsyncs; readers and writers of several processes do not block each other."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if getattr(_sqlite_pragmas, "done", False):
        return

    @event.listens_for(Engine, "connect")
    def _on_connect(dbapi_conn, _record):
        if isinstance(dbapi_conn, sqlite3.Connection):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

    _sqlite_pragmas.done = True


def _make_sampler(spec: Spec, seed: int):
    import optuna

    if spec.sampler == "grid":
        class _Grid(optuna.samplers.GridSampler):
            # GridSampler.after_trial calls study.stop(), which is only legal inside study.optimize();
            # this driver uses ask/tell and stops by itself when the grid is exhausted.
            def after_trial(self, study, trial, state, values):
                pass
        return _Grid(spec.parameters, seed=seed)
    return optuna.samplers.NSGAIISampler(population_size=spec.population, seed=seed)


def _frozen(params: dict, dists: dict, system_attrs: dict, uid: str, status: str, reason: str, m: dict,
            spec: Spec):
    import optuna
    from optuna.trial import TrialState

    state = {"ok": TrialState.COMPLETE, "error": TrialState.FAIL}.get(status, TrialState.PRUNED)
    values = [float(m[k]) for k, _ in spec.objectives] if state == TrialState.COMPLETE else None
    return optuna.trial.create_trial(
        state=state, values=values, params=params, distributions=dists, system_attrs=system_attrs,
        user_attrs={"uid": uid, "result": {"status": status, "reason": reason, "metrics": m}})


def run_dse(spec: Spec, out: Path, workers: int = 0, storage: str | None = None, top: int = 5,
            verify: int = 0, progress: bool = True, log=print) -> dict:
    """Run (or resume) the sweep of ``spec``; write ``results.csv`` and ``pareto.png`` into ``out``.

    Sampling happens on an in-memory Optuna study in this process (fast ask/tell); every finished trial is
    added to the persistent study (``storage``; SQLite in ``out`` by default) with its parameters, values,
    sampler state (system attributes) and result. On start, the persistent study's trials are loaded into
    the in-memory one, together with evaluations that finished in ``out/evaluations.jsonl`` but were not
    stored yet (a killed run): nothing finished is lost or evaluated again. With a shared storage, each batch
    first loads the trials other invocations have stored, so all samplers see the whole study."""
    import uuid

    import optuna
    from optuna.distributions import CategoricalDistribution, distribution_to_json, json_to_distribution

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = Path(out)
    if storage is None:                      # the SQLite study lives in out; a remote one is reached first
        out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    log_path = out / "evaluations.jsonl"
    study_name = f"dse-{spec.name}"
    if url.startswith("sqlite"):
        _sqlite_pragmas()
    if url.startswith("postgresql://"):      # SQLAlchemy 2.1 defaults to psycopg 3; we depend on psycopg2-binary
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    directions = [d for _, d in spec.objectives]
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(6):      # invocations starting together on a fresh database race to create the tables
        try:
            stor = optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True} if url.startswith("postgres") else None)
            db = optuna.create_study(study_name=study_name, storage=stor, directions=directions,
                                     load_if_exists=True)
            break
        except (IntegrityError, ProgrammingError):
            if attempt == 5:
                raise
            time.sleep(0.5 + attempt)
    fp = db.user_attrs.get("spec_fingerprint")
    if fp is None:
        db.set_user_attr("spec_fingerprint", spec.fingerprint)
        db.set_user_attr("spec", spec.raw)
    elif fp != spec.fingerprint:
        raise SpecError(f"{spec.path}: top level: study {study_name!r} in {_mask_url(url)} was created from a "
                        "different spec (only budget may change on resume); use another --out or --storage")
    out.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    # One invocation: the sampler's seed is the spec's (reproducible). Several invocations sharing a storage
    # must not all draw the same points: their seeds differ (such runs are not reproducible point by point).
    seed = spec.seed if storage is None else (spec.seed * 1_000_003 + int(run_id, 16)) % 2**32
    mem = optuna.create_study(sampler=_make_sampler(spec, seed), directions=directions)
    names = list(spec.parameters)
    dists = {n: CategoricalDistribution(spec.parameters[n]) for n in names}

    known: set[str] = set()

    def sync() -> int:
        """Load stored trials this process has not seen; return the stored count."""
        trials = db.get_trials(deepcopy=False)
        new = [t for t in trials if t.user_attrs.get("uid") not in known]
        for t in sorted(new, key=lambda t: t.number):
            known.add(t.user_attrs.get("uid"))
            mem.add_trial(t)
        return len(trials)

    def store(frozen) -> None:
        db.add_trial(frozen)
        known.add(frozen.user_attrs["uid"])
        mem_frozen.append(frozen)

    mem_frozen: list = []
    n_stored = sync()
    # -- resume: evaluations that finished in a killed run but were never stored --
    recovered = 0
    for rec in read_log(log_path):
        if rec.get("study") != study_name or rec["uid"] in known or "params" not in rec:
            continue
        d = {n: json_to_distribution(j) for n, j in rec["distributions"].items()}
        fr = _frozen(rec["params"], d, rec["system_attrs"], rec["uid"], rec["status"], rec["reason"],
                     rec["metrics"], spec)
        store(fr)
        mem.add_trial(fr)
        recovered += 1
    n_stored += recovered
    log(f"[dse] study {study_name} in {_mask_url(url)}: {n_stored} stored trial(s)"
        + (f" ({recovered} recovered from {log_path.name})" if recovered else "")
        + f"; budget {spec.budget}, sampler {spec.sampler}"
        + (f" (grid of {spec.grid_size})" if spec.sampler == "grid" else f" (population {spec.population})"))

    base_acfg = config_from_dict({**spec.base, "name": spec.name}, source=str(spec.base_path))
    t0 = time.perf_counter()
    workload = build_workload(spec.model, spec.prompt, spec.context, base_acfg)
    evaluator = FastEvaluator(workload)
    log(f"[dse] workload {spec.model}, prompt {spec.prompt}, context {spec.context}: captured in "
        f"{time.perf_counter() - t0:.1f} s")

    pool = None
    if workers > 0 and n_stored < spec.budget:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(workers, initializer=_worker_init,
                                           initargs=(spec, workload, str(log_path), os.getpid()))
    else:
        _worker_init(spec, workload, str(log_path), 0)

    def run_jobs(jobs):
        if pool is None:
            yield from map(_worker_eval, jobs)
        else:
            yield from pool.imap(_worker_eval, jobs, chunksize=max(1, len(jobs) // (4 * workers)))

    n_eval = 0
    t_start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.budget, initial=min(spec.budget, n_stored), unit="pt", desc="dse",
                   file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    try:
        while True:
            n_stored = sync() if storage is not None else n_stored
            left = spec.budget - n_stored
            if spec.sampler == "grid":
                left = min(left, spec.grid_size - len({t.system_attrs.get("grid_id") for t in mem.trials
                                                       if t.state.is_finished()} - {None}))
            if left <= 0:
                break
            pending = []        # (trial, uid, params) in ask order
            jobs = []
            results: dict[str, tuple] = {}
            for _ in range(min(spec.batch, left)):
                trial = mem.ask(dists)
                uid = f"{run_id}:{trial.number}"
                params = {n: trial.params[n] for n in names}
                status, reason, res, d = screen(spec, params, evaluator)
                pending.append((trial, uid, params))
                if status != "ok":
                    results[uid] = (status, reason, res)
                else:
                    sa = mem._storage.get_trial_system_attrs(trial._trial_id)
                    jobs.append((uid, d, res, {
                        "study": study_name, "params": params, "system_attrs": sa,
                        "distributions": {n: distribution_to_json(dists[n]) for n in names}}))
            it = run_jobs(jobs)
            # tell in ask order (deterministic); store each as soon as it and all before it are done
            for trial, uid, params in pending:
                while uid not in results:
                    u, status, reason, m = next(it)
                    results[u] = (status, reason, m)
                    n_eval += 1
                status, reason, m = results[uid]
                sa = mem._storage.get_trial_system_attrs(trial._trial_id)
                fr = _frozen(params, dists, sa, uid, status, reason, m, spec)
                if fr.state.name == "COMPLETE":
                    mem.tell(trial, fr.values)
                else:
                    mem.tell(trial, state=fr.state)
                sa = mem._storage.get_trial_system_attrs(trial._trial_id)    # after_trial may add some
                store(_frozen(params, dists, sa, uid, status, reason, m, spec))
                n_stored += 1
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    wall = time.perf_counter() - t_start

    rows = collect(db, spec)
    if verify:
        verify_points(db, spec, rows, verify, out, log)
        rows = collect(db, spec)
    csv_path = write_csv(out / "results.csv", rows, spec)
    png = plot_pareto(out / "pareto.png", rows, spec)
    table = top_table(rows, spec, top)
    log(table)
    log(f"[dse] {n_eval} point(s) evaluated in this run in {wall:.1f} s"
        + (f" ({60 * n_eval / wall:.0f} points/min)" if wall > 0 and n_eval else "")
        + f"; results {csv_path}, Pareto plot {png}")
    return {"rows": rows, "csv": csv_path, "png": png, "evaluated": n_eval, "seconds": wall, "table": table,
            "stored": n_stored}


# ---- results ----------------------------------------------------------------------------------------

def collect(study, spec: Spec) -> list[dict]:
    rows = []
    verified = study.user_attrs.get("verified", {})
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        r = t.user_attrs.get("result")
        if r is None:
            continue
        row = {"trial": t.number, "status": r["status"], "reason": r["reason"]}
        row.update({n: t.params.get(n) for n in spec.parameters})
        row.update(r["metrics"])
        row["verified"] = verified.get(t.user_attrs.get("uid"), {}).get("result", "")
        rows.append(row)
    _mark_pareto(rows, spec)
    return rows


def _mark_pareto(rows: list[dict], spec: Spec) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    sign = [1.0 if d == "maximize" else -1.0 for _, d in spec.objectives]
    vals = [[s * r[m] for s, (m, _) in zip(sign, spec.objectives, strict=True)] for r in ok]
    for r in rows:
        r["pareto"] = 0
    for i, r in enumerate(ok):
        vi = vals[i]
        dominated = any(all(a >= b for a, b in zip(vj, vi, strict=True)) and any(a > b for a, b in zip(vj, vi, strict=True))
                        for j, vj in enumerate(vals) if j != i)
        r["pareto"] = 0 if dominated else 1


def _columns(spec: Spec) -> list[str]:
    return (["trial", "status", "reason", *spec.parameters, *METRICS, "pareto", "verified"])


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 9)) if abs(v) < 1e12 else repr(v)
    return str(v)


def write_csv(path: Path, rows: list[dict], spec: Spec) -> Path:
    cols = _columns(spec)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([_fmt(r.get(c)) for c in cols])
    os.replace(tmp, path)
    return path


def plot_pareto(path: Path, rows: list[dict], spec: Spec) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    front = sorted((r for r in ok if r["pareto"]), key=lambda r: r[spec.objectives[0][0]])
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
    if len(spec.objectives) >= 2:
        (mx, dx), (my, dy) = spec.objectives[:2]
        ax.scatter([r[mx] for r in ok], [r[my] for r in ok], s=8, c="0.7", label=f"evaluated ({len(ok)})")
        if len(spec.objectives) > 2:
            ax.scatter([r[mx] for r in front], [r[my] for r in front], s=10, c="C1",
                       label=f"Pareto in all {len(spec.objectives)} objectives ({len(front)})")
        sx, sy = (1 if dx == "maximize" else -1), (1 if dy == "maximize" else -1)
        pts = sorted({(r[mx], r[my]) for r in ok}, key=lambda q: (-sx * q[0], -sy * q[1]))
        front2, best = [], None
        for x, y in pts:                      # non-dominated in the two plotted objectives
            if best is None or sy * y > sy * best:
                front2.append((x, y))
                best = y
        ax.step([x for x, _ in front2], [y for _, y in front2], "o-", c="C3", ms=4, where="post",
                label=f"Pareto front of these two ({len(front2)})")
        ver = [r for r in front if r.get("verified") == "yes"]
        if ver:
            ax.scatter([r[mx] for r in ver], [r[my] for r in ver], s=80, facecolors="none", edgecolors="k",
                       label="verified (RTL cycles = model)")
        ax.set_xlabel(f"{mx} ({dx[:3]}) — {METRICS[mx][0]}", fontsize=8)
        ax.set_ylabel(f"{my} ({dy[:3]}) — {METRICS[my][0]}", fontsize=8)
    else:
        (m, d), = spec.objectives
        ax.plot([r["trial"] for r in ok], [r[m] for r in ok], ".", c="0.6", label="evaluated")
        ax.plot([r["trial"] for r in front], [r[m] for r in front], "o", c="C3", label="best")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{m} ({d[:3]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"DSE {spec.name}: {spec.model}, prompt {spec.prompt}, context {spec.context} (modeled)",
                 fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def pareto_top(rows: list[dict], spec: Spec, k: int) -> list[dict]:
    m, d = spec.objectives[0]
    front = [r for r in rows if r["status"] == "ok" and r["pareto"]]
    out, seen = [], set()
    for r in sorted(front, key=lambda r: (-r[m] if d == "maximize" else r[m], r["trial"])):
        key = tuple(r[n] for n in spec.parameters)       # NSGA-II may sample a point again: list it once
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out[:k]


def top_table(rows: list[dict], spec: Spec, k: int) -> str:
    from tritium.report import table

    best = pareto_top(rows, spec, k)
    counts = Counter(r["status"] for r in rows)
    objs = [m for m, _ in spec.objectives]
    extra = [m for m in ("decode_tokens_per_s", "ttft_s", "j_per_token", "lut") if m not in objs]
    cols = ["trial", *spec.parameters, *objs, *extra, "verified"]
    body = [[r.get(c, "") if not isinstance(r.get(c), float) else float(f"{r[c]:.4g}") for c in cols] for r in best]
    head = (f"top {len(best)} Pareto point(s) by {objs[0]} (modeled); points: "
            + ", ".join(f"{s} {counts[s]}" for s in STATUSES if counts[s]))
    return table(cols, body, title=head)


# ---- verification -----------------------------------------------------------------------------------

def verify_config(acfg: AcceleratorConfig, model_cfg: dict, seed: int = 0,
                  build_root: Path = Path("build/dse-verify")) -> tuple[bool, str]:
    """Co-simulate a representative layer of the workload on both engines (RTL under Verilator vs the
    cycle model): a TLMM slice of the model's q projection (K = d_model, 64 columns, tokens = tlmm.tokens)
    and one attention head's Q·Kᵀ at a short context. True iff outputs and cycles are equal."""
    import numpy as np

    from sim.cosim import run_gemm_cosim, run_tlmm_cosim
    from sim.gemm_cases import GemmCase
    from sim.tlmm_cases import TlmmCase

    rng = np.random.default_rng(seed)
    t = acfg.tlmm
    d = min(model_cfg["d_model"], t.max_k)
    n = min(64, t.max_n)
    lo, hi = -(1 << (t.act_bits - 1)), (1 << (t.act_bits - 1)) - 1
    tc = TlmmCase(f"q_proj-{n}x{d}-{t.tokens}tok", rng.integers(-1, 2, (n, d)).astype(np.int8),
                  rng.integers(lo, hi + 1, (t.tokens, d)).astype(np.int8))
    hd = model_cfg["d_model"] // model_cfg["n_heads"]
    rows = max(1, acfg.gemm.rows)
    gc = GemmCase(f"QK^T-head-{rows}x{hd}x32", rng.integers(-128, 128, (rows, hd)).astype(np.int8),
                  rng.integers(-128, 128, (hd, 32)).astype(np.int8))
    rt = run_tlmm_cosim(acfg, [tc], build_root=build_root, quiet=True)
    rg = run_gemm_cosim(acfg, [gc], build_root=build_root, quiet=True)
    ok = rt.ok and rg.ok
    return ok, (f"TLMM RTL {rt.rtl_cycles} / model {rt.model_cycles} cycles, GEMM RTL {rg.rtl_cycles} / "
                f"model {rg.model_cycles} cycles, outputs {'equal' if rt.outputs_equal and rg.outputs_equal else 'DIFFER'}")


def verify_points(study, spec: Spec, rows: list[dict], k: int, out: Path, log=print) -> None:
    from tritium.estimate import _compiled

    base_acfg = config_from_dict({**spec.base, "name": spec.name}, source=str(spec.base_path))
    mc = _compiled(spec.model, base_acfg).lowering.mc
    for r in pareto_top(rows, spec, k):
        if r.get("verified") in ("yes", "no"):
            continue
        params = {n: r[n] for n in spec.parameters}
        acfg = config_from_dict({**spec.config_dict(params), "name": f"{spec.name}-t{r['trial']}"},
                                source=f"{spec.path} trial {r['trial']}")
        log(f"[dse] verifying trial {r['trial']} (Verilator builds of both engines, ~1 min) ...")
        try:
            ok, detail = verify_config(acfg, mc, build_root=out / "verify")
        except Exception as e:
            ok, detail = False, f"{type(e).__name__}: {e}".splitlines()[0]
        uid = next(t.user_attrs["uid"] for t in study.get_trials(deepcopy=False) if t.number == r["trial"])
        ver = study.user_attrs.get("verified", {})
        ver[uid] = {"result": "yes" if ok else "no", "detail": detail}
        study.set_user_attr("verified", ver)
        log(f"[dse]   trial {r['trial']}: {'verified' if ok else 'NOT verified'}: {detail}")
