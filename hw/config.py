"""The one accelerator config (ARCHITECTURE.md contract 1).

Every hardware parameter is read from here: RTL elaboration, the cycle model, the co-simulation and the
FPGA flow. Derived quantities (index width, table size, accumulator depth, ...) are properties, so no
width, depth or count is written twice. Loading validates every field; an error names the file and the
field and says what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "TlmmConfig", "AcceleratorConfig", "load_config", "config_from_dict",
           "DEFAULT_CONFIG"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A config file is malformed; the message is one line naming the file and the field."""


def _int(source: str, field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{source}: {field}: expected an integer in {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{source}: {field}: {value} is out of range, allowed {lo}..{hi}")
    return value


def _number(source: str, field: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: {field}: expected a number in {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{source}: {field}: {value} is out of range, allowed {lo}..{hi}")
    return float(value)


def _choice(source: str, field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{source}: {field}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _str(source: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source}: {field}: expected a non-empty string, got {value!r}")
    return value


def _check_keys(source: str, prefix: str, data: dict, known: set[str], required: set[str]) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: {prefix}{key}: unknown field (known: {', '.join(sorted(known))})")
    for key in sorted(required):
        if key not in data:
            raise ConfigError(f"{source}: {prefix}{key}: required field is missing")


@dataclass(frozen=True)
class TlmmConfig:
    """Table-lookup ternary matmul engine (TeLLMe-style TLMM).

    ``group_size`` (G) ternary weights share one table index; ``tables`` (T) tables are filled per
    activation beat, covering G·T activations (a *chunk*); ``columns`` (Q) output columns are updated per
    cycle, so the engine does Q·T lookups per cycle. ``tokens`` is the most tokens that share one weight
    beat (prefill reuse); ``table_mode`` is ``full`` (3^G entries) or ``half`` ((3^G+1)/2 entries + sign).
    """

    group_size: int = 3
    tables: int = 8
    columns: int = 8
    table_mode: str = "full"
    tokens: int = 4
    act_bits: int = 8
    max_k: int = 4096
    max_n: int = 4096

    # --- derived quantities: the only place they are computed ---
    @property
    def table_entries(self) -> int:
        """Entries of a full table: 3^G."""
        return 3 ** self.group_size

    @property
    def zero_index(self) -> int:
        """Index of the all-zero weight group: (3^G - 1) / 2 (13 for G=3, 4 for G=2)."""
        return (self.table_entries - 1) // 2

    @property
    def stored_entries(self) -> int:
        """Entries held in a table register file (full: 3^G; half: indices 0..zero_index)."""
        return self.table_entries if self.table_mode == "full" else self.zero_index + 1

    @property
    def index_bits(self) -> int:
        """Bits of one packed weight-group index (5 for G=3, 4 for G=2)."""
        return (self.table_entries - 1).bit_length()

    @property
    def entry_bits(self) -> int:
        """Signed width of a table entry: |sum of G activations| <= G·2^(A-1) < 2^(A+1)."""
        return self.act_bits + 2

    @property
    def sum_bits(self) -> int:
        """Signed width of the sum of T looked-up entries."""
        return self.entry_bits + max(1, math.ceil(math.log2(self.tables)))

    @property
    def acc_bits(self) -> int:
        """Accumulator width (int32, two's complement)."""
        return 32

    @property
    def chunk_k(self) -> int:
        """Activations consumed per table fill: G·T."""
        return self.group_size * self.tables

    @property
    def max_k_chunks(self) -> int:
        return -(-self.max_k // self.chunk_k)

    @property
    def max_n_blocks(self) -> int:
        return -(-self.max_n // self.columns)

    @property
    def acc_depth(self) -> int:
        """Words of the accumulator memory: one Q-wide word per (token, column block)."""
        return self.tokens * self.max_n_blocks

    @property
    def lookups_per_cycle(self) -> int:
        return self.columns * self.tables

    @property
    def result_fifo_depth(self) -> int:
        """Depth of the result FIFO, which is also the number of result credits: an issue on the last
        chunk takes a credit, a result leaving the engine returns it. drain_cycles + 1 credits cover every
        result in flight, so an always-ready sink never blocks issue."""
        return self.drain_cycles + 1

    @property
    def drain_cycles(self) -> int:
        """Cycles from the last lookup issue to the last result transfer: lookup register (A), adder tree
        (B), accumulate (C), result FIFO. Part of the cycle definition shared by RTL and model."""
        return 4


@dataclass(frozen=True)
class AcceleratorConfig:
    """The whole accelerator: clock plus one section per engine."""

    name: str = "default"
    clock_mhz: float = 100.0
    tlmm: TlmmConfig = dataclasses.field(default_factory=TlmmConfig)
    source: str = "<defaults>"

    def to_dict(self) -> dict:
        """Plain-data form (what the YAML holds), for JSON reports and hashing."""
        return {"name": self.name, "clock_mhz": self.clock_mhz, "tlmm": dataclasses.asdict(self.tlmm)}

    def fingerprint(self) -> str:
        """Short stable hash of the hardware parameters (names build folders)."""
        import hashlib
        import json

        hw = {"tlmm": dataclasses.asdict(self.tlmm)}
        return hashlib.sha256(json.dumps(hw, sort_keys=True).encode()).hexdigest()[:12]


_TLMM_FIELDS = {f.name for f in dataclasses.fields(TlmmConfig)}


def _tlmm_from_dict(source: str, data: Any) -> TlmmConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: tlmm: expected a mapping, got {type(data).__name__}")
    _check_keys(source, "tlmm.", data, _TLMM_FIELDS, set())
    d = {**dataclasses.asdict(TlmmConfig()), **data}
    g = _int(source, "tlmm.group_size", d["group_size"], 2, 3)
    t = _int(source, "tlmm.tables", d["tables"], 1, 64)
    q = _int(source, "tlmm.columns", d["columns"], 1, 64)
    mode = _choice(source, "tlmm.table_mode", d["table_mode"], ("full", "half"))
    tokens = _int(source, "tlmm.tokens", d["tokens"], 1, 16)
    a = _int(source, "tlmm.act_bits", d["act_bits"], 2, 8)
    max_k = _int(source, "tlmm.max_k", d["max_k"], 1, 1 << 20)
    max_n = _int(source, "tlmm.max_n", d["max_n"], 1, 1 << 20)
    cfg = TlmmConfig(g, t, q, mode, tokens, a, max_k, max_n)
    # Consistency: the command fields are 16 bits wide (hw.isa) and the accumulator memory must stay
    # addressable in one block-RAM-sized address space.
    if cfg.max_k_chunks >= 1 << 16:
        raise ConfigError(f"{source}: tlmm.max_k: {max_k} needs {cfg.max_k_chunks} chunks of G·T={cfg.chunk_k}; "
                          "at most 65535 fit the command encoding")
    if cfg.max_n_blocks >= 1 << 16:
        raise ConfigError(f"{source}: tlmm.max_n: {max_n} needs {cfg.max_n_blocks} blocks of Q={q}; "
                          "at most 65535 fit the command encoding")
    if cfg.acc_depth > 1 << 16:
        raise ConfigError(f"{source}: tlmm.max_n: tokens·ceil(max_n/columns) = {cfg.acc_depth} accumulator "
                          "words exceeds 65536; lower tlmm.max_n or tlmm.tokens")
    return cfg


def config_from_dict(data: Any, source: str = "<dict>") -> AcceleratorConfig:
    """Validate a parsed YAML document and build the config. Raises :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level: expected a mapping of fields, got {type(data).__name__}")
    _check_keys(source, "", data, {"name", "clock_mhz", "tlmm"}, {"tlmm"})
    name = _str(source, "name", data.get("name", Path(source).stem))
    clock = _number(source, "clock_mhz", data.get("clock_mhz", 100.0), 1.0, 1000.0)
    return AcceleratorConfig(name=name, clock_mhz=clock, tlmm=_tlmm_from_dict(source, data["tlmm"]),
                             source=source)


def load_config(path: str | Path | None = None) -> AcceleratorConfig:
    """Load and validate a YAML accelerator config (``yaml.safe_load`` only)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise ConfigError(f"{source}: {where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return config_from_dict(data, source)
