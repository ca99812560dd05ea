"""Design-space exploration (`tritium dse SPEC --out DIR`).

A sweep spec (YAML, see :func:`load_spec` and docs/dse.md) names a base config, the config fields to vary,
a workload (model preset, prompt, context; each may be a list: every point is evaluated on each, objectives
aggregated by ``workload.aggregate``, constraints on each), objectives, constraints, a budget and a
sampler. The grid sampler enumerates the grid itself, in a seeded order; NSGA-II is Optuna's. Finished
points live in a persistent Optuna study (SQLite in DIR by default; ``--storage postgresql://…`` shares one
study between invocations on many machines). The spec is read by :mod:`tritium.dse_spec`.

Determinism: points are proposed in the main process only, in batches of ``batch``, from a seeded order or
sampler; worker processes only evaluate, and NSGA-II is told the results in ask order. So the same spec and
seed give the same points and the same CSV, whatever ``--workers`` is and however often the run was
interrupted.

Evaluation (:class:`FastEvaluator`) is the cost definition of :mod:`tritium.estimate`, applied fast: the
step Programs of a decoder LM repeat the same few command shapes (all layers are identical), so the
evaluator derives the multiset of command shapes the compiler's lowering emits for a config
(the same :mod:`compiler.tiling` functions the lowering calls), costs each distinct command once with ``cost_program`` (cached per
shape and the config fields it depends on) and multiplies by its count; host ops (config-independent) are
costed once per device. ``tests/test_dse.py`` checks the result equals :func:`tritium.estimate.estimate`.
With ``system.overlap`` the step time is the Programs' overlapped schedule, which a sum of shapes cannot give:
such a point is costed from its step Programs with ``cost_program`` itself (:meth:`FastEvaluator.scheduled`;
exact). The Programs depend only on the config fields outside ``COST_FIELDS``/``RETRIEVAL_FIELDS``/
``UNUSED_FIELDS`` (:func:`compile_key`), so they are cached per compile key: a point that differs from an
earlier one only in timing, energy or retrieval fields re-costs and re-schedules the cached commands, and
a new compile key lowers the model's graph again (captured once per model, ``compiler.CompiledModel.relower``).

Fail fast: a point whose config does not validate, whose weights and KV cache do not fit the address space,
whose modeled resources (:mod:`tritium.resources`, a fit to our RTL's synthesis runs: both engines plus the
top level's calibrated decoder + DMA overhead, :func:`tritium.resources.top_overhead`) exceed the board, or
that violates a resource constraint is rejected before evaluation; performance constraints are checked after.
The reason is the ``reason`` column of the CSV (``status``: ok, invalid, memory, fit, constraint).

Resume: every finished point is stored under its own key (its parameter tuple on the grid, its place in
the seeded ask order for NSGA-II; never an Optuna trial number), one transaction per point; a rerun skips
stored points and takes evaluations that finished but were not stored yet from ``DIR/evaluations.jsonl``.
Whenever a run is killed, the rerun's ``results.csv`` equals an uninterrupted run's (:mod:`tritium.dse_store`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hw.config import AcceleratorConfig, ConfigError, config_from_dict
from sim.verilator import raise_pending_signal
from tritium.dse_spec import METRICS, PERF_METRICS, RESOURCE_METRICS, Constraint, Spec, SpecError, load_spec
from tritium.dse_store import GridOrder, Point, Store, append_log, mask_url, open_study, read_log, storage_url

__all__ = [
    "SpecError",
    "Spec",
    "Constraint",
    "load_spec",
    "FastEvaluator",
    "Workload",
    "build_workload",
    "run_dse",
    "METRICS",
    "RESOURCE_METRICS",
    "PERF_METRICS",
]


# ====================================================================================================
# Fast evaluator
# ====================================================================================================


@dataclass
class _Step:
    tokens: int
    pos: int
    host_prog: object  # a minimal Program-like object: the step's host ops and the tensors they read


@dataclass
class Workload:
    """What the evaluator needs of a compiled model, config-independent and picklable."""

    model: str
    prompt: int
    context: int
    max_seq: int
    tlmm_ops: list  # [(k, n, count)]
    attention: list  # [(n_heads, n_kv_heads, head_dim, count)]
    steps: dict  # "prefill" / "decode" → _Step
    lm_head: str = "host_fp32"  # the placement the host ops were compiled with (system.lm_head)
    lm_head_shape: tuple | None = None  # (d_model, vocab) of the LM head
    exact: bool = False  # cost every point by compiling it (the start-up self-check failed: _self_check)
    capture: object = None  # the AcceleratorConfig it was compiled with (decode steps at other positions)


#: Config fields whose effect on the step Programs the fast evaluator reproduces: it derives the commands,
#: the host ops and the persistent region from them (TLMM tiling, GEMM geometry and attention grouping,
#: the LM head's placement; ``memory.addr_bits`` bounds the address space, checked by the screen).
PROGRAM_FIELDS = (
    "tlmm.group_size",
    "tlmm.tables",
    "tlmm.columns",
    "tlmm.table_mode",
    "tlmm.tokens",
    "tlmm.act_bits",
    "tlmm.max_k",
    "tlmm.max_n",
    "tlmm.weight_buffer_beats",
    "gemm.rows",
    "gemm.cols",
    "gemm.k_tile",
    "memory.bus_bytes",
    "memory.addr_bits",
    "system.lm_head",
)
#: Config fields that enter only the per-command costs of ``cost_program`` (the cost caches are keyed by
#: their whole sections), not the commands.
COST_FIELDS = (
    "clock_mhz",
    "gemm.buffers",
    "memory.latency",
    "memory.max_burst",
    "memory.outstanding",
    "memory.beat_interval",
    # the top level's DMA read FIFO: a TLMM command's cost is the top level's cycle model of its DMA
    # (sim/top_model.py, = RTL), which the FIFO depth changes
    "memory.read_fifo_beats",
    "device.name",
    "device.family",
    "device.host_gflops",
    "device.host_gbs",
    "device.dram_gbs",
    "device.static_w",
    "device.host_op_us",
    "device.power_boundary",
    "device.sources",
)
#: The cost fields an overlapped lowering also reads: compiler/chunks.py orders a prefill's host-op chunks by
#: their modeled latency (compiler.hostcost.host_cycles: the clock and the host), so with ``system.overlap``
#: they stay in :func:`compile_key`.
ORDER_FIELDS = ("clock_mhz", "device.host_gflops", "device.host_gbs", "device.dram_gbs", "device.host_op_us")
#: KV retrieval's fields (docs/design.md, "KV retrieval in the loop"): read only by a point with
#: ``system.attention: resv``, which the fast evaluator costs as ``tritium estimate`` does (the dense decode
#: step at the plan's effective context plus ``tritium.retrieval.retrieval_step_cost``'s extras); a dense
#: point's figures do not depend on them.
RETRIEVAL_FIELDS = (
    "system.attention",
    "system.kv_sinks",
    "system.kv_window",
    "system.kv_min_context",
    "system.kv_tables",
    "system.kv_selected_share",
    "kv.dim",
    "kv.hyperplanes",
    "kv.max_clusters",
    "kv.max_cluster_size",
    "kv.lanes",
)
#: Config fields neither the lowering nor the estimate reads today.
UNUSED_FIELDS = (
    "name",
    # the KVR's numerics (join distance, threshold unit, the hash planes' seed): its modeled cycles and bytes
    # do not depend on them (the pages a step selects are system.kv_selected_share's assumption)
    "kv.hamming",
    "kv.buckets",
    "kv.alpha",
    "kv.seed",
    # the KV engine's table slots (system.kv_tables onchip): hardware only, the Programs' KVRs name streams
    "kv.slots",
)
#: Config fields the fast evaluator knows it does not mirror (e.g. a choice that makes the step time
#: other than the sum of its commands' times): a point that sets one to anything but its schema default is
#: costed exactly, by compiling it. The default must keep the Programs the fast path mirrors.
COMPILED_FIELDS: tuple[str, ...] = ()
#: Config fields that make the step time the Programs' overlapped schedule (sim/top_model.py), which a sum of
#: shapes cannot give: a point that sets one is costed from its (cached) step Programs (:meth:`FastEvaluator.scheduled`).
SCHEDULED_FIELDS: tuple[str, ...] = ("system.overlap",)
KNOWN_FIELDS = frozenset(PROGRAM_FIELDS + COST_FIELDS + RETRIEVAL_FIELDS + UNUSED_FIELDS + SCHEDULED_FIELDS)


def config_fields() -> dict[str, object]:
    """Every config field (dotted name) → its schema default."""
    from hw.config import SECTIONS, AcceleratorConfig

    out: dict[str, object] = {}
    for f in dataclasses.fields(AcceleratorConfig):
        if f.name in SECTIONS:
            for g in dataclasses.fields(SECTIONS[f.name]):
                d = g.default if g.default is not dataclasses.MISSING else g.default_factory()  # type: ignore[misc]
                out[f"{f.name}.{g.name}"] = d
        elif f.name != "source":
            out[f.name] = f.default
    return out


def unclassified_fields() -> dict[str, object]:
    """Config fields added since the fast evaluator was written (in none of its lists) → their defaults."""
    known = KNOWN_FIELDS | set(COMPILED_FIELDS)
    return {k: v for k, v in config_fields().items() if k not in known}


def unmirrored_fields() -> dict[str, object]:
    """Config fields the fast evaluator does not mirror (:data:`COMPILED_FIELDS` and unclassified ones) →
    their defaults. A point that sets one of them to anything but its default is costed exactly (compiled);
    see :meth:`FastEvaluator.estimate`."""
    return {k: v for k, v in config_fields().items() if k not in KNOWN_FIELDS}


def _field_value(acfg: AcceleratorConfig, name: str):
    node = acfg
    for part in name.split("."):
        node = getattr(node, part)
    return node


class _HostProgram:
    """Duck-typed Program for ``cost_program``: only the given commands, host ops and tensors."""

    def __init__(self, commands, host_ops=(), tensors=None):
        self._commands = list(commands)
        self.host_ops = list(host_ops)
        self.tensors = tensors or {}

    def commands(self):
        return self._commands


def _banded_softmax(step: _Step) -> bool:
    """Whether a step's attention softmax may be cut into causal bands (a prefill of several tokens)."""
    return step.tokens > 1 and any(op.kind == "attn_softmax" for op in step.host_prog.host_ops)


def _with_point_bands(hp: _HostProgram, acfg: AcceleratorConfig) -> _HostProgram:
    """``hp`` with each causal softmax's group and band attributes those of ``acfg``'s geometry (what the
    lowering would emit for the point: compiler.tiling.attention_gemms, softmax_band_attrs)."""
    from compiler.tiling import attention_gemms, gemm_cost, softmax_band_attrs
    from hw.program import HostOp

    geo, cost = acfg.gemm_geometry, gemm_cost(acfg)
    ops = []
    for op in hp.host_ops:
        a = op.attrs
        if op.kind == "attn_softmax" and "resv" not in a:
            ag = attention_gemms(
                geo, a["n_heads"], a["n_kv_heads"], a["head_dim"], a["tokens"], a["pos"] + a["tokens"],
                a.get("causal", True), cost,
            )  # fmt: skip
            attrs = {k: v for k, v in a.items() if k not in ("qk_bands", "pv_bands")}
            attrs.update(group=ag.group, **softmax_band_attrs(ag.qk_bands, ag.pv_bands))
            op = HostOp(op.name, op.kind, op.inputs, op.outputs, attrs, op.where)
        ops.append(op)
    return _HostProgram(hp.commands(), ops, hp.tensors)


def compile_key(acfg: AcceleratorConfig, lm_head: str | None = None) -> str:
    """What a dense step Program depends on besides its attention commands (:func:`attention_key`): the
    config without the fields that only the costing reads (:data:`COST_FIELDS`), the retrieval fields (the
    estimate compiles dense Programs and costs retrieval in closed form) and the unused ones, with the LM head
    placed by ``lm_head`` (None: ``system.lm_head``); with overlap the :data:`ORDER_FIELDS` stay in it (the
    lowering orders host-op chunks by their latency). A Program's host ops carry their modeled latency
    (``attrs["cycles"]``, from the clock and the device), which ``cost_program`` does not read: it costs a
    host op from its tensors and the config it is given. ``tests/test_dse_overlap.py`` checks that the
    cached Programs give ``estimate()``'s figures."""
    import json

    d = acfg.to_dict()
    d.pop("name", None)
    keep = ORDER_FIELDS if acfg.system.overlap else ()  # the chunk order reads them (ORDER_FIELDS)
    for name in COST_FIELDS + RETRIEVAL_FIELDS + UNUSED_FIELDS:
        if name in keep:
            continue
        node = d
        *path, last = name.split(".")
        for part in path:
            node = node[part]
        node.pop(last, None)
    d["system"]["lm_head"] = acfg.system.lm_head if lm_head is None else lm_head
    return json.dumps(d, sort_keys=True, default=str)


def attention_key(acfg: AcceleratorConfig, attention, tokens: int, pos: int) -> tuple:
    """The step's attention commands as the lowering cuts them (``compiler.tiling.attention_gemms`` of each
    attention shape ``(n_heads, n_kv_heads, head_dim, ...)``, causal, under ``gemm_cost(acfg)``): the causal
    band cut is the lowering's one input from the timing fields (memory timing and ``gemm.buffers`` through
    the GEMM's cost), so two configs with the same :func:`compile_key` and the same cut lower the same
    Program."""
    from compiler.tiling import attention_gemms, gemm_cost

    cost = gemm_cost(acfg)
    return tuple(
        attention_gemms(acfg.gemm_geometry, a[0], a[1], a[2], tokens, pos + tokens, True, cost)
        for a in attention
    )


#: Step Programs (as :class:`_HostProgram`: their decoded commands, host ops and tensors) per (model, compile
#: key, tokens, position, attention key), least recently used first; ``PROGRAM_STATS`` counts hits and misses (tests read it).
_PROGRAMS: dict = {}
_PROGRAMS_MAX = 48
PROGRAM_STATS: Counter = Counter()


def step_program(
    model: str, acfg: AcceleratorConfig, lm_head: str, tokens: int, pos: int, attention=()
) -> _HostProgram:
    """The dense Program of the step of ``tokens`` tokens at ``pos`` (logits of the last one), as
    :func:`tritium.estimate.estimate` compiles it, cached per :func:`compile_key` and :func:`attention_key`
    (``attention``: the model's attention shapes, ``Workload.attention``)."""
    key = (model, compile_key(acfg, lm_head), tokens, pos, attention_key(acfg, attention, tokens, pos))
    hp = _PROGRAMS.pop(key, None)
    if hp is None:
        from tritium import estimate as E

        PROGRAM_STATS["miss"] += 1
        if len(E._COMPILED) > 16:  # a point per compile key: keep the lowered models bounded
            E._COMPILED.clear()
        prog = E._compiled(model, acfg, lm_head).program(tokens, pos, logits="last")
        hp = _HostProgram(prog.commands(), prog.host_ops, prog.tensors)
        while len(_PROGRAMS) >= _PROGRAMS_MAX:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
    else:
        PROGRAM_STATS["hit"] += 1
    _PROGRAMS[key] = hp  # most recently used last
    return hp


_WORKLOADS: dict = {}
_STEPS: dict = {}  # (model, system section, tokens, pos) → _Step


def _step(cm, model: str, system, T: int, pos: int) -> _Step:
    """The host ops of the step of ``T`` tokens at position ``pos`` (memoized: a context sweep shares its
    prefill step; retrieval's decode steps at their effective contexts are shared across points)."""
    from hw.isa import HostCommand

    skey = (model, system, T, pos)
    if skey in _STEPS:
        return _STEPS[skey]
    prog = cm.program(T, pos, logits="last")
    names = set()
    for op in prog.host_ops:
        names.update(op.inputs[:1])
        names.update(e["input"] for e in op.attrs.get("dequant", ()))  # fused dequantizations' sizes
        names.update(op.outputs[:1])
        if "weight" in op.attrs:
            names.add(op.attrs["weight"])
    tensors = {n: prog.tensors[n] for n in names if n in prog.tensors}
    _STEPS[skey] = _Step(
        T, pos, _HostProgram([HostCommand(i) for i in range(len(prog.host_ops))], prog.host_ops, tensors)
    )
    return _STEPS[skey]


def build_workload(
    model: str, prompt: int, context: int, acfg: AcceleratorConfig, lm_head: str | None = None
) -> Workload:
    """Capture the model once (on meta tensors) and record its TLMM ops, attention ops and host ops, with
    the LM head placed by ``lm_head`` (None: ``acfg.system.lm_head``): the host ops differ per placement, and
    ``acc_int8`` adds the LM head's GEMM commands (:meth:`FastEvaluator.commands`)."""
    lm_head = acfg.system.lm_head if lm_head is None else lm_head
    # the fast path costs points without overlap (an overlapped point is costed from its own Programs,
    # FastEvaluator.scheduled): its host ops are those of the Programs without overlap (with overlap the
    # lowering splits the softmax per attention group)
    acfg = dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, overlap=False))
    system = dataclasses.replace(acfg.system, lm_head=lm_head)  # every system choice may change the host ops
    key = (model, prompt, context, system)
    if key in _WORKLOADS:
        return _WORKLOADS[key]
    from tritium.estimate import _compiled

    cm = _compiled(model, acfg, lm_head)
    g = cm.graph
    max_seq = cm.lowering.mc["max_seq"]
    if not 1 <= prompt <= max_seq or not 1 <= context <= max_seq:
        raise ValueError(f"prompt {prompt} / context {context} must be in 1..{max_seq} (the model's max_seq)")
    tl = Counter((op.attrs["k"], op.attrs["n"]) for op in g.ops if op.kind == "tlmm")
    at = Counter(
        (op.attrs["n_heads"], op.attrs["n_kv_heads"], op.attrs["head_dim"])
        for op in g.ops
        if op.kind == "attention"
    )
    steps = {
        label: _step(cm, model, system, T, pos)
        for label, (T, pos) in (("prefill", (prompt, 0)), ("decode", (1, context - 1)))
    }
    wl = Workload(
        model,
        prompt,
        context,
        max_seq,
        sorted((k, n, c) for (k, n), c in tl.items()),
        sorted((h, hk, hd, c) for (h, hk, hd), c in at.items()),
        steps,
        lm_head,
        (cm.lowering.mc["d_model"], cm.lowering.mc["vocab"]),
        capture=acfg,
    )
    _WORKLOADS[key] = wl
    return wl


class FastEvaluator:
    """``estimate()``'s figures for one workload and many configs, from per-command-shape costs.

    Generic over config fields: every field is classified (:data:`PROGRAM_FIELDS`, :data:`COST_FIELDS`,
    :data:`RETRIEVAL_FIELDS`, :data:`UNUSED_FIELDS`); a ``system.attention: resv`` point is costed with KV
    retrieval, as ``tritium estimate`` does (:meth:`_retrieval`); a config that sets a field added since (:func:`unmirrored_fields`) to anything
    but its default is costed exactly, by compiling it (:meth:`exact`), and so is every point when the
    workload's start-up self-check failed (``Workload.exact``). ``caches``: per-command cost caches shared
    by the evaluators of several workloads (a command's cost does not depend on the workload)."""

    def __init__(self, workload: Workload, caches: dict | None = None):
        self.w = workload
        self._by_lm_head = {workload.lm_head: workload}
        caches = caches if caches is not None else {}
        self._cmd_cache: dict = caches.setdefault("cmd", {})
        self._energy: dict = caches.setdefault("energy", {})
        self._host_cache: dict = {}
        self._unmirrored = unmirrored_fields()
        self.exact_points = 0  # points with unmirrored fields: costed from their compiled Programs
        self.scheduled_points = 0  # overlapped points (SCHEDULED_FIELDS): costed from their compiled Programs

    def needs_exact(self, acfg: AcceleratorConfig) -> list[str]:
        """The fields that make ``acfg`` an exact (compiled) point: unmirrored fields off their default, or
        every unmirrored field when the self-check failed."""
        if self.w.exact:
            return sorted(self._unmirrored) or ["(self-check)"]
        return [k for k, d in self._unmirrored.items() if _field_value(acfg, k) != d]

    def exact(self, acfg: AcceleratorConfig) -> dict:
        """``estimate()``'s figures from ``acfg``'s compiled step Programs (:meth:`programs_estimate`)."""
        self.exact_points += 1
        return self.programs_estimate(acfg)

    def scheduled(self, acfg: AcceleratorConfig) -> dict:
        """An overlapped point (:data:`SCHEDULED_FIELDS`): ``estimate()``'s figures from its step Programs,
        whose overlapped schedule ``cost_program`` runs (:meth:`programs_estimate`)."""
        self.scheduled_points += 1
        return self.programs_estimate(acfg)

    def programs_estimate(self, acfg: AcceleratorConfig) -> dict:
        """``estimate()``'s figures, costed as it costs them: ``cost_program`` on the dense step Programs (the
        decode step at the retrieval plan's effective context with ``system.attention: resv``, plus
        retrieval's closed-form extras), the Programs taken from the compile-key cache (:func:`step_program`;
        no progress bar, no on-disk cache)."""
        from tritium.estimate import cost_program, summarize

        w = self.w
        lm = acfg.system.lm_head
        energy = self._energy_of(acfg.device.family)

        def cost(tokens: int, pos: int):
            prog = step_program(w.model, acfg, lm, tokens, pos, w.attention)
            return cost_program(prog, acfg, energy)

        pre = cost(w.prompt, 0)
        if acfg.system.attention == "resv":
            return self._retrieval(acfg, w, pre, lambda l_eff: cost(1, l_eff - 1))
        dec = cost(1, w.context - 1)
        return summarize(w.model, acfg, w.prompt, w.context, pre, dec, energy, lm)

    def workload(self, acfg: AcceleratorConfig) -> Workload:
        """The workload of ``acfg``'s LM-head placement (``system.lm_head``; compiled once per placement)."""
        lm = acfg.system.lm_head
        if lm not in self._by_lm_head:
            w = self.w
            self._by_lm_head[lm] = build_workload(w.model, w.prompt, w.context, acfg, lm)
        return self._by_lm_head[lm]

    def commands(self, acfg: AcceleratorConfig, step: _Step) -> Counter:
        """Multiset of the step's TLMM and GEMM commands (addresses zero: costs do not depend on them), by
        the lowering's own tiling rules (:mod:`compiler.tiling`)."""
        from compiler.tiling import attention_gemms, gemm_cost, lm_head_gemms, tlmm_slices, tlmm_tiles
        from hw.gemm_layout import gemm_shape
        from hw.isa import GemmCommand, TlmmCommand

        t, geo = acfg.tlmm, acfg.gemm_geometry
        T, pos = step.tokens, step.pos
        out: Counter = Counter()
        for k, n, cnt in self.w.tlmm_ops:
            for tl in tlmm_tiles(t, T, tlmm_slices(t, k, n)):
                out[TlmmCommand(tl.m, tl.kc, tl.nb, wbuf=tl.wbuf)] += cnt
        ctx = pos + T
        for h, hkv, hd, cnt in self.w.attention:
            # a decoder LM's attention is causal: a prefill's bands of query rows (compiler.tiling)
            ag = attention_gemms(geo, h, hkv, hd, T, ctx, True, gemm_cost(acfg))
            for mnk in ag.shapes():
                s = gemm_shape(geo, *mnk)
                out[GemmCommand(s.m_tiles, s.n_tiles, s.k_tiles)] += ag.n_groups * cnt
        if acfg.system.lm_head == "acc_int8":  # one row: every step is costed with logits="last"
            k, vocab = self.w.lm_head_shape
            for n0, n1, _ in lm_head_gemms(geo, k, vocab):
                sc = gemm_shape(geo, 1, k, n1 - n0)
                out[GemmCommand(sc.m_tiles, sc.n_tiles, sc.k_tiles)] += 1
        return out

    def memory_beats(self, acfg: AcceleratorConfig) -> int:
        """Beats of the persistent region (packed weights + KV cache), as compiler.lower allocates it."""
        from compiler.tiling import persistent_beats

        return persistent_beats(
            acfg.tlmm,
            acfg.gemm_geometry,
            acfg.memory.bus_bytes,
            self.w.tlmm_ops,
            self.w.attention,
            self.w.max_seq,
            self.w.lm_head_shape if acfg.system.lm_head == "acc_int8" else None,
        )

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
        banded = _banded_softmax(step)
        # a prefill's softmax is costed over the point's own causal bands (they follow its GEMM geometry and
        # memory timing: compiler.tiling.gemm_cost)
        hkey = (id(step), acfg.device, acfg.clock_mhz) + ((acfg.gemm, acfg.memory) if banded else ())
        if hkey not in self._host_cache:
            hp = _with_point_bands(step.host_prog, acfg) if banded else step.host_prog
            self._host_cache[hkey] = cost_program(hp, acfg, energy)
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
            for d in (
                "engine_cycles",
                "compute_cycles",
                "time_by",
                "dram_bytes_by",
                "energy_j",
                "busy_issue",
            ):
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

        if self.needs_exact(acfg):
            return self.exact(acfg)
        if any(_field_value(acfg, k) for k in SCHEDULED_FIELDS):
            return self.scheduled(acfg)
        w = self.workload(acfg)
        pre = self.step_cost(acfg, w.steps["prefill"])
        if acfg.system.attention == "resv":
            return self._retrieval(
                acfg, w, pre, lambda l_eff: self.step_cost(acfg, self._decode_step(w, l_eff))
            )
        dec = self.step_cost(acfg, w.steps["decode"])
        return summarize(w.model, acfg, w.prompt, w.context, pre, dec, lm_head=acfg.system.lm_head)

    def retrieval_geometry(self, acfg: AcceleratorConfig):
        """(geometry, layers) of the workload's model with ``acfg``'s retrieval fields (ValueError naming
        the field when the model and the KV engine do not fit together)."""
        from tritium.retrieval import model_geometry

        return model_geometry(acfg, self.w.model)

    def _decode_step(self, w: Workload, l_eff: int) -> _Step:
        """The workload's decode step attending to ``l_eff`` tokens (its host ops; memoized)."""
        if l_eff == w.context:
            return w.steps["decode"]
        from tritium.estimate import _compiled

        cap = w.capture
        system = dataclasses.replace(cap.system, lm_head=w.lm_head)
        key = (w.model, system, 1, l_eff - 1)
        return _STEPS.get(key) or _step(_compiled(w.model, cap, w.lm_head), w.model, system, 1, l_eff - 1)

    def _retrieval(self, acfg: AcceleratorConfig, w: Workload, pre, decode_cost) -> dict:
        """A ``system.attention: resv`` point, as ``tritium.estimate.estimate`` costs it: the dense decode
        step at the plan's effective context (``plan.l_eff``; ``decode_cost(l_eff)`` costs it), plus what
        retrieval adds to the prefill and the decode step (:func:`tritium.retrieval.retrieval_step_cost`)."""
        from tritium.estimate import _retrieval_report, _share_assumption, summarize
        from tritium.retrieval import plan_decode, retrieval_step_cost

        rgeo, layers = self.retrieval_geometry(acfg)
        plan = plan_decode(acfg, rgeo, w.context, w.max_seq)
        dec = decode_cost(plan.l_eff)
        energy = self._energy_of(acfg.device.family)
        parts = []
        for cost, tokens, p in ((pre, w.prompt, None), (dec, 1, plan)):
            extra, part = retrieval_step_cost(acfg, rgeo, layers, energy, tokens, p)
            cost.add(extra)
            parts.append(part)
        r = summarize(w.model, acfg, w.prompt, w.context, pre, dec, energy, acfg.system.lm_head, "resv")
        r["retrieval"] = _retrieval_report(acfg, rgeo, layers, plan, w.context, parts, pre, dec)
        r["assumptions"].append(_share_assumption(acfg))
        return r


# ====================================================================================================
# One design point: fail-fast screening, then evaluation
# ====================================================================================================

STATUSES = ("ok", "invalid", "memory", "fit", "constraint", "error")


def _evaluators(evaluators) -> list:
    if evaluators is None:
        return []
    return [evaluators] if isinstance(evaluators, FastEvaluator) else list(evaluators)


def workload_label(w: tuple[str, int, int]) -> str:
    return f"{w[0]} prompt {w[1]} context {w[2]}"


def screen(spec: Spec, params: dict, evaluators=None) -> tuple[str, str, dict, dict | None]:
    """(status, reason, resource metrics, config dict) before any long evaluation. ``evaluators``: the
    point's :class:`FastEvaluator` per workload (the memory check is per model; ``memory_mib`` is the
    largest)."""
    from hw.boards import BOARD_SPECS
    from tritium.resources import FAMILY_OF_BOARD, load_model

    d = spec.config_dict(params)
    d["name"] = spec.name
    try:
        acfg = config_from_dict(d, source=f"{spec.path} point")
    except ConfigError as e:
        return "invalid", str(e).split(": ", 1)[-1], {}, None
    from compiler import CompileError, check_config

    try:  # a config the compiler refuses (e.g. tlmm.act_bits): estimate() could not cost it either
        check_config(acfg)
    except CompileError as e:
        return "invalid", str(e), {}, None
    m: dict = {"clock_mhz": acfg.clock_mhz}
    evs = _evaluators(evaluators)
    seen: set = set()
    for ev in evs:  # the persistent region depends on the model only
        if ev.w.model in seen:
            continue
        seen.add(ev.w.model)
        if acfg.system.attention == "resv":  # the model and the KV engine must fit together
            try:
                ev.retrieval_geometry(acfg)
            except ValueError as e:
                return "invalid", str(e), m, d
        beats = ev.memory_beats(acfg)
        m["memory_mib"] = max(m.get("memory_mib", 0.0), beats * acfg.memory.bus_bytes / 2**20)
        if beats > 1 << acfg.memory.addr_bits:
            who = f"{ev.w.model}: " if len({e.w.model for e in evs}) > 1 else ""
            return (
                "memory",
                f"{who}weights + KV cache need {beats} beats > 2^memory.addr_bits = {1 << acfg.memory.addr_bits}",
                m,
                d,
            )
    if spec.board:
        fam = FAMILY_OF_BOARD[spec.board]
        r = load_model().predict(acfg, fam, "top")  # both engines + the decoder and DMA around them
        m.update({k: (round(v, 1) if v is not None else None) for k, v in r.items()})
        cap = BOARD_SPECS[spec.board].capacity
        over = [
            f"{k} {r[k]:.0f} > {spec.fit_margin:g}·{cap[k]}"
            for k in ("lut", "ff", "bram", "uram", "dsp")
            if k in cap and r[k] > spec.fit_margin * cap[k]
        ]
        if over:
            return "fit", f"does not fit {spec.board} (modeled): " + "; ".join(over), m, d
        if spec.clock == "fmax" and r["fmax_mhz"]:
            d["clock_mhz"] = m["clock_mhz"] = float(f"{r['fmax_mhz']:.1f}")
    for c in spec.constraints:
        if c.metric in RESOURCE_METRICS and (isinstance(c.value, float) or c.value in RESOURCE_METRICS):
            if c.holds(m) is False:
                return "constraint", f"violates {c.text} ({c.metric} = {m[c.metric]:g})", m, d
    return "ok", "", m, d


def aggregate(per: list[dict], spec: Spec) -> dict:
    """A point's metrics over its workloads (``per``, in ``spec.workloads`` order): one workload → its own
    dict; several → each metric by ``spec.aggregate`` (``worst``: the worst value in the objective's
    direction, or the metric's natural one; ``mean``; ``first``) and ``by_workload`` = ``per``."""
    if len(per) == 1:
        return per[0]
    direction = {**{k: v[1] for k, v in METRICS.items()}, **dict(spec.objectives)}
    out: dict = {}
    for k in per[0]:
        vals = [m.get(k) for m in per]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = vals[0] if all(v == vals[0] for v in vals) else None
        elif spec.aggregate == "first" or k not in direction:
            out[k] = vals[0]
        elif spec.aggregate == "mean":
            out[k] = sum(vals) / len(vals)
        else:
            out[k] = max(vals) if direction[k] == "minimize" else min(vals)
    out["by_workload"] = per
    return out


def evaluate_point(evaluators, spec: Spec, cfg_dict: dict, res: dict) -> tuple[str, str, dict]:
    """Evaluate a screened point on every workload; constraints must hold on each."""
    acfg = config_from_dict(cfg_dict, source=f"{spec.path} point")
    evs = _evaluators(evaluators)
    per = []
    for ev in evs:
        est = ev.estimate(acfg)
        m = dict(res)
        if len(evs) > 1 and "memory_mib" in res:  # this workload's model
            m["memory_mib"] = ev.memory_beats(acfg) * acfg.memory.bus_bytes / 2**20
        for k in PERF_METRICS:
            m[k] = est[k]
        per.append(m)
    for wl, m in zip(spec.workloads, per, strict=True):
        for c in spec.constraints:
            if c.holds(m) is False:
                at = f" at {workload_label(wl)}" if len(per) > 1 else ""
                return (
                    "constraint",
                    f"violates {c.text} ({c.metric} = {m[c.metric]:.4g}){at}",
                    aggregate(per, spec),
                )
    return "ok", "", aggregate(per, spec)


# ---- worker processes -------------------------------------------------------------------------------

_W: dict = {}


def _worker_init(spec: Spec, workloads: list, log_path: str, parent: int) -> None:
    if parent:
        import signal

        # Ctrl-C reaches the whole foreground process group: only the main process acts on it (it
        # terminates the pool); a worker interrupted mid-task would leave the pool waiting for good.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:  # die with the main process (Linux): no orphan evaluates and logs after a kill
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except Exception:
            pass
        if os.getppid() != parent:
            os._exit(0)
    _W.update(spec=spec, ev=make_evaluators(workloads), log=log_path, parent=parent)


def _worker_eval(job: tuple) -> tuple:
    uid, cfg_dict, res, meta = job
    from compiler import CompileError

    try:
        status, reason, m = evaluate_point(_W["ev"], _W["spec"], cfg_dict, res)
    except CompileError as e:  # the compiler refuses the point (an overlapped point is compiled): bad input
        status, reason, m = "invalid", str(e).splitlines()[0], dict(res)
    except Exception as e:  # a bug must not kill the sweep; it is recorded
        status, reason, m = "error", f"{type(e).__name__}: {e}".splitlines()[0], dict(res)
    if _W["parent"] and os.getppid() != _W["parent"]:
        os._exit(0)
    append_log(
        _W["log"], {"uid": uid, "status": status, "reason": reason, "metrics": m, "pid": os.getpid(), **meta}
    )
    return uid, status, reason, m


def _worker_main(conn, spec: Spec, workloads: list, log_path: str, parent: int) -> None:
    """A worker process: evaluate the jobs the main process sends until it sends None or goes away."""
    import signal

    _worker_init(spec, workloads, log_path, parent)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send(_worker_eval(job))


def _talk(op, *args):
    """One send or receive on a worker's pipe; a dead worker is a clear error, or the interrupt that
    killed it: a Ctrl-C whose KeyboardInterrupt Python dropped (raised in a garbage-collector callback)
    has still killed the workers, and the sweep must end as interrupted (exit 130), not as a crash."""
    try:
        return op(*args)
    except (EOFError, OSError):
        raise_pending_signal()
        raise RuntimeError("a DSE worker process died (out of memory?); rerun to resume") from None


class _Evaluators:
    """Evaluates screened points in this process (``workers=0``) or in forked worker processes (started on
    the first job), one job per idle worker over a pipe each. ``close(abort=True)`` kills the workers at once
    (Ctrl-C, errors): no pool threads or shared queue locks to wait for."""

    def __init__(self, spec: Spec, workloads: list, log_path: Path, workers: int):
        self.args = (spec, workloads, str(log_path))
        self.workers = workers
        self.procs: list = []
        if workers == 0:
            _worker_init(*self.args, 0)

    def _start(self) -> None:
        import multiprocessing as mp
        import signal

        ctx = mp.get_context("fork")
        # SIGINT blocked across the fork: a worker ignores it before it can see one (its handler is set
        # before it unblocks); one that reaches this process meanwhile is delivered when it unblocks.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for _ in range(self.workers):
                here, there = ctx.Pipe()
                p = ctx.Process(target=_worker_main, args=(there, *self.args, os.getpid()), daemon=True)
                p.start()
                there.close()
                self.procs.append((p, here))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def run(self, jobs: list):
        """Results ``(uid, status, reason, metrics)`` of ``jobs`` as they finish."""
        if self.workers == 0:
            yield from map(_worker_eval, jobs)
            return
        if not jobs:
            return
        if not self.procs:
            self._start()
        from multiprocessing.connection import wait

        todo = list(reversed(jobs))
        busy = set()
        for _, conn in self.procs:
            if todo:
                _talk(conn.send, todo.pop())
                busy.add(conn)
        while busy:
            for conn in wait(list(busy)):
                res = _talk(conn.recv)
                if todo:
                    _talk(conn.send, todo.pop())
                else:
                    busy.discard(conn)
                yield res

    def close(self, abort: bool = False) -> None:
        for p, conn in self.procs:
            if abort:
                p.kill()
            else:
                try:
                    conn.send(None)
                except OSError:
                    p.kill()
        for p, conn in self.procs:
            p.join(timeout=None if abort else 10)
            if p.is_alive():
                p.kill()
                p.join()
            conn.close()
        self.procs = []


# ====================================================================================================
# The sweep
# ====================================================================================================

_mask_url = mask_url  # the CLI's name for it


class _Sweep:
    """One invocation's state: the store, the evaluation log, the evaluators, the progress bar."""

    def __init__(
        self,
        spec: Spec,
        store: Store,
        out: Path,
        study_name: str,
        evaluator: list,
        evaluators: _Evaluators,
        bar=None,
    ):
        self.spec, self.store, self.evaluator, self.evaluators, self.bar = (
            spec,
            store,
            evaluator,
            evaluators,
            bar,
        )
        self.meta = {"study": study_name, "fingerprint": spec.fingerprint}
        self.logged = {
            r["uid"]: r
            for r in read_log(out / "evaluations.jsonl")
            if r.get("study") == study_name
            and r.get("fingerprint") == spec.fingerprint
            and "params" in r
            and "metrics" in r
        }
        self.evaluated = 0

    def _done(self, p: Point, result: tuple[str, str, dict]) -> tuple[str, str, dict]:
        self.store.put(p, *result)
        if self.bar is not None:
            self.bar.update(1)
        return result

    def settle(self, points: list[Point]) -> dict[str, tuple[str, str, dict]]:
        """Results of ``points``: stored ones as stored, logged ones from the log, the rest screened and
        evaluated; each new result is stored as soon as it is known (in any order)."""
        results: dict[str, tuple] = {}
        jobs = []
        for p in points:
            if p.key in self.store:
                results[p.key] = self.store.result(p.key)
                continue
            rec = self.logged.get(p.key)
            if rec is not None and rec["params"] == p.params:
                results[p.key] = self._done(p, (rec["status"], rec["reason"], rec["metrics"]))
                continue
            status, reason, res, d = screen(self.spec, p.params, self.evaluator)
            if status != "ok":
                results[p.key] = self._done(p, (status, reason, res))
                continue
            jobs.append(
                (
                    p.key,
                    d,
                    res,
                    {
                        **self.meta,
                        "params": p.params,
                        "ord": p.ord,
                        "stream": p.stream,
                        "system_attrs": p.system_attrs,
                    },
                )
            )
        by_key = {p.key: p for p in points}
        for key, status, reason, m in self.evaluators.run(jobs):
            self.evaluated += 1
            results[key] = self._done(by_key[key], (status, reason, m))
        return results

    def recover_foreign(self, own: str) -> int:
        """Shared storage: store finished evaluations of dead invocations (other NSGA-II streams) from the log."""
        n = 0
        for key, rec in self.logged.items():
            stream = rec.get("stream")
            if key in self.store or stream in (None, "grid", own):
                continue
            self.store.put(
                Point(key, rec["ord"], stream, rec["params"], system_attrs=rec.get("system_attrs", {})),
                rec["status"],
                rec["reason"],
                rec["metrics"],
            )
            n += 1
        return n


def _run_grid(sw: _Sweep, spec: Spec, shared: bool, run_id: str) -> None:
    """The grid in its seeded order up to the budget; stored points are skipped. Shared storage: each
    invocation starts at its own offset and re-reads the store before every batch."""
    order = GridOrder(spec.parameters, spec.seed)
    total = min(spec.budget, order.size)
    ords = list(range(total))
    if shared and total:
        k = int(run_id, 16) % total
        ords = ords[k:] + ords[:k]
    for i in range(0, total, spec.batch):
        if shared:
            sw.store.refresh()
        pts = [order.point(o) for o in ords[i : i + spec.batch]]
        sw.settle([p for p in pts if p.key not in sw.store])


def _tell(mem, p: Point, result: tuple[str, str, dict], objectives: list[str]) -> None:
    from optuna.trial import TrialState

    status, _, m = result
    if status == "ok":
        mem.tell(p.trial, [float(m[k]) for k in objectives])
    else:
        mem.tell(p.trial, state=TrialState.FAIL if status == "error" else TrialState.PRUNED)


def _run_nsga2(sw: _Sweep, spec: Spec, seed: int, stream: str, shared: bool, dists: dict) -> None:
    """NSGA-II asked and told in batches of ``batch`` in this process, with a seeded sampler.

    One invocation (default storage): the ask/tell sequence is replayed from the start on every run — the
    stored results are told again, so the sampler proposes exactly the points of an uninterrupted run and
    only the missing ones are evaluated. Shared storage: before each batch, the trials other invocations
    stored are added to the in-memory study (such runs are not reproducible point by point)."""
    import optuna

    objectives = [m for m, _ in spec.objectives]
    mem = optuna.create_study(
        sampler=optuna.samplers.NSGAIISampler(population_size=spec.population, seed=seed),
        directions=[d for _, d in spec.objectives],
    )
    names = list(spec.parameters)
    added: set[str] = set()
    n = 0
    while True:
        if shared:
            sw.store.refresh()
            for key, t in list(sw.store.trials.items()):
                if key not in added and t.user_attrs.get("stream") != stream:
                    added.add(key)
                    mem.add_trial(t)
            left = spec.budget - len(sw.store)
        else:
            left = spec.budget - n
        if left <= 0:
            return
        pts = []
        for _ in range(min(spec.batch, left)):
            tr = mem.ask(dists)
            sa = dict(mem._storage.get_trial_system_attrs(tr._trial_id))
            pts.append(Point(f"{stream}:{n}", n, stream, {k: tr.params[k] for k in names}, tr, sa))
            n += 1
        results = sw.settle(pts)
        for p in pts:  # told in ask order: the sampler's state does not depend on timing
            _tell(mem, p, results[p.key], objectives)


def _check_fingerprint(db, spec: Spec, study_name: str, url: str) -> None:
    fp = db.user_attrs.get("spec_fingerprint")
    if fp is None:
        db.set_user_attr("spec_fingerprint", spec.fingerprint)
        db.set_user_attr("spec", spec.raw)
    elif fp != spec.fingerprint:
        raise SpecError(
            f"{spec.path}: top level: study {study_name!r} in {mask_url(url)} was created from a "
            "different spec (only budget may change on resume); use another --out or --storage"
        )


def _progress_bar(spec: Spec, stored: int):
    from sim.progress import progress

    total = min(spec.budget, spec.grid_size) if spec.sampler == "grid" else spec.budget
    return progress(total, "dse", "pt", initial=min(total, stored))


def _open_store(spec: Spec, out: Path, storage: str | None) -> tuple:
    """(study, url, study name): the persistent study, created or resumed (same spec fingerprint only)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if storage is None:  # the SQLite study lives in out; a remote one is reached first
        out.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, out)
    study_name = f"dse-{spec.name}"
    db = open_study(url, study_name, [d for _, d in spec.objectives])
    _check_fingerprint(db, spec, study_name, url)
    out.mkdir(parents=True, exist_ok=True)
    return db, url, study_name


def make_evaluators(workloads: list) -> list:
    """One :class:`FastEvaluator` per workload, sharing the per-command cost caches."""
    caches: dict = {}
    return [FastEvaluator(w, caches) for w in workloads]


def _self_check(ev: FastEvaluator, acfg: AcceleratorConfig) -> str:
    """'' if the fast path gives the compiled estimate's figures for ``acfg``, else what differs."""
    import math

    fast, ref = ev.estimate(acfg), ev.exact(acfg)
    bad = [
        f"{k} {fast[k]:.6g} != {ref[k]:.6g}"
        for k in ("ttft_s", "decode_tokens_per_s", "j_per_token", "dram_bytes_per_token")
        if not math.isclose(fast[k], ref[k], rel_tol=1e-9)
    ]
    return "; ".join(bad)


def _capture(spec: Spec, log) -> list[Workload]:
    """The workloads of the spec (captured once; every LM-head placement the spec sweeps too, so forked
    workers inherit them). When the config has fields the fast evaluator does not mirror, it is checked
    once against the compiled estimate on the base config; a mismatch makes every point exact."""
    base_acfg = config_from_dict({**spec.base, "name": spec.name}, source=str(spec.base_path))
    t0 = time.perf_counter()
    heads = spec.parameters.get("system.lm_head", [base_acfg.system.lm_head])
    workloads = []
    for model, prompt, context in spec.workloads:
        for lm in [base_acfg.system.lm_head, *(h for h in heads if h != base_acfg.system.lm_head)]:
            w = build_workload(model, prompt, context, base_acfg, lm)
            if lm == base_acfg.system.lm_head:
                workloads.append(w)
    what = (
        f"{spec.model}, prompt {spec.prompt}, context {spec.context}"
        if len(spec.workloads) == 1
        else f"{len(spec.workloads)} workloads ({', '.join(workload_label(w) for w in spec.workloads[:3])}"
        + (", ..." if len(spec.workloads) > 3 else "")
        + f"; objectives: {spec.aggregate} over them)"
    )
    log(f"[dse] workload {what}: captured in {time.perf_counter() - t0:.1f} s")
    loose = unmirrored_fields()
    if loose:
        log(
            "[dse] config fields the fast evaluator does not mirror: "
            + ", ".join(f"{k} (default {v!r})" for k, v in loose.items())
            + "; points that change them are compiled (exact, slow) — classify them in tritium.dse"
        )
        ev = FastEvaluator(workloads[0])
        if not ev.needs_exact(base_acfg):
            diff = _self_check(ev, base_acfg)
            if diff:
                log(
                    f"[dse] self-check on the base config failed ({diff}): every point is compiled (exact, slow)"
                )
                for w in workloads:
                    w.exact = True
    return workloads


def _search(sw: _Sweep, spec: Spec, shared: bool, run_id: str, dists: dict) -> None:
    if spec.sampler == "grid":
        _run_grid(sw, spec, shared, run_id)
        return
    # One invocation: the sampler's seed is the spec's (reproducible). Several invocations sharing a storage
    # must not all draw the same points: their seeds differ (such runs are not reproducible point by point).
    seed = spec.seed if not shared else (spec.seed * 1_000_003 + int(run_id, 16)) % 2**32
    _run_nsga2(sw, spec, seed, run_id if shared else f"seed{spec.seed}", shared, dists)


def _stopped(sw: _Sweep, db, spec: Spec, out: Path, log) -> None:
    """An interrupted sweep (Ctrl-C, an error): kill the workers, write the CSV of what is stored."""
    sw.evaluators.close(abort=True)
    if sw.bar is not None:
        sw.bar.close()
    try:  # best effort: the store may be what failed
        write_csv(out / "results.csv", collect(db, spec), spec)
    except Exception:
        pass
    log(f"[dse] stopped: {len(sw.store)} point(s) stored; the same command resumes")


def run_dse(
    spec: Spec,
    out: Path,
    workers: int = 0,
    storage: str | None = None,
    top: int = 5,
    verify: int = 0,
    progress: bool = True,
    log=print,
) -> dict:
    """Run (or resume) the sweep of ``spec``; write ``results.csv`` and ``pareto.png`` into ``out``.

    Every finished point is stored under its key (:mod:`tritium.dse_store`) in the persistent study
    (``storage``; SQLite in ``out`` by default); a rerun skips stored points and takes evaluations that
    finished but were not stored (a killed run) from ``out/evaluations.jsonl``, so the final results equal an
    uninterrupted run's. Ctrl-C kills the workers, writes ``results.csv`` of the stored points and
    re-raises KeyboardInterrupt. With a shared storage, invocations see each other's stored points."""
    import uuid

    from optuna.distributions import CategoricalDistribution

    out = Path(out)
    db, url, study_name = _open_store(spec, out, storage)
    shared, run_id = storage is not None, uuid.uuid4().hex[:12]
    dists = {n: CategoricalDistribution(v) for n, v in spec.parameters.items()}
    store = Store(db, [m for m, _ in spec.objectives], dists)
    workloads = _capture(spec, log)
    sw = _Sweep(
        spec,
        store,
        out,
        study_name,
        make_evaluators(workloads),
        _Evaluators(spec, workloads, out / "evaluations.jsonl", workers),
    )
    recovered = sw.recover_foreign(run_id) if shared else 0
    log(
        f"[dse] study {study_name} in {mask_url(url)}: {len(store)} stored point(s)"
        + (f" ({recovered} recovered from evaluations.jsonl)" if recovered else "")
        + f"; budget {spec.budget}, sampler {spec.sampler}"
        + (f" (grid of {spec.grid_size})" if spec.sampler == "grid" else f" (population {spec.population})")
    )
    t_start = time.perf_counter()
    sw.bar = _progress_bar(spec, len(store)) if progress else None
    try:
        _search(sw, spec, shared, run_id, dists)
    except BaseException:
        _stopped(sw, db, spec, out, log)
        raise
    sw.evaluators.close()
    if sw.bar is not None:
        sw.bar.close()
    return _report(db, spec, out, top, verify, log, sw.evaluated, time.perf_counter() - t_start, len(store))


def _report(
    db, spec: Spec, out: Path, top: int, verify: int, log, n_eval: int, wall: float, stored: int
) -> dict:
    rows = collect(db, spec)
    if verify:
        verify_points(db, spec, rows, verify, out, log)
        rows = collect(db, spec)
    csv_path = write_csv(out / "results.csv", rows, spec)
    png = plot_pareto(out / "pareto.png", rows, spec)
    ctx_png = plot_context(out / "context.png", rows, spec, max(1, top))
    table = top_table(rows, spec, top)
    log(table)
    log(
        f"[dse] {n_eval} point(s) evaluated in this run in {wall:.1f} s"
        + (f" ({60 * n_eval / wall:.0f} points/min)" if wall > 0 and n_eval else "")
        + f"; results {csv_path}, Pareto plot {png}"
        + (f", context plot {ctx_png}" if ctx_png else "")
    )
    return {
        "rows": rows,
        "csv": csv_path,
        "png": png,
        "context_png": ctx_png,
        "evaluated": n_eval,
        "seconds": wall,
        "table": table,
        "stored": stored,
    }


# ---- results ----------------------------------------------------------------------------------------


def _stored_points(study, spec: Spec) -> list:
    """Stored trials, one per key, in a fixed order: the grid order, or per stream its ask order (streams
    in the order they first stored a point)."""
    first: dict[str, int] = {}
    by_key: dict = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        k = t.user_attrs.get("uid")
        if k is None or "result" not in t.user_attrs or k in by_key:
            continue
        by_key[k] = t
        first.setdefault(t.user_attrs.get("stream", ""), t.number)

    def order(t):
        ua = t.user_attrs
        return (first[ua.get("stream", "")], ua.get("ord", t.number), t.number)

    return sorted(by_key.values(), key=order)


def collect(study, spec: Spec) -> list[dict]:
    """One record per stored point, numbered 0, 1, … (``trial``) in :func:`_stored_points` order: its
    parameters, status, the point's metrics (aggregated over the workloads) and ``by_workload``: one dict
    per workload of ``spec.workloads`` (model, prompt, context and that workload's metrics; a point
    rejected before evaluation carries the screen's figures on each)."""
    rows = []
    verified = study.user_attrs.get("verified", {})
    for i, t in enumerate(_stored_points(study, spec)):
        r = t.user_attrs["result"]
        row = {"trial": i, "status": r["status"], "reason": r["reason"]}
        row.update({n: t.params.get(n) for n in spec.parameters})
        metrics = dict(r["metrics"])
        per = metrics.pop("by_workload", None)
        if per is None or len(per) != len(spec.workloads):
            per = [metrics] * len(spec.workloads)
        row.update(metrics)
        row["model"], row["prompt"], row["context"] = spec.workloads[0]
        row["by_workload"] = [
            {"model": m, "prompt": p, "context": c, **pm}
            for (m, p, c), pm in zip(spec.workloads, per, strict=True)
        ]
        row["verified"] = verified.get(t.user_attrs["uid"], {}).get("result", "")
        row["_uid"] = t.user_attrs["uid"]
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
        dominated = any(
            all(a >= b for a, b in zip(vj, vi, strict=True))
            and any(a > b for a, b in zip(vj, vi, strict=True))
            for j, vj in enumerate(vals)
            if j != i
        )
        r["pareto"] = 0 if dominated else 1


WORKLOAD_COLUMNS = ("model", "prompt", "context")


def _agg_columns(spec: Spec) -> list[str]:
    """Columns of the point's objectives over several workloads (``worst_decode_tokens_per_s``, …)."""
    return [f"{spec.aggregate}_{m}" for m, _ in spec.objectives] if len(spec.workloads) > 1 else []


def _columns(spec: Spec) -> list[str]:
    return [
        "trial",
        "status",
        "reason",
        *spec.parameters,
        *WORKLOAD_COLUMNS,
        *METRICS,
        *_agg_columns(spec),
        "pareto",
        "verified",
    ]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 9)) if abs(v) < 1e12 else repr(v)
    return str(v)


def csv_rows(rows: list[dict], spec: Spec) -> list[dict]:
    """One dict per point and workload (what ``results.csv`` holds): the point's parameters, status,
    Pareto flag and aggregated objectives, the workload's model, prompt, context and metrics."""
    out = []
    for r in rows:
        agg = {f"{spec.aggregate}_{m}": r.get(m) for m, _ in spec.objectives}
        for w in r["by_workload"]:
            out.append({**r, **w, **agg})
    return out


def write_csv(path: Path, rows: list[dict], spec: Spec) -> Path:
    cols = _columns(spec)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in csv_rows(rows, spec):
            w.writerow([_fmt(r.get(c)) for c in cols])
    os.replace(tmp, path)
    return path


#: Axis labels of the metrics (human words and units; every figure modeled unless it says fit).
AXIS_LABELS = {
    "decode_tokens_per_s": "decode throughput (tokens/s, modeled)",
    "prefill_tokens_per_s": "prefill throughput (tokens/s, modeled)",
    "ttft_s": "time to first token (s, modeled)",
    "j_per_token": "energy per decoded token (J, modeled)",
    "avg_power_w": "average decode power (W, modeled)",
    "dram_bytes_per_token": "DRAM traffic per decoded token (bytes, modeled)",
    "memory_mib": "weights + KV cache (MiB)",
    "lut": "LUTs, both engines (resource-model fit)",
    "ff": "flip-flops, both engines (resource-model fit)",
    "bram": "block RAMs, both engines (resource-model fit)",
    "dsp": "DSP blocks, both engines (resource-model fit)",
    "fmax_mhz": "Fmax (MHz, resource-model fit)",
    "clock_mhz": "clock (MHz)",
}


def axis_label(metric: str, direction: str) -> str:
    """``decode throughput (tokens/s, modeled) — higher is better``."""
    better = "higher" if direction == "maximize" else "lower"
    return f"{AXIS_LABELS.get(metric, METRICS.get(metric, (metric,))[0])} — {better} is better"


def plot_pareto(path: Path, rows: list[dict], spec: Spec) -> Path:
    """The Pareto figure (PNG + PDF + CSV of the plotted points, :func:`tritium.figures.save_figure`):
    the first two objectives of every evaluated point, the Pareto front of those two, verified points.
    Returns the PNG's path."""
    from tritium.figures import honest_axes, new_figure, save_figure

    ok = [r for r in rows if r["status"] == "ok"]
    front = sorted((r for r in ok if r["pareto"]), key=lambda r: r[spec.objectives[0][0]])
    fig, ax = new_figure(width=6.5, height=4.5)
    front2: list = []
    if len(spec.objectives) >= 2:
        (mx, dx), (my, dy) = spec.objectives[:2]
        ax.scatter([r[mx] for r in ok], [r[my] for r in ok], s=8, c="0.7", label=f"evaluated ({len(ok)})")
        if len(spec.objectives) > 2:
            ax.scatter(
                [r[mx] for r in front],
                [r[my] for r in front],
                s=10,
                c="C1",
                label=f"Pareto in all {len(spec.objectives)} objectives ({len(front)})",
            )
        sx, sy = (1 if dx == "maximize" else -1), (1 if dy == "maximize" else -1)
        pts = sorted({(r[mx], r[my]) for r in ok}, key=lambda q: (-sx * q[0], -sy * q[1]))
        best = None
        for x, y in pts:  # non-dominated in the two plotted objectives
            if best is None or sy * y > sy * best:
                front2.append((x, y))
                best = y
        ax.step(
            [x for x, _ in front2],
            [y for _, y in front2],
            "o-",
            c="C3",
            ms=4,
            where="post",
            label=f"Pareto front of these two ({len(front2)})",
        )
        ver = [r for r in front if r.get("verified") == "yes"]
        if ver:
            ax.scatter(
                [r[mx] for r in ver],
                [r[my] for r in ver],
                s=80,
                facecolors="none",
                edgecolors="k",
                label="verified (RTL cycles = model)",
            )
        ax.set_xlabel(axis_label(mx, dx))
        ax.set_ylabel(axis_label(my, dy))
        honest_axes(ax, x_zero=True)
        cols = ["trial", *spec.parameters, mx, my, "pareto_all_objectives", "pareto_of_these_two", "verified"]
        on2 = set(front2)
        data = [
            [
                r["trial"],
                *(r[n] for n in spec.parameters),
                r[mx],
                r[my],
                r["pareto"],
                int((r[mx], r[my]) in on2),
                r.get("verified", ""),
            ]
            for r in ok
        ]
    else:
        ((m, d),) = spec.objectives
        ax.plot([r["trial"] for r in ok], [r[m] for r in ok], ".", c="0.6", label="evaluated")
        ax.plot([r["trial"] for r in front], [r[m] for r in front], "o", c="C3", label="best")
        ax.set_xlabel("trial (evaluation order)")
        ax.set_ylabel(axis_label(m, d))
        honest_axes(ax)
        cols = ["trial", *spec.parameters, m, "best"]
        data = [[r["trial"], *(r[n] for n in spec.parameters), r[m], r["pareto"]] for r in ok]
    ax.legend(loc="best")
    ax.set_title(f"DSE {spec.name}: {workload_text(spec)} (modeled)")
    return save_figure(fig, path, cols, data)["png"]


def _span(vals: list) -> str:
    vals = list(dict.fromkeys(vals))
    return (
        str(vals[0])
        if len(vals) == 1
        else f"{min(vals)}..{max(vals)}"
        if all(isinstance(v, int) for v in vals)
        else ", ".join(map(str, vals))
    )


def workload_text(spec: Spec) -> str:
    """``bitnet-0.7b, prompt 128, context 128..2048 (worst of 5 workloads)``."""
    ms, ps, cs = (list(x) for x in zip(*spec.workloads, strict=True))
    text = f"{_span(ms)}, prompt {_span(ps)}, context {_span(cs)}"
    if len(spec.workloads) > 1:
        text += f" ({spec.aggregate} of {len(spec.workloads)} workloads)"
    return text


def plot_context(path: Path, rows: list[dict], spec: Spec, k: int) -> Path | None:
    """Decode tokens/s and J/token against the context, one line per model for each of the top ``k``
    Pareto points (PNG + PDF + CSV, :func:`tritium.figures.save_figure`); the first prompt's rows. None
    when the spec sweeps no context."""
    from tritium.figures import honest_axes, new_figure, save_figure

    contexts = sorted({c for _, _, c in spec.workloads})
    if len(contexts) < 2:
        return None
    prompt0 = spec.workloads[0][1]
    models = list(dict.fromkeys(m for m, _, _ in spec.workloads))
    best = pareto_top(rows, spec, k)
    lines: dict = {}  # (model, curve) → [points]: points with the same curves share a line
    data = []
    for r in best:
        for model in models:
            pts = tuple(
                sorted(
                    (w["context"], w["decode_tokens_per_s"], w["j_per_token"])
                    for w in r["by_workload"]
                    if w["model"] == model and w["prompt"] == prompt0
                )
            )
            lines.setdefault((model, pts), []).append(r)
            data += [
                [r["trial"], model, prompt0, c, *(r[n] for n in spec.parameters), tps, jpt]
                for c, tps, jpt in pts
            ]
    fig, axes = new_figure(ncols=2, width=10.0, height=4.2 + 0.2 * len(lines))
    styles = ["-", "--", ":", "-."]
    for i, ((model, pts), same) in enumerate(lines.items()):
        r = same[0]
        label = f"trial {r['trial']}" + (
            f" (same curves: {', '.join(str(o['trial']) for o in same[1:])})" if len(same) > 1 else ""
        )
        label += f", {model}" if len(models) > 1 else ""
        if len(spec.parameters) <= 8:  # the point's choices, by the last part of each field's name
            label += ": " + ", ".join(f"{n.split('.')[-1]}={r[n]}" for n in spec.parameters)
        for ax, col in zip(axes, (1, 2), strict=True):
            ax.plot(
                [p[0] for p in pts],
                [p[col] for p in pts],
                styles[models.index(model) % len(styles)],
                marker="o",
                c=f"C{i % 10}",
                label=label,
            )
    for ax, m in zip(axes, ("decode_tokens_per_s", "j_per_token"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.set_xlabel("context (tokens attended by the decode step)")
        ax.set_ylabel(axis_label(m, METRICS[m][1]))
        honest_axes(ax)
    if best:  # below both panels: a point's label lists its choices
        h, lab = axes[0].get_legend_handles_labels()
        fig.legend(h, lab, loc="outside lower center")
    fig.suptitle(
        f"DSE {spec.name}: top {len(best)} Pareto point(s) by {spec.objectives[0][0]} against the context, "
        f"{_span(models)} (modeled)",
        fontsize=9,
    )
    cols = ["trial", "model", "prompt", "context", *spec.parameters, "decode_tokens_per_s", "j_per_token"]
    return save_figure(fig, path, cols, data)["png"]


def pareto_top(rows: list[dict], spec: Spec, k: int) -> list[dict]:
    m, d = spec.objectives[0]
    front = [r for r in rows if r["status"] == "ok" and r["pareto"]]
    out, seen = [], set()
    for r in sorted(front, key=lambda r: (-r[m] if d == "maximize" else r[m], r["trial"])):
        key = tuple(r[n] for n in spec.parameters)  # NSGA-II may sample a point again: list it once
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
    from tritium.report import fmt_energy, fmt_time

    unit = {"ttft_s": fmt_time, "j_per_token": fmt_energy}  # readable for small numbers (µJ, ms)

    def cell(r, c):
        v = r.get(c, "")
        if c in unit and isinstance(v, float):
            return unit[c](v)
        return float(f"{v:.4g}") if isinstance(v, float) else v

    body = [[cell(r, c) for c in cols] for r in best]
    over = f", {spec.aggregate} over {len(spec.workloads)} workloads" if len(spec.workloads) > 1 else ""
    head = f"top {len(best)} Pareto point(s) by {objs[0]}{over} (modeled); points: " + ", ".join(
        f"{s} {counts[s]}" for s in STATUSES if counts[s]
    )
    out = table(cols, body, title=head)
    if len(spec.workloads) > 1:
        out += "\n" + best_per_workload_table(rows, spec)
    return out


def best_per_workload(rows: list[dict], spec: Spec) -> list[dict]:
    """Per workload, the evaluated (ok) point best in the first objective at that workload: its CSV row."""
    m, d = spec.objectives[0]
    sign = -1.0 if d == "maximize" else 1.0
    ok = [r for r in rows if r["status"] == "ok"]
    out = []
    for j in range(len(spec.workloads)):
        if ok:
            r = min(ok, key=lambda r: (sign * r["by_workload"][j][m], r["trial"]))
            out.append({**r, **r["by_workload"][j]})
    return out


def best_per_workload_table(rows: list[dict], spec: Spec) -> str:
    from tritium.report import fmt_energy, fmt_time, table

    metrics = list(
        dict.fromkeys([m for m, _ in spec.objectives] + ["decode_tokens_per_s", "ttft_s", "j_per_token"])
    )
    cols = ["model", "prompt", "context", "trial", *spec.parameters, *metrics]
    unit = {"ttft_s": fmt_time, "j_per_token": fmt_energy}

    def cell(r, c):
        v = r.get(c, "")
        if c in unit and isinstance(v, float):
            return unit[c](v)
        return float(f"{v:.4g}") if isinstance(v, float) else v

    body = [[cell(r, c) for c in cols] for r in best_per_workload(rows, spec)]
    return table(cols, body, title=f"best point per workload by {spec.objectives[0][0]} (modeled)")


# ---- verification -----------------------------------------------------------------------------------


def verify_config(
    acfg: AcceleratorConfig, model_cfg: dict, seed: int = 0, build_root: Path = Path("build/dse-verify")
) -> tuple[bool, str]:
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
    tc = TlmmCase(
        f"q_proj-{n}x{d}-{t.tokens}tok",
        rng.integers(-1, 2, (n, d)).astype(np.int8),
        rng.integers(lo, hi + 1, (t.tokens, d)).astype(np.int8),
    )
    hd = model_cfg["d_model"] // model_cfg["n_heads"]
    rows = max(1, acfg.gemm.rows)
    gc = GemmCase(
        f"QK^T-head-{rows}x{hd}x32",
        rng.integers(-128, 128, (rows, hd)).astype(np.int8),
        rng.integers(-128, 128, (hd, 32)).astype(np.int8),
    )
    rt = run_tlmm_cosim(acfg, [tc], build_root=build_root, quiet=True)
    rg = run_gemm_cosim(acfg, [gc], build_root=build_root, quiet=True)
    ok = rt.ok and rg.ok
    return ok, (
        f"TLMM RTL {rt.rtl_cycles} / model {rt.model_cycles} cycles, GEMM RTL {rg.rtl_cycles} / "
        f"model {rg.model_cycles} cycles, outputs {'equal' if rt.outputs_equal and rg.outputs_equal else 'DIFFER'}"
    )


def verify_points(study, spec: Spec, rows: list[dict], k: int, out: Path, log=print) -> None:
    from tritium.estimate import _compiled

    base_acfg = config_from_dict({**spec.base, "name": spec.name}, source=str(spec.base_path))
    mc = _compiled(spec.model, base_acfg).lowering.mc
    for r in pareto_top(rows, spec, k):
        if r.get("verified") in ("yes", "no"):
            continue
        params = {n: r[n] for n in spec.parameters}
        acfg = config_from_dict(
            {**spec.config_dict(params), "name": f"{spec.name}-t{r['trial']}"},
            source=f"{spec.path} trial {r['trial']}",
        )
        log(f"[dse] verifying trial {r['trial']} (Verilator builds of both engines, ~1 min) ...")
        try:
            ok, detail = verify_config(acfg, mc, build_root=out / "verify")
        except Exception as e:
            ok, detail = False, f"{type(e).__name__}: {e}".splitlines()[0]
        uid = r["_uid"]
        ver = study.user_attrs.get("verified", {})
        ver[uid] = {"result": "yes" if ok else "no", "detail": detail}
        study.set_user_attr("verified", ver)
        log(f"[dse]   trial {r['trial']}: {'verified' if ok else 'NOT verified'}: {detail}")
