"""Golden references: the plainest correct computation, independent of the hardware's table trick."""

from __future__ import annotations

import numpy as np

from hw.ternary import wrap_int32


def ternary_matmul(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y[m, n] = Σ_k w[n, k]·x[m, k], exact in int64, then wrapped to int32 (the accumulator rule)."""
    return wrap_int32(np.asarray(x, dtype=np.int64) @ np.asarray(w, dtype=np.int64).T)
