"""The one accelerator config (ARCHITECTURE.md contract 1).

Every hardware parameter is read from here: RTL elaboration, the cycle model, the co-simulation and the
FPGA flow. Derived quantities (index width, table size, accumulator depth, ...) are properties, so no
width, depth or count is written twice.

The sections are frozen dataclasses whose field annotations carry the schema (type, range, power of two,
description); :func:`config_from_dict` validates a parsed YAML document against them with pydantic and
turns the first error into a one-line :class:`ConfigError` naming the file and the field and saying what is
allowed. Checks across fields are the ``_check_*`` validators. YAML files are read by the bounded reader in
:mod:`hw.yaml_safe`. The config reference (docs/config.md) is generated from the same schema:
``python -m hw.config --markdown > docs/config.md``.
"""

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from hw import data_files
from hw.yaml_safe import ConfigError, load_yaml, show

__all__ = [
    "ConfigError",
    "TlmmConfig",
    "GemmConfig",
    "KvConfig",
    "MemoryConfig",
    "DeviceConfig",
    "GemmGeometry",
    "AcceleratorConfig",
    "FAMILIES",
    "POWER_BOUNDARIES",
    "load_config",
    "config_from_dict",
    "config_reference_markdown",
    "DEFAULT_CONFIG",
]

DEFAULT_CONFIG = data_files.default_config()

# Unknown fields are errors in every section (a misspelt field must not silently keep its default).
_SECTION: ConfigDict = ConfigDict(extra="forbid")


def _int(lo: int, hi: int, doc: str) -> FieldInfo:
    """Schema of an integer field: lo..hi, no bools, no floats."""
    return Field(ge=lo, le=hi, strict=True, description=doc)


def _num(lo: float, hi: float, doc: str) -> FieldInfo:
    """Schema of a number field: lo..hi (integers accepted and stored as float), no bools."""
    return Field(ge=lo, le=hi, strict=True, description=doc)


def _text(doc: str) -> FieldInfo:
    """Schema of a non-empty string field."""
    return Field(strict=True, pattern=r"\S", description=doc)


def _doc(doc: str) -> FieldInfo:
    return Field(description=doc)


def _power_of_two(value: int) -> int:
    if value & (value - 1):
        raise PydanticCustomError("power_of_two", "{value} must be a power of two", {"value": value})
    return value


POW2 = AfterValidator(_power_of_two)
"""Field marker: the value must be a power of two."""


def _fail(field: str, message: str) -> PydanticCustomError:
    """A failed check across fields; ``field`` is the dotted name the message is about."""
    return PydanticCustomError("consistency", "{message}", {"field": field, "message": message})


Family = Literal["ecp5", "ice40", "ultrascale_plus", "edge_soc"]
FAMILIES: tuple[str, ...] = typing.get_args(Family)


@dataclass(frozen=True)
class TlmmConfig:
    """Table-lookup ternary matmul engine (TeLLMe-style TLMM).

    ``group_size`` (G) ternary weights share one table index; ``tables`` (T) tables are filled per
    activation beat, covering G·T activations (a *chunk*); ``columns`` (Q) output columns are updated per
    cycle, so the engine does Q·T lookups per cycle. ``tokens`` is the most tokens that share one weight
    beat (prefill reuse); ``table_mode`` is ``full`` (3^G entries) or ``half`` ((3^G+1)/2 entries + sign).
    ``weight_buffer_beats`` sizes the top level's weight buffer (0: none), which lets a prompt's token groups
    reuse a weight slice read once from DRAM (hw.isa ``wbuf``; docs/design.md "Top level").
    """

    __pydantic_config__: ClassVar[ConfigDict] = _SECTION

    group_size: Annotated[int, _int(2, 3, "G: ternary weights that share one table index")] = 3
    tables: Annotated[
        int, _int(1, 64, "T: tables filled per activation beat (G·T activations per chunk)")
    ] = 8
    columns: Annotated[int, _int(1, 64, "Q: output columns updated per cycle (Q·T lookups per cycle)")] = 8
    table_mode: Annotated[
        Literal["full", "half"],
        _doc("full: 3^G entries per table (TeLLMe); half: (3^G+1)/2 entries plus a sign (bitnet.cpp TL2)"),
    ] = "full"
    tokens: Annotated[int, _int(1, 16, "tokens that share one weight beat (prefill weight reuse)")] = 4
    act_bits: Annotated[int, _int(2, 8, "signed activation width, bits")] = 8
    max_k: Annotated[int, _int(1, 1 << 20, "largest reduction dimension K")] = 4096
    max_n: Annotated[int, _int(1, 1 << 20, "largest output dimension N (sizes the accumulator memory)")] = (
        4096
    )
    weight_buffer_beats: Annotated[
        int,
        _int(
            0,
            1 << 16,
            "weight buffer in the top level's TLMM DMA, in engine weight beats (0: none): a weight run is "
            "read from DRAM once and reused by the following token groups of the prompt",
        ),
    ] = 0

    # --- derived quantities: the only place they are computed ---
    @property
    def table_entries(self) -> int:
        """Entries of a full table: 3^G."""
        return 3**self.group_size

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
    def weight_buffer_bits(self) -> int:
        """Bits of the top level's weight buffer: ``weight_buffer_beats`` words of Q·T packed indices."""
        return self.weight_buffer_beats * self.columns * self.tables * self.index_bits

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
    and ``k_tile``-deep K tiles in time. Operand tiles are ``buffers``-buffered (double by default).
    """

    __pydantic_config__: ClassVar[ConfigDict] = _SECTION

    rows: Annotated[int, _int(1, 64, "R: output rows of the MAC block (R·C int8 MACs)"), POW2] = 8
    cols: Annotated[int, _int(1, 64, "C: output columns of the MAC block"), POW2] = 8
    k_tile: Annotated[int, _int(4, 4096, "TK: K depth of one operand tile"), POW2] = 64
    buffers: Annotated[
        int,
        _int(
            2,
            8,
            "operand tile slots per operand (2 = double buffering): the loader fills a slot as soon as "
            "compute has finished the step that held it, so more slots keep more requests in flight; this "
            "hides the memory latency when a step loads as many beats as it computes cycles (one query row "
            "streaming K or V)",
        ),
        POW2,
    ] = 2

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

    __pydantic_config__: ClassVar[ConfigDict] = _SECTION

    bus_bytes: Annotated[int, _int(4, 128, "bytes per beat (32: a 256-bit port)"), POW2] = 32
    latency: Annotated[
        int, _int(1, 1000, "cycles from a read request's accept to its first beat (or later)")
    ] = 20
    max_burst: Annotated[int, _int(1, 256, "beats per read request at most")] = 16
    outstanding: Annotated[int, _int(1, 64, "read requests in flight at most")] = 4
    beat_interval: Annotated[int, _int(1, 64, "cycles between beats (>1 models a slower memory)")] = 1
    addr_bits: Annotated[int, _int(8, 32, "beat-address width, bits")] = 24
    read_fifo_beats: Annotated[
        int,
        _int(
            0,
            4096,
            "the top level's DMA read FIFO, in beats = the most beats requested ahead of use (0: "
            "max(8, 2·max_burst)); the stream keeps the port busy when it covers the latency plus a burst",
        ),
    ] = 0

    @property
    def read_fifo_depth(self) -> int:
        """Beats of the top level's DMA read FIFO: ``read_fifo_beats``, or max(8, 2·max_burst) when 0."""
        return self.read_fifo_beats or max(8, 2 * self.max_burst)

    @property
    def bytes_per_cycle(self) -> float:
        return self.bus_bytes / self.beat_interval


PowerBoundary = Literal["board", "som", "chip", "pl"]
POWER_BOUNDARIES: tuple[str, ...] = typing.get_args(PowerBoundary)
"""What a power figure includes: ``board`` the board's DC input (carrier + module + peripherals); ``som`` the
module (SoC + its DRAM + regulators); ``chip`` the SoC package rails (processors + fabric, no DRAM); ``pl``
the FPGA fabric rails only."""

SourceEntry = tuple[str, str, float | None, float | None]
"""One ``device.sources`` entry: (field, where the number comes from, low end, high end of its range)."""


def _source_fields() -> tuple[str, ...]:
    """Fields a ``device.sources`` entry may name: the device's numbers, the clock and the memory section."""
    dev = tuple(
        f.name
        for f in dataclasses.fields(DeviceConfig)
        if f.name not in ("name", "family", "sources", "power_boundary")
    )
    return (*dev, "clock_mhz", *(f"memory.{f.name}" for f in dataclasses.fields(MemoryConfig)))


def _parse_sources(value: Any) -> tuple[SourceEntry, ...]:
    """``device.sources`` from YAML: ``{field: "source text"}`` or ``{field: {source: text, range: [lo, hi]}}``;
    also the tuple form :meth:`AcceleratorConfig.to_dict` gives back (or its JSON lists)."""
    if isinstance(value, (tuple, list)):
        items = []
        for e in value:
            if not isinstance(e, (tuple, list)) or len(e) != 4:
                raise _fail("device.sources", f"expected a mapping field → source, got {show(value, 60)}")
            items.append((e[0], {"source": e[1], "range": None if e[2] is None else [e[2], e[3]]}))
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        raise _fail("device.sources", f"expected a mapping field → source, got {type(value).__name__}")
    known = _source_fields()
    out = []
    for key, entry in items:
        where = f"device.sources.{key}"
        if key not in known:
            raise _fail(where, f"unknown field (known: {', '.join(known)})")
        if isinstance(entry, str):
            entry = {"source": entry}
        if not isinstance(entry, dict) or set(entry) - {"source", "range"} or "source" not in entry:
            raise _fail(where, "expected a source string or a mapping {source: TEXT, range: [LOW, HIGH]}")
        text, rng = entry["source"], entry.get("range")
        if not isinstance(text, str) or not text.strip():
            raise _fail(where, f"source: expected a non-empty string, got {show(text)}")
        lo = hi = None
        if rng is not None:
            ok = (
                isinstance(rng, (list, tuple))
                and len(rng) == 2
                and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in rng
                )
            )
            if not ok or rng[0] > rng[1]:
                raise _fail(where, f"range: expected [LOW, HIGH] with LOW <= HIGH, got {show(rng)}")
            lo, hi = float(rng[0]), float(rng[1])
        out.append((key, text.strip(), lo, hi))
    return tuple(sorted(out))


@dataclass(frozen=True)
class DeviceConfig:
    """The board around the accelerator, for whole-model estimates (not the RTL). `sources` maps a device
    field, `clock_mhz` or a `memory.*` field to where its value comes from: a source string or
    `{source: TEXT, range: [LOW, HIGH]}` (`tritium estimate --json` lists them under `assumptions`).

    ``family`` picks the energy table ``configs/energy/<family>.yaml``; ``host_gflops`` and ``host_gbs`` are
    the sustained float32 throughput and memory bandwidth of the host CPU that runs the host ops (norms,
    softmax, RoPE, activations, LM head); ``dram_gbs`` is the bandwidth of the DRAM that the host and the
    accelerator share (each agent is further capped by its own port: ``host_gbs``, and ``memory.bus_bytes /
    memory.beat_interval`` × clock); ``static_w`` is the static power while it runs, at ``power_boundary``;
    ``host_op_us`` is a fixed cost of every host op (the host's dispatch of it), so that splitting host work
    into more ops is not free.
    """

    __pydantic_config__: ClassVar[ConfigDict] = _SECTION

    name: Annotated[str, _text("board name, for reports")] = "generic"
    family: Annotated[
        Family, _doc("device family: picks the energy table `configs/energy/<family>.yaml`")
    ] = "ecp5"
    host_gflops: Annotated[float, _num(0.001, 1e5, "host CPU sustained float32 throughput, GFLOP/s")] = 2.0
    host_gbs: Annotated[float, _num(0.001, 1e4, "host CPU memory bandwidth (its own cap), GB/s")] = 2.0
    dram_gbs: Annotated[
        float,
        _num(
            0.001,
            1e4,
            "bandwidth of the DRAM shared by host and accelerator, GB/s "
            "(generic default: the default config's 256-bit port at 100 MHz)",
        ),
    ] = 3.2
    static_w: Annotated[float, _num(0.0, 1000.0, "static power while running, W, at `power_boundary`")] = 0.5
    host_op_us: Annotated[
        float,
        _num(
            0.0,
            1e4,
            "fixed host time per host op, µs (dispatch, synchronization, cache warm-up), added to its "
            "flops/bytes time; 0 charges none",
        ),
    ] = 0.0
    power_boundary: Annotated[
        PowerBoundary,
        _doc(
            "what power figures include: `board` DC input, `som` module (SoC + DRAM), `chip` SoC rails, "
            "`pl` fabric rails"
        ),
    ] = "board"
    sources: Annotated[tuple[SourceEntry, ...], BeforeValidator(_parse_sources)] = ()

    def source_of(self, field: str) -> tuple[str, float | None, float | None] | None:
        """(source, low, high) of ``field`` (a device field, ``clock_mhz`` or ``memory.*``), or None."""
        for key, text, lo, hi in self.sources:
            if key == field:
                return text, lo, hi
        return None


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

    __pydantic_config__: ClassVar[ConfigDict] = _SECTION

    dim: Annotated[int, _int(1, 256, "values per key or query (head_dim), int8")] = 32
    hyperplanes: Annotated[int, _int(1, 64, "±1 SimHash hyperplanes = signature bits")] = 32
    hamming: Annotated[int, _int(0, 64, "largest Hamming distance at which a key joins a cluster")] = 7
    max_clusters: Annotated[int, _int(1, 256, "clusters at most"), POW2] = 128
    max_cluster_size: Annotated[int, _int(1, 256, "keys per cluster at most"), POW2] = 64
    lanes: Annotated[int, _int(1, 64, "int8 values (and cluster signatures) per cycle"), POW2] = 8
    buckets: Annotated[int, _int(1, 64, "score buckets of the threshold unit"), POW2] = 16
    alpha: Annotated[float, _num(0.0, 1.0, "fraction of the row sum the selected clusters must reach")] = 0.3
    seed: Annotated[int, _int(0, (1 << 63) - 1, "seed of the hyperplanes")] = 1
    slots: Annotated[
        int,
        _int(
            1,
            1024,
            "cluster-table slots of the engine (`system.kv_tables: onchip`: one per retrieval stream, layers × "
            "attention groups; a KVR's `table` field picks one); 1 = the standalone engine's one table",
        ),
    ] = 1

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


# ---------------------------------------------------------------- checks across fields
def _check_tlmm(cfg: TlmmConfig) -> TlmmConfig:
    """the command fields are 16 bits wide (hw.isa): ceil(max_k / (G·T)) and ceil(max_n / Q) are at most
    65535; the accumulator memory stays one block-RAM-sized address space: tokens·ceil(max_n / Q) <= 65536."""
    if cfg.max_k_chunks >= 1 << 16:
        raise _fail(
            "tlmm.max_k",
            f"{cfg.max_k} needs {cfg.max_k_chunks} chunks of G·T={cfg.chunk_k}; at most "
            "65535 fit the command encoding",
        )
    if cfg.max_n_blocks >= 1 << 16:
        raise _fail(
            "tlmm.max_n",
            f"{cfg.max_n} needs {cfg.max_n_blocks} blocks of Q={cfg.columns}; at most "
            "65535 fit the command encoding",
        )
    if cfg.acc_depth > 1 << 16:
        raise _fail(
            "tlmm.max_n",
            f"tokens·ceil(max_n/columns) = {cfg.acc_depth} accumulator words exceeds "
            "65536; lower tlmm.max_n or tlmm.tokens",
        )
    return cfg


def _check_kv(kv: KvConfig) -> KvConfig:
    """dim is a multiple of lanes; max_clusters >= lanes (the signature unit compares lanes clusters per
    cycle); hamming <= hyperplanes."""
    if kv.dim % kv.lanes:
        raise _fail("kv.dim", f"{kv.dim} must be a multiple of kv.lanes ({kv.lanes})")
    if kv.max_clusters < kv.lanes:
        raise _fail(
            "kv.max_clusters",
            f"{kv.max_clusters} must be at least kv.lanes ({kv.lanes}); the "
            "signature unit compares kv.lanes clusters per cycle",
        )
    if kv.hamming > kv.hyperplanes:
        raise _fail("kv.hamming", f"{kv.hamming} is out of range, allowed 0..{kv.hyperplanes}")
    return kv


def _check_memory(mem: MemoryConfig) -> MemoryConfig:
    """read_fifo_beats, when not 0, is a power of two (a block-RAM-shaped FIFO) and at least max_burst (the
    DMA requests a burst only when the whole burst fits in the FIFO)."""
    f = mem.read_fifo_beats
    if f and f & (f - 1):
        raise _fail("memory.read_fifo_beats", f"{f} must be a power of two (or 0: max(8, 2·max_burst))")
    if f and f < mem.max_burst:
        raise _fail(
            "memory.read_fifo_beats",
            f"{f} must be at least memory.max_burst ({mem.max_burst}): a burst is requested only when it fits",
        )
    return mem


def _check_gemm_bus(acfg: "AcceleratorConfig") -> "AcceleratorConfig":
    """gemm.rows and gemm.cols divide memory.bus_bytes (a beat holds whole k-rows of a tile); an operand
    tile (k_tile × rows or cols int8) and an int8 output tile (rows × cols) are at least one beat."""
    r, c, tk, w = acfg.gemm.rows, acfg.gemm.cols, acfg.gemm.k_tile, acfg.memory.bus_bytes
    for field, n in (("gemm.rows", r), ("gemm.cols", c)):
        if w % n:
            raise _fail(
                field, f"{n} must divide memory.bus_bytes ({w}) so a beat holds whole k-rows of a tile"
            )
        if tk * n < w:
            raise _fail(
                "gemm.k_tile",
                f"a {tk}×{n} tile ({tk * n} bytes) is smaller than one {w}-byte beat; raise gemm.k_tile",
            )
    if r * c < w:
        raise _fail("gemm.rows", f"a {r}×{c} int8 output tile is smaller than one {w}-byte beat")
    return acfg


LmHead = Literal["host_fp32", "host_fp16", "acc_int8"]
Attention = Literal["dense", "resv"]
KvTables = Literal["dram", "onchip"]
"""Where and in which precision the LM head runs (definitions in models/lm_head.py)."""


@dataclass(frozen=True)
class SystemConfig:
    """System choices around the engines: what the compiler emits and the estimates charge, not RTL
    parameters (they do not change the hardware fingerprint), except ``overlap``, which selects the top level's
    decoder (it enters the fingerprint when true). ``lm_head`` places the LM head; the CLI's
    ``--lm-head`` and the Python APIs' ``lm_head=`` override it."""

    __pydantic_config__: ClassVar[ConfigDict] = _SECTION

    lm_head: Annotated[
        LmHead,
        _doc(
            "LM head: `host_fp32` (host, float32 weights), `host_fp16` (host, float16 weights) or `acc_int8` "
            "(GEMM engine, int8 weights per row, int8 activations; host dequantizes)"
        ),
    ] = "host_fp32"
    attention: Annotated[
        Attention,
        _doc(
            "decode attention: `dense` (every token) or `resv` (sinks + recent window + the clusters the KV "
            "engine selects, from `kv_min_context` tokens on; docs/design.md, 'KV retrieval in the loop')"
        ),
    ] = "dense"
    kv_sinks: Annotated[int, _int(0, 256, "resv: first tokens always attended (≤ kv.max_cluster_size)")] = 4
    kv_window: Annotated[
        int,
        _int(
            1, 256, "resv: most recent tokens always attended, the new one included (≤ kv.max_cluster_size)"
        ),
    ] = 64
    kv_min_context: Annotated[
        int, _int(1, 1 << 20, "resv: context (tokens attended) from which retrieval replaces dense attention")
    ] = 512
    kv_tables: Annotated[
        KvTables,
        _doc(
            "resv: cluster tables in `dram` (streamed in and written back per step) or `onchip` (engine RAM)"
        ),
    ] = "dram"
    kv_selected_share: Annotated[
        float,
        _num(
            0.0,
            1.0,
            "resv, estimate only: share of the table's clusters a step selects (an assumption until traces at "
            "long context exist; 0.265 = ReSV's retrieved fraction on the tiny model at 256 tokens)",
        ),
    ] = 0.265
    overlap: Annotated[
        StrictBool,
        _doc(
            "overlapped dispatch: the top level's decoder dispatches a command as soon as its engine is free "
            "(TLMM and GEMM share the memory port; host ops run beside either) and the compiler states the "
            "data dependencies with SYNC commands; false: every command waits for all engines (the RTL "
            "decoder is built for this choice)"
        ),
    ] = False


@dataclass(frozen=True)
class AcceleratorConfig:
    """The whole accelerator: clock plus one section per engine.

    ``source`` names where the config was read from; it is not a YAML field."""

    __pydantic_config__: ClassVar[ConfigDict] = _SECTION

    name: Annotated[str, _text("config name (default: the file name without .yaml)")] = "default"
    clock_mhz: Annotated[float, _num(1.0, 1000.0, "accelerator clock, MHz")] = 100.0
    tlmm: Annotated[TlmmConfig, AfterValidator(_check_tlmm)] = dataclasses.field(default_factory=TlmmConfig)
    gemm: GemmConfig = dataclasses.field(default_factory=GemmConfig)
    kv: Annotated[KvConfig, AfterValidator(_check_kv)] = dataclasses.field(default_factory=KvConfig)
    memory: Annotated[MemoryConfig, AfterValidator(_check_memory)] = dataclasses.field(
        default_factory=MemoryConfig
    )
    device: DeviceConfig = dataclasses.field(default_factory=DeviceConfig)
    system: SystemConfig = dataclasses.field(default_factory=SystemConfig)
    source: str = "<defaults>"

    @property
    def gemm_geometry(self) -> GemmGeometry:
        g = self.gemm
        return GemmGeometry(g.rows, g.cols, g.k_tile, self.memory.bus_bytes)

    def to_dict(self) -> dict:
        """Plain-data form (what the YAML holds), for JSON reports and hashing."""
        return {
            "name": self.name,
            "clock_mhz": self.clock_mhz,
            "tlmm": dataclasses.asdict(self.tlmm),
            "gemm": dataclasses.asdict(self.gemm),
            "kv": dataclasses.asdict(self.kv),
            "memory": dataclasses.asdict(self.memory),
            "device": dataclasses.asdict(self.device),
            "system": dataclasses.asdict(self.system),
        }

    def fingerprint(self) -> str:
        """Short stable hash of the hardware parameters (names build folders)."""
        import hashlib
        import json

        hw = {k: v for k, v in self.to_dict().items() if k not in ("name", "clock_mhz", "device", "system")}
        if not self.memory.read_fifo_beats:  # the default rule: fingerprints stay as they were
            del hw["memory"]["read_fifo_beats"]
        if self.kv.slots == 1:  # one table (the default): fingerprints stay as they were
            del hw["kv"]["slots"]
        if (
            self.system.overlap
        ):  # the decoder is built for it (absent when false: fingerprints stay as they were)
            hw["overlap"] = True
        return hashlib.sha256(json.dumps(hw, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- validation
SECTIONS: dict[str, type] = {
    "tlmm": TlmmConfig,
    "gemm": GemmConfig,
    "kv": KvConfig,
    "memory": MemoryConfig,
    "device": DeviceConfig,
    "system": SystemConfig,
}
"""YAML section name -> dataclass, in the order of the reference."""
_REQUIRED = ("tlmm",)  # sections a config file must have (the others default)
_NOT_YAML = ("source",)  # AcceleratorConfig fields that are not read from YAML
_CHECKS: dict[str, Any] = {"tlmm": _check_tlmm, "kv": _check_kv, "memory": _check_memory, "": _check_gemm_bus}


@cache
def _adapter() -> TypeAdapter:
    return TypeAdapter(Annotated[AcceleratorConfig, AfterValidator(_check_gemm_bus)])


@dataclass(frozen=True)
class _Spec:
    """What the schema says about one field, for messages and the reference table."""

    kind: str  # "integer", "number", "string", "choice", "section"
    lo: Any = None
    hi: Any = None
    choices: tuple = ()
    pow2: bool = False
    doc: str = ""


def _spec(hint: Any) -> _Spec:
    base, meta = hint, []
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
    lo = hi = None
    doc, pow2 = "", any(m is POW2 for m in meta)
    for m in meta:
        if isinstance(m, FieldInfo):
            doc = m.description or doc
            for c in m.metadata:
                lo = getattr(c, "ge", lo)
                hi = getattr(c, "le", hi)
    if typing.get_origin(base) is Literal:
        return _Spec("choice", choices=typing.get_args(base), doc=doc)
    kind = {int: "integer", float: "number", str: "string", bool: "boolean"}.get(base, "section")
    return _Spec(kind, lo, hi, (), pow2, doc)


@cache
def _specs(cls: type) -> dict[str, _Spec]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: _spec(hints[f.name]) for f in dataclasses.fields(cls)}


def _known(section: str) -> list[str]:
    cls = SECTIONS.get(section, AcceleratorConfig)
    return sorted(n for n in _specs(cls) if not (cls is AcceleratorConfig and n in _NOT_YAML))


def _error_line(source: str, err: dict) -> str:
    """One pydantic error as 'file: field: what is wrong, what is allowed'."""
    kind, value, ctx = err["type"], err["input"], err.get("ctx") or {}
    loc = [str(x) for x in err["loc"]]
    if kind == "consistency":
        return f"{source}: {ctx['field']}: {ctx['message']}"
    field = ".".join(loc) or "top level"
    if kind in ("unexpected_keyword_argument", "invalid_key", "extra_forbidden"):
        section = loc[0] if len(loc) > 1 else ""
        key = show(value, 40) if kind == "invalid_key" else show(loc[-1], 40).strip("'")
        where = f"{section}.{key}" if section else key
        return f"{source}: {where}: unknown field (known: {', '.join(_known(section))})"
    if kind in ("missing", "missing_argument"):
        return f"{source}: {field}: required field is missing"
    if kind in ("dataclass_type", "dict_type", "model_type"):
        return f"{source}: {field}: expected a mapping, got {type(value).__name__}"
    cls = SECTIONS.get(loc[0], AcceleratorConfig) if len(loc) > 1 else AcceleratorConfig
    spec = _specs(cls).get(loc[-1]) if loc else None
    if spec is None:
        return f"{source}: {field}: {show(err['msg'], 160)}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        shown = (
            show(value)
            if not isinstance(value, (int, float)) or isinstance(value, bool)
            else show(value).strip("'")
        )
        return f"{source}: {field}: {shown} is out of range, allowed {spec.lo}..{spec.hi}"
    if spec.kind in ("integer", "number"):
        article = "an integer" if spec.kind == "integer" else "a number"
        if kind == "power_of_two":
            return f"{source}: {field}: {show(value)} must be a power of two"
        return f"{source}: {field}: expected {article} in {spec.lo}..{spec.hi}, got {show(value)}"
    if spec.kind == "choice":
        return f"{source}: {field}: expected one of {', '.join(spec.choices)}, got {show(value)}"
    if spec.kind == "string":
        return f"{source}: {field}: expected a non-empty string, got {show(value)}"
    return f"{source}: {field}: {show(err['msg'], 160)}"


def config_from_dict(data: Any, source: str = "<dict>") -> AcceleratorConfig:
    """Validate a parsed YAML document and build the config. Raises :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level: expected a mapping of fields, got {type(data).__name__}")
    for key in _NOT_YAML:
        if key in data:
            raise ConfigError(f"{source}: {key}: unknown field (known: {', '.join(_known(''))})")
    for key in _REQUIRED:
        if key not in data:
            raise ConfigError(f"{source}: {key}: required field is missing")
    doc = {"name": Path(source).stem, **data, "source": source}
    try:
        return _adapter().validate_python(doc)
    except ValidationError as e:
        raise ConfigError(_error_line(source, e.errors(include_url=False)[0])) from None


def load_config(path: str | Path | None = None) -> AcceleratorConfig:
    """Load and validate a YAML accelerator config (read by :func:`hw.yaml_safe.load_yaml`)."""
    path = data_files.resolve(path) if path is not None else DEFAULT_CONFIG
    return config_from_dict(load_yaml(path, "config"), str(path))


# ---------------------------------------------------------------- reference
def _allowed(spec: _Spec) -> str:
    if spec.kind == "choice":
        return ", ".join(f"`{c}`" for c in spec.choices)
    if spec.kind == "string":
        return "non-empty"
    if spec.kind == "boolean":
        return "`true`, `false`"
    text = f"{spec.lo}..{spec.hi}" if spec.lo is not None else ""
    if spec.hi == (1 << 63) - 1:
        text = f"{spec.lo}..2^63-1"
    elif isinstance(spec.hi, int) and spec.hi >= 1 << 16 and spec.hi & (spec.hi - 1) == 0:
        text = f"{spec.lo}..2^{spec.hi.bit_length() - 1}"
    return text + (", power of two" if spec.pow2 else "")


def _check_doc(fn: Any) -> str:
    return " ".join((fn.__doc__ or "").split())


def config_reference_markdown() -> str:
    """The config reference (docs/config.md): every section, field, type, range, default and description,
    generated from the schema above, plus the limits of the YAML reader."""
    from hw import yaml_safe

    out = [
        "# Accelerator config reference",
        "",
        "Generated from `hw/config.py` by `python -m hw.config --markdown > docs/config.md`; do not edit by "
        "hand (a test checks it is current).",
        "",
        "A config is a YAML mapping with the top-level fields below and one mapping per section. Only "
        "`tlmm` is required; a missing section or field takes its default. Unknown fields are errors. "
        "Every error is one line naming the file and the field (`tritium config check FILE` exits 2).",
        "",
    ]
    default = AcceleratorConfig()
    sections: list[tuple[str, type, Any]] = [("", AcceleratorConfig, default)]
    sections += [(name, cls, getattr(default, name)) for name, cls in SECTIONS.items()]
    for name, cls, obj in sections:
        title = "Top level" if not name else f"`{name}`"
        out += [f"## {title}", ""]
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        out += [" ".join(doc.split()), ""]
        out += ["| field | type | allowed | default | description |", "|---|---|---|---|---|"]
        for field, spec in _specs(cls).items():
            if spec.kind == "section" or (cls is AcceleratorConfig and field in _NOT_YAML):
                continue
            value = getattr(obj, field)
            shown = "file name" if (cls is AcceleratorConfig and field == "name") else f"`{value}`"
            kind = "one of" if spec.kind == "choice" else spec.kind
            full = f"{name}.{field}" if name else field
            out.append(f"| `{full}` | {kind} | {_allowed(spec)} | {shown} | {spec.doc} |")
        out.append("")
        check = _CHECKS.get(name)
        if check is not None:
            out += [f"Checks across fields: {_check_doc(check)}", ""]
    out += [
        "## Limits of the YAML reader",
        "",
        "Every YAML file a user gives (configs, energy tables, sweep specs) is read by "
        "`hw.yaml_safe.load_yaml`, which keeps `yaml.safe_load` semantics (plain data, no tags executed) "
        "and refuses with a one-line error naming the file:",
        "",
        "- anything but a regular file (FIFOs, devices, directories), checked before opening;",
        f"- files over {yaml_safe.MAX_BYTES} bytes (1 MiB); at most that many bytes are read;",
        "- bytes that are not UTF-8;",
        f"- nesting deeper than {yaml_safe.MAX_DEPTH} mappings/sequences;",
        f"- more than {yaml_safe.MAX_NODES} values once aliases are expanded (alias bombs), and recursive "
        "aliases;",
        f"- integer literals longer than {yaml_safe.MAX_INT_CHARS} characters;",
        "- duplicate keys in a mapping (the line of both is given).",
        "",
        f"Values echoed in error messages are cut to {yaml_safe.ECHO_CHARS} characters.",
        "",
    ]
    return "\n".join(out)


def _main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        print("usage: python -m hw.config --markdown > docs/config.md", file=sys.stderr)
        return 2
    from hw.config import config_reference_markdown as generate  # the importable module, not __main__

    sys.stdout.write(generate())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
