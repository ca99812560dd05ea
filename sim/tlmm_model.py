"""Cycle-stepped numba model of the TLMM engine (hw/tlmm.py), plus its closed-form fast path.

The stepped kernel executes the engine's control (:mod:`sim.tlmm_control`, shared with the top-level
model), pipeline and accumulator memory one cycle at a time, with the same stream handshakes as the RTL:
each input stream presents its next beat when a periodic *valid pattern* allows it, and the result stream
takes a beat when a periodic *ready pattern* allows it (patterns are indexed by the cycle count since the
command was accepted; the co-simulation drives the RTL with the same patterns). Result back-pressure never
freezes the pipeline: results queue in a result FIFO of ``cfg.result_fifo_depth`` entries, and a lookup
issue on the last chunk (the only issues that produce a result) needs one of as many *credits*, which a
result returns when it leaves the engine. Each chunk's schedule is FILL (one activation beat per token),
then one PREP cycle, then LOOK: the activation beat is registered and its tables are built from that
register in the next cycle, so after the chunk's last fill the controller spends one cycle (PREP) before
its first lookup; PREP takes no beat and issues nothing (the pipeline still advances and the result FIFO
still pops). With all-ones patterns the engine never stalls, and :func:`tlmm_cycles` gives the same count
in closed form.

Cycle definition (docs/design.md): cycle 0 is the cycle in which the command handshake happens; the count is
the index of the cycle in which the last result beat is transferred.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from hw.config import TlmmConfig
from hw.ternary import TlmmShape, tlmm_streams
from sim.tlmm_control import LOOK, ctl_look_left, ctl_look_run, ctl_new, ctl_step

__all__ = ["TlmmRun", "EVENT_NAMES", "run_tlmm", "tlmm_cycles", "tlmm_events_closed_form"]

# Event counters (the energy model multiplies these by per-event energies).
EVENT_NAMES = (
    "table_fills",  # tables written (T per activation beat)
    "table_entry_writes",  # stored table entries written
    "lookups",  # table reads (Q·T per issue)
    "acc_updates",  # int32 accumulator additions (Q per issue)
    "acc_mem_reads",  # accumulator-memory words read (issues that are not on the first chunk)
    "acc_mem_writes",  # accumulator-memory words written (every issue)
    "act_beats",  # activation beats received
    "wgt_beats",  # weight beats received
    "res_beats",  # result beats sent
    "stall_cycles",  # cycles a LOOK issue waited for a result credit
    "bubble_cycles",  # cycles in FILL/LOOK without a beat to work on (PREP cycles are not bubbles)
)
_N_EVENTS = len(EVENT_NAMES)


# Unsigned index arithmetic: numba adds a negative-index wraparound fix-up (compare + select) to every
# array access with a signed index; with uint64 indices it does not, which matters in the lookup loop.
# Never mix _U values with signed ints in one expression (numba would promote the result to float64).
_U = np.uint64


@njit(inline="always", boundscheck=False, error_model="numpy")
def _fill(tabs, out, act, a0, g_n):
    """Write the full table of activations act[a0 : a0+G] to tabs[out : out+3^G]:
    t[idx] = Σ_j (digit_j(idx) - 1)·a_j (hw.ternary.build_table), built digit by digit: once the entries
    of the low j digits are in place, entry e + d·3^j = entry e + (d-1)·a_j. E additions instead of E·G
    multiply-adds; int32 stores wrap modulo 2^32 like the RTL's entry registers would."""
    tabs[out] = 0
    size = 1
    for j in range(g_n):
        a = act[a0 + _U(j)]
        for e in range(size):
            v = tabs[out + _U(e)]
            tabs[out + _U(e)] = v - a
            tabs[out + _U(e + size)] = v
            tabs[out + _U(e + 2 * size)] = v + a
        size *= 3


@njit(inline="always", boundscheck=False, error_model="numpy")
def _issue(tabs, wgt, acc, toff, tb, wb, ab, q_n, first):
    """The datapath of one lookup issue: Q sums of T table reads, accumulated into acc[ab : ab+Q].

    ``tabs`` holds the tables of the current token from flat offset ``tb`` (table t at ``tb + toff[t]``);
    the weight beat starts at flat offset ``wb`` of ``wgt``. ``toff`` is a tuple, so T is a compile-time
    constant and the inner loop is fully unrolled. Half mode reads -t[3^G-1-idx] for upper indices, which
    equals t[idx] exactly, so the model keeps full tables; only the event counts differ between the modes.
    Sums and accumulators are int32: the stores wrap modulo 2^32 exactly like the RTL's adders.
    """
    t_n = len(toff)
    for q in range(q_n):
        s = 0
        wq = wb + _U(q * t_n)
        for t in range(t_n):
            s += tabs[tb + _U(toff[t]) + _U(wgt[wq + _U(t)])]
        if first:
            acc[ab + _U(q)] = s
        else:
            acc[ab + _U(q)] += s


@njit(boundscheck=False, error_model="numpy", nogil=True)
def _look_run(tabs, wgt, acc, toff, tsz, q_n, n_tok, tok, wgt_ptr, addr, r, first):
    """Datapath of r consecutive issues starting at (tok, wgt_ptr, addr) within one chunk's LOOK phase.
    A separate (not inlined) function so that the lookup loop gets registers of its own: inlined into
    the big stepping loop, the table pointers spill to the stack and every lookup costs an extra load."""
    qt = _U(q_n * len(toff))
    for _ in range(r):
        _issue(tabs, wgt, acc, toff, _U(tok * tsz), _U(wgt_ptr) * qt, _U(addr * q_n), q_n, first)
        addr += 1
        tok += 1
        if tok == n_tok:
            tok = 0
            wgt_ptr += 1


class TlmmParams(NamedTuple):
    """One matmul on one TLMM engine, as the stepped kernel takes it (built only by :func:`tlmm_params`)."""

    group_size: int  # G
    tokens: int  # M
    k_chunks: int  # KC
    n_blocks: int  # NB
    columns: int  # Q
    table_offsets: tuple  # (t·E for t < T): T is part of the numba type, so the lookup loop unrolls
    table_entries: int  # E = 3^G
    stored_entries: int
    fifo_depth: int  # result FIFO depth (= result credits)


def tlmm_params(cfg: TlmmConfig, shape: TlmmShape) -> TlmmParams:
    """The stepped kernel's parameters of a matmul of ``shape`` on the engine ``cfg``."""
    return TlmmParams(
        group_size=cfg.group_size,
        tokens=shape.tokens,
        k_chunks=shape.k_chunks,
        n_blocks=shape.n_blocks,
        columns=cfg.columns,
        table_offsets=tuple(t * cfg.table_entries for t in range(cfg.tables)),
        table_entries=cfg.table_entries,
        stored_entries=cfg.stored_entries,
        fifo_depth=cfg.result_fifo_depth,
    )


@njit(cache=True, boundscheck=False, error_model="numpy", nogil=True)
def _tlmm_stepped(act, wgt, p, act_pat, wgt_pat, res_pat, drain_guard):
    """act (KC·M·T·G,) int64 activations and wgt (KC·NB·Q·T,) uint8 indices, flat in stream order;
    p: TlmmParams. Returns (acc (NB·M·Q,) int32, cycles, events); cycles is -1 if the run exceeds
    ``drain_guard`` cycles.

    The control (FSM, pipeline stages, result FIFO and credits) is sim.tlmm_control's, stepped once per
    cycle; this kernel adds the datapath: the table fills of the activation beat the control takes, and the
    lookups of its issues.

    Only the *control* is pipelined: the lookup sums are accumulated into acc at issue time instead of in
    stage C. That is unobservable: stage C reads the accumulator through a port transparent to its
    write port, so each word sees its updates in issue order either way, and a word's result is read out
    only after its last update (last chunk), after which nothing writes it again. For the same reason the
    result beats (and FIFO entries) need not copy data: the wrapper reads y from the final accumulators
    (every result beat has been transferred once the run has finished). FIFO order is stage-C order, which
    is issue order, so results leave in the same order as they would without the FIFO.
    """
    g_n, n_tok, kc_n, q_n, toff = p.group_size, p.tokens, p.k_chunks, p.columns, p.table_offsets
    t_n = len(toff)
    tsz = t_n * p.table_entries
    qt = q_n * t_n
    tabs = np.zeros(n_tok * tsz, np.int32)  # tables of every token, flat (tok, t, entry)
    acc = np.zeros(p.n_blocks * n_tok * q_n, np.int32)  # accumulator memory, flat (addr = nb·M + tok, q)
    # Pattern positions are c mod len, kept as wrapping counters (no division per cycle).
    la, lw, lr = act_pat.shape[0], wgt_pat.shape[0], res_pat.shape[0]
    ia = iw = ir = 0
    # Fast path for the common unstalled case: with all-ones weight and result patterns, every LOOK cycle
    # issues. Issues before the last chunk need no credit. On the last chunk, an always-ready sink keeps
    # the FIFO at most one deep at the start of a cycle (a result pushed at one edge leaves in the next
    # cycle), so at most 3 (stages A, B, C) + 1 credits are out at the start of any cycle: with D > 4
    # credits every issue finds one. (Credits out = last-chunk tags in A, B, C + occ, an invariant.) The
    # PREP cycle before each chunk's LOOK only puts a bubble into stage A (and pops the FIFO as usual), so
    # it never raises the number of credits out and the bound still holds.
    look_unstalled = wgt_pat.all() and res_pat.all()
    last_unstalled = look_unstalled and p.fifo_depth > 4
    cs = ctl_new(n_tok, kc_n, p.n_blocks, p.fifo_depth)
    c = 0
    while True:
        if cs.st == LOOK and look_unstalled and (cs.kc < kc_n - 1 or last_unstalled):
            # All remaining issues of this chunk happen on the next r cycles, one per cycle. Run their
            # datapath in one tight loop, then the control through the same r cycles.
            r = ctl_look_left(cs)
            if c + r <= drain_guard:
                _look_run(tabs, wgt, acc, toff, tsz, q_n, n_tok, cs.tok, cs.wgt_beats, cs.addr, r, cs.kc == 0)
                cs = ctl_look_run(cs)
                c += r
                ia = (ia + r) % la
                iw = (iw + r) % lw
                ir = (ir + r) % lr
                continue
        # ---------------- general path: one cycle ----------------
        c += 1
        ia += 1
        if ia == la:
            ia = 0
        iw += 1
        if iw == lw:
            iw = 0
        ir += 1
        if ir == lr:
            ir = 0
        if c > drain_guard:
            return acc, -1, np.zeros(_N_EVENTS, np.int64)
        prev = cs
        cs, done = ctl_step(cs, act_pat[ia] != 0, wgt_pat[iw] != 0, res_pat[ir] != 0)
        # the datapath of this cycle (the control does not depend on data), from the control's state at its start
        if cs.fills != prev.fills:
            # The RTL's lookups read a staging bank that holds, by construction, the tables of the
            # token being looked up; the model indexes tables by token directly (same contents).
            act_ptr = prev.fills
            tb = (act_ptr % n_tok) * tsz
            for t in range(t_n):
                _fill(tabs, _U(tb + toff[t]), act, _U((act_ptr * t_n + t) * g_n), g_n)
        elif cs.tag_a >= 0:
            _issue(
                tabs,
                wgt,
                acc,
                toff,
                _U(prev.tok * tsz),
                _U(prev.wgt_beats * qt),
                _U(prev.addr * q_n),
                q_n,
                prev.kc == 0,
            )
        if done:
            # Per-issue events are counted as the issue leaves stage C; once drained, every issue has, so
            # the totals equal the per-issue counts of the RTL.
            n_fill, n_c = cs.fills, cs.issued
            ev = np.zeros(_N_EVENTS, np.int64)
            ev[0] = n_fill * t_n
            ev[1] = n_fill * t_n * (p.stored_entries - 1)  # the all-zero entry is a constant, not stored
            ev[2] = n_c * qt
            ev[3] = n_c * q_n
            ev[4] = cs.acc_reads
            ev[5] = n_c
            ev[6] = n_fill
            ev[7] = cs.wgt_beats
            ev[8] = cs.results
            ev[9] = cs.stalls
            ev[10] = cs.bubbles
            return acc, c, ev


@dataclass
class TlmmRun:
    """Result of running one matmul on the model."""

    shape: TlmmShape
    y: np.ndarray  # (M, N) int32
    cycles: int  # accept → last result transfer (docs/design.md cycle definition)
    events: dict


_ONES = np.ones(1, np.uint8)


def run_tlmm(
    cfg: TlmmConfig,
    w: np.ndarray,
    x: np.ndarray,
    act_pattern: np.ndarray | None = None,
    wgt_pattern: np.ndarray | None = None,
    res_pattern: np.ndarray | None = None,
) -> TlmmRun:
    """Run y = W·x (W (N, K) ternary, x (M, K) signed) through the stepped model."""
    shape, act, wgt = tlmm_streams(cfg, w, x)
    return run_tlmm_streams(cfg, shape, act, wgt, act_pattern, wgt_pattern, res_pattern)


def run_tlmm_streams(
    cfg: TlmmConfig,
    shape: TlmmShape,
    act: np.ndarray,
    wgt: np.ndarray,
    act_pattern=None,
    wgt_pattern=None,
    res_pattern=None,
) -> TlmmRun:
    """Run already laid-out streams (see :func:`hw.ternary.tlmm_streams`)."""
    pats = []
    for p in (act_pattern, wgt_pattern, res_pattern):
        p = _ONES if p is None else np.ascontiguousarray(p, dtype=np.uint8)
        if p.ndim != 1 or p.size == 0 or not p.any():
            raise ValueError("a stream pattern must be a non-empty 1-D array with at least one 1")
        pats.append(p)
    ideal = tlmm_cycles(cfg, shape)
    guard = 64 + ideal * max(1, *(p.size for p in pats)) * 4
    acc, cycles, ev = _tlmm_stepped(
        np.ascontiguousarray(act, dtype=np.int64).reshape(-1),
        np.ascontiguousarray(wgt, dtype=np.uint8).reshape(-1),
        tlmm_params(cfg, shape),
        pats[0],
        pats[1],
        pats[2],
        guard,
    )
    if cycles < 0:
        raise RuntimeError("TLMM model did not finish: a stream pattern starves the engine")
    # acc word nb·M + m holds y[m, nb·Q : nb·Q + Q] (already wrapped to int32)
    y = acc.reshape(shape.n_blocks, shape.tokens, cfg.columns).transpose(1, 0, 2).reshape(shape.tokens, -1)
    y32 = np.ascontiguousarray(y[:, : shape.n])
    return TlmmRun(shape, y32, int(cycles), dict(zip(EVENT_NAMES, (int(v) for v in ev), strict=True)))


def tlmm_cycles(cfg: TlmmConfig, shape: TlmmShape) -> int:
    """Closed form for unstalled streams: every issue slot is busy, then the pipeline drains.
    KC·(M·(1+NB) + 1) + cfg.drain_cycles: per chunk M fills and NB·M lookups, +1: the table build of the
    chunk's last activation beat takes one cycle (PREP)."""
    return shape.k_chunks * (shape.tokens * (1 + shape.n_blocks) + 1) + cfg.drain_cycles


def tlmm_events_closed_form(cfg: TlmmConfig, shape: TlmmShape) -> dict:
    """Event counts for unstalled streams, without executing data (fast path for estimates)."""
    kc, m, nb = shape.k_chunks, shape.tokens, shape.n_blocks
    issues = kc * nb * m
    return {
        "table_fills": kc * m * cfg.tables,
        "table_entry_writes": kc * m * cfg.tables * (cfg.stored_entries - 1),
        "lookups": issues * cfg.lookups_per_cycle,
        "acc_updates": issues * cfg.columns,
        "acc_mem_reads": (kc - 1) * nb * m,
        "acc_mem_writes": issues,
        "act_beats": kc * m,
        "wgt_beats": kc * nb,
        "res_beats": nb * m,
        "stall_cycles": 0,
        "bubble_cycles": 0,
    }
