"""The numba model against the golden reference, and its stepped cycles against the closed form."""

import numpy as np
import pytest

from hw.config import TlmmConfig
from sim.golden import ternary_matmul
from sim.tlmm_model import run_tlmm, tlmm_cycles, tlmm_events_closed_form

CONFIGS = [
    TlmmConfig(group_size=3, tables=8, columns=8, table_mode="full", tokens=4),
    TlmmConfig(group_size=2, tables=3, columns=5, table_mode="half", tokens=3),
    TlmmConfig(group_size=3, tables=1, columns=1, table_mode="half", tokens=1, act_bits=4),
    TlmmConfig(group_size=2, tables=7, columns=2, table_mode="full", tokens=2),
]


@pytest.mark.parametrize(
    "cfg", CONFIGS, ids=lambda c: f"G{c.group_size}T{c.tables}Q{c.columns}{c.table_mode}"
)
def test_model_matches_reference_and_closed_form(cfg):
    rng = np.random.default_rng(7)
    lo, hi = -(1 << (cfg.act_bits - 1)), (1 << (cfg.act_bits - 1)) - 1
    for m, k, n in [(1, 1, 1), (cfg.tokens, 2 * cfg.chunk_k + 1, 3 * cfg.columns - 1), (1, 97, 13)]:
        w = rng.integers(-1, 2, (n, k)).astype(np.int8)
        x = rng.integers(lo, hi + 1, (m, k)).astype(np.int8)
        run = run_tlmm(cfg, w, x)
        assert np.array_equal(run.y, ternary_matmul(w, x))
        assert run.cycles == tlmm_cycles(cfg, run.shape)
        assert run.events == tlmm_events_closed_form(cfg, run.shape)


def test_stalls_change_cycles_not_results():
    cfg = CONFIGS[1]
    rng = np.random.default_rng(8)
    w = rng.integers(-1, 2, (11, 40)).astype(np.int8)
    x = rng.integers(-128, 128, (3, 40)).astype(np.int8)
    ideal = run_tlmm(cfg, w, x)
    slow = run_tlmm(
        cfg,
        w,
        x,
        act_pattern=np.array([1, 0]),
        wgt_pattern=np.array([0, 1, 1]),
        res_pattern=np.array([1, 0, 0]),
    )
    assert np.array_equal(slow.y, ideal.y)
    assert slow.cycles > ideal.cycles
    assert slow.events["stall_cycles"] > 0 and slow.events["bubble_cycles"] > 0
    # every cycle after accept is an issue, a bubble, a stall or a drain/idle cycle of the pipeline
    issues = ideal.events["act_beats"] + ideal.events["acc_mem_writes"]
    assert slow.cycles >= issues + slow.events["bubble_cycles"] + slow.events["stall_cycles"]


def test_int32_wraparound_matches_reference():
    # act_bits=8, K near max: sums stay inside int32, and the reference's wrap rule is exercised directly
    from hw.ternary import wrap_int32

    assert wrap_int32(np.array([2**31, -(2**31) - 1])).tolist() == [-(2**31), 2**31 - 1]


def test_starving_pattern_is_rejected():
    with pytest.raises(ValueError, match="pattern"):
        run_tlmm(CONFIGS[0], np.ones((1, 3), np.int8), np.ones((1, 3), np.int8), act_pattern=np.zeros(3))


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["default", "g2half"])
def test_backpressure_case_exhausts_credits(cfg):
    """The directed co-simulation case meant to run out of result credits really does."""
    from sim.tlmm_cases import directed_cases

    case = next(c for c in directed_cases(cfg) if c.name == "result-backpressure")
    run = run_tlmm(cfg, case.w, case.x, case.act_pattern, case.wgt_pattern, case.res_pattern)
    assert run.events["stall_cycles"] > 0
    assert np.array_equal(run.y, ternary_matmul(case.w, case.x))


@pytest.mark.parametrize("k, expect", [(3, 7), (6, 10)], ids=["1chunk", "2chunks"])
def test_schedule_has_one_prep_cycle_per_chunk(k, expect):
    """Pins the per-chunk schedule FILL → PREP (1 cycle) → LOOK on a hand-computable case.

    G=3, T=1, Q=1, M=1, N=1: each chunk is 1 fill + 1 PREP + 1 lookup, then 4 drain cycles:
    KC·(M·(1+NB) + 1) + 4 = 1·3 + 4 = 7 for K=3 and 2·3 + 4 = 10 for K=6.
    """
    cfg = TlmmConfig(group_size=3, tables=1, columns=1, tokens=1)
    w = np.array([[1, -1, 0, 1, 1, -1][:k]], np.int8)
    x = np.array([[5, 7, -3, 2, -4, 9][:k]], np.int8)
    run = run_tlmm(cfg, w, x)
    assert run.shape.k_chunks == k // 3 and run.shape.n_blocks == 1
    assert run.cycles == expect == tlmm_cycles(cfg, run.shape)
    assert np.array_equal(run.y, ternary_matmul(w, x))
    # PREP cycles are part of the schedule: neither bubbles nor stalls
    assert run.events["bubble_cycles"] == 0 and run.events["stall_cycles"] == 0
    assert run.events == tlmm_events_closed_form(cfg, run.shape)
