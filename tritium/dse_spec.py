"""Sweep specs of the design-space exploration (``tritium dse SPEC``): reading and checking.

The document's shape (fields, types, ranges, defaults) is declared once as pydantic models
(:class:`SpecModel`); what needs the repository — the base config, config fields and their values, model
presets, metrics, the resource model — is checked by the small functions after it. Any problem is one
:class:`SpecError` line ``FILE: FIELD: what is wrong``. YAML is read in :func:`read_spec_document` only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hw import data_files
from hw.config import ConfigError, config_from_dict, load_config

__all__ = [
    "SpecError",
    "Spec",
    "Constraint",
    "SpecModel",
    "load_spec",
    "read_spec_document",
    "METRICS",
    "RESOURCE_METRICS",
    "PERF_METRICS",
    "MAX_VALUES_PER_PARAMETER",
    "MAX_GRID_POINTS",
    "MAX_WORKLOADS",
    "AGGREGATES",
]


#: a parameter's values (a list or an expanded {min, max, step} range) — each is checked against the config
MAX_VALUES_PER_PARAMETER = 10_000
#: the grid sampler enumerates the whole grid (in a seeded order)
MAX_GRID_POINTS = 10_000_000
#: a point is evaluated on every workload (model × prompt × context)
MAX_WORKLOADS = 256
#: how a point's objective is formed from its per-workload values (docs/dse.md, "Workload sweeps")
AGGREGATES = ("worst", "mean", "first")


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
    **{
        m: (f"{what}, top level: both engines + decoder/DMA (resource model fit)", "minimize")
        for m, what in (("lut", "LUTs"), ("ff", "flip-flops"), ("bram", "block RAMs"), ("dsp", "DSP blocks"))
    },
    "fmax_mhz": ("Fmax, lower of the two engines (fit; ECP5 only)", "maximize"),
    "clock_mhz": ("the config's clock", "maximize"),
}
RESOURCE_METRICS = ("lut", "ff", "bram", "dsp", "fmax_mhz", "memory_mib", "clock_mhz")
PERF_METRICS = tuple(m for m in METRICS if m not in RESOURCE_METRICS)
_OPS = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "==": lambda a, b: a == b,
}
_DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
_BOARD_RESOURCES = ("lut", "ff", "bram", "dsp")


# ====================================================================================================
# The document's shape
# ====================================================================================================


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RangeModel(_Strict):
    """``{min, max, step}``: the integers min, min + step, … ≤ max."""

    min: int
    max: int
    step: int = Field(1, ge=1)


_Tokens = Annotated[int, Field(ge=1)]


class WorkloadModel(_Strict):
    """One workload, or lists: every point is evaluated on each model × prompt × context."""

    model: str | list[str]
    prompt: _Tokens | list[_Tokens] = 128
    context: _Tokens | list[_Tokens] = 128
    aggregate: Literal["worst", "mean", "first"] = "worst"


class SpecModel(_Strict):
    """A sweep spec as written (see README "Design-space exploration")."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    base: str = Field(min_length=1)
    board: str | None = None
    fit_margin: float = Field(1.0, gt=0, le=1.5)
    parameters: dict[str, Any] = Field(min_length=1)
    workload: WorkloadModel
    objectives: list[Any] = Field(min_length=1)
    constraints: list[Any] | None = None
    budget: int = Field(ge=1, le=10_000_000)
    sampler: Literal["grid", "nsga2"] = "nsga2"
    population: int = Field(32, ge=2, le=100_000)
    batch: int = Field(8, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    clock: Literal["config", "fmax"] = "config"


#: what each field expects, for error messages
_HINTS = {
    "name": "expected a non-empty name of letters, digits, '-', '_', '.'",
    "base": "expected a config file path",
    "board": "expected a board name",
    "fit_margin": "expected a number in (0, 1.5] (share of the device usable)",
    "parameters": "expected a non-empty mapping of dotted config fields to values",
    "workload": "expected a mapping with model, prompt, context (each one value or a list), aggregate",
    "workload.model": "expected a preset name or a list of them",
    "workload.prompt": "expected an integer >= 1 or a list of them",
    "workload.context": "expected an integer >= 1 or a list of them",
    "workload.aggregate": "expected worst, mean or first",
    "objectives": "expected a non-empty list like [{decode_tokens_per_s: max}, {lut: min}]",
    "constraints": "expected a list of strings like 'lut <= 100000'",
    "budget": "expected an integer in 1..10000000",
    "sampler": "expected grid or nsga2",
    "population": "expected an integer in 2..100000",
    "batch": "expected an integer in 1..100000",
    "seed": f"expected an integer in 0..{2**32 - 1}",
    "clock": "expected config (each point's clock_mhz) or fmax (its modeled Fmax)",
    "min": "a range is {min, max[, step]} of integers, step >= 1",
}


@dataclass
class Constraint:
    metric: str
    op: str
    value: float | str  # a number, or another metric's name (e.g. "fmax_mhz >= clock_mhz")
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
    clock: str = "config"  # "fmax": each point runs at its modeled Fmax (ECP5 boards)
    #: every (model, prompt, context) a point is evaluated on: models outer, contexts fastest; model,
    #: prompt and context above are the first one's
    workloads: list[tuple[str, int, int]] = field(default_factory=list)
    aggregate: str = "worst"  # a point's objective over its workloads (AGGREGATES)

    def __post_init__(self):
        if not self.workloads:
            self.workloads = [(self.model, self.prompt, self.context)]

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


# ====================================================================================================
# Reading
# ====================================================================================================


def _err(path, fieldname: str, msg: str) -> SpecError:
    return SpecError(f"{path}: {fieldname}: {msg}")


def read_spec_document(path: Path) -> Any:
    """The YAML document of ``path`` (the only place that parses YAML)."""
    from hw.yaml_safe import load_yaml

    try:
        return load_yaml(path, "sweep spec")
    except ConfigError as e:
        raise SpecError(str(e)) from None


def _loc(loc: tuple, prefix: str = "") -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "top level"


def _known(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        ann = model.model_fields[part].annotation if part in model.model_fields else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    return sorted(model.model_fields)


def _validation_error(path, e: ValidationError, model: type[BaseModel], prefix: str = "") -> SpecError:
    """The first problem of a pydantic error as one line (unknown fields first, then missing ones)."""
    rank = {"extra_forbidden": 0, "missing": 1}
    x = min(e.errors(), key=lambda x: rank.get(x["type"], 2))
    where = _loc(x["loc"], prefix)
    if x["type"] == "extra_forbidden":
        return _err(path, where, f"unknown field (known: {', '.join(_known(model, x['loc']))})")
    if x["type"] == "missing":
        return _err(path, where, "required field is missing")
    keys = [where, where.split("[")[0], x["loc"][-1] if x["loc"] else ""]
    hint = next((_HINTS[k] for k in keys if k in _HINTS), x["msg"])
    return _err(path, where, f"{hint}, got {x.get('input')!r}")


def _parse(path: Path, raw: Any) -> SpecModel:
    if not isinstance(raw, dict):
        raise _err(path, "top level", f"expected a mapping of fields, got {type(raw).__name__}")
    try:
        return SpecModel.model_validate(raw)
    except ValidationError as e:
        raise _validation_error(path, e, SpecModel) from None


# ---- the base config and the parameters -------------------------------------------------------------


def _base_config(path: Path, b: str) -> tuple[Path, dict]:
    """The base config, relative to the spec's folder, else to the working directory / repository."""
    cands = [path.parent / b, data_files.resolve(b)]
    base_path = next((c for c in cands if c.exists()), None)
    if base_path is None:
        raise _err(
            path, "base", f"config file {b!r} not found (relative to {path.parent} or the working directory)"
        )
    try:
        return base_path, load_config(base_path).to_dict()
    except ConfigError as e:
        raise _err(path, "base", f"invalid config: {e}") from None


def _range_values(path: Path, where: str, v: dict) -> list[int]:
    try:
        r = RangeModel.model_validate(v)
    except ValidationError:
        raise _err(
            path, where, f"a range is {{min, max[, step]}} of integers with step >= 1, got {v!r}"
        ) from None
    if r.max < r.min:
        raise _err(path, where, f"a range needs min <= max, got {v!r}")
    n = (r.max - r.min) // r.step + 1
    if n > MAX_VALUES_PER_PARAMETER:  # before expanding it
        raise _err(
            path,
            where,
            f"the range has {n} values, more than the limit of {MAX_VALUES_PER_PARAMETER} "
            "per parameter (use a larger step)",
        )
    return list(range(r.min, r.max + 1, r.step))


def _values(path: Path, pname: str, v: Any) -> list:
    where = f"parameters.{pname}"
    if isinstance(v, dict):
        vals = _range_values(path, where, v)
    elif isinstance(v, list):
        vals = v
    else:
        raise _err(path, where, f"expected a list of values or {{min, max, step}}, got {v!r}")
    if not vals:
        raise _err(path, where, "no values")
    if len(vals) > MAX_VALUES_PER_PARAMETER:
        raise _err(
            path,
            where,
            f"{len(vals)} values, more than the limit of {MAX_VALUES_PER_PARAMETER} per parameter",
        )
    for x in vals:
        if (
            not isinstance(x, (int, float, str))
            or isinstance(x, bool)
            or (isinstance(x, float) and not math.isfinite(x))
        ):
            raise _err(path, where, f"values must be finite numbers or strings, got {x!r}")
    if len(set(vals)) != len(vals):
        raise _err(path, where, f"duplicate values in {vals}")
    return vals


def _config_leaf(path: Path, base: dict, pname: Any) -> None:
    """``pname`` must name a scalar field of the config."""
    where = f"parameters.{pname}"
    if not isinstance(pname, str):
        raise _err(path, where, "expected a dotted config field name such as tlmm.tables")
    node: Any = base
    for part in pname.split("."):
        if not isinstance(node, dict) or part not in node:
            raise _err(
                path, where, "no such config field (e.g. tlmm.tables, gemm.rows, memory.bus_bytes, clock_mhz)"
            )
        node = node[part]
    if isinstance(node, dict) or pname == "name":
        raise _err(path, where, "not a scalar config field")


def _check_value(path: Path, base: dict, pname: str, x: Any) -> None:
    """A value invalid on its own (wrong type, out of range) is a spec error."""
    d = copy.deepcopy(base)
    node = d
    *parents, leaf = pname.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = x
    try:
        config_from_dict(d, source=str(path))
    except ConfigError as e:
        msg = str(e)
        if f": {pname}: " in msg and ("out of range" in msg or "expected" in msg):
            raise _err(path, f"parameters.{pname}", f"value {x!r}: {msg.split(': ', 2)[-1]}") from None


def _parameters(path: Path, base: dict, params: dict, sampler: str) -> dict[str, list]:
    out = {}
    for pname, v in params.items():
        _config_leaf(path, base, pname)
        vals = _values(path, pname, v)
        for x in vals:
            _check_value(path, base, pname, x)
        out[pname] = vals
    size = math.prod(len(v) for v in out.values())
    if sampler == "grid" and size > MAX_GRID_POINTS:
        raise _err(
            path,
            "parameters",
            f"the grid has {size} points, more than the grid sampler's limit of "
            f"{MAX_GRID_POINTS} (sample it with sampler: nsga2, or fewer values)",
        )
    return out


# ---- board, workload, objectives, constraints, clock ------------------------------------------------


def _board(path: Path, board: str | None) -> str | None:
    from tritium.resources import CALIBRATION_CSV, FAMILY_OF_BOARD, load_model

    if board is None:
        return None
    if board not in FAMILY_OF_BOARD:
        raise _err(
            path,
            "board",
            f"expected one of {', '.join(sorted(FAMILY_OF_BOARD))} (boards with a calibrated "
            f"resource model), got {board!r}",
        )
    missing = [e for e in ("tlmm", "gemm") if (FAMILY_OF_BOARD[board], e, "lut") not in load_model().coef]
    if missing:
        raise _err(
            path,
            "board",
            f"the resource model has no {FAMILY_OF_BOARD[board]} calibration of the "
            f"{' and '.join(missing)} engine yet ({CALIBRATION_CSV}; run tritium calibrate)",
        )
    return board


def _is_ecp5(board: str | None) -> bool:
    from tritium.resources import FAMILY_OF_BOARD

    return board is not None and FAMILY_OF_BOARD[board] == "ecp5"


def _listed(path: Path, key: str, v: Any) -> list:
    vals = v if isinstance(v, list) else [v]
    if not vals:
        raise _err(path, f"workload.{key}", "an empty list (give one value or a non-empty list)")
    if len(set(vals)) != len(vals):
        raise _err(path, f"workload.{key}", f"duplicate values in {vals}")
    return vals


def _workload(path: Path, w: WorkloadModel) -> list[tuple[str, int, int]]:
    """Every (model, prompt, context) of the workload section: models outer, contexts fastest."""
    from models.presets import PRESETS

    models = _listed(path, "model", w.model)
    prompts, contexts = _listed(path, "prompt", w.prompt), _listed(path, "context", w.context)
    for m in models:
        if m not in PRESETS:
            raise _err(path, "workload.model", f"expected a preset ({', '.join(PRESETS)}), got {m!r}")
    n = len(models) * len(prompts) * len(contexts)
    if n > MAX_WORKLOADS:
        raise _err(
            path,
            "workload",
            f"{n} workloads (model × prompt × context), more than the limit of {MAX_WORKLOADS}",
        )
    short = min(models, key=lambda m: PRESETS[m].max_seq)
    max_seq = PRESETS[short].max_seq
    for key, vals in (("prompt", prompts), ("context", contexts)):
        for v in vals:
            if v > max_seq:
                raise _err(
                    path,
                    f"workload.{key}",
                    f"{v} is out of range, allowed 1..{max_seq} (the max_seq of {short})",
                )
    return [(m, p, c) for m in models for p in prompts for c in contexts]


def _objective(path: Path, i: int, o: Any, board: str | None) -> tuple[str, str]:
    if isinstance(o, str):
        o = {o: METRICS.get(o, ("", "minimize"))[1]}
    if not isinstance(o, dict) or len(o) != 1:
        raise _err(path, f"objectives[{i}]", f"expected one 'metric: max|min' mapping, got {o!r}")
    ((m, d),) = o.items()
    if m not in METRICS:
        raise _err(path, f"objectives[{i}]", f"unknown metric {m!r} (known: {', '.join(METRICS)})")
    if d not in _DIRECTIONS:
        raise _err(path, f"objectives[{i}].{m}", f"expected max or min, got {d!r}")
    if m == "fmax_mhz" and not _is_ecp5(board):
        raise _err(path, "objectives", "fmax_mhz is modeled for ECP5 boards only (board: ulx3s)")
    if m in _BOARD_RESOURCES and board is None:
        raise _err(path, "objectives", f"{m} needs a board (the resource model's device family)")
    return m, _DIRECTIONS[d]


def _objectives(path: Path, objs: list, board: str | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i, o in enumerate(objs):
        m, d = _objective(path, i, o, board)
        if m in [x for x, _ in out]:
            raise _err(path, f"objectives[{i}]", f"metric {m} appears twice")
        out.append((m, d))
    return out


def _constraint(path: Path, i: int, c: Any, board: str | None) -> Constraint:
    where = f"constraints[{i}]"
    parts = c.split() if isinstance(c, str) else []
    if len(parts) != 3 or parts[1] not in _OPS:
        raise _err(path, where, f"expected 'METRIC OP VALUE' with OP one of {', '.join(_OPS)}, got {c!r}")
    m, op, v = parts
    if m not in METRICS:
        raise _err(path, where, f"unknown metric {m!r} (known: {', '.join(METRICS)})")
    try:
        val: float | str = float(v)
    except ValueError:
        if v not in METRICS:
            raise _err(path, where, f"{v!r} is neither a number nor a metric") from None
        val = v
    if isinstance(val, float) and not math.isfinite(val):
        raise _err(path, where, f"{v!r} is not a finite number")
    if "fmax_mhz" in (m, val) and not _is_ecp5(board):
        raise _err(path, where, "fmax_mhz is modeled for ECP5 boards only (board: ulx3s)")
    if m in _BOARD_RESOURCES and board is None:
        raise _err(path, "constraints", f"{m} needs a board (the resource model's device family)")
    return Constraint(m, op, val, c)


def _clock(path: Path, clock: str, board: str | None, parameters: dict) -> str:
    if clock != "fmax":
        return clock
    if not _is_ecp5(board):
        raise _err(
            path, "clock", "fmax needs an ECP5 board (board: ulx3s): Fmax is modeled from its P&R runs"
        )
    from tritium.resources import load_model

    if any(("ecp5", e) not in load_model().fmax_coef for e in ("tlmm", "gemm")):
        raise _err(path, "clock", "the resource model has no Fmax fit yet (needs the P&R calibration runs)")
    if "clock_mhz" in parameters:
        raise _err(path, "parameters.clock_mhz", "cannot be swept with clock: fmax")
    return clock


def load_spec(path: str | Path) -> Spec:
    """Read and check a sweep spec; any problem → :class:`SpecError` naming the file and the field."""
    path = data_files.resolve(path)
    raw = read_spec_document(path)
    doc = _parse(path, raw)
    base_path, base = _base_config(path, doc.base)
    parameters = _parameters(path, base, doc.parameters, doc.sampler)
    board = _board(path, doc.board)
    workloads = _workload(path, doc.workload)
    model, prompt, context = workloads[0]
    objectives = _objectives(path, doc.objectives, board)
    constraints = [_constraint(path, i, c, board) for i, c in enumerate(doc.constraints or [])]
    clock = _clock(path, doc.clock, board, parameters)
    return Spec(
        str(path),
        doc.name,
        base_path,
        base,
        board,
        float(doc.fit_margin),
        parameters,
        model,
        prompt,
        context,
        objectives,
        constraints,
        doc.budget,
        doc.sampler,
        doc.population,
        doc.batch,
        doc.seed,
        raw,
        clock,
        workloads,
        doc.workload.aggregate,
    )
