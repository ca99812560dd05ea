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

from hw import data_files

__all__ = ["ConfigError", "TlmmConfig", "GemmConfig", "KvConfig", "MemoryConfig", "DeviceConfig",
           "GemmGeometry", "AcceleratorConfig",
           "load_config", "config_from_dict", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = data_files.default_config()


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
class GemmConfig:
    """Temporal GEMM engine (Tempus-style, resource-invariant).

    A fixed ``rows`` × ``cols`` block of int8×int8 MACs with int32 accumulators (output-stationary: the
    partial sums of every K tile stay in the block) computes any M×K×N GEMM by iterating R×C output tiles
    and ``k_tile``-deep K tiles in time. Operand tiles are double-buffered.
    """

    rows: int = 8
    cols: int = 8
    k_tile: int = 64

    @property
    def macs(self) -> int:
        return self.rows * self.cols

    @property
    def acc_bits(self) -> int:
        """Accumulator width (int32, two's complement, wrapping)."""
        return 32

    @property
    def pipeline_cycles(self) -> int:
        """Cycles from an issue to the shadow being visible to the drain: buffer read + k-row select (1),
        multiply (2), accumulate / shadow load (3), visible (4)."""
        return 4

    @property
    def out_stages(self) -> int:
        """Output pipeline stages between a drain issue and the output FIFO: capture, round, shift,
        saturate. A beat issued in cycle e can leave on ``wr`` in cycle e + out_stages + 1."""
        return 4

    @property
    def out_credits(self) -> int:
        """Output FIFO depth = drain credits: out_stages + 2 keeps an always-ready memory busy every cycle
        (a credit returns the cycle after its beat leaves)."""
        return self.out_stages + 2


@dataclass(frozen=True)
class MemoryConfig:
    """External memory as the engines see it (ARCHITECTURE.md contract 4), in accelerator clock cycles.

    Read requests (address, length in beats) are accepted while fewer than ``outstanding`` are in flight;
    a request's first beat arrives ``latency`` or more cycles after its accept, beats come in request order,
    at most one every ``beat_interval`` cycles, ``bus_bytes`` per beat. Writes (one beat per transfer) are
    accepted at most one every ``beat_interval`` cycles on a separate channel. The engine splits tile loads
    into bursts of at most ``max_burst`` beats.
    """

    bus_bytes: int = 32
    latency: int = 20
    max_burst: int = 16
    outstanding: int = 4
    beat_interval: int = 1
    addr_bits: int = 24

    @property
    def bytes_per_cycle(self) -> float:
        return self.bus_bytes / self.beat_interval


@dataclass(frozen=True)
class DeviceConfig:
    """The board around the accelerator, for whole-model estimates (not the RTL).

    ``family`` picks the energy table ``configs/energy/<family>.yaml``; ``host_gflops`` and ``host_gbs`` are
    the sustained float32 throughput and memory bandwidth of the host CPU that runs the host ops (norms,
    softmax, RoPE, activations, LM head); ``static_w`` is the board's static power while it runs.
    """

    name: str = "generic"
    family: str = "ecp5"
    host_gflops: float = 2.0
    host_gbs: float = 2.0
    static_w: float = 0.5


@dataclass(frozen=True)
class KvConfig:
    """KV-cache retrieval engine (V-Rex ReSV-style): SimHash clustering of keys, WiCSum selection.

    Keys and queries are the int8 codes of the KV cache (one head, ``dim`` = head_dim values). A key is
    projected on ``hyperplanes`` fixed ±1 hyperplanes (drawn from ``seed``); the signs form its signature;
    it joins the nearest non-full cluster within Hamming distance ``hamming`` or opens a new one (at most
    ``max_clusters`` clusters of at most ``max_cluster_size`` keys). A query scores every cluster by
    q·mean key, and the threshold unit takes clusters in bucket order from the top until the weighted sum
    reaches ``alpha`` of the row sum (early exit). ``lanes`` int8 values (and cluster signatures) per cycle.
    Exact numerics: models/resv.py.
    """

    dim: int = 32
    hyperplanes: int = 32
    hamming: int = 7
    max_clusters: int = 128
    max_cluster_size: int = 64
    lanes: int = 8
    buckets: int = 16
    alpha: float = 0.3
    seed: int = 1

    @property
    def beats(self) -> int:
        """Vector beats per key or query (``lanes`` int8 values each)."""
        return self.dim // self.lanes

    @property
    def alpha_q(self) -> int:
        """alpha in 1/256 units: threshold = (alpha_q · row sum) >> 8."""
        return int(round(self.alpha * 256))

    @property
    def id_bits(self) -> int:
        return max(1, (self.max_clusters - 1).bit_length())

    @property
    def count_bits(self) -> int:
        return self.max_cluster_size.bit_length()

    @property
    def sum_bits(self) -> int:
        """Signed key-sum width per dimension: |Σ int8| ≤ 128 · max_cluster_size."""
        return 8 + (self.max_cluster_size - 1).bit_length() + 1

    @property
    def proj_bits(self) -> int:
        """Signed projection accumulator width: |Σ ±k_i| ≤ 128 · dim."""
        return 8 + (self.dim - 1).bit_length() + 1

    @property
    def dot_bits(self) -> int:
        """Signed width of q · key-sum (and of a cluster score)."""
        return self.sum_bits + 8 + (self.dim - 1).bit_length()

    @property
    def recip_bits(self) -> int:
        """Unsigned width of the reciprocal ROM entries round(2^16 / count) (count 1 → 2^16)."""
        return 17

    @property
    def weight_bits(self) -> int:
        """Unsigned width of a cluster weight (score − min) · count."""
        return self.dot_bits + 1 + self.count_bits

    @property
    def rowsum_bits(self) -> int:
        return self.weight_bits + self.id_bits + 1

    @property
    def bucket_bits(self) -> int:
        return (self.buckets - 1).bit_length()


FAMILIES = ("ecp5", "ice40", "ultrascale_plus", "edge_soc")


@dataclass(frozen=True)
class GemmGeometry:
    """Derived sizes of the GEMM engine on its memory bus (one place; RTL, model and layout read them)."""

    rows: int
    cols: int
    k_tile: int
    bus_bytes: int

    @property
    def a_per_beat(self) -> int:
        """k-rows of an A tile per bus beat (each k-row is ``rows`` int8 values)."""
        return self.bus_bytes // self.rows

    @property
    def b_per_beat(self) -> int:
        return self.bus_bytes // self.cols

    @property
    def a_beats(self) -> int:
        """Beats of one A tile (k_tile × rows int8) = buffer words per half."""
        return self.k_tile * self.rows // self.bus_bytes

    @property
    def b_beats(self) -> int:
        return self.k_tile * self.cols // self.bus_bytes

    def out_values(self, requant: bool) -> int:
        """Output values per write beat: int32 (4 bytes) or, requantized, int8."""
        return self.bus_bytes if requant else self.bus_bytes // 4

    def out_beats(self, requant: bool) -> int:
        """Write beats per R×C output tile."""
        return self.rows * self.cols // self.out_values(requant)


@dataclass(frozen=True)
class AcceleratorConfig:
    """The whole accelerator: clock plus one section per engine."""

    name: str = "default"
    clock_mhz: float = 100.0
    tlmm: TlmmConfig = dataclasses.field(default_factory=TlmmConfig)
    gemm: GemmConfig = dataclasses.field(default_factory=GemmConfig)
    kv: KvConfig = dataclasses.field(default_factory=KvConfig)
    memory: MemoryConfig = dataclasses.field(default_factory=MemoryConfig)
    device: DeviceConfig = dataclasses.field(default_factory=DeviceConfig)
    source: str = "<defaults>"

    @property
    def gemm_geometry(self) -> GemmGeometry:
        g = self.gemm
        return GemmGeometry(g.rows, g.cols, g.k_tile, self.memory.bus_bytes)

    def to_dict(self) -> dict:
        """Plain-data form (what the YAML holds), for JSON reports and hashing."""
        return {"name": self.name, "clock_mhz": self.clock_mhz, "tlmm": dataclasses.asdict(self.tlmm),
                "gemm": dataclasses.asdict(self.gemm), "kv": dataclasses.asdict(self.kv),
                "memory": dataclasses.asdict(self.memory),
                "device": dataclasses.asdict(self.device)}

    def fingerprint(self) -> str:
        """Short stable hash of the hardware parameters (names build folders)."""
        import hashlib
        import json

        hw = {k: v for k, v in self.to_dict().items() if k not in ("name", "clock_mhz", "device")}
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


def _pow2(source: str, field: str, value: int) -> int:
    if value & (value - 1):
        raise ConfigError(f"{source}: {field}: {value} must be a power of two")
    return value


def _section(source: str, name: str, data: Any, cls):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {name}: expected a mapping, got {type(data).__name__}")
    _check_keys(source, f"{name}.", data, {f.name for f in dataclasses.fields(cls)}, set())
    return {**dataclasses.asdict(cls()), **data}


def _gemm_from_dict(source: str, data: Any, mem: MemoryConfig) -> GemmConfig:
    d = _section(source, "gemm", data, GemmConfig)
    r = _pow2(source, "gemm.rows", _int(source, "gemm.rows", d["rows"], 1, 64))
    c = _pow2(source, "gemm.cols", _int(source, "gemm.cols", d["cols"], 1, 64))
    tk = _pow2(source, "gemm.k_tile", _int(source, "gemm.k_tile", d["k_tile"], 4, 4096))
    w = mem.bus_bytes
    # A bus beat carries whole k-rows of a tile (rows or cols int8 values each), a tile is whole beats,
    # and an int8 output tile is at least one beat.
    for field, n in (("gemm.rows", r), ("gemm.cols", c)):
        if w % n:
            raise ConfigError(f"{source}: {field}: {n} must divide memory.bus_bytes ({w}) so a beat holds whole "
                              "k-rows of a tile")
        if tk * n < w:
            raise ConfigError(f"{source}: gemm.k_tile: a {tk}×{n} tile ({tk * n} bytes) is smaller than one "
                              f"{w}-byte beat; raise gemm.k_tile")
    if r * c < w:
        raise ConfigError(f"{source}: gemm.rows: a {r}×{c} int8 output tile is smaller than one {w}-byte beat")
    return GemmConfig(r, c, tk)


def _kv_from_dict(source: str, data: Any) -> KvConfig:
    d = _section(source, "kv", data, KvConfig)
    lanes = _pow2(source, "kv.lanes", _int(source, "kv.lanes", d["lanes"], 1, 64))
    dim = _int(source, "kv.dim", d["dim"], 1, 256)
    if dim % lanes:
        raise ConfigError(f"{source}: kv.dim: {dim} must be a multiple of kv.lanes ({lanes})")
    clusters = _pow2(source, "kv.max_clusters", _int(source, "kv.max_clusters", d["max_clusters"], 1, 256))
    if clusters < lanes:
        raise ConfigError(f"{source}: kv.max_clusters: {clusters} must be at least kv.lanes ({lanes}); the "
                          "signature unit compares kv.lanes clusters per cycle")
    hp = _int(source, "kv.hyperplanes", d["hyperplanes"], 1, 64)
    return KvConfig(
        dim=dim, hyperplanes=hp,
        hamming=_int(source, "kv.hamming", d["hamming"], 0, hp),
        max_clusters=clusters,
        max_cluster_size=_pow2(source, "kv.max_cluster_size",
                               _int(source, "kv.max_cluster_size", d["max_cluster_size"], 1, 256)),
        lanes=lanes,
        buckets=_pow2(source, "kv.buckets", _int(source, "kv.buckets", d["buckets"], 1, 64)),
        alpha=_number(source, "kv.alpha", d["alpha"], 0.0, 1.0),
        seed=_int(source, "kv.seed", d["seed"], 0, (1 << 63) - 1))


def _memory_from_dict(source: str, data: Any) -> MemoryConfig:
    d = _section(source, "memory", data, MemoryConfig)
    w = _pow2(source, "memory.bus_bytes", _int(source, "memory.bus_bytes", d["bus_bytes"], 4, 128))
    return MemoryConfig(
        bus_bytes=w,
        latency=_int(source, "memory.latency", d["latency"], 1, 1000),
        max_burst=_int(source, "memory.max_burst", d["max_burst"], 1, 256),
        outstanding=_int(source, "memory.outstanding", d["outstanding"], 1, 64),
        beat_interval=_int(source, "memory.beat_interval", d["beat_interval"], 1, 64),
        addr_bits=_int(source, "memory.addr_bits", d["addr_bits"], 8, 32))


def _device_from_dict(source: str, data: Any) -> DeviceConfig:
    d = _section(source, "device", data, DeviceConfig)
    return DeviceConfig(
        name=_str(source, "device.name", d["name"]),
        family=_choice(source, "device.family", d["family"], FAMILIES),
        host_gflops=_number(source, "device.host_gflops", d["host_gflops"], 0.001, 1e5),
        host_gbs=_number(source, "device.host_gbs", d["host_gbs"], 0.001, 1e4),
        static_w=_number(source, "device.static_w", d["static_w"], 0.0, 1000.0))


def config_from_dict(data: Any, source: str = "<dict>") -> AcceleratorConfig:
    """Validate a parsed YAML document and build the config. Raises :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level: expected a mapping of fields, got {type(data).__name__}")
    _check_keys(source, "", data, {"name", "clock_mhz", "tlmm", "gemm", "kv", "memory", "device"},
                {"tlmm"})
    name = _str(source, "name", data.get("name", Path(source).stem))
    clock = _number(source, "clock_mhz", data.get("clock_mhz", 100.0), 1.0, 1000.0)
    memory = _memory_from_dict(source, data.get("memory", {}))
    return AcceleratorConfig(name=name, clock_mhz=clock, tlmm=_tlmm_from_dict(source, data["tlmm"]),
                             gemm=_gemm_from_dict(source, data.get("gemm", {}), memory),
                             kv=_kv_from_dict(source, data.get("kv", {})), memory=memory,
                             device=_device_from_dict(source, data.get("device", {})), source=source)


def load_config(path: str | Path | None = None) -> AcceleratorConfig:
    """Load and validate a YAML accelerator config (``yaml.safe_load`` only)."""
    path = data_files.resolve(path) if path is not None else DEFAULT_CONFIG
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
