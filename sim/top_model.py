"""Cycle model of the accelerator top level (hw/top.py): per-command and whole-step cycles of a Program.

The decoder fetches a command's words (one per cycle: 3 for TLMM/GEMM, 1 for HOST/SYNC), then waits in its
dispatch cycle until the command may go, dispatches it and fetches the next command in the following cycle;
it does not wait for the command to finish. A command may go when (``system.overlap`` false) every engine
class is idle, or (overlap true) when its own engine is free — TLMM and GEMM share the memory port, so each
also needs the other idle; a host op needs the host idle; a SYNC needs the classes of its mask idle. A class
is idle from the cycle after its command's done. Run lengths, from the dispatch cycle c to the done cycle D:

- **TLMM**: R from :func:`_tlmm_dma_kernel`, a cycle-stepped model of the DMA (read sequencer, read FIFO, byte
  gearbox, result packer; with ``wbuf`` = 2 the weight buffer's read port instead of the weight runs,
  hw.top_geometry.WBUF_READ_LATENCY), stepping the memory of sim/mem_kernel.py and the TLMM engine control of
  sim/tlmm_control.py (the ones sim.gemm_model and sim.tlmm_model step). Data is not needed for cycles: the
  engine's timing depends only on stream availability, which the DMA's byte counts determine; values are
  checked by the co-simulation against PyTorch.
- **GEMM**: G + 1, G the engine's cycle count (``sim.gemm_model.gemm_fast``: the index of the cycle of its last
  write); the decoder sees ``busy`` low one cycle later.
- **HOST**: L, the op's modeled latency (``attrs["cycles"]``, compiler.hostcost): the host takes the op at the
  dispatch handshake and reports it done L cycles later (the co-simulation bench does exactly that).
- **GEMM_LIST**: 3 + ``latency`` + (b − 1)·``beat_interval`` + G, b = ``sim.gemm_model.list_fetch_beats`` of
  the command's capacity (the field ``n_tiles`` in mode 1, ``k_tiles`` in mode 2: the count is in the list, so
  the top reads the capacity's beats in one request, issued the cycle after the dispatch), G the engine's
  cycles of the opcode-2 GEMM with the list's count (``GemmListCommand.with_count``), which it takes the
  cycle after the list's last beat; the decoder sees ``busy`` low one cycle after its last write. The count is
  data: :func:`run_cycles` takes it (``list_count``), :func:`program_schedule` reads it from the Program's
  image or takes it from the caller (a list a KVR writes during the step).
- **KVR**: :func:`sim.kv_model.kvr_run_cycles` of the KV engine's cycles of each
  of its engine commands (queries, then inserts; data: the table slot's state and the rows decide them, so the
  caller passes them — ``sim.kv_model.KvrExecutor.engine_cycles``, which ``sim.runtime`` records per KVR): the
  row reads, the engine, the list block's words and its last write, one engine command at a time, and with
  ``system.kv_tables: dram`` the table's load before and write-back after (hw/kv_sequencer.py; the clusters
  its inserts touched: ``KvrExecutor.touched``, recorded as ``kvr_touched``).
- **SYNC**: 0 (its dispatch cycle is its done cycle).

A command's cycles run from its first word's accept to its done cycle, inclusive; a step's from its first
word to the cycle after the last done (:func:`schedule`). An engine command starts with an idle memory: the
previous engine command's last write is at least 3 cycles before its first request (exact for
``memory.beat_interval`` <= 3; every config has 1 or 2).
"""

from __future__ import annotations

from typing import NamedTuple

from numba import njit

from hw.config import AcceleratorConfig
from hw.isa import (
    SYNC_GEMM,
    SYNC_HOST,
    SYNC_TLMM,
    WBUF_REUSE,
    GemmCommand,
    GemmListCommand,
    HostCommand,
    KvrCommand,
    SyncCommand,
    TlmmCommand,
    command_words,
)
from hw.top_geometry import WBUF_READ_LATENCY, TopGeometry
from sim import mem_kernel as mk
from sim.tlmm_control import ctl_act_ready, ctl_new, ctl_result_valid, ctl_step, ctl_wgt_ready

__all__ = [
    "command_cycles",
    "program_cycles",
    "step_cycles",
    "schedule",
    "Schedule",
    "run_cycles",
    "program_schedule",
    "FETCH_DISPATCH",
]

assert WBUF_READ_LATENCY == 1, "the DMA kernel steps a one-cycle weight-buffer read port"

FETCH_DISPATCH = 4  # three command words + the dispatch cycle


class DmaParams(NamedTuple):
    """One TLMM command on the top level's DMA and engine, as the kernel takes it (built only by
    :func:`dma_params`). Byte addresses and widths: hw.top_geometry.TopGeometry."""

    tokens: int  # M
    k_chunks: int  # KC
    n_blocks: int  # NB
    act_byte: int  # byte address of the activations
    wgt_byte: int  # byte address of the weights
    bus_bytes: int  # W
    act_bytes: int  # EA: activation beat
    wgt_bytes: int  # EW: weight beat
    res_bytes: int  # ER: result beat
    fifo: int  # F: read FIFO depth (beats requested ahead at most)
    cap: int  # gearbox bytes
    res_fifo_depth: int  # the engine's result FIFO (= result credits)
    wbuf: int  # hw.isa wbuf: 2 = the weights come from the weight buffer (0 and 1 time alike)


def dma_params(acfg: AcceleratorConfig, cmd: TlmmCommand) -> DmaParams:
    """The DMA kernel's parameters of ``cmd`` on the top level of ``acfg``."""
    g = TopGeometry(acfg)
    return DmaParams(
        int(cmd.tokens),
        int(cmd.k_chunks),
        int(cmd.n_blocks),
        int(cmd.act_base) * g.W,
        int(cmd.wgt_base) * g.W,
        g.W,
        g.EA,
        g.EW,
        g.ER,
        g.fifo,
        g.cap,
        acfg.tlmm.result_fifo_depth,
        int(cmd.wbuf),
    )


@njit(cache=True, inline="always")
def _beats(start, nbytes, W):
    return (start % W + nbytes + W - 1) // W


@njit(cache=True, inline="always")
def _next_segment(p, kind, kc, a, w, beats, elems):
    """The stream the DMA reads and the gearbox unpacks is act(chunk 0), wgt(0), act(1), wgt(1), ... (with
    the weights from the weight buffer, wbuf 2: act(0), act(1), ...): after segment (kind 0 act / 1 wgt,
    chunk kc) ends, returns the next one as (active, kind, kc, a, w, bus beats, engine beats), a and w
    being the byte addresses of the next activation and weight segments; past the last segment active is
    False and the rest comes back unchanged."""
    M, KC, NB, W, EA, EW = p.tokens, p.k_chunks, p.n_blocks, p.bus_bytes, p.act_bytes, p.wgt_bytes
    if p.wbuf == WBUF_REUSE:
        if kc == KC - 1:
            return False, kind, kc, a, w, beats, elems
        return True, 0, kc + 1, a + M * EA, w, _beats(a + M * EA, M * EA, W), M
    if kind == 0:
        return True, 1, kc, a + M * EA, w, _beats(w, NB * EW, W), NB
    if kc == KC - 1:
        return False, kind, kc, a, w, beats, elems
    return True, 0, kc + 1, a, w + NB * EW, _beats(a, M * EA, W), M


@njit(cache=True)
def _tlmm_dma_kernel(p, tm, guard):
    """Cycles of S_RUN for one TLMM command (p: DmaParams, tm: sim.mem_kernel.MemTiming): cycle 0 is the
    dispatch; returns the first cycle t ≥ 1 in which every result has been written (the decoder's done),
    or -1 past ``guard``."""
    M, KC, NB, W = p.tokens, p.k_chunks, p.n_blocks, p.bus_bytes
    EA, EW, ER, F, CAP, max_burst = p.act_bytes, p.wgt_bytes, p.res_bytes, p.fifo, p.cap, tm.max_burst
    mem, ring = mk.mem_new(tm)
    # read sequencer
    rs_active, rs_kind, rs_kc = True, 0, 0
    rs_a, rs_w = p.act_byte, p.wgt_byte
    rs_left = _beats(rs_a, M * EA, W)
    inflight = 0
    fifo = 0
    # gearbox
    gb_active, gb_kind, gb_kc, gb_first = True, 0, 0, True
    gb_a, gb_w = p.act_byte, p.wgt_byte
    gb_bb = _beats(gb_a, M * EA, W)
    gb_eb = M
    fill = 0
    # result packer
    wfill = 0
    res_left = M * NB
    # weight buffer read port (wbuf 2): words left to read, output register valid
    wb_left = KC * NB if p.wbuf == WBUF_REUSE else 0
    wb_valid = False
    # TLMM engine control (sim.tlmm_control)
    cs = ctl_new(M, KC, NB, p.res_fifo_depth)
    t = 0
    while t < guard:
        t += 1
        if res_left == 0 and wfill == 0:
            return t
        # ---- start-of-cycle (combinational) values
        req_ready = mk.mem_request_ready(mem)
        beat = mk.mem_read_valid(mem, ring, t)
        wr_ready = mk.mem_write_ready(mem, t)
        act_ready = ctl_act_ready(cs)
        wgt_ready = ctl_wgt_ready(cs)
        burst = max_burst if rs_left > max_burst else rs_left
        rq_fire = rs_active and inflight + burst <= F and req_ready
        E = EW if gb_kind == 1 else EA
        out_valid = gb_active and fill >= E and gb_eb > 0
        act_valid = out_valid and gb_kind == 0
        wgt_valid = wb_valid if p.wbuf == WBUF_REUSE else out_valid and gb_kind == 1
        pop = out_valid and (wgt_ready if gb_kind == 1 else act_ready)
        wb_take = wb_valid and wgt_ready
        wb_read = wb_left > 0 and (not wb_valid or wb_take)  # WBUF_READ_LATENCY = 1
        fill_after = fill - (E if pop else 0)
        push = fifo > 0 and gb_bb > 0 and fill_after + W <= CAP
        off = 0
        if gb_first:
            off = (gb_w if gb_kind == 1 else gb_a) % W
        wr_valid = wfill >= W or (res_left == 0 and wfill > 0)
        res_ready = wfill <= W
        wr_fire = wr_valid and wr_ready
        res_pop = ctl_result_valid(cs) and res_ready
        # ---- TLMM engine (sequential)
        cs, _ = ctl_step(cs, act_valid, wgt_valid, res_ready)
        # ---- weight buffer read port
        wb_valid = wb_read or (wb_valid and not wb_take)
        wb_left -= 1 if wb_read else 0
        # ---- read sequencer
        if rq_fire:
            if rs_left == burst:
                rs_active, rs_kind, rs_kc, rs_a, rs_w, rs_left, _ = _next_segment(
                    p, rs_kind, rs_kc, rs_a, rs_w, rs_left, 0
                )
            else:
                rs_left -= burst
        inflight += (burst if rq_fire else 0) - (1 if push else 0)
        # ---- read FIFO and gearbox
        fifo += (1 if beat else 0) - (1 if push else 0)
        fill = fill_after + (W - off if push else 0)
        if push:
            gb_bb -= 1
            gb_first = False
        if pop:
            gb_eb -= 1
            if gb_eb == 0:
                fill = 0
                gb_first = True
                gb_active, gb_kind, gb_kc, gb_a, gb_w, gb_bb, gb_eb = _next_segment(
                    p, gb_kind, gb_kc, gb_a, gb_w, gb_bb, gb_eb
                )
        # ---- result packer
        w_after = wfill
        if wr_fire:
            w_after = wfill - W if wfill >= W else 0
        wfill = w_after + (ER if res_pop else 0)
        if res_pop:
            res_left -= 1
        # ---- memory (end of cycle)
        if beat:
            mem, _ = mk.mem_deliver(mem, ring, t)
        if rq_fire:
            mem = mk.mem_request(mem, ring, t, 0, burst)  # addresses do not change timing
        if wr_fire:
            mem = mk.mem_write(mem, t)
    return -1


def tlmm_run_cycles(acfg: AcceleratorConfig, cmd: TlmmCommand) -> int:
    mem = acfg.memory
    work = cmd.k_chunks * (cmd.n_blocks * cmd.tokens + cmd.tokens + 2)
    guard = (
        64 + 40 * (work + cmd.k_chunks * (mem.latency + 4) + cmd.tokens * cmd.n_blocks) * mem.beat_interval
    )
    r = _tlmm_dma_kernel(dma_params(acfg, cmd), mk.mem_timing(mem), guard)
    if r < 0:
        raise RuntimeError("top model: TLMM command did not finish within its cycle guard")
    return r


def list_capacity_of(cmd: GemmListCommand) -> int:
    """The entries a GEMM_LIST's list may hold: its ``n_tiles`` (mode 1) or ``k_tiles`` (mode 2) field."""
    return int(cmd.n_tiles if cmd.mode == 1 else cmd.k_tiles)


def gemm_list_fetch_cycles(acfg: AcceleratorConfig, capacity: int) -> int:
    """What a GEMM_LIST takes beyond the opcode-2 GEMM with its list's count (that GEMM's run is G + 1): the
    one read of the list's ``capacity`` entries, ``2 + latency + (b − 1)·beat_interval`` with b its beats
    (module doc). The estimate charges it too (tritium/retrieval.py)."""
    from sim.gemm_model import list_fetch_beats

    mem = acfg.memory
    return 2 + mem.latency + (list_fetch_beats(capacity, mem.bus_bytes) - 1) * mem.beat_interval


def gemm_list_run_cycles(acfg: AcceleratorConfig, cmd: GemmListCommand, count: int) -> int:
    """Dispatch → done of a GEMM_LIST whose list holds ``count`` entries (module doc)."""
    from hw.kv_numerics import list_capacity
    from sim.gemm_model import gemm_fast

    cap = list_capacity_of(cmd)
    if cap > list_capacity(acfg.kv):
        raise ValueError(
            f"GEMM_LIST: capacity {cap} exceeds the top's tile-list buffer ({list_capacity(acfg.kv)} entries)"
        )
    return gemm_list_fetch_cycles(acfg, cap) + 1 + gemm_fast(acfg, cmd.with_count(count)).cycles


def run_cycles(
    acfg: AcceleratorConfig,
    cmd,
    host_ops=None,
    list_count: int | None = None,
    kvr_engine: list[int] | None = None,
    kvr_touched: list[int] | None = None,
) -> int:
    """Cycles from a command's dispatch cycle to its done cycle (module doc); a HOST command's latency comes
    from ``host_ops`` (the Program's host-op table), a GEMM_LIST's list count from ``list_count``, a KVR's
    engine cycles per engine command from ``kvr_engine`` and (``dram`` tables) the clusters its inserts
    touched from ``kvr_touched``."""
    if isinstance(cmd, KvrCommand):
        from sim.kv_model import kvr_run_cycles

        if kvr_engine is None or len(kvr_engine) != cmd.inserts + cmd.queries:
            raise ValueError(
                "top model: a KVR's cycles need its engine cycles, one per query and insert (kvr_engine)"
            )
        dram = acfg.system.kv_tables == "dram"
        return kvr_run_cycles(acfg.kv, acfg.memory, kvr_engine, dram, cmd.inserts, kvr_touched)
    if isinstance(cmd, HostCommand):
        return int(host_ops[cmd.op].attrs["cycles"])
    if isinstance(cmd, GemmListCommand):
        if list_count is None:
            raise ValueError("top model: a GEMM_LIST's cycles need its list's count (list_count)")
        return gemm_list_run_cycles(acfg, cmd, list_count)
    if isinstance(cmd, GemmCommand):
        from sim.gemm_model import gemm_fast

        return gemm_fast(acfg, cmd).cycles + 1
    if isinstance(cmd, TlmmCommand):
        return tlmm_run_cycles(acfg, cmd)
    if isinstance(cmd, SyncCommand):
        return 0
    raise TypeError(f"not a command: {cmd!r}")


def command_cycles(acfg: AcceleratorConfig, cmd, host_ops=None) -> int:
    """Cycles of one command on an idle top level, from its first word's accept to its done cycle
    (inclusive): its words, the dispatch cycle's wait-free run."""
    return command_words(cmd.OPCODE) + run_cycles(acfg, cmd, host_ops)


_CLASS = {
    TlmmCommand: SYNC_TLMM,
    GemmCommand: SYNC_GEMM,
    GemmListCommand: SYNC_GEMM,
    KvrCommand: SYNC_GEMM,  # the KVR sequencer holds the memory port like a GEMM
    HostCommand: SYNC_HOST,
}


class Schedule(NamedTuple):
    """When each command ran (:func:`schedule`): first word (or issue), dispatch and done, per command, and
    the step's length (first word → the cycle after the last done)."""

    fetch: list
    dispatch: list
    done: list
    length: float

    @property
    def per_command(self) -> list:
        return [d - f + 1 for f, d in zip(self.fetch, self.done, strict=True)]


def schedule(commands: list, runs: list, overlap: bool, fetch: bool = True) -> Schedule:
    """The top level's schedule of ``commands`` (hw.isa commands) with run lengths ``runs`` (dispatch → done,
    :func:`run_cycles`) under the dispatch rules of the module doc. ``fetch=True`` counts the RTL's cycles
    (words, the dispatch cycle, a class idle the cycle after its done); ``fetch=False`` is the same event
    schedule in continuous time with no fetch or dispatch cost (tritium/estimate.py, in seconds)."""
    one = 1 if fetch else 0
    free = {SYNC_TLMM: 0, SYNC_GEMM: 0, SYNC_HOST: 0}  # first cycle each class is idle
    t = 0
    fs, cs, ds = [], [], []
    end = 0
    for cmd, run in zip(commands, runs, strict=True):
        f = t
        c0 = f + (command_words(cmd.OPCODE) if fetch else 0)
        if isinstance(cmd, SyncCommand):
            c = max([c0] + [free[b] for b in free if cmd.mask & b])
            d = c
        else:
            cls = _CLASS[type(cmd)]
            if not overlap:
                wait = free.values()
            elif cls == SYNC_HOST:
                wait = (free[SYNC_HOST],)
            else:
                wait = (free[SYNC_TLMM], free[SYNC_GEMM])
            c = max(c0, *wait)
            d = c + run
            free[cls] = d + one
        fs.append(f)
        cs.append(c)
        ds.append(d)
        end = max(end, d + one)
        t = c + one
    return Schedule(fs, cs, ds, end)


def program_schedule(
    prog,
    list_counts: list[int] | None = None,
    kvr_engine: list[list[int]] | None = None,
    kvr_touched: list[list[int]] | None = None,
) -> Schedule:
    """The cycle schedule of a Program (hw.program.Program) on the top level of its config. ``list_counts``:
    the count of each GEMM_LIST's list, in Program order (None: read from the Program's image, for lists
    that are constants of the image); ``kvr_engine``: each KVR's engine cycles per engine command, in Program
    order (``sim.runtime.ExecStats.kvr_engine`` of the step's execution), and ``kvr_touched`` the clusters
    each one's inserts touched (``ExecStats.kvr_touched``; needed for ``dram`` tables)."""
    from sim.gemm_model import read_tile_list

    acfg = prog.acfg
    cmds = prog.commands()
    lists = [c for c in cmds if isinstance(c, GemmListCommand)]
    if list_counts is None:
        list_counts = [len(read_tile_list(prog.image, c)) for c in lists]
    if len(list_counts) != len(lists):
        raise ValueError(f"top model: {len(list_counts)} list counts for {len(lists)} GEMM_LIST commands")
    kvrs = [c for c in cmds if isinstance(c, KvrCommand)]
    if kvrs and (kvr_engine is None or len(kvr_engine) != len(kvrs)):
        raise ValueError(f"top model: {len(kvrs)} KVR commands need their engine cycles (kvr_engine)")
    if kvr_touched is not None and len(kvr_touched) != len(kvrs):
        raise ValueError(f"top model: {len(kvrs)} KVR commands, {len(kvr_touched)} touched-cluster lists")
    it, ik, iw = iter(list_counts), iter(kvr_engine or []), iter(kvr_touched or [None] * len(kvrs))
    runs = [
        run_cycles(
            acfg,
            c,
            prog.host_ops,
            next(it) if isinstance(c, GemmListCommand) else None,
            next(ik) if isinstance(c, KvrCommand) else None,
            next(iw) if isinstance(c, KvrCommand) else None,
        )
        for c in cmds
    ]
    return schedule(cmds, runs, acfg.system.overlap)


def program_cycles(
    prog, list_counts: list[int] | None = None, kvr_engine=None, kvr_touched=None
) -> list[int]:
    """Per-command cycles of a Program on the top level (first word accepted → done, inclusive)."""
    return program_schedule(prog, list_counts, kvr_engine, kvr_touched).per_command


def step_cycles(prog, list_counts: list[int] | None = None, kvr_engine=None, kvr_touched=None) -> int:
    """Whole-step cycles of a Program on the top level: first word accepted → the cycle after the last done."""
    return int(program_schedule(prog, list_counts, kvr_engine, kvr_touched).length)
