"""MODELED cost of KV retrieval in the loop (docs/design.md, "KV retrieval in the loop"), for the estimate.

With ``system.attention = resv`` a decode step at context L ≥ ``system.kv_min_context`` reads n tiles of P
keys per stream (tile 0 with the sinks, the window tiles, the selected clusters' pages) through tile-list
GEMMs instead of every tile. :func:`plan_decode` gives n and the context ``l_eff = n·P`` at which the dense
step Program has exactly those attention GEMMs and host softmax (a tile-list GEMM's timing is the dense
GEMM's of the same tile count); :func:`retrieval_step_cost` adds what the dense Program does not hold: the
KVR commands (``sim.kv_model.kvr_cost``), each tile-list GEMM's list fetch and the host's page-copy writes.
Pages selected per step: ``ceil(system.kv_selected_share · clusters in use)``, an assumption until traces at
long context exist.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

from compiler.tiling import RetrievalGeometry, retrieval_geometry
from hw.config import AcceleratorConfig
from sim.gemm_model import list_fetch_beats
from sim.kv_model import kv_energy_j, kvr_cost
from sim.top_model import gemm_list_fetch_cycles

__all__ = ["RetrievalPlan", "model_geometry", "plan_decode", "retrieval_step_cost", "SHARE_RANGE"]

SHARE_RANGE = (0.1, 0.5)
"""The range the estimate reports for ``system.kv_selected_share`` (an assumption at long context: the KVR
selection read 0.29-0.38 of the clusters on the tiny model's traces at 256 tokens, examples/
retrieval_trace_share.py; ReSV's token fraction there was 9.5 % at alpha 0.1; long contexts are sparser, but
the tables' clusters there are larger)."""

INSERTS_PER_COMMAND = 255  # KVR ``inserts`` field


@dataclass(frozen=True)
class RetrievalPlan:
    """One decode step's retrieval at ``context`` tokens attended (position ``context − 1``)."""

    context: int
    active: bool  # context ≥ kv_min_context: retrieval replaces dense attention
    clusters: int  # clusters in use before the step's insert
    selected: int  # pages selected per step (union over the stream's queries)
    window_tiles: int  # window tiles other than tile 0
    tiles: int  # n: tiles in the list (0 when not active)
    l_eff: int  # context whose dense attention reads the same tiles (the context when not active)
    capped: bool  # l_eff was capped at max_seq (the step is charged for max_seq keys, < n·P)

    def to_dict(self) -> dict:
        return asdict(self)


def model_geometry(acfg: AcceleratorConfig, model_spec: str) -> tuple[RetrievalGeometry, int]:
    """(geometry, layers) of a decoder LM named by ``model_spec`` on ``acfg`` (ValueError otherwise)."""
    n_heads, n_kv_heads, head_dim, max_seq, n_layers = _lm_shape(model_spec)
    geo = retrieval_geometry(acfg, n_heads, n_kv_heads, head_dim, max_seq)
    return geo, n_layers


@lru_cache(maxsize=32)
def _lm_shape(model_spec: str) -> tuple[int, int, int, int, int]:
    """(n_heads, n_kv_heads, head_dim, max_seq, n_layers) of a decoder LM (loaded once per process on meta
    tensors: the design-space exploration asks per point)."""
    from compiler import load_model

    model = load_model(model_spec, device="meta")
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "n_kv_heads"):
        raise ValueError(f"{model_spec}: attention 'resv' needs a decoder LM (models.lm.TernaryLM)")
    return cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.max_seq, cfg.n_layers


def plan_decode(acfg: AcceleratorConfig, geo: RetrievalGeometry, context: int, max_seq: int) -> RetrievalPlan:
    s = acfg.system
    p_pos = context - 1
    clusters = min(acfg.kv.max_clusters, max(0, p_pos - s.kv_sinks))
    if context < s.kv_min_context:
        return RetrievalPlan(context, False, clusters, 0, 0, 0, context, False)
    P = geo.page
    lo = max(0, p_pos - s.kv_window + 1) // P
    window = len({t for t in range(lo, p_pos // P + 1)} - {0})
    selected = min(clusters, math.ceil(s.kv_selected_share * clusters - 1e-9))
    tiles = 1 + window + selected
    l_eff = tiles * P
    return RetrievalPlan(
        context, True, clusters, selected, window, tiles, min(l_eff, max_seq), l_eff > max_seq
    )


def _blank():
    from tritium.estimate import StepCost

    c = StepCost()
    for d in ("engine_cycles", "compute_cycles"):
        getattr(c, d)["kv"] = 0
    c.time_by["kv"] = 0.0
    c.energy_j["kv"] = 0.0
    return c


def retrieval_step_cost(
    acfg: AcceleratorConfig,
    geo: RetrievalGeometry,
    layers: int,
    energy: dict,
    tokens: int,
    plan: RetrievalPlan | None,
    records: list | None = None,
) -> tuple:
    """The StepCost of what retrieval adds to a step of ``tokens`` new tokens (a prefill when ``plan`` is
    None: inserts only; a decode step otherwise), and a dict of its parts per step. ``records`` receives
    one breakdown record per part (KVR commands, list fetches, host page writes), labelled as the layer
    ``retrieval``."""
    from tritium.estimate import _record

    def record(
        kind: str, engine: str, cycles: int, seconds: float, nbytes: int, e: float, bound: str, n: int
    ):
        if (
            records is not None
        ):  # n: commands the record stands for (0: part of the step's GEMM/HOST commands)
            r = _record(engine, cycles, seconds, nbytes, e, bound)
            r["layer"], r["op_kind"], r["commands"] = "retrieval", kind, n
            records.append(r)

    pj = energy["pj"]
    mem, dev, sysc = acfg.memory, acfg.device, acfg.system
    f = acfg.clock_mhz * 1e6
    dram = dev.dram_gbs * 1e9 / f  # shared DRAM bytes per accelerator cycle
    host_bps = min(dev.host_gbs, dev.dram_gbs) * 1e9
    in_dram = sysc.kv_tables == "dram"
    streams = layers * geo.streams_per_layer
    c = _blank()

    def add_kvr(n: int, selected: list[int], inserts: int, entries: int) -> dict:
        k = kvr_cost(acfg.kv, mem, n, selected, inserts, geo.table_row_bytes, entries, in_dram)
        nbytes = k["read_bytes"] + k["write_bytes"]
        cyc = max(k["cycles"], math.ceil(nbytes / dram))
        e_eng, e_dram = kv_energy_j(acfg, k["events"]), 1e-12 * nbytes * pj["dram_byte"]
        c.commands += streams
        c.engine_cycles["kv"] += streams * cyc
        c.compute_cycles["kv"] += streams * k["compute_cycles"]
        c.time_by["kv"] += streams * cyc / f
        c.seconds += streams * cyc / f
        c.dram_bytes += streams * nbytes
        c.dram_bytes_by["accelerator"] += streams * nbytes
        c.energy_j["kv"] += streams * e_eng
        c.energy_j["dram"] += streams * e_dram
        bound = "DRAM" if cyc > k["compute_cycles"] + mem.latency + 4 else "compute"
        record(
            "KVR",
            "kv",
            streams * cyc,
            streams * cyc / f,
            streams * nbytes,
            streams * (e_eng + e_dram),
            bound,
            streams,
        )
        return k

    # KVR commands: a prefill inserts its tokens ≥ sinks (≤ 255 per command); a decode step queries, then
    # inserts its token (tokens < sinks are never inserted)
    start = 0 if plan is None else plan.context - 1
    inserts = sum(1 for t in range(start, start + tokens) if t >= sysc.kv_sinks)
    parts: dict = {"streams": streams}
    n = 0 if plan is None else plan.clusters
    queries = [plan.selected] * geo.queries if plan is not None and plan.active else []
    left = inserts
    first = True
    while first or left > 0:
        batch = min(left, INSERTS_PER_COMMAND)
        if batch or queries:
            k = add_kvr(n, queries if first else [], batch, plan.tiles if plan is not None and first else 0)
            if first:
                parts["kvr_cycles_per_command"] = k["cycles"]
                parts["kvr_bytes_per_command"] = k["read_bytes"] + k["write_bytes"]
        n = min(acfg.kv.max_clusters, n + batch)
        left -= batch
        first = False
    # the tile-list GEMMs' list fetch (Q·Kᵀ and P·V per stream)
    if plan is not None and plan.active:
        # the top reads the list's capacity (the command's field), not its count: sim.top_model's definition
        cap = geo.list_entries
        list_beats = list_fetch_beats(cap, mem.bus_bytes)
        cyc = gemm_list_fetch_cycles(acfg, cap)
        nbytes = 2 * streams * list_beats * mem.bus_bytes
        c.engine_cycles["gemm"] += 2 * streams * cyc
        c.time_by["gemm"] += 2 * streams * cyc / f
        c.seconds += 2 * streams * cyc / f
        c.dram_bytes += nbytes
        c.dram_bytes_by["accelerator"] += nbytes
        c.energy_j["dram"] += 1e-12 * nbytes * pj["dram_byte"]
        parts["list_fetch_bytes"] = nbytes
        e = 1e-12 * nbytes * pj["dram_byte"]
        record("GEMM tile-list fetch", "gemm", 2 * streams * cyc, 2 * streams * cyc / f, nbytes, e, "DRAM", 0)
    # host: the page copy of each inserted token (K column, V row, the g heads' two scales, its insert
    # result read, its cluster id written) and, on a retrieval step, the list read by the softmax
    hbytes = streams * inserts * (2 * geo.dim + 8 * geo.group + 4 + 2)
    if plan is not None and plan.active:
        hbytes += streams * (16 + 4 * plan.tiles)
    hs = hbytes / host_bps
    c.host_seconds += hs
    c.time_by["host"] += hs
    c.seconds += hs
    c.dram_bytes += hbytes
    c.dram_bytes_by["host"] += hbytes
    c.energy_j["host"] += hs * energy["host_w"]
    c.energy_j["dram"] += 1e-12 * hbytes * pj["dram_byte"]
    c.energy_j["static"] = dev.static_w * c.seconds
    record(
        "HOST kv pages",
        "host",
        0,
        hs,
        hbytes,
        hs * energy["host_w"] + 1e-12 * hbytes * pj["dram_byte"],
        "host",
        0,
    )
    parts["host_bytes"] = hbytes
    parts["inserts_per_stream"] = inserts
    return c, parts
