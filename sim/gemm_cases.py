"""Co-simulation cases for the temporal GEMM engine: directed corners, bandwidth-starved memories, int32
limits, requantization, and seeded random cases. Each case is a GEMM plus the memory timing it runs under
(latency, outstanding requests, beat interval may differ per case; they do not change the RTL)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hw.config import AcceleratorConfig, MemoryConfig

__all__ = ["GemmCase", "directed_cases", "random_cases", "bitnet_attention_case", "TIMING_FIELDS"]

# memory fields a case may override: the testbench's memory, not the engine's hardware
TIMING_FIELDS = ("latency", "outstanding", "beat_interval")


@dataclass
class GemmCase:
    name: str
    a: np.ndarray  # (M, K) int8
    b: np.ndarray  # (K, N) int8
    requant: bool = False
    shift: int = 0
    timing: dict = field(default_factory=dict)
    b_gap: int = 0  # beats between B's column panels (> 0: the command carries a b_stride)

    def memory(self, acfg: AcceleratorConfig) -> MemoryConfig:
        bad = set(self.timing) - set(TIMING_FIELDS)
        if bad:
            raise ValueError(
                f"case {self.name}: memory fields {sorted(bad)} change the hardware, not the timing"
            )
        return dataclasses.replace(acfg.memory, **self.timing)

    def config(self, acfg: AcceleratorConfig) -> AcceleratorConfig:
        return dataclasses.replace(acfg, memory=self.memory(acfg))


def _i8(rng, shape, lo=-128, hi=127):
    return rng.integers(lo, hi + 1, shape).astype(np.int8)


def directed_cases(acfg: AcceleratorConfig, seed: int = 0, long: bool = True) -> list[GemmCase]:
    """The corners of the GEMM issue, sized to the config's block (R×C) and K tile."""
    g = acfg.gemm
    R, C, TK = g.rows, g.cols, g.k_tile
    rng = np.random.default_rng(seed)
    m, k, n = 2 * R + 1, TK + 3, 2 * C + 3  # none a multiple of the block or the tile
    cases = [
        GemmCase("1x1x1", np.array([[-128]], np.int8), np.array([[-128]], np.int8)),
        GemmCase("K=1", _i8(rng, (R + 1, 1)), _i8(rng, (1, C + 1))),
        GemmCase("not-multiples", _i8(rng, (m, k)), _i8(rng, (k, n))),
        GemmCase("all-zero", np.zeros((R, 2 * TK), np.int8), np.zeros((2 * TK, C), np.int8)),
        GemmCase(
            "extremes",
            rng.choice(np.array([-128, 127], np.int8), (m, 2 * TK)),
            rng.choice(np.array([-128, 127], np.int8), (2 * TK, n)),
        ),
        GemmCase("requant-shift0-saturate", _i8(rng, (R, TK)), _i8(rng, (TK, C)), requant=True, shift=0),
        GemmCase("requant-shift9", _i8(rng, (m, k)), _i8(rng, (k, n)), requant=True, shift=9),
        GemmCase(
            "requant-shift31",
            np.full((R, TK), -128, np.int8),
            np.full((TK, C), 127, np.int8),
            requant=True,
            shift=31,
        ),
        # memory starved: slow beats, long latency, one request in flight -> the block waits for tiles
        GemmCase(
            "bandwidth-starved",
            _i8(rng, (m, 2 * TK)),
            _i8(rng, (2 * TK, n)),
            timing={"latency": 37, "outstanding": 1, "beat_interval": 3},
        ),
        # one K tile per output tile and a slow write channel -> the last k waits for the shadow register
        GemmCase(
            "write-starved",
            _i8(rng, (3 * R, TK)),
            _i8(rng, (TK, 3 * C)),
            timing={"beat_interval": max(2, 4 * TK // max(1, acfg.gemm_geometry.out_beats(False)))},
        ),
    ]
    if long:
        # int32 limits: Σ (-128)(-128) over K = 2^17 is 2^31, which wraps to -2^31; (-128)(127) stays just
        # above the minimum
        kk = 1 << 17
        cases.append(
            GemmCase(
                "int32-limits",
                np.full((1, kk), -128, np.int8),
                np.tile(np.array([[-128, 127]], np.int8), (kk, 1)),
            )
        )
    return cases


def random_cases(acfg: AcceleratorConfig, seed: int, count: int = 6) -> list[GemmCase]:
    """Seeded random shapes, data, requantization and memory timings (every other case starved)."""
    g = acfg.gemm
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        m = int(rng.integers(1, 3 * g.rows + 1))
        k = int(rng.integers(1, 3 * g.k_tile + 1))
        n = int(rng.integers(1, 3 * g.cols + 1))
        requant = bool(rng.integers(0, 2))
        timing = {}
        if i % 2:
            timing = {
                "latency": int(rng.integers(1, 60)),
                "outstanding": int(rng.integers(1, 7)),
                "beat_interval": int(rng.integers(1, 5)),
            }
        cases.append(
            GemmCase(
                f"random-{seed}-{i}{'-starved' if timing else ''}",
                _i8(rng, (m, k)),
                _i8(rng, (k, n)),
                requant,
                int(rng.integers(0, 20)) if requant else 0,
                timing,
            )
        )
    return cases


def bitnet_attention_case(acfg: AcceleratorConfig, seed: int = 0, context: int = 256) -> GemmCase:
    """One BitNet-0.7B attention head's Q·Kᵀ at prefill: (context × 96) · (96 × context), int8."""
    rng = np.random.default_rng(seed)
    return GemmCase(
        f"bitnet0.7b-QK^T-head-{context}x96x{context}", _i8(rng, (context, 96)), _i8(rng, (96, context))
    )


def workload_cases(
    acfg: AcceleratorConfig, workload: str, seed: int = 0, n_random: int = 4
) -> list[GemmCase]:
    """The cases of a named workload (``tritium cosim gemm --workload``): ``cases`` (directed + seeded
    random), ``bitnet`` (one BitNet-0.7B attention head's Q·Kᵀ) or ``all`` (both)."""
    cases: list[GemmCase] = []
    if workload in ("cases", "all"):
        cases += directed_cases(acfg, seed) + random_cases(acfg, seed, n_random)
    if workload in ("bitnet", "all"):
        cases.append(bitnet_attention_case(acfg, seed))
    return cases
