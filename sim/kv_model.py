"""Cycle-stepped numba model of the KV retrieval engine (hw/kv.py).

The kernel executes the engine's controller state for state (hw/kv.py's module docstring lists the
states and their cycle counts) and the same datapath numerics as the golden reference
(:class:`models.resv.ClusterTable`): SimHash projection, nearest non-full cluster, key sums, reciprocal
scores, row sum, bucket lists and the early-exit walk. Its cycle count is data-dependent (scan length,
clusters, where the walk exits), which is why it executes the data rather than a formula.

Stream conventions (shared with the co-simulation bench, sim/kv_bench.py): cycle 0 is the first cycle
after reset, in which the first command is offered; commands are offered back to back whenever the
engine is IDLE; the ``vec`` stream offers its next beat in cycle t when ``vec_pattern[t % len]`` is 1, and
``out`` takes a beat when ``out_pattern[t % len]`` is 1. The cycle count of a run is the index of the
cycle in which the last output beat is transferred, plus one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit

from hw.config import AcceleratorConfig, KvConfig
from hw.kv_numerics import (
    KIND_ASSIGN,
    KIND_END,
    KIND_FULL,
    KIND_SEL,
    OP_INSERT,
    OP_QUERY,
    OP_RESET,
    TableLayout,
    hyperplane_matrix,
    reciprocal,
)
from sim.mem_kernel import MemTiming, mem_deliver, mem_new, mem_read_valid, mem_request, mem_request_ready

__all__ = [
    "KvRun",
    "EVENT_NAMES",
    "run_commands",
    "run_kv",
    "kv_energy_j",
    "encode_commands",
    "insert_cycles",
    "query_cycles",
    "kvr_cost",
    "KvrExecutor",
    "TableState",
    "kvr_run_cycles",
    "table_dma_cycles",
    "expected_touched",
]

(
    S_IDLE,
    S_LOAD,
    S_SCAN,
    S_DECIDE,
    S_UPDATE,
    S_OUT,
    S_SCORE,
    S_TH,
    S_LINK,
    S_WSTART,
    S_WALK,
    S_END,
    S_TH2,
    S_DRAIN,
) = range(14)

EVENT_NAMES = (
    "vec_beats",
    "proj_adds",
    "sig_compares",
    "sum_lane_updates",
    "score_macs",
    "score_scales",
    "links",
    "walk_steps",
    "out_beats",
    "inserts",
    "queries",
    "dropped",
)
(E_VEC, E_PROJ, E_CMP, E_SUMUPD, E_MAC, E_SCALE, E_LINK, E_WALK, E_OUT, E_INS, E_QRY, E_DROP) = range(12)


@njit(cache=True)
def _bitlen(x):
    n = 0
    while x > 0:
        n += 1
        x >>= 1
    return n


@njit(cache=True)
def _popcount(x):
    n = 0
    while x:
        x &= x - 1
        n += 1
    return n


@njit(cache=True)
def _top_bucket(mask):
    """Highest non-empty bucket, or -1."""
    top = -1
    for b in range(mask.shape[0]):
        if mask[b]:
            top = b
    return top


@njit(cache=True)
def _signature(acc):
    """The key's signature: bit j set where projection j is not negative."""
    sig = 0
    for j in range(acc.shape[0]):
        if acc[j] >= 0:
            sig |= 1 << j
    return sig


@njit(cache=True)
def _emit(out, n_out, ev, kind, ident, new, t):
    """Transfer output beat ``n_out`` in cycle ``t`` (rows of ``out``: kind, id, new, cycle) and count it; the next
    beat's index."""
    out[0, n_out], out[1, n_out], out[2, n_out], out[3, n_out] = kind, ident, new, t
    ev[E_OUT] += 1
    return n_out + 1


@njit(cache=True)
def _outputs(out, n_out, ev, finished):
    """The kernel's result: the output beats' kinds, ids, new flags and cycles, the cycle count (the last beat's
    cycle + 1), the events, and whether the commands finished within the cycle guard."""
    cycles = out[3, n_out - 1] + 1 if n_out > 0 else 0
    return out[0, :n_out], out[1, :n_out], out[2, :n_out], out[3, :n_out], cycles, ev, finished


@njit(cache=True)
def _kv_kernel(ops, vec, vpat, opat, hp, recip, L, NB, HP, CM, CS, B, hamming, alpha_q, max_cycles, table):
    """``table`` = (sigs (CM,), cnts (CM,), sums (CM, D), [n, ntok]): one table slot's state, read at the
    start and updated in place (the engine's RAM and its per-slot counts; :class:`TableState`)."""
    D = NB * L
    n_cmd = ops.shape[0]
    n_vec = vec.shape[0]
    out = np.zeros((4, n_cmd * (CM + 2) + 1), np.int64)
    n_out = 0
    ev = np.zeros(12, np.int64)

    sigs, cnts, sums, counts = table
    scores = np.zeros(CM, np.int64)
    nxt_v = np.zeros(CM, np.int64)
    nxt_id = np.zeros(CM, np.int64)
    head = np.zeros(B, np.int64)
    mask = np.zeros(B, np.int64)
    vreg = np.zeros(D, np.int64)
    acc = np.zeros(HP, np.int64)

    state = S_IDLE
    is_query = False
    n = counts[0]
    ntok = counts[1]
    beat = 0
    scan_row = 0
    best_v, best_d, best_id = False, 0, 0
    r_kind, r_id, r_new = 0, 0, 0
    upd_beat = 0
    iss_c, iss_b = 0, 0
    vB, bB, cB = False, 0, 0
    vC, cC = False, 0
    dot, dotC = 0, 0
    lo, hi, sc = 0, 0, 0
    th, sh, acc_w, visited, link_c, ptr = 0, 0, 0, 0, 0, 0
    drain, after = 0, 0
    ci, vi = 0, 0
    lg_b = _bitlen(B - 1)
    t = 0
    while t < max_cycles:
        if ci >= n_cmd and state == S_IDLE:
            counts[0], counts[1] = n, ntok
            return _outputs(out, n_out, ev, True)
        vvalid = vi < n_vec and vpat[t % vpat.shape[0]] != 0
        oready = opat[t % opat.shape[0]] != 0
        if state == S_IDLE:
            if ci < n_cmd:
                op = ops[ci]
                ci += 1
                if op == OP_RESET:
                    n = 0
                    ntok = 0
                elif op == OP_INSERT or op == OP_QUERY:
                    is_query = op == OP_QUERY
                    beat = 0
                    state = S_LOAD
                    for j in range(HP):
                        acc[j] = 0
        elif state == S_LOAD:
            if vvalid:
                ev[E_VEC] += 1
                for i in range(L):
                    vreg[beat * L + i] = vec[vi, i]
                if not is_query:
                    ev[E_PROJ] += HP * L
                    for j in range(HP):
                        s = 0
                        for i in range(L):
                            s += hp[j, beat * L + i] * vec[vi, i]
                        acc[j] += s
                vi += 1
                if beat == NB - 1:
                    if is_query:
                        state = S_SCORE
                        iss_c, iss_b, vB, vC, sc = 0, 0, False, False, 0
                    else:
                        state = S_SCAN
                        scan_row = 0
                        best_v = False
                beat += 1
        elif state == S_SCAN:
            sig = _signature(acc)
            for i in range(L):
                c = scan_row * L + i
                if c < n and cnts[c] < CS:
                    ev[E_CMP] += 1
                    d = _popcount(sig ^ sigs[c])
                    if (not best_v) or d < best_d:
                        best_d = d
                        best_id = c
                    best_v = True
            if (scan_row + 1) * L >= n:
                state = S_DRAIN  # the RTL's search stages 2 and 3 finish the last row
                drain, after = 2, S_DECIDE
            scan_row += 1
        elif state == S_DECIDE:
            sig = _signature(acc)
            kind = KIND_ASSIGN
            cid, new = 0, 0
            if best_v and best_d <= hamming:
                cid, new = best_id, 0
            elif n < CM:
                cid, new = n, 1
            elif best_v:
                cid, new = best_id, 0
            else:
                kind = KIND_FULL
            r_kind, r_id, r_new = kind, cid, new
            if kind == KIND_FULL:
                ev[E_DROP] += 1
                state = S_OUT
            else:
                if new:
                    sigs[cid] = sig
                    cnts[cid] = 1
                else:
                    cnts[cid] += 1
                n += new
                ntok += 1
                upd_beat = 0
                state = S_UPDATE
            ev[E_INS] += 1
        elif state == S_UPDATE:
            ev[E_SUMUPD] += L
            for i in range(L):
                k = upd_beat * L + i
                base = 0 if r_new else sums[r_id, k]
                sums[r_id, k] = base + vreg[k]
            if upd_beat == NB - 1:
                state = S_OUT
            upd_beat += 1
        elif state == S_OUT:
            if oready:
                n_out = _emit(out, n_out, ev, r_kind, r_id, r_new, t)
                state = S_IDLE
        elif state == S_SCORE:
            issuing = iss_c < n
            if vC:  # stage C: score of the cluster in dotC/cC
                ev[E_SCALE] += 1
                score = (dotC * recip[cnts[cC]]) >> 16
                scores[cC] = score
                sc += score * cnts[cC]
                if cC == 0 or score < lo:
                    lo = score
                if cC == 0 or score > hi:
                    hi = score
            n_vC = vB and bB == NB - 1
            if vB:  # stage B: q · sum lanes of the beat read last cycle
                ev[E_MAC] += L
                partial = 0
                for i in range(L):
                    partial += vreg[bB * L + i] * sums[cB, bB * L + i]
                dot_new = (0 if bB == 0 else dot) + partial
                dot = dot_new
                if bB == NB - 1:
                    dotC = dot_new
                    cC = cB
            if (not issuing) and (not vB):
                # the RTL's pipeline has three more stages after this one (products, count/reciprocal, scale)
                if n == 0:
                    state = S_TH
                else:
                    state = S_DRAIN
                    drain, after = 3, S_TH
            vC = n_vC
            vB, bB, cB = issuing, iss_b, iss_c
            if issuing:  # stage A: next (cluster, beat) address
                if iss_b == NB - 1:
                    iss_b = 0
                    iss_c += 1
                else:
                    iss_b += 1
        elif state == S_TH:
            row_sum = sc - lo * ntok
            th = (row_sum * alpha_q) >> 8
            span_len = _bitlen(hi - lo)
            sh = span_len - lg_b if span_len > lg_b else 0
            for b in range(B):
                mask[b] = 0
            acc_w, visited, link_c = 0, 0, 0
            state = S_TH2
        elif state == S_TH2:
            state = S_END if n == 0 else S_LINK
        elif state == S_DRAIN:
            drain -= 1
            if drain == 0:
                state = after
        elif state == S_LINK:
            ev[E_LINK] += 1
            bk = (scores[link_c] - lo) >> sh
            nxt_id[link_c] = head[bk]
            nxt_v[link_c] = mask[bk]
            head[bk] = link_c
            mask[bk] = 1
            if link_c == n - 1:
                state = S_DRAIN  # the RTL's LINK stages 2 and 3 finish the last cluster
                drain, after = 2, S_WSTART
            link_c += 1
        elif state == S_WSTART:
            top = _top_bucket(mask)
            ptr = head[top]
            mask[top] = 0
            state = S_WALK
        elif state == S_WALK:
            if oready:
                n_out = _emit(out, n_out, ev, KIND_SEL, ptr, 0, t)
                ev[E_WALK] += 1
                acc_w += (scores[ptr] - lo) * cnts[ptr]
                visited += 1
                if acc_w >= th:
                    state = S_END
                elif nxt_v[ptr]:
                    ptr = nxt_id[ptr]
                else:
                    top = _top_bucket(mask)
                    if top >= 0:
                        ptr = head[top]
                        mask[top] = 0
                    else:
                        state = S_END
        elif state == S_END:
            if oready:
                n_out = _emit(out, n_out, ev, KIND_END, visited, 0, t)
                ev[E_QRY] += 1
                state = S_IDLE
        t += 1
    counts[0], counts[1] = n, ntok
    return _outputs(out, n_out, ev, False)


class TableState:
    """One cluster table's state as the engine holds it (a slot of ``system.kv_tables: onchip``): signatures,
    counts and key sums per cluster, the cluster and key counts. A new one is empty (the engine after reset)."""

    def __init__(self, kv: KvConfig):
        self.sigs = np.zeros(kv.max_clusters, np.int64)
        self.cnts = np.zeros(kv.max_clusters, np.int64)
        self.sums = np.zeros((kv.max_clusters, kv.dim), np.int64)
        self.counts = np.zeros(2, np.int64)  # n (clusters), ntok (keys)

    @property
    def n(self) -> int:
        return int(self.counts[0])

    def arrays(self) -> tuple:
        return self.sigs, self.cnts, self.sums, self.counts


@dataclass
class KvRun:
    cycles: int
    events: dict
    results: list  # per command: insert → (cid, new, full); query → [cluster ids]; reset → None
    out_kind: np.ndarray  # every output beat: kind, id, new and the cycle it was transferred in
    out_id: np.ndarray
    out_new: np.ndarray
    out_cycle: np.ndarray
    command_cycles: list  # per command: the cycle its last output beat left (None for RESET)


def encode_commands(kv: KvConfig, commands) -> tuple[np.ndarray, np.ndarray]:
    """Commands [("reset",) | ("insert", key) | ("query", q)] → (ops int8, vec beats (n, lanes) int8)."""
    ops, vecs = [], []
    for c in commands:
        name = c[0]
        if name == "reset":
            ops.append(OP_RESET)
            continue
        if name not in ("insert", "query"):
            raise ValueError(f"unknown KV command {name!r} (reset, insert, query)")
        v = np.asarray(c[1])
        if v.shape != (kv.dim,):
            raise ValueError(f"{name} vector has shape {v.shape}, expected ({kv.dim},)")
        if v.min(initial=0) < -128 or v.max(initial=0) > 127:
            raise ValueError(f"{name} vector is not int8")
        ops.append(OP_INSERT if name == "insert" else OP_QUERY)
        vecs.append(v.astype(np.int8).reshape(kv.beats, kv.lanes))
    vec = np.concatenate(vecs) if vecs else np.zeros((0, kv.lanes), np.int8)
    return np.array(ops, np.int8), vec


_ONES = np.ones(1, np.int8)


@lru_cache(maxsize=16)
def _tables(kv: KvConfig) -> tuple[np.ndarray, np.ndarray]:
    """Hyperplanes (±1) and the reciprocal ROM of a config (the splitmix64 draw is a Python loop)."""
    hp = hyperplane_matrix(kv)
    recip = np.array([0] + [reciprocal(c) for c in range(1, kv.max_cluster_size + 1)], np.int64)
    return hp, recip


def run_kv(
    kv: KvConfig,
    ops: np.ndarray,
    vec: np.ndarray,
    vec_pattern=None,
    out_pattern=None,
    max_cycles: int | None = None,
    table: TableState | None = None,
):
    """Run encoded commands; returns the raw kernel outputs (see :func:`run_commands`). ``table``: the table
    slot the commands run on (updated in place; None: a new, empty one)."""
    vp = _ONES if vec_pattern is None else np.asarray(vec_pattern, np.int8)
    op = _ONES if out_pattern is None else np.asarray(out_pattern, np.int8)
    for p in (vp, op):
        if p.ndim != 1 or p.size == 0 or not p.any():
            raise ValueError("a stream pattern must be a non-empty 1-D array with at least one 1")
    hp, recip = _tables(kv)
    if max_cycles is None:
        per_cmd = 8 + kv.beats * (kv.max_clusters + 4) + 3 * kv.max_clusters + kv.max_clusters // kv.lanes
        max_cycles = (len(ops) * per_cmd + 16) * max(len(vp), len(op)) + 64
    res = _kv_kernel(
        ops.astype(np.int64),
        vec.astype(np.int64),
        vp,
        op,
        hp,
        recip,
        kv.lanes,
        kv.beats,
        kv.hyperplanes,
        kv.max_clusters,
        kv.max_cluster_size,
        kv.buckets,
        kv.hamming,
        kv.alpha_q,
        max_cycles,
        (table or TableState(kv)).arrays(),
    )
    if not res[6]:
        raise RuntimeError("KV model did not finish within its cycle guard")
    return res


def run_commands(
    kv: KvConfig, commands, vec_pattern=None, out_pattern=None, table: TableState | None = None
) -> KvRun:
    """Run a command list through the stepped model (see the module docstring for the conventions) on
    ``table`` (a slot's state, updated in place; None: an empty table)."""
    ops, vec = encode_commands(kv, commands)
    kinds, ids, news, cyc, cycles, ev, _ = run_kv(kv, ops, vec, vec_pattern, out_pattern, table=table)
    results, command_cycles = [], []
    j = 0
    for o in ops:
        if o == OP_RESET:
            results.append(None)
            command_cycles.append(None)
        elif o == OP_INSERT:
            full = kinds[j] == KIND_FULL
            results.append((-1 if full else int(ids[j]), bool(news[j]), bool(full)))
            command_cycles.append(int(cyc[j]))
            j += 1
        else:
            sel = []
            while kinds[j] == KIND_SEL:
                sel.append(int(ids[j]))
                j += 1
            results.append(sel)
            command_cycles.append(int(cyc[j]))
            j += 1
    return KvRun(
        int(cycles),
        {k: int(v) for k, v in zip(EVENT_NAMES, ev, strict=True)},
        results,
        kinds,
        ids,
        news,
        cyc,
        command_cycles,
    )


def kv_energy_j(acfg: AcceleratorConfig, events: dict) -> float:
    """MODELED dynamic energy of the engine's events with the device family's table
    (configs/energy/<family>.yaml). Mapping: a projection add or 8 compared signature bits = one soft-logic
    small add (``table_entry``); a key-sum lane update = a small add + 2-byte RAM read and write; a score
    MAC = ``mac8`` + a 2-byte RAM read; a reciprocal scale = 2 × ``mac8``; a link or walk step = 4 RAM bytes."""
    from sim.energy import load_energy

    pj = load_energy(acfg.device.family)["pj"]
    kv = acfg.kv
    e = (
        events["proj_adds"] * pj["table_entry"]
        + events["sig_compares"] * (kv.hyperplanes / 8) * pj["table_entry"]
        + events["sum_lane_updates"] * (pj["table_entry"] + 4 * pj["sram_byte"])
        + events["score_macs"] * (pj["mac8"] + 2 * pj["sram_byte"])
        + events["score_scales"] * 2 * pj["mac8"]
        + (events["links"] + events["walk_steps"]) * 4 * pj["sram_byte"]
    )
    return e * 1e-12


def insert_cycles(kv: KvConfig, n: int) -> int:
    """Unstalled cycles of one INSERT with ``n`` clusters in the table (docs/design.md, KV engine table)."""
    return 1 + kv.beats + (max(1, -(-n // kv.lanes)) + 2) + 1 + kv.beats + 1


def query_cycles(kv: KvConfig, n: int, k: int) -> int:
    """Unstalled cycles of one QUERY with ``n`` clusters, ``k`` of them selected."""
    if n == 0:
        return 1 + kv.beats + 1 + 2 + 1
    return 1 + kv.beats + (n * kv.beats + 5) + 2 + (n + 2) + 1 + k + 1


def kvr_run_cycles(
    kv: KvConfig, mem, engine_cycles: list[int], tables_in_dram: bool = False, inserts: int = 0, touched=None
) -> int:
    """Cycles of a KVR command on the top level (``system.kv_tables`` onchip or dram), from its dispatch cycle to its
    done cycle (hw/top.py's KVR sequencer; docs/design.md, "The RTL top"). ``engine_cycles``: the KV engine's
    cycles of each of its engine commands (queries first, then inserts), from the IDLE cycle that takes the
    command to its last output beat, inclusive (:attr:`KvrExecutor.engine_cycles`; unstalled:
    :func:`query_cycles` / :func:`insert_cycles`).

    Per engine command the sequencer requests the row (``ceil(dim/bus_bytes)`` beats, accepted at once: the
    memory is idle), takes its beats (the last ``latency + (beats − 1)·beat_interval`` cycles after the
    request), offers the command the next cycle and feeds the row (the engine never stalls) and takes every
    output beat; the next row is requested the cycle after the last one. Between the queries and the inserts it
    pushes the list block's header and entries (4 + list capacity words, one per cycle) into the write packer;
    each insert result is pushed as it leaves the engine; full beats are written while the sequencer goes on.
    After the last word the partial beat is written (+1), accepted the cycle after (+1), and the decoder sees
    the command done a cycle later (+1). Exact for ``beat_interval`` ≤ bus_bytes/4 (a packed beat is never
    waiting for the previous write; every config has 1 or 2).

    ``tables_in_dram`` (``system.kv_tables: dram``): + the table's load before the engine commands and, for a
    KVR with ``inserts`` > 0, its write-back after the list block (:func:`table_dma_cycles`) of the clusters
    its inserts ``touched`` (:attr:`KvrExecutor.touched`; required then)."""
    from hw.kv_numerics import LIST_HEADER_BYTES, list_capacity

    row_beats = -(-kv.dim // mem.bus_bytes)
    per_row = mem.latency + (row_beats - 1) * mem.beat_interval + 1
    words = LIST_HEADER_BYTES // 4 + list_capacity(kv)
    cycles = 1 + sum(per_row + e for e in engine_cycles) + words + 2
    if tables_in_dram:
        if inserts and touched is None:
            raise ValueError(
                "kvr_run_cycles: a dram KVR with inserts needs the clusters they touched (touched)"
            )
        load, write_back = table_dma_cycles(kv, mem, touched if inserts else ())
        cycles += load + (write_back if inserts else 0)
    return cycles


def _table_beat_subs(kv: KvConfig, mem) -> list[int]:
    """Cycles the RTL top's table DMA spends on each beat of a table (hw/kv_sequencer.py): 1 for the header,
    one per cluster entry of a signature beat, one per engine key-sum beat of a key-sum beat."""
    from hw.kv_numerics import TABLE_ENTRY_BYTES

    tl = TableLayout(kv, mem.bus_bytes)
    why = tl.rtl_fits()
    if why:
        raise ValueError(f"system.kv_tables=dram on the RTL top: {why}")
    sums_per_beat = mem.bus_bytes // (kv.lanes * tl.sum_bytes)
    return [1] + [mem.bus_bytes // TABLE_ENTRY_BYTES] * tl.sig_beats + [sums_per_beat] * tl.sum_beats


@njit(cache=True)
def _table_load_kernel(subs: np.ndarray, tm: MemTiming) -> int:
    """The table load of :func:`table_dma_cycles`, cycle by cycle on the memory of sim/mem_kernel.py (cycle
    0 = the first LOAD cycle): the cycle after the one that takes the table's last beat."""
    T, depth = subs.size, tm.outstanding * tm.max_burst
    ms, ring = mem_new(tm)
    arrive = np.empty(T, np.int64)  # the cycle each beat was delivered in
    delivered = lreq = lb = ls = 0
    t = 0
    while True:
        blen = min(tm.max_burst, T - lreq)
        request = lreq < T and mem_request_ready(ms) and lreq - lb + blen <= depth
        if mem_read_valid(ms, ring, t):
            ms, _ = mem_deliver(ms, ring, t)
            arrive[delivered] = t
            delivered += 1
        if request:
            ms = mem_request(ms, ring, t, lreq, blen)
            lreq += blen
        if lb < delivered and arrive[lb] < t:  # beat lb is in the FIFO: one sub-beat per cycle
            if ls == subs[lb] - 1:
                ls, lb = 0, lb + 1
                if lb == T:
                    return t + 1
            else:
                ls += 1
        t += 1


@lru_cache(maxsize=64)
def _table_load_cycles(subs: tuple[int, ...], lat: int, iv: int, outstanding: int, burst: int) -> int:
    return int(_table_load_kernel(np.array(subs, np.int64), MemTiming(lat, outstanding, iv, burst)))


def table_dma_cycles(kv: KvConfig, mem, touched=None) -> tuple[int, int]:
    """(load, write-back) cycles of a KVR's table with ``system.kv_tables: dram`` on the RTL top
    (hw/kv_sequencer.py; docs/design.md, "The RTL top"). Load, before the engine commands, from the cycle
    after the dispatch: each cycle the sequencer requests the next burst (``max_burst`` table beats, the last
    one shorter) while its FIFO (``outstanding × max_burst`` beats) has room for every beat requested and not
    yet taken; the memory accepts it while fewer than ``outstanding`` requests are in flight and delivers the
    beats by its rules (sim/mem_kernel.py: in request order, ``latency`` after the accept at the earliest, one
    every ``beat_interval``); a beat is taken from the cycle after its delivery, each beat taking
    :func:`_table_beat_subs` cycles to write into the engine's table; the load ends the cycle after its last
    beat is taken. Write-back, after the list block's last write is accepted (only for a KVR with inserts):
    the beats of :meth:`hw.kv_numerics.TableLayout.dirty_beats` of ``touched`` (the clusters the inserts
    touched; None: every cluster, the whole table), in that order: per beat its subs + 1 cycles to read and
    assemble it, then it is written (accepted ``beat_interval`` cycles after the previous write at the
    earliest; the assembly of the next beat waits for the write register)."""
    subs = _table_beat_subs(kv, mem)
    load = _table_load_cycles(tuple(subs), mem.latency, mem.beat_interval, mem.outstanding, mem.max_burst)
    tl = TableLayout(kv, mem.bus_bytes)
    beats = tl.dirty_beats(range(kv.max_clusters) if touched is None else touched)
    iv = mem.beat_interval
    # write-back: cycle 0 = the cycle after the list's last write accept (cycle -1)
    acc, start = -1, 0
    for b in beats:
        move = max(start + subs[b], acc)  # the beat moves into the write register (the previous one accepted)
        acc = max(move + 1, acc + iv)
        start = move + 1
    return load, acc + 1


def expected_touched(kv: KvConfig, mem, inserts: int) -> list[int]:
    """The clusters :func:`kvr_cost` assumes a KVR's ``inserts`` touch: min(inserts, max_clusters) of them,
    each in its own entry beat while there are entry beats (the most write-back beats for that many)."""
    from hw.kv_numerics import TABLE_ENTRY_BYTES

    e = mem.bus_bytes // TABLE_ENTRY_BYTES
    order = [c for r in range(e) for c in range(r, kv.max_clusters, e)]
    return sorted(order[: min(inserts, kv.max_clusters)])


def kvr_cost(
    kv: KvConfig,
    mem,
    n: int,
    selected: list[int],
    inserts: int,
    row_bytes: int,
    list_entries: int,
    tables_in_dram: bool = True,
) -> dict:
    """MODELED closed-form cost of one KVR command (ISA opcode 5; docs/design.md, "KV retrieval in the
    loop"): ``len(selected)`` queries (``selected[i]`` clusters each) on a table of ``n`` clusters, then
    ``inserts`` keys (the table grows by at most one cluster per insert, up to ``kv.max_clusters``).

    Cycles: 4 (fetch and dispatch) + the top level's cycle definition, :func:`kvr_run_cycles` of the engine's
    unstalled schedule (co-simulated in tests/test_kvr_top_engine.py); ``tables_in_dram`` (``dram``) adds the
    table's load and, with inserts, its write-back (:func:`table_dma_cycles`; tests/test_kvr_dram.py). Reads:
    the key and query rows (``ceil(dim/bus)`` beats each) and, ``dram``, the whole table
    (:class:`hw.kv_numerics.TableLayout`); writes: the list block (16-byte header, the list capacity's entries
    — ``list_entries`` of them used — and one word per insert) and, ``dram`` with inserts, the table beats of
    the clusters the inserts touch (:func:`expected_touched`: one per insert, each in its own entry beat —
    one insert: the header, one entry beat and one cluster's key-sum beats).
    ``row_bytes`` is not used (the table's size is its layout's). Events as :data:`EVENT_NAMES` for
    :func:`kv_energy_j`."""
    from hw.kv_numerics import list_capacity

    w = mem.bus_bytes
    row_beats = -(-kv.dim // w)
    ev = dict.fromkeys(EVENT_NAMES, 0)
    per_command = []
    for k in selected:
        per_command.append(query_cycles(kv, n, k))
        ev["vec_beats"] += kv.beats
        ev["score_macs"] += n * kv.dim
        ev["score_scales"] += n
        ev["links"] += n
        ev["walk_steps"] += k
        ev["out_beats"] += k + 1
        ev["queries"] += 1
    m = n
    for _ in range(inserts):
        per_command.append(insert_cycles(kv, m))
        ev["vec_beats"] += kv.beats
        ev["proj_adds"] += kv.hyperplanes * kv.dim
        ev["sig_compares"] += m
        ev["sum_lane_updates"] += kv.dim
        ev["out_beats"] += 1
        ev["inserts"] += 1
        m = min(kv.max_clusters, m + 1)
    comp = sum(per_command)
    read_beats = (len(selected) + inserts) * row_beats
    assert list_entries <= list_capacity(kv)
    write_bytes = 16 + 4 * list_capacity(kv) + 4 * inserts
    write_beats = -(-write_bytes // w)
    touched = expected_touched(kv, mem, inserts)
    if tables_in_dram:
        tl = TableLayout(kv, w)
        read_beats += tl.beats
        write_beats += len(tl.dirty_beats(touched)) if inserts else 0
    cycles = 4 + kvr_run_cycles(kv, mem, per_command, tables_in_dram, inserts, touched)
    return {
        "cycles": cycles,
        "compute_cycles": comp,
        "read_bytes": read_beats * w,
        "write_bytes": write_beats * w,
        "events": ev,
    }


class KvrExecutor:
    """Runs KVR commands (ISA opcode 5; docs/design.md, "KV retrieval in the loop") on the stepped model
    over a memory image. Per stream (the command's ``table``) it keeps the engine's table slot
    (:class:`TableState`): every slot is empty when the executor is made (the engine after reset: the start of a
    generation) and carries over from command to command, as the on-chip slots of the top level do. A command
    runs its queries, then its inserts, on its slot, and writes the list block
    (:func:`models.retrieval.list_block`) at ``list_base``. ``run`` returns the engine cycles of the command's
    queries and inserts; ``engine_cycles`` holds the last command's per engine command (queries first), what
    :func:`kvr_run_cycles` (the top level's KVR) takes. ``tables_in_dram`` (``system.kv_tables: dram``): no
    state is kept here — the command's table is the :class:`hw.kv_numerics.TableLayout` bytes at its
    ``tab_base``, decoded at every command and written back after one with inserts (as the RTL top does)."""

    def __init__(self, kv: KvConfig, bus_bytes: int, tables_in_dram: bool = False):
        self.kv, self.w = kv, bus_bytes
        self.tables: dict[int, TableState] = {}
        self.engine_cycles: list[int] = []
        #: the clusters the last command's inserts touched (ASSIGN ids), ascending
        self.touched: list[int] = []
        self.layout = TableLayout(kv, bus_bytes) if tables_in_dram else None

    def _table(self, cmd, mem: np.ndarray) -> TableState:
        """The command's table: ``onchip`` the stream's slot (kept here), ``dram`` the table's bytes at
        ``tab_base`` (:class:`hw.kv_numerics.TableLayout`), decoded into a working state."""
        if self.layout is None:
            return self.tables.setdefault(cmd.table, TableState(self.kv))
        start = cmd.tab_base * self.w
        raw = mem[start : start + self.layout.nbytes]
        if raw.size != self.layout.nbytes:
            raise ValueError(f"KVR: the table at tab_base {cmd.tab_base:#x} runs past the memory image")
        t = TableState(self.kv)
        t.sigs[:], t.cnts[:], t.sums[:], n, ntok = self.layout.unpack(raw)
        t.counts[:] = n, ntok
        return t

    def run(self, cmd, image: np.ndarray) -> int:
        from models.retrieval import LIST_HEADER_WORDS, list_block, list_capacity, union_order

        kv, w = self.kv, self.w
        mem = image.reshape(-1)
        rb = -(-kv.dim // w) * w
        rows = [
            mem[cmd.vec_base * w + i * rb : cmd.vec_base * w + i * rb + kv.dim].view(np.int8).copy()
            for i in range(cmd.inserts + cmd.queries)
        ]
        keys, queries = rows[: cmd.inserts], rows[cmd.inserts :]
        table = self._table(cmd, mem)
        before = table.cnts.copy()  # each cluster's count before the command's inserts
        run = run_commands(kv, [("query", q) for q in queries] + [("insert", k) for k in keys], table=table)
        selected = union_order(run.results[: len(queries)])
        counts = {c: int(before[c]) for c in selected}
        inserted = []
        for cid, _new, full in run.results[len(queries) :]:
            slot = 0 if full else (0 if _new else counts.get(cid, int(before[cid])))
            if not full:
                counts[cid] = slot + 1
            inserted.append((cid, slot))
        tiles = [0, *range(cmd.win_tile, cmd.win_tile + cmd.win_tiles)] if queries else []
        words = list_block(
            kv,
            tiles,
            selected if queries else [],
            [int(before[c]) for c in selected] if queries else [],
            cmd.page_tile,
            inserted,
        )
        start = cmd.list_base * w
        mem[start : start + 4 * words.size] = words.astype("<u4").view(np.uint8)
        self.touched = sorted({int(cid) for cid, _new, full in run.results[len(queries) :] if not full})
        if self.layout is not None and cmd.inserts:  # dram: the beats the RTL top writes back
            raw = self.layout.pack(table.sigs, table.cnts, table.sums, table.n, int(table.counts[1]))
            for b in self.layout.dirty_beats(self.touched):
                start = (cmd.tab_base + b) * w
                mem[start : start + w] = raw[b * w : (b + 1) * w]
        assert words.size >= LIST_HEADER_WORDS + list_capacity(kv)
        ends = [-1, *run.command_cycles]
        self.engine_cycles = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]
        return int(run.command_cycles[-1] + 1)
