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

A cycle: the queries (``ctl_act_ready``, ``ctl_wgt_ready``, ``ctl_issues``, ``ctl_result_valid``) read the
state at the start of the cycle; ``ctl_step`` then applies the clock edge. The state also counts events
(fills = activation beats taken, weight beats taken, issues through stage C, ...), so the stream positions
of the datapath are ``cs[CTL_FILLS]`` (activation beat) and ``cs[CTL_WGT_BEATS]`` (weight beat).

numba's cache does not notice edits to this module in the kernels that call it (numba issue #1833): after
changing it, clear the caches (``make clean`` removes the ``__pycache__`` folders).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["FILL", "LOOK", "DRAIN", "PREP", "CTL_ST", "CTL_KC", "CTL_NB", "CTL_TOK", "CTL_ADDR", "CTL_FILLS",
           "CTL_WGT_BEATS", "CTL_ISSUED", "CTL_ACC_READS", "CTL_RESULTS", "CTL_STALLS", "CTL_BUBBLES",
           "ctl_new", "ctl_act_ready", "ctl_wgt_ready", "ctl_issues", "ctl_result_valid", "ctl_step",
           "ctl_look_left", "ctl_look_run"]

FILL, LOOK, DRAIN, PREP = 1, 2, 3, 4   # FSM states

# State array words. Registers:
CTL_ST = 0
CTL_KC = 1          # chunk
CTL_NB = 2          # weight block of the chunk
CTL_TOK = 3         # token
CTL_ADDR = 4        # accumulator word of the next issue (nb·M + tok)
_TAG_A = 5          # pipeline stages
_TAG_B = 6
_TAG_C = 7
_OCC = 8            # results in the result FIFO
_CREDITS = 9        # result credits not taken
# the command (constant):
_M = 10             # tokens
_KC_N = 11          # chunks
_NB_N = 12          # weight blocks
# event counters:
CTL_FILLS = 13      # activation beats taken
CTL_WGT_BEATS = 14  # weight beats taken
CTL_ISSUED = 15     # issues that have left stage C
CTL_ACC_READS = 16  # of those, issues not on chunk 0 (they read the accumulator)
CTL_RESULTS = 17    # results that have left the FIFO
CTL_STALLS = 18     # LOOK cycles with a weight beat, waiting for a credit
CTL_BUBBLES = 19    # FILL/LOOK cycles without a beat to work on
_WORDS = 20


@njit(cache=True)
def ctl_new(tokens: int, k_chunks: int, n_blocks: int, fifo_depth: int) -> np.ndarray:
    """The control right after the command accept (cycle 0): FILL of chunk 0, pipeline and FIFO empty."""
    cs = np.zeros(_WORDS, np.int64)
    cs[CTL_ST] = FILL
    cs[_TAG_A] = cs[_TAG_B] = cs[_TAG_C] = -1
    cs[_CREDITS] = fifo_depth
    cs[_M] = tokens
    cs[_KC_N] = k_chunks
    cs[_NB_N] = n_blocks
    return cs


@njit(cache=True, boundscheck=False)
def ctl_act_ready(cs: np.ndarray) -> bool:
    """The activation stream's ready: an activation beat is taken in this cycle if valid."""
    return cs[CTL_ST] == FILL


@njit(cache=True, boundscheck=False)
def _credit_ok(cs: np.ndarray) -> bool:
    return not (cs[CTL_KC] == cs[_KC_N] - 1 and cs[_CREDITS] == 0)


@njit(cache=True, boundscheck=False)
def ctl_issues(cs: np.ndarray, wgt_valid: bool) -> bool:
    """A lookup issues in this cycle (LOOK, a weight beat there, a credit if it is on the last chunk)."""
    return cs[CTL_ST] == LOOK and wgt_valid and _credit_ok(cs)


@njit(cache=True, boundscheck=False)
def ctl_wgt_ready(cs: np.ndarray) -> bool:
    """The weight stream's ready: the beat is taken with the issue of its last token."""
    return cs[CTL_ST] == LOOK and _credit_ok(cs) and cs[CTL_TOK] == cs[_M] - 1


@njit(cache=True, boundscheck=False)
def ctl_result_valid(cs: np.ndarray) -> bool:
    """The result stream's valid: the FIFO holds a result."""
    return cs[_OCC] > 0


@njit(cache=True, boundscheck=False)
def ctl_step(cs: np.ndarray, act_valid: bool, wgt_valid: bool, res_ready: bool) -> bool:
    """The clock edge at the end of a cycle with these stream handshake inputs. Returns True iff the
    command is done in this cycle: DRAIN, the pipeline empty and the last result leaving the FIFO."""
    pop = cs[_OCC] > 0 and res_ready
    m = cs[_M]
    last = cs[CTL_KC] == cs[_KC_N] - 1
    new_tag = -1
    done = False
    st = cs[CTL_ST]
    if st == FILL:
        if act_valid:
            cs[CTL_FILLS] += 1
            if cs[CTL_TOK] == m - 1:
                cs[CTL_TOK] = 0
                cs[CTL_NB] = 0
                cs[CTL_ADDR] = 0
                cs[CTL_ST] = PREP
            else:
                cs[CTL_TOK] += 1
        else:
            cs[CTL_BUBBLES] += 1
    elif st == PREP:
        cs[CTL_ST] = LOOK
    elif st == LOOK:
        if not wgt_valid:
            cs[CTL_BUBBLES] += 1
        elif last and cs[_CREDITS] == 0:
            cs[CTL_STALLS] += 1
        else:
            if last:
                cs[_CREDITS] -= 1
            new_tag = cs[CTL_ADDR] * 4 + (2 if cs[CTL_KC] == 0 else 0) + (1 if last else 0)
            cs[CTL_ADDR] += 1
            if cs[CTL_TOK] == m - 1:
                cs[CTL_TOK] = 0
                cs[CTL_WGT_BEATS] += 1
                if cs[CTL_NB] == cs[_NB_N] - 1:
                    if last:
                        cs[CTL_ST] = DRAIN
                    else:
                        cs[CTL_KC] += 1
                        cs[CTL_ST] = FILL
                else:
                    cs[CTL_NB] += 1
            else:
                cs[CTL_TOK] += 1
    else:
        done = (cs[_TAG_A] < 0 and cs[_TAG_B] < 0 and cs[_TAG_C] < 0
                and (cs[_OCC] == 0 or (cs[_OCC] == 1 and pop)))
    # clock edge: the FIFO pops its head, stage C pushes its result, the pipeline advances
    if pop:
        cs[CTL_RESULTS] += 1
        cs[_OCC] -= 1
        cs[_CREDITS] += 1
    _stage_c(cs)
    cs[_TAG_A] = new_tag
    return done


@njit(cache=True, boundscheck=False)
def _stage_c(cs: np.ndarray) -> None:
    """Stage C's issue leaves the pipeline (its result into the FIFO); stages B, A move on (A left as is)."""
    tag_c = cs[_TAG_C]
    if tag_c >= 0:
        cs[CTL_ISSUED] += 1
        cs[CTL_ACC_READS] += 1 if (tag_c & 2) == 0 else 0
        cs[_OCC] += tag_c & 1
    cs[_TAG_C] = cs[_TAG_B]
    cs[_TAG_B] = cs[_TAG_A]


@njit(cache=True, boundscheck=False)
def ctl_look_left(cs: np.ndarray) -> int:
    """Issues left in the current chunk's LOOK phase (in LOOK)."""
    return (cs[_NB_N] - cs[CTL_NB]) * cs[_M] - cs[CTL_TOK]


@njit(cache=True, boundscheck=False)
def ctl_look_run(cs: np.ndarray) -> int:
    """Run the rest of the current chunk's LOOK phase with the weight stream always valid and the result
    stream always ready, when no issue can lack a credit (a chunk before the last, or enough credits —
    the caller's business). Equal to calling ``ctl_step(cs, False, True, True)`` once per issue, faster.
    Returns the number of cycles (= issues) run."""
    r = ctl_look_left(cs)
    last = cs[CTL_KC] == cs[_KC_N] - 1
    flags = (2 if cs[CTL_KC] == 0 else 0) + (1 if last else 0)
    take = 1 if last else 0
    addr = cs[CTL_ADDR]
    occ = cs[_OCC]
    credits = cs[_CREDITS]
    tag_a, tag_b, tag_c = cs[_TAG_A], cs[_TAG_B], cs[_TAG_C]
    n_res = n_c = n_reads = 0
    for _ in range(r):
        pop = 1 if occ > 0 else 0       # the sink is always ready: the head result leaves
        n_res += pop
        credits += pop - take           # returned by the pop, taken by a last-chunk issue
        occ -= pop
        if tag_c >= 0:                  # stage C: accumulator write back, result into the FIFO
            n_c += 1
            n_reads += (tag_c & 2) == 0
            occ += tag_c & 1
        tag_c = tag_b
        tag_b = tag_a
        tag_a = addr * 4 + flags
        addr += 1
    cs[CTL_ADDR] = addr
    cs[_OCC] = occ
    cs[_CREDITS] = credits
    cs[_TAG_A], cs[_TAG_B], cs[_TAG_C] = tag_a, tag_b, tag_c
    cs[CTL_RESULTS] += n_res
    cs[CTL_ISSUED] += n_c
    cs[CTL_ACC_READS] += n_reads
    # the run ends on the last token of the last block of this chunk
    cs[CTL_WGT_BEATS] += cs[_NB_N] - cs[CTL_NB]
    cs[CTL_TOK] = 0
    cs[CTL_NB] = cs[_NB_N] - 1
    if last:
        cs[CTL_ST] = DRAIN
    else:
        cs[CTL_KC] += 1
        cs[CTL_ST] = FILL
    return r
