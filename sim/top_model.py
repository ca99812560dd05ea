"""Cycle model of the accelerator top level (hw/top.py): per-command cycles of a Program.

- **HOST** command: 3 cycles (fetch, dispatch, host handshake; the co-simulation host answers at once —
  the host's own time is the estimate's business, not the accelerator's).
- **GEMM** command: 3 (fetch) + 1 (dispatch = the engine's command handshake) + G + 1, where G is the
  engine's cycle count (``sim.gemm_model.gemm_fast``: the index of the cycle of its last write) and the
  decoder sees ``busy`` low one cycle later.
- **TLMM** command: 3 + 1 + R, where R comes from :func:`_tlmm_dma_kernel`, a cycle-stepped model of the
  DMA (read sequencer, read FIFO, byte gearbox, result packer), the memory (rules of sim/memory.py) and the
  TLMM engine's control (the states, pipeline tags, result FIFO and credits of sim/tlmm_model.py). Data is
  not needed for cycles: the engine's timing depends only on stream availability, which the DMA's byte
  counts determine; values are checked by the co-simulation against PyTorch.

Each command starts with an idle memory (exact when consecutive commands are at least
``memory.beat_interval`` cycles apart, which the 4 fetch/dispatch cycles guarantee for intervals ≤ 4).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hw.config import AcceleratorConfig
from hw.isa import GemmCommand, HostCommand, TlmmCommand
from hw.top_geometry import TopGeometry

__all__ = ["command_cycles", "program_cycles", "HOST_CYCLES", "FETCH_DISPATCH"]

HOST_CYCLES = 3
FETCH_DISPATCH = 4          # three command words + the dispatch cycle


@njit(cache=True)
def _beats(start, nbytes, W):
    return (start % W + nbytes + W - 1) // W


@njit(cache=True)
def _tlmm_dma_kernel(M, KC, NB, act_b, wgt_b, W, EA, EW, ER, F, CAP, max_burst, outstanding, latency, bi,
                     res_fifo_depth, guard):
    """Cycles of S_RUN for one TLMM command: cycle 0 is the dispatch; returns the first cycle t ≥ 1 in which
    every result has been written (the decoder's done), or -1 past ``guard``."""
    # memory: ring of requests in flight (length, accept cycle, delivered)
    q_len = np.zeros(outstanding, np.int64)
    q_acc = np.zeros(outstanding, np.int64)
    q_done = np.zeros(outstanding, np.int64)
    q_head = 0
    nq = 0
    last_read = -(1 << 40)
    last_write = -(1 << 40)
    # read sequencer
    rs_active, rs_kind, rs_kc = True, 0, 0
    rs_a, rs_w = act_b, wgt_b
    rs_left = _beats(act_b, M * EA, W)
    inflight = 0
    fifo = 0
    # gearbox
    gb_active, gb_kind, gb_kc, gb_first = True, 0, 0, True
    gb_a, gb_w = act_b, wgt_b
    gb_bb = _beats(act_b, M * EA, W)
    gb_eb = M
    fill = 0
    # result packer
    wfill = 0
    res_left = M * NB
    # TLMM engine control: st 1 FILL, 4 PREP, 2 LOOK, 3 DRAIN
    st, kc, nb, tok = 1, 0, 0, 0
    tag_a = tag_b = tag_c = -1
    occ = 0
    credits = res_fifo_depth
    t = 0
    while t < guard:
        t += 1
        if res_left == 0 and wfill == 0:
            return t
        # ---- start-of-cycle (combinational) values
        req_ready = nq < outstanding
        beat = nq > 0 and t >= q_acc[q_head] + latency and t >= last_read + bi
        wr_ready = t >= last_write + bi
        last_chunk = kc == KC - 1
        credit_ok = not (last_chunk and credits == 0)
        act_ready = st == 1
        wgt_ready = st == 2 and credit_ok and tok == M - 1
        burst = max_burst if rs_left > max_burst else rs_left
        rq_fire = rs_active and inflight + burst <= F and req_ready
        E = EW if gb_kind == 1 else EA
        out_valid = gb_active and fill >= E and gb_eb > 0
        act_valid = out_valid and gb_kind == 0
        wgt_valid = out_valid and gb_kind == 1
        pop = out_valid and (wgt_ready if gb_kind == 1 else act_ready)
        fill_after = fill - (E if pop else 0)
        push = fifo > 0 and gb_bb > 0 and fill_after + W <= CAP
        off = 0
        if gb_first:
            off = (gb_w if gb_kind == 1 else gb_a) % W
        wr_valid = wfill >= W or (res_left == 0 and wfill > 0)
        res_ready = wfill <= W
        wr_fire = wr_valid and wr_ready
        res_pop = occ > 0 and res_ready
        # ---- TLMM engine (sequential)
        new_tag = -1
        if st == 1:
            if act_valid:
                if tok == M - 1:
                    tok = 0
                    nb = 0
                    st = 4
                else:
                    tok += 1
        elif st == 4:
            st = 2
        elif st == 2:
            if wgt_valid and credit_ok:
                if last_chunk:
                    credits -= 1
                new_tag = 1 if last_chunk else 0
                if tok == M - 1:
                    tok = 0
                    if nb == NB - 1:
                        if last_chunk:
                            st = 3
                        else:
                            kc += 1
                            st = 1
                    else:
                        nb += 1
                else:
                    tok += 1
        if res_pop:
            occ -= 1
            credits += 1
        if tag_c >= 0:
            occ += tag_c
        tag_c = tag_b
        tag_b = tag_a
        tag_a = new_tag
        # ---- read sequencer
        if rq_fire:
            if rs_left == burst:
                if rs_kind == 0:
                    rs_kind = 1
                    rs_left = _beats(rs_w, NB * EW, W)
                    rs_a += M * EA
                elif rs_kc == KC - 1:
                    rs_active = False
                else:
                    rs_kind = 0
                    rs_kc += 1
                    rs_left = _beats(rs_a, M * EA, W)
                    rs_w += NB * EW
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
                if gb_kind == 0:
                    gb_kind = 1
                    gb_bb = _beats(gb_w, NB * EW, W)
                    gb_eb = NB
                    gb_a += M * EA
                elif gb_kc == KC - 1:
                    gb_active = False
                else:
                    gb_kind = 0
                    gb_kc += 1
                    gb_bb = _beats(gb_a, M * EA, W)
                    gb_eb = M
                    gb_w += NB * EW
        # ---- result packer
        w_after = wfill
        if wr_fire:
            w_after = wfill - W if wfill >= W else 0
        wfill = w_after + (ER if res_pop else 0)
        if res_pop:
            res_left -= 1
        # ---- memory (end of cycle)
        if beat:
            q_done[q_head] += 1
            last_read = t
            if q_done[q_head] == q_len[q_head]:
                q_head = (q_head + 1) % outstanding
                nq -= 1
        if rq_fire:
            slot = (q_head + nq) % outstanding
            q_len[slot] = burst
            q_acc[slot] = t
            q_done[slot] = 0
            nq += 1
        if wr_fire:
            last_write = t
    return -1


def tlmm_run_cycles(acfg: AcceleratorConfig, cmd: TlmmCommand) -> int:
    g = TopGeometry(acfg)
    t, mem = acfg.tlmm, acfg.memory
    work = cmd.k_chunks * (cmd.n_blocks * cmd.tokens + cmd.tokens + 2)
    guard = 64 + 40 * (work + cmd.k_chunks * (mem.latency + 4) + cmd.tokens * cmd.n_blocks) * mem.beat_interval
    r = _tlmm_dma_kernel(cmd.tokens, cmd.k_chunks, cmd.n_blocks, cmd.act_base * g.W, cmd.wgt_base * g.W, g.W,
                         g.EA, g.EW, g.ER, g.fifo, g.cap, mem.max_burst, mem.outstanding, mem.latency,
                         mem.beat_interval, t.result_fifo_depth, guard)
    if r < 0:
        raise RuntimeError("top model: TLMM command did not finish within its cycle guard")
    return r


def command_cycles(acfg: AcceleratorConfig, cmd) -> int:
    """Cycles of one command in the top level, from its first word's accept to its done cycle (inclusive)."""
    if isinstance(cmd, HostCommand):
        return HOST_CYCLES
    if isinstance(cmd, GemmCommand):
        from sim.gemm_model import gemm_fast

        return FETCH_DISPATCH + gemm_fast(acfg, cmd).cycles + 1
    if isinstance(cmd, TlmmCommand):
        return FETCH_DISPATCH + tlmm_run_cycles(acfg, cmd)
    raise TypeError(f"not a command: {cmd!r}")


def program_cycles(prog) -> list[int]:
    """Per-command cycles of a Program (hw.program.Program) on the top level."""
    acfg = prog.acfg
    return [command_cycles(acfg, c) for c in prog.commands()]
