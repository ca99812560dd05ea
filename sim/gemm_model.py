"""Cycle-stepped numba model of the temporal GEMM engine (hw/gemm.py) and its external memory, plus a fast
path that gives the same cycles and events from a recurrence over requests and tiles.

The stepped kernel runs the engine's loader, receiver, compute issue, pipeline and drain one cycle at a
time together with the external memory of :mod:`sim.mem_kernel` (the rules, and the same functions the
testbench's sim.memory.BusMemory calls). The kernels take the command and geometry as one
:class:`GemmParams` and the memory timing as one :class:`sim.mem_kernel.MemTiming`, both built from the
config in one place (:func:`gemm_params`, :func:`sim.mem_kernel.mem_timing`).

Cycle definition (docs/design.md): cycle 0 is the cycle of the command handshake; the count is the index of
the cycle in which the last write beat is accepted. A command starts with an idle memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from hw.config import AcceleratorConfig
from hw.gemm_layout import GemmImage, build_gemm_image, requantize, unpack_c
from hw.isa import GemmCommand, GemmListCommand
from hw.kv_numerics import LIST_HEADER_BYTES
from sim import mem_kernel as mk

__all__ = [
    "GemmRun",
    "GemmParams",
    "gemm_params",
    "EVENT_NAMES",
    "run_gemm",
    "run_gemm_image",
    "run_gemm_on_image",
    "LIST_HEADER_BYTES",
    "list_fetch_beats",
    "list_fetch_cycles",
    "read_tile_list",
    "run_gemm_list_on_image",
    "gemm_fast",
    "GemmTiming",
]

EVENT_NAMES = (
    "macs",  # multiply-accumulates issued (R·C per issue, padding included)
    "issue_cycles",  # cycles with a k issued to the MAC block
    "buffer_reads",  # operand-buffer words read (2 per issue)
    "buffer_writes",  # operand-buffer words written (one per read beat)
    "read_requests",  # read bursts requested
    "read_beats",  # read beats received (× bus_bytes = DRAM bytes read)
    "write_beats",  # write beats sent (× bus_bytes = DRAM bytes written)
    "load_stall_cycles",  # cycles compute waited for an operand tile (before the last issue)
    "drain_stall_cycles",  # cycles an output tile's last k waited for the shadow register
    "tail_cycles",  # cycles after the last issue until the last write
)
_N_EVENTS = len(EVENT_NAMES)
_NEVER = -(1 << 40)


class GemmParams(NamedTuple):
    """One GEMM command on one engine geometry, as the kernels take it (built only by :func:`gemm_params`)."""

    m_tiles: int
    n_tiles: int
    k_tiles: int
    a_base: int
    b_base: int
    c_base: int
    requant: bool
    shift: int
    rows: int  # R
    cols: int  # C
    k_tile: int  # TK
    bus_bytes: int  # W
    a_beats: int  # AB: beats of an A tile
    b_beats: int  # BB: beats of a B tile
    out_beats: int  # write beats of an output tile
    out_credits: int  # output FIFO credits
    out_stages: int  # output pipeline stages
    pipeline_cycles: int  # final k issue → first drain issue
    buffers: int  # operand tile slots per operand (the loader runs up to buffers − 1 steps ahead)
    b_stride: int  # beats between column tiles' B panels (0: packed, k_tiles · b_beats)


def gemm_params(acfg: AcceleratorConfig, cmd: GemmCommand) -> GemmParams:
    """The kernels' parameters of ``cmd`` on the GEMM engine of ``acfg``."""
    geo, g = acfg.gemm_geometry, acfg.gemm
    return GemmParams(
        int(cmd.m_tiles),
        int(cmd.n_tiles),
        int(cmd.k_tiles),
        int(cmd.a_base),
        int(cmd.b_base),
        int(cmd.c_base),
        bool(cmd.requant),
        int(cmd.shift),
        geo.rows,
        geo.cols,
        geo.k_tile,
        geo.bus_bytes,
        geo.a_beats,
        geo.b_beats,
        geo.out_beats(bool(cmd.requant)),
        g.out_credits,
        g.out_stages,
        g.pipeline_cycles,
        g.buffers,
        int(cmd.b_stride),
    )


@njit(cache=True, boundscheck=False)
def _step_kernel(
    image: np.ndarray, p: GemmParams, tm: mk.MemTiming, events: np.ndarray, max_cycles: int
) -> int:
    """Returns the cycle count (or -1 if max_cycles passed); writes output beats into ``image``, adds the
    events (EVENT_NAMES) into ``events``."""
    mt, nt, kt, requant, shift = p.m_tiles, p.n_tiles, p.k_tiles, p.requant, p.shift
    a_base, b_base, b_stride = p.a_base, p.b_base, p.b_stride
    R, C, TK, W, AB, BB = p.rows, p.cols, p.k_tile, p.bus_bytes, p.a_beats, p.b_beats
    n_cred, stages, max_burst, NS = p.out_credits, p.out_stages, tm.max_burst, p.buffers
    mem, ring = mk.mem_new(tm)
    # engine state (registers after the accept in cycle 0)
    abuf = np.zeros((NS * AB, W), np.uint8)
    bbuf = np.zeros((NS * BB, W), np.uint8)
    rq_done = False
    rq_part = 0
    rq_off = 0
    rq_kt = 0
    rq_ni = 0
    rq_mi = 0
    a_ptr = a_base
    a_row = a_base
    b_ptr = b_base
    b_col = b_base  # first B tile of the current column tile
    ahead = 0
    rs_part = 0
    rs_off = 0
    rs_half = 0  # the slot the receiver fills (0..NS-1)
    full = np.zeros(NS, np.bool_)
    cp_done = False
    cp_half = 0  # the slot compute reads
    cp_k = 0
    cp_kt = 0
    cp_ni = 0
    cp_mi = 0
    acc = np.zeros((R, C), np.int64)
    pend = np.zeros(R * C, np.int64)  # final sums in the pipeline, on their way to the shadow
    pend_at = _NEVER  # cycle at whose end they load the shadow (issue + 3)
    shadow = np.zeros(R * C, np.int64)
    shadow_full = False
    dr_cnt = 0
    c_ptr = p.c_base
    vals = W if requant else W // 4
    out_beats = p.out_beats
    apb = W // R
    bpb = W // C
    rnd = (1 << (shift - 1)) if shift > 0 else 0
    # drain: beats in flight (output pipeline + FIFO) live in a ring of n_cred slots, in issue order
    beat_addr = np.zeros(n_cred, np.int64)
    beat_data = np.zeros((n_cred, W), np.uint8)
    pv = np.zeros(stages, np.bool_)  # output-pipeline stage valid bits (0 = capture ... last = saturate)
    issued = 0
    popped = 0
    fifo_n = 0
    credits = n_cred
    last_issue = _NEVER
    t = 0
    while True:
        t += 1
        if t > max_cycles:
            return -1
        # ---- combinational view of cycle t ----
        req_valid = (not rq_done) and ahead != NS
        req_ready = mk.mem_request_ready(mem)
        beat = mk.mem_read_valid(mem, ring, t)
        final_k = cp_k == TK - 1 and cp_kt == kt - 1
        full_cur = full[cp_half]
        issue = (not cp_done) and full_cur and not (final_k and shadow_full)
        wr_fire = fifo_n > 0 and mk.mem_write_ready(mem, t)
        dr_issue = shadow_full and credits > 0
        # ---- events ----
        if issue:
            events[0] += R * C
            events[1] += 1
            events[2] += 2
        elif not cp_done:
            if full_cur:
                events[8] += 1
            else:
                events[7] += 1
        else:
            events[9] += 1
        # ---- memory: read data ----
        if beat:
            mem, addr = mk.mem_deliver(mem, ring, t)
            events[5] += 1
            events[3] += 1
            # receiver
            if rs_part == 0:
                abuf[rs_half * AB + rs_off, :] = image[addr, :]
                if rs_off == AB - 1:
                    rs_off = 0
                    rs_part = 1
                else:
                    rs_off += 1
            else:
                bbuf[rs_half * BB + rs_off, :] = image[addr, :]
                if rs_off == BB - 1:
                    rs_off = 0
                    rs_part = 0
                    full[rs_half] = True
                    rs_half = (rs_half + 1) % NS
                else:
                    rs_off += 1
        # ---- loader ----
        rq_step_done = 0
        if req_valid and req_ready:
            tile_beats = BB if rq_part else AB
            rem = tile_beats - rq_off
            burst = max_burst if rem > max_burst else rem
            mem = mk.mem_request(mem, ring, t, (b_ptr if rq_part else a_ptr) + rq_off, burst)
            events[4] += 1
            if rq_off + burst == tile_beats:
                rq_off = 0
                if rq_part:
                    rq_step_done = 1
                    if rq_kt != kt - 1:
                        rq_kt += 1
                        a_ptr += AB
                        b_ptr += BB
                    elif rq_ni != nt - 1:
                        rq_kt = 0
                        rq_ni += 1
                        a_ptr = a_row
                        b_ptr = b_ptr + BB if b_stride == 0 else b_col + b_stride
                        b_col = b_ptr
                    elif rq_mi != mt - 1:
                        rq_kt = 0
                        rq_ni = 0
                        rq_mi += 1
                        a_ptr += AB
                        a_row = a_ptr
                        b_ptr = b_base
                        b_col = b_base
                    else:
                        rq_done = True
                rq_part ^= 1
            else:
                rq_off += burst
        # ---- compute issue (functional work done here; timing of the shadow follows the pipeline) ----
        cp_step_done = 0
        if issue:
            last_issue = t
            arow = abuf[cp_half * AB + cp_k // apb]
            brow = bbuf[cp_half * BB + cp_k // bpb]
            ao = (cp_k % apb) * R
            bo = (cp_k % bpb) * C
            first = cp_kt == 0 and cp_k == 0
            for r in range(R):
                av = np.int64(np.int8(arow[ao + r]))
                for c in range(C):
                    p = av * np.int64(np.int8(brow[bo + c]))
                    acc[r, c] = p if first else acc[r, c] + p
            if final_k:
                for r in range(R):
                    for c in range(C):
                        pend[r * C + c] = acc[r, c]
                pend_at = t + 3
            if cp_k == TK - 1:
                cp_k = 0
                full[cp_half] = False
                cp_half = (cp_half + 1) % NS
                cp_step_done = 1
                if cp_kt != kt - 1:
                    cp_kt += 1
                elif cp_ni != nt - 1:
                    cp_kt = 0
                    cp_ni += 1
                elif cp_mi != mt - 1:
                    cp_kt = 0
                    cp_ni = 0
                    cp_mi += 1
                else:
                    cp_done = True
            else:
                cp_k += 1
        ahead += rq_step_done - cp_step_done
        # ---- drain: FIFO → wr, output pipeline, shadow → pipeline ----
        in_pipe = False
        for k in range(stages):
            in_pipe = in_pipe or pv[k]
        if wr_fire:
            slot = popped % n_cred
            image[beat_addr[slot], :] = beat_data[slot, :]
            mem = mk.mem_write(mem, t)
            events[6] += 1
            done = cp_done and last_issue < t - 3 and not shadow_full and not in_pipe and fifo_n == 1
            popped += 1
            fifo_n -= 1
            if done:
                return t
        if pv[stages - 1]:
            fifo_n += 1
        for k in range(stages - 1, 0, -1):
            pv[k] = pv[k - 1]
        pv[0] = dr_issue
        credits += (1 if wr_fire else 0) - (1 if dr_issue else 0)
        if dr_issue:
            slot = issued % n_cred
            beat_addr[slot] = c_ptr
            for j in range(vals):
                v = shadow[dr_cnt * vals + j]
                if requant:
                    y = (v + rnd) >> shift
                    y = 127 if y > 127 else (-128 if y < -128 else y)
                    beat_data[slot, j] = np.uint8(y & 0xFF)
                else:
                    u = v & 0xFFFFFFFF
                    for b in range(4):
                        beat_data[slot, 4 * j + b] = np.uint8((u >> (8 * b)) & 0xFF)
            issued += 1
            c_ptr += 1
            if dr_cnt == out_beats - 1:
                dr_cnt = 0
                shadow_full = False
            else:
                dr_cnt += 1
        if pend_at == t:
            for i in range(R * C):
                v = pend[i] & 0xFFFFFFFF
                shadow[i] = v - (1 << 32) if v >= (1 << 31) else v
            shadow_full = True


@dataclass
class GemmRun:
    """Result of running one GEMM command on the model."""

    output: np.ndarray  # M×N int32 (or int8 when requantized)
    cycles: int
    events: dict[str, int]
    image: np.ndarray  # the memory image after the run

    def gops(self, clock_mhz: float, m: int, k: int, n: int) -> float:
        return 2.0 * m * k * n / (self.cycles / (clock_mhz * 1e6)) / 1e9


def run_gemm_image(acfg: AcceleratorConfig, img: GemmImage, max_cycles: int = 1 << 40) -> GemmRun:
    """Run the command of ``img`` on the stepped model; returns outputs (unpacked), cycles and events."""
    geo = acfg.gemm_geometry
    cmd = img.command
    image = img.image.copy()
    cycles, events = run_gemm_on_image(acfg, image, cmd, max_cycles)
    nout = cmd.m_tiles * cmd.n_tiles * geo.out_beats(cmd.requant)
    out = unpack_c(image[cmd.c_base : cmd.c_base + nout], geo, img.shape, cmd.requant)
    return GemmRun(out, cycles, events, image)


def run_gemm_on_image(
    acfg: AcceleratorConfig, image: np.ndarray, cmd: GemmCommand, max_cycles: int = 1 << 40
) -> tuple[int, dict[str, int]]:
    """Run one command on a memory image in place (operands read from, outputs written to ``image``)."""
    events = np.zeros(_N_EVENTS, np.int64)
    cycles = _step_kernel(image, gemm_params(acfg, cmd), mk.mem_timing(acfg.memory), events, max_cycles)
    if cycles < 0:
        raise RuntimeError(f"GEMM model did not finish within {max_cycles} cycles")
    return int(cycles), dict(zip(EVENT_NAMES, (int(e) for e in events), strict=True))


# ----------------------------------------------------------------------------------------------------
# GEMM_LIST (ISA opcode 6): a GEMM whose B column tiles (mode 1) or k-tiles (mode 2) come from a tile list
# (docs/design.md, "KV retrieval in the loop"). One cycle definition, shared with the estimate
# (tritium/retrieval.py): the list fetch, then the opcode-2 GEMM with the list's count.
# ----------------------------------------------------------------------------------------------------

# the list block's header (n, then three reserved words): defined once with the list capacity, hw.kv_numerics


def list_fetch_beats(entries: int, bus_bytes: int) -> int:
    """Bus beats of a tile list's fetch: the header and ``entries`` 4-byte entries, from the list's base."""
    return -(-(LIST_HEADER_BYTES + 4 * entries) // bus_bytes)


def list_fetch_cycles(tm: mk.MemTiming, entries: int, bus_bytes: int) -> int:
    """MODELED cycles of the list fetch that precedes a GEMM_LIST's GEMM: one request of
    :func:`list_fetch_beats` beats on an idle memory (its first beat ``latency`` after the request, one
    beat per ``beat_interval``); the GEMM's own loads start after the list's last beat."""
    return tm.latency + list_fetch_beats(entries, bus_bytes) * tm.beat_interval


def read_tile_list(image: np.ndarray, cmd: GemmListCommand) -> list[int]:
    """The tile indices of the list at ``cmd.list_base`` (ValueError if its count is not 1..capacity)."""
    w = image.shape[1]
    flat = image.reshape(-1)
    a = cmd.list_base * w
    if a + LIST_HEADER_BYTES > flat.size:
        raise ValueError(f"GEMM_LIST: list_base {cmd.list_base:#x} outside the {image.shape[0]}-beat image")
    n = int(flat[a : a + 4].view("<u4")[0])
    cap = cmd.n_tiles if cmd.mode == 1 else cmd.k_tiles
    if not 1 <= n <= cap:
        raise ValueError(
            f"GEMM_LIST: the list at {cmd.list_base:#x} holds {n} entries; the command allows 1..{cap}"
        )
    e = a + LIST_HEADER_BYTES
    if e + 4 * n > flat.size:
        raise ValueError(f"GEMM_LIST: the list at {cmd.list_base:#x} runs past the image")
    return [int(x) & 0xFFFF for x in flat[e : e + 4 * n].view("<u4")]


def run_gemm_list_on_image(
    acfg: AcceleratorConfig, image: np.ndarray, cmd: GemmListCommand, max_cycles: int = 1 << 40
) -> tuple[int, dict[str, int], int]:
    """Run a GEMM_LIST on ``image`` in place; returns (cycles, events, list entries n).

    The GEMM's timing depends on tile counts, not addresses, so the stepped model runs the opcode-2 GEMM
    with the list's count (:meth:`GemmListCommand.with_count`) on a scratch image holding the command's A
    panels, the listed B tiles gathered in list order (packed) and its C panels; C is copied back. Cycles =
    :func:`list_fetch_cycles` + that GEMM's cycles; events add the list's read beats and request."""
    geo = acfg.gemm_geometry
    tiles = read_tile_list(image, cmd)
    n = len(tiles)
    dense = cmd.with_count(n)
    AB, BB = geo.a_beats, geo.b_beats
    KT = dense.k_tiles
    a_beats = dense.m_tiles * KT * AB
    c_beats = dense.m_tiles * dense.n_tiles * geo.out_beats(bool(cmd.requant))
    rows = image.shape[0]
    if cmd.mode == 1:  # column tile ni of B at b_base + tile[ni]·KT·BB
        starts = [[cmd.b_base + d * KT * BB] for d in tiles]
        span = KT * BB
    else:  # k-tile kt of column tile ni at b_base + ni·b_stride + tile[kt]·BB
        stride = cmd.b_stride or cmd.k_tiles * BB
        starts = [[cmd.b_base + ni * stride + d * BB for d in tiles] for ni in range(dense.n_tiles)]
        span = BB
    for f, base, nb in (("a_base", cmd.a_base, a_beats), ("c_base", cmd.c_base, c_beats)):
        if base + nb > rows:
            raise ValueError(f"GEMM_LIST: {f} panels outside the {rows}-beat image")
    if max(s for col in starts for s in col) + span > rows:
        raise ValueError(f"GEMM_LIST: a listed B tile (tiles {tiles}) lies outside the {rows}-beat image")
    b = np.concatenate([image[s : s + span] for col in starts for s in col])
    scratch = np.concatenate(
        [image[cmd.a_base : cmd.a_base + a_beats], b, np.zeros((c_beats, image.shape[1]), np.uint8)]
    )
    run = GemmCommand(
        **{
            **{f: getattr(dense, f) for f in ("m_tiles", "n_tiles", "k_tiles", "requant", "shift")},
            "a_base": 0,
            "b_base": a_beats,
            "c_base": a_beats + b.shape[0],
            "b_stride": 0,
        }
    )
    cycles, events = run_gemm_on_image(acfg, scratch, run, max_cycles)
    image[cmd.c_base : cmd.c_base + c_beats] = scratch[run.c_base :]
    events["read_requests"] += 1
    events["read_beats"] += list_fetch_beats(n, geo.bus_bytes)
    return list_fetch_cycles(mk.mem_timing(acfg.memory), n, geo.bus_bytes) + cycles, events, n


def run_gemm(
    acfg: AcceleratorConfig, a: np.ndarray, b: np.ndarray, requant: bool = False, shift: int = 0
) -> GemmRun:
    """C = A·B on the stepped model (A: M×K int8, B: K×N int8)."""
    return run_gemm_image(acfg, build_gemm_image(acfg, a, b, requant, shift))


# ----------------------------------------------------------------------------------------------------
# Fast path: the same schedule as a recurrence over read requests, tile steps and write beats.
# ----------------------------------------------------------------------------------------------------


@njit(cache=True)
def _fast_kernel(p: GemmParams, tm: mk.MemTiming) -> tuple[int, int, int]:
    """Cycle of the last write, and the load/drain stall cycles, from the schedule's recurrences:

    request j (in order; step s(j)'s A bursts, then its B bursts) is accepted at
        acc_j = max(acc_{j-1} + 1, last_issue(s-B) + 1, last_beat_{j-O} + 1)      (acc_{-1} + 1 = 1)
    its beats arrive at first_j = max(acc_j + latency, last_beat_{j-1} + interval), then every interval;
    step s may start issuing once its last beat is in: F_s = max(last_issue(s-1) + 1, last_beat + 1),
    issues TK k's back to back, except that an output tile's final k waits for the shadow register
    (last drain issue of the previous tile + 1); the drain of a tile whose final k issued at L issues beat
    j at e_j = max(L + pc, e_{j-1} + 1, w_{j-credits} + 1) (pc = pipeline_cycles) and the beat leaves at
    w_j = max(e_j + out_stages + 1, w_{j-1} + interval).
    """
    mt, nt, kt, TK, AB, BB, out_beats = (
        p.m_tiles,
        p.n_tiles,
        p.k_tiles,
        p.k_tile,
        p.a_beats,
        p.b_beats,
        p.out_beats,
    )
    pc, stages, n_cred = p.pipeline_cycles, p.out_stages, p.out_credits
    latency, max_burst, outstanding, interval = tm.latency, tm.max_burst, tm.outstanding, tm.beat_interval
    NS = p.buffers  # B: a step's loads wait until compute has finished step s - B (its slot is free)
    n_a = (AB + max_burst - 1) // max_burst
    n_b = (BB + max_burst - 1) // max_burst
    ring = np.full(outstanding, _NEVER, np.int64)  # last beats of the previous O requests
    li_ring = np.full(NS, _NEVER, np.int64)  # last issues of steps s-B .. s-1 (slot s % B holds s-B)
    li_prev = _NEVER  # last issue of step s-1
    acc_prev = 0
    lb_prev = _NEVER
    last_w = _NEVER
    shadow_free = 0
    wring = np.full(n_cred, _NEVER, np.int64)
    e_prev = _NEVER
    bj = 0
    j = 0
    drain_stall = 0
    steps = mt * nt * kt
    for s in range(steps):
        allowed = li_ring[s % NS] + 1 if s >= NS else 1
        for part in range(2):
            beats = AB if part == 0 else BB
            nreq = n_a if part == 0 else n_b
            for q in range(nreq):
                ln = max_burst if q < nreq - 1 else beats - max_burst * (nreq - 1)
                a = acc_prev + 1
                if allowed > a:
                    a = allowed
                slot = j % outstanding
                if ring[slot] + 1 > a:  # request j - O must have delivered its last beat
                    a = ring[slot] + 1
                fb = a + latency
                if lb_prev + interval > fb:
                    fb = lb_prev + interval
                lb = fb + (ln - 1) * interval
                ring[slot] = lb
                acc_prev = a
                lb_prev = lb
                j += 1
        start = li_prev + 1
        if lb_prev + 1 > start:
            start = lb_prev + 1
        last = start + TK - 1
        if s % kt == kt - 1:  # an output tile's final k
            if shadow_free > last:
                drain_stall += shadow_free - last
                last = shadow_free
            e = last + pc
            for _ in range(out_beats):
                if e_prev + 1 > e:
                    e = e_prev + 1
                slot = bj % n_cred
                if wring[slot] + 1 > e:  # the credit of beat bj - n_cred
                    e = wring[slot] + 1
                w = e + stages + 1
                if last_w + interval > w:
                    w = last_w + interval
                wring[slot] = w
                last_w = w
                e_prev = e
                bj += 1
            shadow_free = e_prev + 1
        li_ring[s % NS] = last
        li_prev = last
    return last_w, li_prev, drain_stall


@dataclass
class GemmTiming:
    """Cycles and event counts of one GEMM command, from the fast path (no data executed)."""

    cycles: int
    events: dict[str, int]

    def utilization(self, acfg: AcceleratorConfig, m: int, k: int, n: int) -> float:
        """Useful MACs / (MAC slots × cycles)."""
        return m * k * n / (acfg.gemm.macs * self.cycles)


def gemm_fast(acfg: AcceleratorConfig, cmd: GemmCommand) -> GemmTiming:
    """Cycles and events of ``cmd`` without stepping cycles; equal to the stepped model (tested)."""
    geo, mem = acfg.gemm_geometry, acfg.memory
    ob = geo.out_beats(cmd.requant)
    cycles, last_issue, drain_stall = _fast_kernel(gemm_params(acfg, cmd), mk.mem_timing(mem))
    steps = cmd.steps
    issues = steps * geo.k_tile
    tail = int(cycles - last_issue)
    n_req = -(-geo.a_beats // mem.max_burst) + -(-geo.b_beats // mem.max_burst)
    ev = {
        "macs": issues * geo.rows * geo.cols,
        "issue_cycles": issues,
        "buffer_reads": 2 * issues,
        "buffer_writes": steps * (geo.a_beats + geo.b_beats),
        "read_requests": steps * n_req,
        "read_beats": steps * (geo.a_beats + geo.b_beats),
        "write_beats": cmd.m_tiles * cmd.n_tiles * ob,
        "load_stall_cycles": int(cycles) - tail - issues - int(drain_stall),
        "drain_stall_cycles": int(drain_stall),
        "tail_cycles": tail,
    }
    return GemmTiming(int(cycles), ev)


def reference(a: np.ndarray, b: np.ndarray, requant: bool, shift: int) -> np.ndarray:
    acc = a.astype(np.int64) @ b.astype(np.int64)
    acc = ((acc + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)
    return requantize(acc, shift) if requant else acc
