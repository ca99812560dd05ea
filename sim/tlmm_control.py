"""The TLMM engine's control (hw/tlmm.py), written once as numba functions over a small int64 state array:
the FSM, the three pipeline stages, the result FIFO occupancy and the result credits. The stepped engine
model (sim.tlmm_model, which adds the datapath) and the top-level model (sim.top_model, where the DMA feeds
the streams) both step it.

Per chunk the FSM runs FILL (one activation beat per token), one PREP cycle (the tables of the chunk's last
activation beat are built from its register: no beat taken, nothing issued), then LOOK (one lookup issue per
cycle, token-major within a weight beat: the weight beat is shared by the M tokens and taken with the issue
of the last token), and after the last chunk DRAIN. Result back-pressure never freezes the pipeline: results
queue in a result FIFO of ``fifo_depth`` entries, and an issue on the last chunk (the only issues that make a
result) needs one of as many credits, which a result returns when it leaves the FIFO.

A pipeline stage is one int tag: -1 when empty, else addr·4 + first·2 + last (addr = accumulator word
nb·M + tok; first: the issue is on chunk 0 and writes the accumulator instead of adding; last: it is on the
last chunk and makes a result). A result leaves stage C into the FIFO at the clock edge; the FIFO presents
its oldest result (no fall-through).

The state is an immutable :class:`CtlState` of ints (after inlining, numba keeps it in registers). A cycle:
the queries (``ctl_act_ready``, ``ctl_wgt_ready``, ``ctl_result_valid``) read the state at the start of
the cycle; ``ctl_step`` then applies the clock edge and returns the new state. The state also counts events,
so a datapath can tell what the cycle did from the old and new state (``fills`` grew: an activation beat
was taken, its index the old ``fills``; ``tag_a`` ≥ 0: a lookup issued with the old tok/addr/kc and weight
beat ``wgt_beats``).

Like :mod:`sim.mem_kernel` (see there why), this module is inlined into cached kernels: after editing it, run
``make clean``.
"""

from __future__ import annotations

from typing import NamedTuple

from numba import njit

__all__ = [
    "FILL",
    "LOOK",
    "DRAIN",
    "PREP",
    "CtlState",
    "ctl_new",
    "ctl_act_ready",
    "ctl_wgt_ready",
    "ctl_result_valid",
    "ctl_step",
    "ctl_look_left",
    "ctl_look_run",
]

FILL, LOOK, DRAIN, PREP = 1, 2, 3, 4  # FSM states


class CtlState(NamedTuple):
    """The engine control's registers, the command it runs, and its event counters."""

    st: int  # FSM state
    kc: int  # chunk
    nb: int  # weight block of the chunk
    tok: int  # token
    addr: int  # accumulator word of the next issue (nb·M + tok)
    tag_a: int  # pipeline stages
    tag_b: int
    tag_c: int
    occ: int  # results in the result FIFO
    credits: int  # result credits not taken
    tokens: int  # the command (constant): M
    k_chunks: int  # KC
    n_blocks: int  # NB
    fills: int  # activation beats taken
    wgt_beats: int  # weight beats taken
    issued: int  # issues that have left stage C
    acc_reads: int  # of those, issues not on chunk 0 (they read the accumulator)
    results: int  # results that have left the FIFO
    stalls: int  # LOOK cycles with a weight beat, waiting for a credit
    bubbles: int  # FILL/LOOK cycles without a beat to work on


@njit(cache=True)
def ctl_new(tokens: int, k_chunks: int, n_blocks: int, fifo_depth: int) -> CtlState:
    """The control right after the command accept (cycle 0): FILL of chunk 0, pipeline and FIFO empty."""
    return CtlState(
        FILL, 0, 0, 0, 0, -1, -1, -1, 0, fifo_depth, tokens, k_chunks, n_blocks, 0, 0, 0, 0, 0, 0, 0
    )


@njit(cache=True, inline="always")
def ctl_act_ready(cs: CtlState) -> bool:
    """The activation stream's ready: an activation beat is taken in this cycle if valid."""
    return cs.st == FILL


@njit(cache=True, inline="always")
def _credit_ok(cs: CtlState) -> bool:
    return not (cs.kc == cs.k_chunks - 1 and cs.credits == 0)


@njit(cache=True, inline="always")
def ctl_wgt_ready(cs: CtlState) -> bool:
    """The weight stream's ready: the beat is taken with the issue of its last token."""
    return cs.st == LOOK and _credit_ok(cs) and cs.tok == cs.tokens - 1


@njit(cache=True, inline="always")
def ctl_result_valid(cs: CtlState) -> bool:
    """The result stream's valid: the FIFO holds a result."""
    return cs.occ > 0


@njit(cache=True, inline="always")
def ctl_step(cs: CtlState, act_valid: bool, wgt_valid: bool, res_ready: bool) -> tuple[CtlState, bool]:
    """The clock edge at the end of a cycle with these stream handshake inputs: (new state, done), done
    iff the command finishes in this cycle (DRAIN, the pipeline empty, the last result leaving the FIFO)."""
    st, kc, nb, tok, addr, occ, credits = cs.st, cs.kc, cs.nb, cs.tok, cs.addr, cs.occ, cs.credits
    fills, wgt_beats, issued, acc_reads, results = cs.fills, cs.wgt_beats, cs.issued, cs.acc_reads, cs.results
    stalls, bubbles = cs.stalls, cs.bubbles
    m = cs.tokens
    pop = occ > 0 and res_ready
    last = kc == cs.k_chunks - 1
    new_tag = -1
    done = False
    if st == FILL:
        if act_valid:
            fills += 1
            if tok == m - 1:
                tok = nb = addr = 0
                st = PREP
            else:
                tok += 1
        else:
            bubbles += 1
    elif st == PREP:
        st = LOOK
    elif st == LOOK:
        if not wgt_valid:
            bubbles += 1
        elif last and credits == 0:
            stalls += 1
        else:
            if last:
                credits -= 1
            new_tag = addr * 4 + (2 if kc == 0 else 0) + (1 if last else 0)
            addr += 1
            if tok == m - 1:
                tok = 0
                wgt_beats += 1
                if nb == cs.n_blocks - 1:
                    if last:
                        st = DRAIN
                    else:
                        kc += 1
                        st = FILL
                else:
                    nb += 1
            else:
                tok += 1
    else:
        done = cs.tag_a < 0 and cs.tag_b < 0 and cs.tag_c < 0 and (occ == 0 or (occ == 1 and pop))
    # clock edge: the FIFO pops its head, stage C pushes its result, the pipeline advances
    if pop:
        results += 1
        occ -= 1
        credits += 1
    tag_c = cs.tag_c
    if tag_c >= 0:
        issued += 1
        acc_reads += 1 if (tag_c & 2) == 0 else 0
        occ += tag_c & 1
    return CtlState(
        st,
        kc,
        nb,
        tok,
        addr,
        new_tag,
        cs.tag_a,
        cs.tag_b,
        occ,
        credits,
        m,
        cs.k_chunks,
        cs.n_blocks,
        fills,
        wgt_beats,
        issued,
        acc_reads,
        results,
        stalls,
        bubbles,
    ), done


@njit(cache=True, inline="always")
def ctl_look_left(cs: CtlState) -> int:
    """Issues left in the current chunk's LOOK phase (in LOOK)."""
    return (cs.n_blocks - cs.nb) * cs.tokens - cs.tok


@njit(cache=True)
def ctl_look_run(cs: CtlState) -> CtlState:
    """Run the rest of the current chunk's LOOK phase (``ctl_look_left`` cycles) with the weight stream
    always valid and the result stream always ready, when no issue can lack a credit (a chunk before the
    last, or enough credits — the caller's business). Equal to ``ctl_step(cs, False, True, True)`` once per
    issue, faster."""
    r = ctl_look_left(cs)
    last = cs.kc == cs.k_chunks - 1
    flags = (2 if cs.kc == 0 else 0) + (1 if last else 0)
    take = 1 if last else 0
    addr, occ, credits = cs.addr, cs.occ, cs.credits
    tag_a, tag_b, tag_c = cs.tag_a, cs.tag_b, cs.tag_c
    n_res = n_c = n_reads = 0
    for _ in range(r):
        pop = 1 if occ > 0 else 0  # the sink is always ready: the head result leaves
        n_res += pop
        credits += pop - take  # returned by the pop, taken by a last-chunk issue
        occ -= pop
        if tag_c >= 0:  # stage C: accumulator write back, result into the FIFO
            n_c += 1
            n_reads += (tag_c & 2) == 0
            occ += tag_c & 1
        tag_c = tag_b
        tag_b = tag_a
        tag_a = addr * 4 + flags
        addr += 1
    # the run ends on the last token of the last block of this chunk
    st, kc = (DRAIN, cs.kc) if last else (FILL, cs.kc + 1)
    return CtlState(
        st,
        kc,
        cs.n_blocks - 1,
        0,
        addr,
        tag_a,
        tag_b,
        tag_c,
        occ,
        credits,
        cs.tokens,
        cs.k_chunks,
        cs.n_blocks,
        cs.fills,
        cs.wgt_beats + cs.n_blocks - cs.nb,
        cs.issued + n_c,
        cs.acc_reads + n_reads,
        cs.results + n_res,
        cs.stalls,
        cs.bubbles,
    )
