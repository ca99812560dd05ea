"""Co-simulation cases for the TLMM engine: directed corner cases, seeded random cases, stalled streams
and the default BitNet-0.7B workload. Each case is a matmul plus the valid/ready patterns of its streams."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw.config import AcceleratorConfig, TlmmConfig

ONES = np.ones(1, np.uint8)


@dataclass
class TlmmCase:
    name: str
    w: np.ndarray  # (N, K) ternary
    x: np.ndarray  # (M, K) signed
    act_pattern: np.ndarray = field(default_factory=lambda: ONES)
    wgt_pattern: np.ndarray = field(default_factory=lambda: ONES)
    res_pattern: np.ndarray = field(default_factory=lambda: ONES)


def directed_cases(cfg: TlmmConfig, seed: int = 0) -> list[TlmmCase]:
    """The corners listed in the foundation issue, sized to the config."""
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (cfg.act_bits - 1)), (1 << (cfg.act_bits - 1)) - 1
    m = min(cfg.tokens, 2)
    k = 2 * cfg.chunk_k + 1  # not a multiple of G·T (nor of G when G > 1)
    n = 2 * cfg.columns + 1  # not a multiple of Q
    ones = np.ones((n, k), np.int8)
    cases = [
        TlmmCase("all-zero", np.zeros((n, k), np.int8), np.zeros((m, k), np.int8)),
        TlmmCase("max-act+1", ones, np.full((m, k), hi, np.int8)),
        TlmmCase("min-act-1", -ones, np.full((m, k), lo, np.int8)),
        TlmmCase("min-act+1", ones, np.full((m, k), lo, np.int8)),
        TlmmCase(
            "extremes-mixed",
            rng.integers(-1, 2, (n, k)).astype(np.int8),
            rng.choice([lo, hi], (m, k)).astype(np.int8),
        ),
        TlmmCase(
            "single-column",
            rng.integers(-1, 2, (1, k)).astype(np.int8),
            rng.integers(lo, hi + 1, (1, k)).astype(np.int8),
        ),
        TlmmCase("1x1x1", np.array([[-1]], np.int8), np.array([[lo]], np.int8)),
        TlmmCase(
            "max-tokens",
            rng.integers(-1, 2, (n, cfg.chunk_k)).astype(np.int8),
            rng.integers(lo, hi + 1, (cfg.tokens, cfg.chunk_k)).astype(np.int8),
        ),
        TlmmCase(
            "stalled-streams",
            rng.integers(-1, 2, (n, k)).astype(np.int8),
            rng.integers(lo, hi + 1, (m, k)).astype(np.int8),
            act_pattern=np.array([1, 0, 0, 1, 1], np.uint8),
            wgt_pattern=np.array([0, 1, 1, 0, 1, 1, 1], np.uint8),
            res_pattern=np.array([1, 0, 1, 1, 0, 0], np.uint8),
        ),
        # one chunk, many result beats, a sink ready one cycle in six: issue runs out of result credits
        TlmmCase(
            "result-backpressure",
            rng.integers(-1, 2, (6 * cfg.columns, cfg.chunk_k)).astype(np.int8),
            rng.integers(lo, hi + 1, (m, cfg.chunk_k)).astype(np.int8),
            res_pattern=np.array([1, 0, 0, 0, 0, 0], np.uint8),
        ),
    ]
    return cases


def random_cases(cfg: TlmmConfig, seed: int, count: int = 4) -> list[TlmmCase]:
    """Seeded random shapes (within small bounds), weights, activations and stream patterns."""
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (cfg.act_bits - 1)), (1 << (cfg.act_bits - 1)) - 1
    cases = []
    for i in range(count):
        m = int(rng.integers(1, cfg.tokens + 1))
        k = int(rng.integers(1, min(cfg.max_k, 4 * cfg.chunk_k) + 1))
        n = int(rng.integers(1, min(cfg.max_n, 4 * cfg.columns) + 1))
        density = rng.uniform(0.2, 1.0)
        w = (rng.integers(-1, 2, (n, k)) * (rng.random((n, k)) < density)).astype(np.int8)
        x = rng.integers(lo, hi + 1, (m, k)).astype(np.int8)
        stalled = i % 2 == 1
        # a stalled case gets a random valid/ready pattern per stream (period 2..8, never all zero)
        pats = [
            np.r_[1, rng.integers(0, 2, int(rng.integers(1, 8)))].astype(np.uint8) if stalled else ONES
            for _ in range(3)
        ]
        cases.append(TlmmCase(f"random-{seed}-{i}{'-stalled' if stalled else ''}", w, x, *pats))
    return cases


def bitnet_workload(cfg: TlmmConfig, seed: int = 0) -> list[TlmmCase]:
    """Default `make sim` workload: slices of BitNet b1.58-large (d=1536) layers with random ternary
    weights and int8 activations: one token through a full 1536×1536 attention projection, and a
    prefill block of up to 4 tokens through 256 columns of the FFN up-projection (K=1536)."""
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (cfg.act_bits - 1)), (1 << (cfg.act_bits - 1)) - 1
    d = min(1536, cfg.max_k)
    n = min(1536, cfg.max_n)
    m = min(4, cfg.tokens)
    return [
        TlmmCase(
            f"bitnet0.7b-q_proj-{n}x{d}-1tok",
            rng.integers(-1, 2, (n, d)).astype(np.int8),
            rng.integers(lo, hi + 1, (1, d)).astype(np.int8),
        ),
        TlmmCase(
            f"bitnet0.7b-up_proj-256x{d}-{m}tok",
            rng.integers(-1, 2, (min(256, n), d)).astype(np.int8),
            rng.integers(lo, hi + 1, (m, d)).astype(np.int8),
        ),
    ]


def workload_cases(
    acfg: AcceleratorConfig, workload: str, seed: int = 0, n_random: int = 4
) -> list[TlmmCase]:
    """The cases of a named workload (``tritium cosim tlmm --workload``): ``cases`` (directed + seeded
    random), ``bitnet`` (BitNet-0.7B layer slices) or ``all`` (both)."""
    cfg = acfg.tlmm
    cases: list[TlmmCase] = []
    if workload in ("cases", "all"):
        cases += directed_cases(cfg, seed) + random_cases(cfg, seed, n_random)
    if workload in ("bitnet", "all"):
        cases += bitnet_workload(cfg, seed)
    return cases
