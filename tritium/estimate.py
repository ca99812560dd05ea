"""Whole-model performance and energy estimates (`tritium estimate`). Every figure here is MODELED.

A model is compiled (compiler.compile_model) and the Programs of two steps are costed command by command:
the prefill of the prompt (TTFT) and one decode step at the given context. Costs:

- **TLMM** command: the top level's cycle model of the command (``sim.top_model.tlmm_run_cycles``: the DMA's
  read sequencer, read FIFO of ``memory.read_fifo_depth`` beats, gearbox and result packer stepped over the
  memory model with the engine's control; co-simulated cycle for cycle against the RTL), bounded below by
  its bytes (packed weights + activations + results; a ``wbuf`` reuse command reads its weights from the
  top level's weight buffer, not from DRAM) through the shared DRAM: ``max(run cycles, ceil(bytes / shared
  DRAM))`` with shared DRAM = ``device.dram_gbs`` per cycle. The run cycles depend on the command's shape
  only (tokens, k_chunks, n_blocks, weight-buffer reuse; its bases are beat addresses, so every run starts
  bus-aligned) and the config's tlmm and memory sections: they are computed once per shape
  (:func:`tlmm_command_cycles`). The compute part of the time is the engine's closed form
  (``sim.tlmm_model.tlmm_cycles``, streams fed directly; equal to the stepped model, tested): a command
  whose cycles beyond it (the DMA's latency, port and FIFO stalls, or the shared DRAM) exceed it is
  memory-bound (``time_by["tlmm memory"]``; the rule a GEMM record's bound follows), otherwise compute-bound.
- **GEMM** command: ``sim.gemm_model.gemm_fast`` — exact cycles including its own memory traffic under the
  memory model (tested equal to the stepped model, which is co-simulated against the RTL), bounded below by
  its bytes through the shared DRAM: ``max(cycles, ceil(bytes / shared DRAM))``.
- **HOST** op: ``max(flops / host_gflops, bytes / min(host_gbs, dram_gbs)) + host_op_us`` (a fixed cost per
  op, ``device.host_op_us``) with the per-element costs of :data:`HOST_COST` (counted from models/hostops.py's
  implementations). Every byte a host op reads or writes is a DRAM byte (the LM head's float32 weights, the
  embedding row, the tensors the accelerator wrote): the PL's results reach the host through DRAM, and caches are not modeled (exact for the LM head, whose weights
  are far larger than the A53s' L2; an upper bound for small tensors).
- **Shared DRAM**: host and accelerator share ``device.dram_gbs``; each agent is capped by its own port too.
  Commands run one after another (no overlap), so a command never competes with another one for the DRAM,
  and ``step time = Σ command times ≥ Σ bytes / dram_gbs`` holds command by command (the per-command bound
  above); ``dram_limit_tokens_per_s = dram_gbs / (accelerator + host bytes per token)``.
- **Overlap**: none. Commands run in Program order; an engine command starts when the previous command has
  finished and the accelerator waits for each HOST op (conservative: real designs overlap weight loading,
  host ops and compute).
- **Energy**: Σ events × per-event energy (configs/energy/<device.family>.yaml) + pj.dram_byte × every DRAM
  byte (accelerator and host) + host power × host time + ``device.static_w`` × total time, all at
  ``device.power_boundary``. :func:`assumptions` lists every number used that is not derived from the RTL or
  the config's engine sections, each with its source (``device.sources``, the energy table's ``sources``,
  :data:`HOST_COST_SOURCE`) and range where one is given.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from compiler.hostcost import HOST_COST, HOST_COST_SOURCE, host_cost
from hw.config import AcceleratorConfig
from hw.isa import WBUF_REUSE, GemmCommand, HostCommand, SyncCommand, TlmmCommand
from hw.program import Program, tlmm_wgt_beat_bytes
from hw.ternary import TlmmShape
from sim.energy import load_energy
from sim.gemm_model import gemm_fast
from sim.tlmm_model import tlmm_cycles, tlmm_events_closed_form
from sim.top_model import schedule, tlmm_run_cycles

__all__ = [
    "HOST_COST",
    "HOST_COST_SOURCE",
    "MODEL_RULES",
    "load_energy",
    "StepCost",
    "cost_program",
    "tlmm_command_cycles",
    "estimate",
    "summarize",
    "assumptions",
    "format_estimate",
    "plot_estimates",
    "breakdown_of",
    "format_breakdown",
    "plot_breakdown",
    "estimate_module",
    "format_module_estimate",
]

MODEL_RULES = (
    "system.overlap false: commands run in Program order and the accelerator waits for every host op; true: "
    "the top level's event schedule (sim/top_model.py: in-order issue, a command dispatched when its engine "
    "is free, TLMM and GEMM one at a time on the shared port, host ops beside them, SYNCs from the data "
    "dependencies) gives the step time, never below all its bytes / dram_gbs",
    "a TLMM command's time is the top level's cycle model of its DMA and engine (sim/top_model.py, = RTL), a "
    "GEMM's the engine's cycle model with its memory traffic; host and accelerator share device.dram_gbs: per "
    "command time = max(own time, bytes / dram_gbs), a host op's max(flops / host_gflops, bytes / "
    "min(host_gbs, dram_gbs)); without overlap the step time is >= all its bytes / dram_gbs",
    "every byte a host op reads or writes is a DRAM byte (no cache model)",
    "energy = events x energy table + pj.dram_byte x all DRAM bytes + host_w x host time + static_w x time, "
    "at device.power_boundary",
)
"""How the estimate combines its numbers (listed in the JSON under ``model_rules``)."""


@dataclass
class StepCost:
    """Modeled cost of one step Program."""

    seconds: float = 0.0
    engine_cycles: dict = field(default_factory=lambda: {"tlmm": 0, "gemm": 0})
    compute_cycles: dict = field(default_factory=lambda: {"tlmm": 0, "gemm": 0})  # without memory bounds
    host_seconds: float = 0.0
    time_by: dict = field(
        default_factory=lambda: {"tlmm compute": 0.0, "tlmm memory": 0.0, "gemm": 0.0, "host": 0.0}
    )
    dram_bytes: int = 0  # all DRAM bytes: accelerator + host
    dram_bytes_by: dict = field(default_factory=lambda: {"accelerator": 0, "host": 0})
    energy_j: dict = field(
        default_factory=lambda: {"tlmm": 0.0, "gemm": 0.0, "dram": 0.0, "host": 0.0, "static": 0.0}
    )
    busy_issue: dict = field(default_factory=lambda: {"tlmm": 0, "gemm": 0})  # cycles with an issue
    commands: int = 0
    overlap_saved_s: float = 0.0  # system.overlap: Σ command times − the overlapped step time
    roofline: list = field(default_factory=list)  # (engine, ops, dram bytes, seconds) per command

    ADDITIVE = ("engine_cycles", "compute_cycles", "time_by", "dram_bytes_by", "energy_j", "busy_issue")
    """The dict fields that add up over commands (with ``seconds``, ``host_seconds``, ``dram_bytes``,
    ``commands``)."""

    def add(self, other: StepCost, times: int = 1) -> None:
        """Add ``times`` × ``other`` (commands run one after another, so every cost adds up)."""
        self.seconds += times * other.seconds
        self.overlap_saved_s += times * other.overlap_saved_s
        self.host_seconds += times * other.host_seconds
        self.dram_bytes += times * other.dram_bytes
        self.commands += times * other.commands
        for d in self.ADDITIVE:
            dst = getattr(self, d)
            for k, v in getattr(other, d).items():
                dst[k] = dst.get(k, 0) + times * v

    @property
    def energy_total_j(self) -> float:
        return sum(self.energy_j.values())

    @property
    def bound(self) -> str:
        """What takes most of the step's time."""
        k = max(self.time_by, key=self.time_by.get)
        return {
            "tlmm compute": "compute (TLMM)",
            "tlmm memory": "memory (TLMM weight streaming)",
            "gemm": "GEMM (attention; the LM head with lm_head=acc_int8)",
            "host": "host",
            "kv": "KV retrieval",
        }[k]


def _host_cost(prog: Program, op) -> tuple[float, float]:
    """(flops, bytes) of a host op from its tensors' sizes (compiler.hostcost.host_cost)."""
    return host_cost(prog.tensors, op)


_TLMM_RUN: dict = {}  # (tlmm section, memory section, tokens, k_chunks, n_blocks, reuse) → run cycles


def tlmm_command_cycles(acfg: AcceleratorConfig, cmd: TlmmCommand) -> int:
    """``sim.top_model.tlmm_run_cycles(acfg, cmd)`` (dispatch → done on the top level), cached per command
    shape: the DMA kernel reads the config's tlmm and memory sections and the command's tokens, k_chunks,
    n_blocks and whether its weights come from the weight buffer (wbuf 2; 0 and 1 time alike); its bases
    are beat addresses, so every run starts bus-aligned and the addresses never change the count (tested:
    tests/test_estimate_cycles.py)."""
    key = (acfg.tlmm, acfg.memory, cmd.tokens, cmd.k_chunks, cmd.n_blocks, cmd.wbuf == WBUF_REUSE)
    r = _TLMM_RUN.get(key)
    if r is None:
        if len(_TLMM_RUN) > 100_000:  # a long DSE sweep: keep the memory bounded
            _TLMM_RUN.clear()
        r = _TLMM_RUN[key] = tlmm_run_cycles(acfg, cmd)
    return r


def cost_program(
    prog: Program,
    acfg: AcceleratorConfig,
    energy: dict | None = None,
    memory_bound: bool = True,
    records: list | None = None,
) -> StepCost:
    """Cost every command of ``prog`` (see the module doc). ``memory_bound=False`` leaves out the memory: a
    TLMM command costs its engine's compute cycles (streams fed directly: the closed form) instead of the top
    level's DMA cycle model, a GEMM its engine's cycles without the shared-DRAM bound — exactly the cycle
    models' counts when the Program is executed on the stepped engine models (sim.runtime).
    ``records``: a list that receives one dict per command (``engine``, ``cycles`` — engine cycles, 0 for a
    HOST op —, ``time_s``, ``dram_bytes``, ``energy_j`` without static power, ``time_by``: its time under
    what bounds it, compute, DRAM or host); the records add up to the returned totals (:func:`breakdown`)."""
    energy = energy or load_energy(acfg.device.family)
    pj = energy["pj"]
    t, mem, dev = acfg.tlmm, acfg.memory, acfg.device
    f = acfg.clock_mhz * 1e6
    dram = dev.dram_gbs * 1e9 / f  # the shared DRAM, bytes per accelerator cycle
    host_bps = min(dev.host_gbs, dev.dram_gbs) * 1e9  # the host's port, capped by the shared DRAM
    wb = tlmm_wgt_beat_bytes(t)
    c = StepCost()
    gemm_timing: dict = {}  # a GEMM's timing depends on its tile counts only (not on its addresses)
    tlmm_shapes: dict = {}  # (tokens, k_chunks, n_blocks, wbuf) → a TLMM command's figures
    cmds = prog.commands()
    durations = []  # seconds of each command (SYNC: 0), for the overlapped schedule
    for cmd in cmds:
        before = c.seconds
        if isinstance(cmd, SyncCommand):  # a wait, not work: no cost of its own
            durations.append(0.0)
            continue
        c.commands += 1
        if isinstance(cmd, TlmmCommand):
            # every figure of a TLMM command depends on its shape and wbuf only (not its addresses): worked
            # out once per shape in this call, added per command in Program order (the same sums)
            tkey = (cmd.tokens, cmd.k_chunks, cmd.n_blocks, cmd.wbuf)
            tv = tlmm_shapes.get(tkey)
            if tv is None:
                m, kc, nb = tkey[:3]
                shape = TlmmShape(m, kc * t.chunk_k, nb * t.columns, kc, nb)
                comp = tlmm_cycles(t, shape)
                wbytes = kc * nb * wb  # the weight run: from DRAM, or from the weight buffer (wbuf 2)
                nbytes = (
                    (0 if cmd.wbuf == WBUF_REUSE else wbytes) + kc * m * t.chunk_k + nb * m * t.columns * 4
                )
                if memory_bound:
                    cyc = max(tlmm_command_cycles(acfg, cmd), math.ceil(nbytes / dram))
                else:
                    cyc = comp
                ev = tlmm_events_closed_form(t, shape)
                # memory-bound (as a GEMM's record): the command waits on memory (its cycles beyond the
                # engine's compute closed form) longer than it computes
                mem_bound = cyc - comp > comp
                e_eng = 1e-12 * (
                    ev["lookups"] * pj["lookup"]
                    + ev["table_entry_writes"] * pj["table_entry"]
                    + (ev["acc_mem_reads"] + ev["acc_mem_writes"]) * 4 * t.columns * pj["sram_byte"]
                    + (wbytes * pj["sram_byte"] if cmd.wbuf else 0.0)  # weight buffer written (1) or read (2)
                )
                e_dram = 1e-12 * nbytes * pj["dram_byte"]
                roof = ("tlmm", 2.0 * m * kc * t.chunk_k * nb * t.columns, nbytes, cyc / f)
                tv = tlmm_shapes[tkey] = (cyc, comp, kc * nb * m, mem_bound, nbytes, e_eng, e_dram, roof)
            cyc, comp, issue, mem_bound, nbytes, e_eng, e_dram, roof = tv
            c.engine_cycles["tlmm"] += cyc
            c.compute_cycles["tlmm"] += comp
            c.busy_issue["tlmm"] += issue
            c.time_by["tlmm memory" if mem_bound else "tlmm compute"] += cyc / f
            c.dram_bytes += nbytes
            c.dram_bytes_by["accelerator"] += nbytes
            c.energy_j["tlmm"] += e_eng
            c.energy_j["dram"] += e_dram
            c.roofline.append(roof)
            c.seconds += cyc / f
            if records is not None:
                bound = "DRAM" if mem_bound else "compute"
                records.append(_record("tlmm", cyc, cyc / f, nbytes, e_eng + e_dram, bound))
        elif isinstance(cmd, GemmCommand):
            key = (cmd.m_tiles, cmd.n_tiles, cmd.k_tiles, cmd.requant)
            if key not in gemm_timing:
                gemm_timing[key] = gemm_fast(acfg, cmd)
            g = gemm_timing[key]
            ev = g.events
            nbytes = (ev["read_beats"] + ev["write_beats"]) * mem.bus_bytes
            cyc = max(g.cycles, math.ceil(nbytes / dram)) if memory_bound else g.cycles
            c.engine_cycles["gemm"] += cyc
            c.compute_cycles["gemm"] += g.cycles
            c.busy_issue["gemm"] += ev["issue_cycles"]
            c.time_by["gemm"] += cyc / f
            c.dram_bytes += nbytes
            c.dram_bytes_by["accelerator"] += nbytes
            e_eng = 1e-12 * (
                ev["macs"] * pj["mac8"]
                + (ev["buffer_reads"] + ev["buffer_writes"]) * mem.bus_bytes * pj["sram_byte"]
            )
            e_dram = 1e-12 * nbytes * pj["dram_byte"]
            c.energy_j["gemm"] += e_eng
            c.energy_j["dram"] += e_dram
            c.roofline.append(("gemm", 2.0 * ev["macs"], nbytes, cyc / f))
            c.seconds += cyc / f
            if records is not None:
                # DRAM-bound: the shared-DRAM bound binds, or the engine waited for operands longer than it issued
                dram_bound = cyc > g.cycles or ev["load_stall_cycles"] > ev["issue_cycles"]
                bound = "DRAM" if dram_bound else "compute"
                records.append(_record("gemm", cyc, cyc / f, nbytes, e_eng + e_dram, bound))
        elif isinstance(cmd, HostCommand):
            op = prog.host_ops[cmd.op]
            flops, nbytes = _host_cost(prog, op)
            s = max(flops / (dev.host_gflops * 1e9), nbytes / host_bps) + dev.host_op_us * 1e-6
            hbytes = int(nbytes)
            c.host_seconds += s
            c.time_by["host"] += s
            c.dram_bytes += hbytes
            c.dram_bytes_by["host"] += hbytes
            e_host, e_dram = s * energy["host_w"], 1e-12 * hbytes * pj["dram_byte"]
            c.energy_j["host"] += e_host
            c.energy_j["dram"] += e_dram
            c.seconds += s
            if records is not None:
                records.append(_record("host", 0, s, hbytes, e_host + e_dram, "host"))
        durations.append(c.seconds - before)
    if acfg.system.overlap:
        # the top level's event schedule (sim/top_model.py, without fetch cycles): host ops beside engine work;
        # every byte still goes through the one shared DRAM
        span = schedule(cmds, durations, overlap=True, fetch=False).length
        step = max(span, c.dram_bytes / (dev.dram_gbs * 1e9))
        c.overlap_saved_s = c.seconds - step
        c.seconds = step
    c.energy_j["static"] = dev.static_w * c.seconds
    return c


def _record(engine: str, cycles: int, seconds: float, nbytes: int, energy_j: float, bound: str) -> dict:
    return {
        "engine": engine,
        "cycles": cycles,
        "time_s": seconds,
        "dram_bytes": nbytes,
        "energy_j": energy_j,
        "time_by": {bound: seconds},
    }


_COMPILED: dict = {}  # (model, config fingerprint) → CompiledModel, per process
_CAPTURED: dict = {}  # model → a CompiledModel whose graph other configs are lowered from (relower)
STATS: dict = {"captures": 0, "lowerings": 0}  # this process's model captures and lowerings (tests read it)


def clear_cache() -> None:
    """Forget compiled models (the next estimate captures and runs the passes again)."""
    _COMPILED.clear()
    _CAPTURED.clear()


def _compiled(model_spec: str, acfg: AcceleratorConfig, lm_head: str | None = None):
    from compiler import compile_model, load_model

    lm_head = acfg.system.lm_head if lm_head is None else lm_head
    # the Program embeds the whole config and depends on more than the hardware fingerprint (the system
    # section's choices; the clock and device through the host ops' modeled latency): key on all of it
    cfg = {**acfg.to_dict(), "system": dataclasses.asdict(dataclasses.replace(acfg.system, lm_head=lm_head))}
    key = (model_spec, json.dumps(cfg, sort_keys=True, default=str))
    if key not in _COMPILED:  # shapes suffice
        # dense Programs: retrieval is costed on top of them in closed form (tritium/retrieval.py).
        # The capture and the graph passes do not read the config: captured once per model, then lowered
        # per config (compiler.CompiledModel.relower; the same Lowering compile_model runs)
        base = _CAPTURED.get(model_spec)
        if base is None:
            cm = compile_model(load_model(model_spec, device="meta"), acfg, lm_head=lm_head, retrieval=False)
            STATS["captures"] += 1
            if len(_CAPTURED) >= 4:
                _CAPTURED.clear()
            _CAPTURED[model_spec] = cm
        else:
            cm = base.relower(acfg, lm_head, retrieval=False)
        STATS["lowerings"] += 1
        _COMPILED[key] = cm
    return _COMPILED[key]


DEFAULT_PROMPT, DEFAULT_CONTEXT = 64, 1024


def estimate(
    model_spec: str,
    acfg: AcceleratorConfig,
    prompt: int | None = None,
    context: int | None = None,
    cache=None,
    breakdown: bool = False,
    lm_head: str | None = None,
    attention: str | None = None,
) -> dict:
    """Prefill of ``prompt`` tokens (TTFT) and one decode step attending to ``context`` tokens. Left out,
    they default to 64 and 1024 tokens, each capped at the model's ``max_seq``. ``attention``: ``dense`` or
    ``resv`` (None: the config's ``system.attention``); ``resv`` costs the decode step with KV retrieval
    (:mod:`tritium.retrieval`; docs/design.md, "KV retrieval in the loop") and adds ``retrieval`` to the
    result.

    ``cache``: a :class:`compiler.cache.ProgramCache` to take the step Programs from (and store them in);
    None compiles in this process (memoized per process). ``breakdown``: also the per-layer and per-op-kind
    figures (:func:`breakdown`) under ``"breakdown"``. ``lm_head`` places the LM head (models/lm_head.py):
    host ops on float32 / float16 weights, or GEMM commands on int8 weights (None: the config's
    ``system.lm_head``). A progress bar shows on a
    terminal (sim/progress.py)."""
    from compiler.cache import ProgramSource
    from sim.progress import progress

    lm_head = acfg.system.lm_head if lm_head is None else lm_head
    attention = acfg.system.attention if attention is None else attention
    src = ProgramSource(
        model_spec, acfg, lambda: _compiled(model_spec, acfg, lm_head), cache, {"lm_head": lm_head}
    )
    rgeo = None
    if attention == "resv":
        from tritium.retrieval import model_geometry

        rgeo, n_layers = model_geometry(acfg, model_spec)
    with progress(total=5, desc="estimate", unit="step") as bar:
        bar.stage("model (compiles on a cache miss)")
        max_seq = src.max_seq()
        bar.update()
        prompt = min(DEFAULT_PROMPT, max_seq) if prompt is None else prompt
        context = min(DEFAULT_CONTEXT, max_seq) if context is None else context
        if not 1 <= prompt <= max_seq:
            raise ValueError(f"--prompt: {prompt} must be in 1..{max_seq} (the model's max_seq)")
        if not 1 <= context <= max_seq:
            raise ValueError(f"--context: {context} must be in 1..{max_seq} (the model's max_seq)")
        energy = load_energy(acfg.device.family)
        plan = None
        if rgeo is not None:
            from tritium.retrieval import plan_decode

            plan = plan_decode(acfg, rgeo, context, max_seq)
        dec_pos = context - 1 if plan is None else plan.l_eff - 1
        costs, recs, parts = [], [], []
        for label, (tokens, pos) in (("prefill", (prompt, 0)), ("decode", (1, dec_pos))):
            bar.stage(f"{label} Program")
            prog = src.program(tokens, pos, logits="last")
            bar.update()
            bar.stage(f"cost {label}")
            rec: list | None = [] if breakdown else None
            cost = cost_program(prog, acfg, energy, records=rec)
            if breakdown:
                _label_records(prog, rec)
            if rgeo is not None:
                from tritium.retrieval import retrieval_step_cost

                extra, part = retrieval_step_cost(
                    acfg, rgeo, n_layers, energy, tokens, plan if label == "decode" else None, rec
                )
                cost.add(extra)
                parts.append(part)
            costs.append(cost)
            if breakdown:
                recs.append(rec)
            bar.update()
    pre, dec = costs
    r = summarize(model_spec, acfg, prompt, context, pre, dec, energy, lm_head, attention)
    if rgeo is not None:
        r["retrieval"] = _retrieval_report(acfg, rgeo, n_layers, plan, context, parts, pre, dec)
        r["assumptions"].append(_share_assumption(acfg))
    if breakdown:
        r["breakdown"] = {
            label: breakdown_of(rec, cost, acfg)
            for label, rec, cost in zip(("prefill", "decode"), recs, costs, strict=True)
        }
    return r


def _retrieval_report(acfg, geo, layers, plan, context, parts, pre, dec) -> dict:
    """The ``retrieval`` block of a ``resv`` estimate: the plan, what retrieval costs per token and what
    KV it reads against dense attention at the same context."""
    f = acfg.clock_mhz * 1e6
    streams = layers * geo.streams_per_layer
    C, TK = acfg.gemm.cols, acfg.gemm.k_tile
    dense_keys = (-(-context // C) * C, -(-context // TK) * TK)
    dense_kv = streams * geo.dim * sum(dense_keys)
    read_kv = streams * geo.dim * 2 * plan.tiles * geo.page if plan.active else dense_kv
    from hw.kv_numerics import TableLayout

    table_bytes = streams * TableLayout(acfg.kv, acfg.memory.bus_bytes).nbytes  # the DRAM layout's size
    return {
        "modeled": True,
        "plan": plan.to_dict(),
        "streams": streams,
        "stream_dim": geo.dim,
        "page_keys": geo.page,
        "tables": acfg.system.kv_tables,
        "table_bytes_total": table_bytes,
        "selected_share": acfg.system.kv_selected_share,
        "kv_cycles_per_token": dec.engine_cycles.get("kv", 0),
        "kv_seconds_per_token": dec.engine_cycles.get("kv", 0) / f,
        "kv_energy_j_per_token": dec.energy_j.get("kv", 0.0),
        "kv_bytes_read_per_token": read_kv,
        "kv_bytes_dense_per_token": dense_kv,
        "kv_read_fraction": read_kv / dense_kv,
        "decode_parts": parts[1],
        "prefill_parts": parts[0],
        "prefill_kv_cycles": pre.engine_cycles.get("kv", 0),
    }


def _retrieval_rows(r: dict) -> list:
    """Rows of the text report for a ``resv`` estimate."""
    x = r.get("retrieval")
    if x is None:
        return []
    p = x["plan"]
    if not p["active"]:
        return [
            [
                "KV retrieval (resv)",
                f"dense below {p['context']} < kv_min_context",
                f"inserts only: {x['kv_seconds_per_token'] * 1e3:.3g} ms/token of KVR",
            ]
        ]
    return [
        [
            "KV retrieval (resv)",
            f"{p['tiles']} tiles of {x['page_keys']} keys per stream ({x['kv_read_fraction']:.0%} of dense KV bytes)",
            f"{p['selected']} of {p['clusters']} clusters (selected share {x['selected_share']:g}: assumption)",
        ],
        [
            "KVR cost per token",
            f"{x['kv_seconds_per_token'] * 1e3:.3g} ms, {x['kv_energy_j_per_token'] * 1e3:.3g} mJ engine",
            f"{x['streams']} streams, tables in {x['tables']} ({x['table_bytes_total'] / 2**20:.3g} MiB)",
        ],
    ]


def _share_assumption(acfg) -> dict:
    from tritium.retrieval import SHARE_RANGE

    return {
        "name": "system.kv_selected_share",
        "value": acfg.system.kv_selected_share,
        "unit": "share of the table's clusters a decode step reads",
        "source": "assumption at long context: measured only on the tiny model's traces at 256 tokens, "
        "0.29-0.38 of the clusters by table size (examples/retrieval_trace_share.py; docs/results.md)",
        "file": acfg.source,
        "range": list(SHARE_RANGE),
        "kind": "assumption",
    }


def estimate_module(module, acfg: AcceleratorConfig, input_shape, name: str = "") -> dict:
    """Modeled cost of one step of a general module (``compile_model(module, acfg, example_inputs=...)``) on
    an input of ``input_shape``: the step's Program costed command by command (:func:`cost_program`: the
    same rules as :func:`estimate`, listed under ``model_rules``). Returns step time, rows/s, engine cycles,
    time per bound, DRAM bytes and energy (all modeled)."""
    import torch

    from compiler import compile_model

    shape = tuple(int(d) for d in input_shape)
    x = torch.zeros(shape, dtype=torch.float32)
    cm = compile_model(module, acfg, example_inputs=(x,))
    prog = cm.program()
    c = cost_program(prog, acfg)
    rows = int(prog.meta["tokens"])
    kinds = {"tlmm": 0, "gemm": 0, "host": 0}
    for cmd in prog.commands():
        kinds[{"TlmmCommand": "tlmm", "GemmCommand": "gemm"}.get(type(cmd).__name__, "host")] += 1
    energy = sum(c.energy_j.values())
    return {
        "module": name or type(module).__name__,
        "config": acfg.name,
        "input_shape": list(shape),
        "rows": rows,
        "commands": kinds,
        "step_s": c.seconds,
        "rows_per_s": rows / c.seconds if c.seconds else None,
        "engine_cycles": dict(c.engine_cycles),
        "time_by": dict(c.time_by),
        "bound": max(c.time_by, key=c.time_by.get),
        "dram_bytes": int(c.dram_bytes),
        "dram_bytes_by": dict(c.dram_bytes_by),
        "energy_j": energy,
        "energy_j_by": dict(c.energy_j),
        "j_per_row": energy / rows,
        "memory_mib": prog.meta["memory_beats"] * acfg.memory.bus_bytes / 2**20,
        "clock_mhz": acfg.clock_mhz,
        "modeled": True,
        "model_rules": list(MODEL_RULES),
    }


def format_module_estimate(r: dict) -> str:
    """The human-readable lines of :func:`estimate_module`."""
    from tritium.report import fmt_bytes, fmt_time

    c = r["commands"]
    tb = r["time_by"]
    total = sum(tb.values()) or 1.0
    parts = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in tb.items() if v)
    return "\n".join(
        [
            f"{r['module']} on {r['config']} ({r['clock_mhz']:g} MHz), input {'x'.join(map(str, r['input_shape']))} "
            f"({r['rows']} rows), modeled:",
            f"  step {fmt_time(r['step_s'])}, {r['rows_per_s']:,.0f} rows/s; {c['tlmm']} TLMM, {c['gemm']} GEMM, "
            f"{c['host']} HOST commands",
            f"  engine cycles: TLMM {r['engine_cycles']['tlmm']:,}, GEMM {r['engine_cycles']['gemm']:,}; time: {parts} "
            f"(bound: {r['bound']})",
            f"  DRAM {fmt_bytes(r['dram_bytes'])} per step; energy {r['energy_j'] * 1e6:.2f} uJ per step, "
            f"{r['j_per_row'] * 1e6:.3f} uJ per row; memory {fmt_bytes(r['memory_mib'] * 2**20)}",
        ]
    )


def _label_records(prog: Program, records: list) -> list:
    from sim.breakdown import command_labels

    labels = [lab for lab in command_labels(prog) if lab[1] != "SYNC"]  # SYNCs cost nothing, have no record
    for rec, (layer, kind) in zip(records, labels, strict=True):
        rec["layer"], rec["op_kind"] = layer, kind
    return records


OVERLAP_ROW = "overlap (saved)"
"""With ``system.overlap``, the breakdown's row that takes the overlap's saving off the per-command sums
(negative time and static energy, no commands), so the rows still sum to the step's totals."""


BREAKDOWN_FIELDS = ("cycles", "time_s", "dram_bytes", "energy_j")


def breakdown_of(records: list, cost: StepCost, acfg: AcceleratorConfig) -> dict:
    """Per-layer and per-op-kind rows of one step from :func:`cost_program`'s ``records`` (labelled with
    ``layer`` and ``op_kind``): commands, engine cycles, time, DRAM bytes, energy (static power shared out by
    time, so the rows sum to the step's energy) and ``bound``: the resource that takes most of the row's time
    (compute, DRAM or host). ``totals`` are the step's own figures (what the rows sum to)."""
    from sim.breakdown import group

    static_w = acfg.device.static_w
    if cost.overlap_saved_s:
        saved = -cost.overlap_saved_s
        records = [
            *records,
            {"engine": "overlap", "cycles": 0, "time_s": saved, "dram_bytes": 0, "energy_j": 0.0,
             "time_by": {"overlap": saved}, "layer": OVERLAP_ROW, "op_kind": OVERLAP_ROW},
        ]  # fmt: skip
    for r in records:
        r["energy_j"] = r["energy_j"] + static_w * r["time_s"]

    def rows(key: str) -> list[dict]:
        out = group(records, key, BREAKDOWN_FIELDS, ("time_by",))
        for row in out:
            row["bound"] = max(row["time_by"], key=row["time_by"].get)
            if row["name"] == OVERLAP_ROW:
                row["commands"] = 0
        return out

    for r in records:
        r["layer_op"] = (r["layer"], r["op_kind"])
    cells = group(records, "layer_op", BREAKDOWN_FIELDS)
    for c in cells:
        c["layer"], c["op_kind"] = c.pop("name")
        if c["layer"] == OVERLAP_ROW:
            c["commands"] = 0
    for r in records:
        del r["layer_op"]
    return {
        "by_layer": rows("layer"),
        "by_op_kind": rows("op_kind"),
        "by_layer_op": cells,
        "totals": {
            "commands": cost.commands,
            "cycles": sum(cost.engine_cycles.values()),
            "time_s": cost.seconds,
            "dram_bytes": cost.dram_bytes,
            "energy_j": cost.energy_total_j,
        },
    }


def _source_kind(text: str) -> str:
    """From a source's text: 'assumption' (it says so anywhere, or has no source), 'measured' (by this
    project: starts with "measured"), 'counted' (from this project's code) or 'cited' (a publication, data
    sheet or schematic)."""
    low = text.lower()
    if "assumption" in low or low.startswith("no source given"):
        return "assumption"
    if low.startswith("counted"):
        return "counted"
    return "measured" if low.startswith("measured") else "cited"


def assumptions(acfg: AcceleratorConfig, energy: dict | None = None) -> list[dict]:
    """Every number the estimate uses that is not derived from the RTL or the engine sections of the config:
    ``[{"name", "value", "unit", "source", "kind", "range"?, "file"}]``. Sources are maintained once: the
    config's ``device.sources`` (device fields, ``clock_mhz``, ``memory.*``), the energy table's ``sources``
    and :data:`HOST_COST_SOURCE`; a number without one says so in its source."""
    energy = energy or load_energy(acfg.device.family)
    dev = acfg.device
    out: list[dict] = []

    def entry(name: str, value, unit: str, src: tuple | None, file: str) -> dict:
        text, lo, hi = src if src else (f"no source given in {file} (treat as an assumption)", None, None)
        if lo is not None and isinstance(value, (int, float)) and not lo <= value <= hi:
            text = f"{text} [NOTE: the value {value:g} is outside this source's range: an assumption]"
        e = {
            "name": name,
            "value": value,
            "unit": unit,
            "source": text,
            "kind": _source_kind(text),
            "file": file,
        }
        if lo is not None:
            e["range"] = [lo, hi]
        return e

    cfg = acfg.source
    out.append(entry("clock_mhz", acfg.clock_mhz, "MHz", dev.source_of("clock_mhz"), cfg))
    for name, unit in (
        ("latency", "cycles"),
        ("beat_interval", "cycles"),
        ("max_burst", "beats"),
        ("outstanding", "requests"),
    ):
        out.append(
            entry(f"memory.{name}", getattr(acfg.memory, name), unit, dev.source_of(f"memory.{name}"), cfg)
        )
    for name, unit in (
        ("host_gflops", "GFLOP/s"),
        ("host_gbs", "GB/s"),
        ("dram_gbs", "GB/s"),
        ("static_w", "W"),
        ("host_op_us", "µs"),
    ):
        src = dev.source_of(name)
        if src is None and name == "host_op_us" and dev.host_op_us == 0:  # the schema default: none charged
            src = (
                "assumption: no fixed cost per host op charged (device.host_op_us unset, optimistic)",
                None,
                None,
            )
        out.append(entry(f"device.{name}", getattr(dev, name), unit, src, cfg))
    efile = f"configs/energy/{Path(energy.get('file', acfg.device.family + '.yaml')).name}"
    srcs = energy.get("sources", {})

    def esrc(key: str) -> tuple | None:
        s = srcs.get(key)
        return None if s is None else (s["source"], *(s["range"] or (None, None)))

    for key, v in energy["pj"].items():
        out.append(entry(f"pj.{key}", v, "pJ", esrc(f"pj.{key}"), efile))
    out.append(entry("host_w", energy["host_w"], "W", esrc("host_w"), efile))
    for kind, (fl, by) in HOST_COST.items():
        out.append(
            entry(
                f"host_cost.{kind}",
                {"flops": fl, "bytes": by},
                "per element",
                (HOST_COST_SOURCE, None, None),
                "tritium/estimate.py",
            )
        )
    return out


def _energy_range(dec: StepCost, acfg: AcceleratorConfig, energy: dict) -> dict:
    """J/token with every energy number at the low and at the high end of its range (time as modeled)."""
    srcs = energy.get("sources", {})
    pj = energy["pj"]

    def rng(key: str, value: float) -> tuple[float, float]:
        r = (srcs.get(key) or {}).get("range")
        return (r[0], r[1]) if r else (value, value)

    def ratio(keys: tuple, end: int) -> float:
        rs = [rng(f"pj.{k}", pj[k])[end] / pj[k] for k in keys if pj[k]]
        return (min(rs) if end == 0 else max(rs)) if rs else 1.0

    st = acfg.device.source_of("static_w")
    static = (st[1], st[2]) if st and st[1] is not None else (acfg.device.static_w, acfg.device.static_w)
    e, out = dec.energy_j, {}
    for end, label in ((0, "low"), (1, "high")):
        out[label] = (
            e["tlmm"] * ratio(("lookup", "table_entry", "sram_byte"), end)
            + e["gemm"] * ratio(("mac8", "sram_byte"), end)
            + 1e-12 * dec.dram_bytes * rng("pj.dram_byte", pj["dram_byte"])[end]
            + dec.host_seconds * rng("host_w", energy["host_w"])[end]
            + dec.seconds * static[end]
        )
    return out


def summarize(
    model_spec: str,
    acfg: AcceleratorConfig,
    prompt: int,
    context: int,
    pre: StepCost,
    dec: StepCost,
    energy: dict | None = None,
    lm_head: str = "host_fp32",
    attention: str = "dense",
) -> dict:
    """:func:`estimate`'s figures from the costs of the prefill and the decode step (also used by the
    design-space exploration's fast evaluator, tritium.dse). ``energy``: the device family's table (read
    when left out); ``lm_head``: the placement the steps were compiled with."""
    energy = energy or load_energy(acfg.device.family)
    f = acfg.clock_mhz * 1e6
    dev = acfg.device
    port_gbs = acfg.memory.bus_bytes / acfg.memory.beat_interval * f / 1e9

    def util(c: StepCost, eng: str) -> float:
        return c.busy_issue[eng] / (c.seconds * f) if c.seconds else 0.0

    acc, host = dec.dram_bytes_by["accelerator"], dec.dram_bytes_by["host"]
    return {
        "model": model_spec,
        "config": acfg.name,
        "device": dev.name,
        "clock_mhz": acfg.clock_mhz,
        "prompt": prompt,
        "context": context,
        "lm_head": lm_head,
        "attention": attention,
        "overlap": acfg.system.overlap,
        "overlap_saved_s": {"prefill": pre.overlap_saved_s, "decode": dec.overlap_saved_s},
        "modeled": True,
        "prefill_s": pre.seconds,
        "ttft_s": pre.seconds,
        "prefill_tokens_per_s": prompt / pre.seconds,
        "decode_s_per_token": dec.seconds,
        "decode_tokens_per_s": 1.0 / dec.seconds,
        "power_boundary": dev.power_boundary,
        "static_w": dev.static_w,
        "j_per_token": dec.energy_total_j,
        "avg_power_w": dec.energy_total_j / dec.seconds,
        "j_per_token_range": _energy_range(dec, acfg, energy),
        "prefill_energy_j": pre.energy_total_j,
        "dram_bytes_per_token": dec.dram_bytes,
        "dram_bytes_per_token_accelerator": acc,
        "dram_bytes_per_token_host": host,
        "prefill_dram_bytes": {
            "accelerator": pre.dram_bytes_by["accelerator"],
            "host": pre.dram_bytes_by["host"],
        },
        "dram_gbs": dev.dram_gbs,
        "dram_limit_tokens_per_s": dev.dram_gbs * 1e9 / dec.dram_bytes,
        "port_gbs": {"accelerator": port_gbs, "host": dev.host_gbs},
        "bound": {"prefill": pre.bound, "decode": dec.bound},
        "time_share": {
            "prefill": {k: v / pre.seconds for k, v in pre.time_by.items()},
            "decode": {k: v / dec.seconds for k, v in dec.time_by.items()},
        },
        "utilization": {
            "prefill": {e: util(pre, e) for e in ("tlmm", "gemm")},
            "decode": {e: util(dec, e) for e in ("tlmm", "gemm")},
        },
        "energy_j": {"prefill": pre.energy_j, "decode": dec.energy_j},
        "commands": {"prefill": pre.commands, "decode": dec.commands},
        "model_rules": list(MODEL_RULES),
        "assumptions": assumptions(acfg, energy),
        "_steps": (pre, dec),
    }


def _joules(j: float) -> str:
    from tritium.report import fmt_energy

    return fmt_energy(j)


def format_estimate(r: dict) -> str:
    """The human-readable report of an :func:`estimate` dict (what ``tritium estimate`` prints)."""
    from tritium.report import fmt_bytes, fmt_power, fmt_time, table

    def pct(d: dict) -> str:
        return ", ".join(f"{k} {v:.0%}" for k, v in d.items() if v >= 0.005)

    pb = r["power_boundary"]
    acc, host, tot = (
        r["dram_bytes_per_token_accelerator"],
        r["dram_bytes_per_token_host"],
        r["dram_bytes_per_token"],
    )
    jr = r["j_per_token_range"]
    rows = [
        ["TTFT (prefill of the prompt)", fmt_time(r["ttft_s"]), r["bound"]["prefill"]],
        ["prefill throughput", f"{r['prefill_tokens_per_s']:,.1f} tokens/s", pct(r["time_share"]["prefill"])],
        [
            "decode",
            f"{r['decode_tokens_per_s']:,.2f} tokens/s ({fmt_time(r['decode_s_per_token'])}/token)",
            r["bound"]["decode"],
        ],
        [
            "decode time share",
            pct(r["time_share"]["decode"]),
            f"overlap saves {r['overlap_saved_s']['decode'] * 1e3:.2f} ms per token (resources overlap: shares add to more than 100 %)"
            if r.get("overlap")
            else "no overlap between commands",
        ],
        ["DRAM bytes per token", fmt_bytes(tot), f"accelerator {fmt_bytes(acc)} + host {fmt_bytes(host)}"],
        [
            "shared-DRAM limit",
            f"{r['dram_limit_tokens_per_s']:,.1f} tokens/s",
            f"{r['dram_gbs']:g} GB/s shared / {tot / 1e6:,.1f} MB per token",
        ],
        [
            f"energy per decoded token ({pb} boundary)",
            _joules(r["j_per_token"]),
            f"range {_joules(jr['low'])} to {_joules(jr['high'])}; "
            + pct({k: v / r["j_per_token"] for k, v in r["energy_j"]["decode"].items()}),
        ],
        [
            f"average power, decode ({pb} boundary)",
            fmt_power(r["avg_power_w"]),
            f"static {r['static_w']:g} W included; power boundary: {pb}",
        ],
        ["engine utilization (decode)", pct(r["utilization"]["decode"]), "issue cycles / step time"],
        ["engine utilization (prefill)", pct(r["utilization"]["prefill"]), ""],
    ]
    out = [
        table(
            ["figure (modeled)", "value", "note"],
            rows + _retrieval_rows(r),
            title=f"{r['model']} on {r['config']} — {r['device']}, {r['clock_mhz']:g} MHz, "
            f"prompt {r['prompt']}, context {r['context']}, LM head {r.get('lm_head', 'host_fp32')} "
            "(every figure modeled)",
        )
    ]
    a = r["assumptions"]
    kinds = {k: sum(e["kind"] == k for e in a) for k in ("cited", "measured", "counted", "assumption")}
    out.append(
        f"assumptions: {len(a)} numbers ({kinds['cited']} cited, {kinds['measured']} measured, "
        f"{kinds['counted']} counted from code, {kinds['assumption']} assumptions); sources and ranges: "
        f'--json ("assumptions")'
    )
    for e in a:
        if e["name"].startswith("device.") or e["name"] in ("clock_mhz", "host_w", "pj.dram_byte"):
            rg = f" [{e['range'][0]:g}..{e['range'][1]:g}]" if "range" in e else ""
            at = f" at the {pb} boundary" if e["name"] == "device.static_w" else ""
            out.append(f"  {e['name']} = {e['value']:g} {e['unit']}{at}{rg}: {e['kind']}")
    return "\n".join(out)


def plot_estimates(
    model_spec: str,
    acfg: AcceleratorConfig,
    out_dir: Path,
    prompt: int | None = None,
    context: int | None = None,
    points: int = 8,
    cache=None,
    lm_head: str | None = None,
) -> list[Path]:
    """Figures (each PNG + PDF + CSV, :func:`tritium.figures.save_figure`), all modeled: ``context`` —
    decode tokens/s against context length and TTFT against prompt length, the requested ``prompt`` and
    ``context`` marked on the curves; ``roofline-tlmm``/``roofline-gemm`` — every command of the prefill of
    ``prompt`` tokens and of the decode step at ``context`` under the engine's compute and port roofs.
    ``prompt``/``context`` default as in :func:`estimate`; ``cache``: a :class:`compiler.cache.ProgramCache`
    for the step Programs (as in :func:`estimate`). Returns the files written."""
    from compiler.cache import ProgramSource
    from sim.progress import track
    from tritium.figures import honest_axes, new_figure, save_figure

    lm_head = acfg.system.lm_head if lm_head is None else lm_head
    src = ProgramSource(
        model_spec, acfg, lambda: _compiled(model_spec, acfg, lm_head), cache, {"lm_head": lm_head}
    )
    max_seq = src.max_seq()
    prompt = min(DEFAULT_PROMPT, max_seq) if prompt is None else prompt
    context = min(DEFAULT_CONTEXT, max_seq) if context is None else context
    energy = load_energy(acfg.device.family)
    ctxs = sorted({max(1, round(max_seq * (i + 1) / points)) for i in range(points)} | {context})
    prompts = sorted({p for p in (16, 32, 64, 128, 256, 512) if p <= max_seq} | {prompt})
    steps = [(1, c - 1) for c in ctxs] + [(p, 0) for p in prompts]
    costs = [
        cost_program(src.program(t, pos, logits="last"), acfg, energy)
        for t, pos in track(steps, desc="plot steps", unit="step")
    ]
    decs = dict(zip(ctxs, costs[: len(ctxs)], strict=True))
    pres = dict(zip(prompts, costs[len(ctxs) :], strict=True))
    out_dir = Path(out_dir)
    files: list[Path] = []
    where = f"{model_spec} on {acfg.name} ({acfg.device.name}, {acfg.clock_mhz:g} MHz)"

    fig, ax = new_figure(ncols=2, width=10, height=4)
    ax[0].plot(ctxs, [1.0 / decs[c].seconds for c in ctxs], "o-", color="C0", label="decode (modeled)")
    ax[0].plot(
        [context], [1.0 / decs[context].seconds], "D", color="C3", ms=8, label=f"requested: context {context}"
    )
    ax[0].set_xlabel("context length (tokens)")
    ax[0].set_ylabel("decode throughput (tokens/s, modeled)")
    ax[1].plot(prompts, [pres[p].seconds * 1e3 for p in prompts], "o-", color="C1", label="prefill (modeled)")
    ax[1].plot(
        [prompt], [pres[prompt].seconds * 1e3], "D", color="C3", ms=8, label=f"requested: prompt {prompt}"
    )
    ax[1].set_xlabel("prompt length (tokens)")
    ax[1].set_ylabel("time to first token (ms, modeled)")
    for a in ax:
        honest_axes(a, x_zero=True)
        a.legend(loc="best")
    fig.suptitle(f"{where}: prompt {prompt}, context {context}")
    rows = [["decode", c, 1.0 / decs[c].seconds, decs[c].seconds, int(c == context)] for c in ctxs]
    rows += [["prefill", p, p / pres[p].seconds, pres[p].seconds, int(p == prompt)] for p in prompts]
    files += save_figure(
        fig,
        out_dir / "context.png",
        ["step", "tokens", "tokens_per_s_modeled", "step_seconds_modeled", "requested"],
        rows,
    ).values()

    pre, dec = pres[prompt], decs[context]
    bw = acfg.memory.bus_bytes / acfg.memory.beat_interval * acfg.clock_mhz * 1e6
    # peak ops/s: a lookup stands for G multiply-adds (2·G ops); a MAC for 2 ops
    peaks = {
        "tlmm": 2 * acfg.tlmm.group_size * acfg.tlmm.lookups_per_cycle * acfg.clock_mhz * 1e6,
        "gemm": 2 * acfg.gemm.macs * acfg.clock_mhz * 1e6,
    }
    for eng in ("tlmm", "gemm"):
        fig, ax = new_figure(width=6.4, height=4.2)
        data = []
        for label, step, mk in (
            (f"prefill of {prompt} tokens", pre, "o"),
            (f"decode at context {context}", dec, "x"),
        ):
            pts = [(ops, b, s) for e, ops, b, s in step.roofline if e == eng and b and s]
            data += [[label.split()[0], ops, b, s, ops / b, ops / s / 1e9] for ops, b, s in pts]
            if pts:
                ax.plot(
                    [ops / b for ops, b, _ in pts],
                    [ops / s / 1e9 for ops, _, s in pts],
                    mk,
                    alpha=0.6,
                    label=f"{label}: {len(pts)} commands",
                )
        peak = peaks[eng] / 1e9
        ridge = peak * 1e9 / bw  # ops per byte where the port roof meets the compute roof
        ints = [r[4] for r in data] + [ridge]
        lo, hi = math.log10(min(ints) / 10), math.log10(max(ints) * 10)
        xs = [10 ** (lo + (hi - lo) * i / 200) for i in range(201)]
        ax.plot(
            xs,
            [min(peak, bw * x / 1e9) for x in xs],
            "k--",
            lw=1,
            label=f"roofline: {peak:.3g} GOPS peak, {bw / 1e9:.3g} GB/s port",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (ops per DRAM byte)")
        ax.set_ylabel("achieved throughput (GOPS, modeled)")
        ax.set_title(
            f"{eng.upper()} roofline, {where}:\nprefill {prompt} tokens / decode at context {context}"
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right")
        files += save_figure(
            fig,
            out_dir / f"roofline-{eng}.png",
            ["step", "ops", "dram_bytes", "seconds_modeled", "ops_per_dram_byte", "gops_modeled"],
            data,
        ).values()
    return files


def _breakdown_table(step: str, grouping: str, b: dict, r: dict) -> str:
    from tritium.report import table

    tot = b["totals"]
    label = {"by_layer": "layer", "by_op_kind": "op kind"}[grouping]
    rows = [
        [
            row["name"],
            row["commands"],
            row["cycles"],
            row["time_s"] * 1e3,
            f"{row['time_s'] / tot['time_s']:.1%}" if tot["time_s"] else "",
            row["dram_bytes"] / 2**20,
            row["energy_j"] * 1e3,
            row["bound"],
        ]
        for row in b[grouping]
    ]
    rows.append(
        [
            "total",
            tot["commands"],
            tot["cycles"],
            tot["time_s"] * 1e3,
            "100%",
            tot["dram_bytes"] / 2**20,
            tot["energy_j"] * 1e3,
            "",
        ]
    )
    return table(
        [label, "commands", "engine cycles", "time ms", "time share", "DRAM MiB", "energy mJ", "bound"],
        rows,
        title=f"{step} by {label} — {r['model']} on {r['config']}, "
        f"{'prompt ' + str(r['prompt']) if step == 'prefill' else 'context ' + str(r['context'])} (modeled)",
    )


def format_breakdown(r: dict) -> str:
    """The tables of ``r["breakdown"]`` (from ``estimate(..., breakdown=True)``): per step, by layer and by op
    kind; each ends with the step's total, which the rows sum to."""
    out = []
    for step in ("prefill", "decode"):
        for grouping in ("by_layer", "by_op_kind"):
            out.append(_breakdown_table(step, grouping, r["breakdown"][step], r))
    out.append(
        f"engine cycles: TLMM and GEMM cycles with their memory bounds (a HOST op has none: its time is the "
        f"host's); energy includes static power shared out by time ({r['power_boundary']} boundary); bound: "
        "what takes most of the row's time — compute (the engine's own cycles), DRAM (bytes through the "
        "port or the shared DRAM; for a GEMM also waiting for operands longer than issuing) or host."
    )
    return "\n\n".join(out)


def plot_breakdown(r: dict, base: Path) -> list[Path]:
    """A stacked-bar figure of ``r["breakdown"]``: modeled time per layer, stacked by op kind, prefill and
    decode side by side; ``base`` + ``.png``, ``.svg`` and ``.csv`` (the plotted data: step, layer, op kind,
    time and the other figures of every (layer, op kind) pair) through :func:`tritium.figures.save_figure`."""
    from tritium.figures import new_figure, save_figure

    cells: dict[str, dict] = {}  # step → {(layer, kind): row of by_layer_op}
    layers: dict[str, list] = {}
    kinds: list[str] = []
    for step, b in r["breakdown"].items():
        layers[step] = [row["name"] for row in b["by_layer"]]
        kinds += [row["name"] for row in b["by_op_kind"] if row["name"] not in kinds]
        cells[step] = {(c["layer"], c["op_kind"]): c for c in b["by_layer_op"]}
    fig, axes = new_figure(ncols=len(cells), width=12, height=4.8)
    axes = list(axes) if len(cells) > 1 else [axes]
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    for ax, (step, cell) in zip(axes, cells.items(), strict=True):
        xs = range(len(layers[step]))
        bottom = [0.0] * len(layers[step])
        for i, kind in enumerate(kinds):
            ys = [cell.get((layer, kind), {}).get("time_s", 0.0) * 1e3 for layer in layers[step]]
            if any(ys):
                ax.bar(xs, ys, bottom=bottom, color=cmap(i % 20), label=kind, width=0.8)
                bottom = [a + b for a, b in zip(bottom, ys, strict=True)]
        ax.set_xticks(list(xs))
        ax.set_xticklabels([n.replace("layer ", "") for n in layers[step]], rotation=90, fontsize=6)
        ax.set_xlabel("layer (number) or module")
        ax.set_ylabel("time, ms (modeled)")
        ax.set_title(f"{step}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, fontsize=6, loc="center right", ncol=1)
    fig.suptitle(
        f"{r['model']} on {r['config']} ({r['device']}, {r['clock_mhz']:g} MHz): time per layer by op kind, "
        f"prompt {r['prompt']}, context {r['context']} (modeled)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    rows = [
        [
            step,
            layer,
            kind,
            e["commands"],
            e["cycles"],
            repr(e["time_s"]),
            e["dram_bytes"],
            repr(e["energy_j"]),
        ]
        for step, cell in cells.items()
        for (layer, kind), e in cell.items()
    ]
    base = Path(base)
    files = save_figure(
        fig,
        base.with_name(base.name + ".png"),
        ["step", "layer", "op_kind", "commands", "cycles", "time_s", "dram_bytes", "energy_j"],
        rows,
        vector="svg",
    )
    return list(files.values())
