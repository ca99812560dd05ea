"""The one numeric definition of ternary matmul (ARCHITECTURE.md contract 3), in numpy.

Everything here is written once and used by the golden reference, the numba model, the RTL testbench and
(later) the compiler. docs/design.md, "Numeric definition", states the same rules in prose.

* Weights are ternary ``w ∈ {-1, 0, +1}``. G consecutive weights along K form a group whose index is the
  offset base-3 code ``idx = Σ_j (w_j + 1)·3^j`` (j = 0 is the lowest k). ``idx == (3^G-1)/2`` is the
  all-zero group; negating every weight maps ``idx`` to ``3^G - 1 - idx``.
* For G activations ``a_j`` the table is ``t[idx] = Σ_j (digit_j(idx) - 1)·a_j``, so ``t[3^G-1-idx] = -t[idx]``.
  Half mode stores ``t[0..(3^G-1)/2]`` and reads ``-t[3^G-1-idx]`` for the upper indices.
* Activations are signed ``act_bits`` integers (int8 by default); quantization from floats is absmax per
  token with round-half-to-even and saturation (:func:`quantize_activations`).
* Products are summed in int32 two's complement; sums wrap modulo 2^32 (the config bounds K so that
  ``K·2^(act_bits-1) < 2^31`` and no wrap can occur for valid shapes).
* Padding: K is padded with zero activations and all-zero weight groups up to a whole number of chunks
  (G·T activations); N is padded with all-zero columns up to a multiple of Q, whose outputs are 0 and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hw.config import TlmmConfig

__all__ = [
    "pack_weight_groups",
    "unpack_weight_groups",
    "build_table",
    "lookup",
    "quantize_activations",
    "quantize_weights",
    "TlmmShape",
    "tlmm_shape",
    "tlmm_streams",
    "pack_fields",
    "wrap_int32",
]


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Reduce integers modulo 2^32 into int32 two's complement (the accumulator rule)."""
    return np.asarray(x, dtype=np.int64).astype(np.uint32).astype(np.int32)


def _digits(group_size: int) -> np.ndarray:
    """digits[idx, j] = j-th base-3 digit of idx, minus 1 (the weight it encodes)."""
    idx = np.arange(3**group_size)
    return np.stack([(idx // 3**j) % 3 - 1 for j in range(group_size)], axis=1).astype(np.int64)


def pack_weight_groups(w: np.ndarray, group_size: int) -> np.ndarray:
    """Pack ternary weights ``w`` (N, K) into group indices (N, ceil(K/G)) uint8; K padded with zeros."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D (N, K), got shape {w.shape}")
    if not np.isin(w, (-1, 0, 1)).all():
        bad = np.argwhere(~np.isin(w, (-1, 0, 1)))[0]
        raise ValueError(f"weights must be ternary (-1, 0, +1); w[{bad[0]}, {bad[1]}] = {w[tuple(bad)]}")
    n, k = w.shape
    kg = -(-k // group_size)
    padded = np.zeros((n, kg * group_size), dtype=np.int64)
    padded[:, :k] = w
    digits = padded.reshape(n, kg, group_size) + 1
    powers = 3 ** np.arange(group_size)
    return (digits * powers).sum(axis=2).astype(np.uint8)


def unpack_weight_groups(idx: np.ndarray, group_size: int, k: int) -> np.ndarray:
    """Inverse of :func:`pack_weight_groups`: (N, Kg) indices → (N, k) ternary int8."""
    w = _digits(group_size)[np.asarray(idx, dtype=np.int64)]  # (N, Kg, G)
    return w.reshape(idx.shape[0], -1)[:, :k].astype(np.int8)


def build_table(a: np.ndarray, group_size: int) -> np.ndarray:
    """Full lookup table for activations ``a`` (..., G): t[..., idx] = Σ_j (digit_j(idx)-1)·a_j (int64)."""
    a = np.asarray(a, dtype=np.int64)
    return a @ _digits(group_size).T


def lookup(table: np.ndarray, idx: np.ndarray, group_size: int, table_mode: str) -> np.ndarray:
    """Read a table the way the hardware does: full mode reads t[idx]; half mode keeps only
    t[0..zero] and returns -t[3^G-1-idx] for the upper indices."""
    idx = np.asarray(idx, dtype=np.int64)
    if table_mode == "full":
        return np.take_along_axis(table, idx, axis=-1)
    zero = (3**group_size - 1) // 2
    half = table[..., : zero + 1]
    upper = idx > zero
    src = np.where(upper, 3**group_size - 1 - idx, idx)
    val = np.take_along_axis(half, src, axis=-1)
    return np.where(upper, -val, val)


def quantize_activations(x: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Absmax per token (last axis): q = clip(round_half_even(qmax·x/max|x|), -qmax-1, qmax).

    Returns (q as int8, scale) with x ≈ q·scale; an all-zero row gets scale 1 and q = 0.
    """
    x = np.asarray(x, dtype=np.float32)
    qmax = (1 << (bits - 1)) - 1
    amax = np.abs(x).max(axis=-1, keepdims=True)
    amax = np.where(amax > 0, amax, np.float32(qmax))
    q = np.clip(np.rint(x * (np.float32(qmax) / amax)), -qmax - 1, qmax).astype(np.int8)
    return q, (amax / qmax).astype(np.float32)


def quantize_weights(w: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, float]:
    """Absmean per tensor: wq = clip(round_half_even(w / mean|w|), -1, 1); returns (wq int8, scale)."""
    w = np.asarray(w, dtype=np.float32)
    scale = float(max(np.abs(w).mean(), eps))
    return np.clip(np.rint(w / scale), -1, 1).astype(np.int8), scale


@dataclass(frozen=True)
class TlmmShape:
    """How one y = W·x of shape (M tokens, K, N) maps onto the engine."""

    tokens: int  # M (1..cfg.tokens)
    k: int
    n: int
    k_chunks: int  # KC = ceil(K / (G·T))
    n_blocks: int  # NB = ceil(N / Q)


def tlmm_shape(cfg: TlmmConfig, tokens: int, k: int, n: int) -> TlmmShape:
    """Check a matmul against the engine limits and return its tiling; ValueError names the limit."""
    if not 1 <= tokens <= cfg.tokens:
        raise ValueError(
            f"tokens={tokens}: the engine shares a weight beat among 1..{cfg.tokens} tokens "
            "(tlmm.tokens); split the batch"
        )
    if not 1 <= k <= cfg.max_k:
        raise ValueError(f"K={k}: must be in 1..{cfg.max_k} (tlmm.max_k)")
    if not 1 <= n <= cfg.max_n:
        raise ValueError(f"N={n}: must be in 1..{cfg.max_n} (tlmm.max_n)")
    return TlmmShape(tokens, k, n, -(-k // cfg.chunk_k), -(-n // cfg.columns))


def tlmm_streams(cfg: TlmmConfig, w: np.ndarray, x: np.ndarray) -> tuple[TlmmShape, np.ndarray, np.ndarray]:
    """Lay out one matmul as the engine's input streams.

    ``w`` is (N, K) ternary, ``x`` is (M, K) signed integers. Returns ``(shape, act, wgt)`` where
    ``act[kc, m, t·G + j] = x[m, kc·G·T + t·G + j]`` (one beat per chunk and token; stream order kc, m) and
    ``wgt[kc, nb, q, t]`` = index of column nb·Q+q, group kc·T+t (one beat per chunk and block, shared by
    all tokens; stream order kc, nb). Padding follows the module docstring.
    """
    x = np.asarray(x)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x (M, K) and w (N, K) must agree on K: x{x.shape}, w{w.shape}")
    lo, hi = -(1 << (cfg.act_bits - 1)), (1 << (cfg.act_bits - 1)) - 1
    if x.size and (x.min() < lo or x.max() > hi):
        raise ValueError(
            f"activations must be {cfg.act_bits}-bit signed ({lo}..{hi}); got {x.min()}..{x.max()}"
        )
    m, k = x.shape
    n = w.shape[0]
    shape = tlmm_shape(cfg, m, k, n)
    g, t, q = cfg.group_size, cfg.tables, cfg.columns
    kp, np_ = shape.k_chunks * cfg.chunk_k, shape.n_blocks * q
    xp = np.zeros((m, kp), dtype=np.int8)
    xp[:, :k] = x
    act = xp.reshape(m, shape.k_chunks, g * t).transpose(1, 0, 2).copy()
    idx = np.full((np_, kp // g), cfg.zero_index, dtype=np.uint8)
    idx[:n, : -(-k // g)] = pack_weight_groups(w, g)
    wgt = idx.reshape(shape.n_blocks, q, shape.k_chunks, t).transpose(2, 0, 1, 3).copy()
    return shape, act, wgt


def pack_fields(values: np.ndarray, width: int) -> int:
    """Concatenate integers (two's complement, ``width`` bits each) into one little-endian bit vector:
    element i occupies bits [i·width, (i+1)·width). This is how every stream payload is laid out."""
    mask = (1 << width) - 1
    out = 0
    for i, v in enumerate(np.asarray(values).reshape(-1).tolist()):
        out |= (int(v) & mask) << (i * width)
    return out
