"""Host-side operations of the integer reference path, as plain functions on float32 torch tensors.

These are the operations that run on the host (CPU) rather than on an engine: a TLMM result's dequantization,
RMSNorm, RoPE, softmax, SiLU/SwiGLU, ReLU², residual add and the float LM head. The model's ``mode="int"`` forward calls them, and the
compiler's Program executor calls the same functions, so the two agree bit for bit.

Every function here is built only from correctly rounded IEEE operations (+, −, ×, ÷, √, round-half-even,
float64→float32 conversion), exact operations (max, comparisons, gathers, multiplication by a power of two) and
reductions whose summation order is fixed by :func:`fold_sum`. None uses a library transcendental (``exp``,
``sin`` ...), whose vectorized and scalar code paths may differ in the last bit, or a reduction whose order
depends on the tensor's shape, strides or thread count. Hence each output element depends only on the values it
is computed from, not on batch size, sequence length, zero padding or ``torch.get_num_threads()``: a token gives
the same result alone (KV-cache decode) as inside a full sequence. (RoPE's cos/sin tables use Python's
``math.cos``/``math.sin``, computed once per table; they are data, not per-call work.)

The functions are torch.export-friendly for static shapes (their Python loops depend on shapes only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "fold_sum",
    "exp",
    "dequant",
    "rmsnorm",
    "rope_tables",
    "rope",
    "softmax",
    "silu",
    "gelu",
    "swiglu",
    "relu2",
    "relu",
    "layernorm",
    "add",
    "linear",
]

# Cody–Waite split of ln 2 (the high part has 21 trailing zero bits, so k·LN2_HI is exact for |k| < 2^21).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_EXP_DEGREE = 13  # Taylor degree; truncation error < 5e-18 relative for |r| ≤ ln2/2
_EXP_CLAMP = 700.0  # exp(±700) is finite in float64; results far outside float32's range anyway


def fold_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis in a fixed order; returns shape ``(..., 1)`` in ``x``'s dtype.

    The axis (length n) is zero-padded to the next power of two P, then halved ``log2 P`` times with
    ``x = x[..., :h] + x[..., h:]`` (each step one elementwise IEEE add). Appending zeros to a row does not
    change its sum (the extra upper halves only add +0), so a row gives the same sum whatever the padding.
    """
    n = x.shape[-1]
    p = 1 << max(n - 1, 0).bit_length()
    if p != n:
        x = F.pad(x, (0, p - n))
    while x.shape[-1] > 1:
        h = x.shape[-1] // 2
        x = x[..., :h] + x[..., h:]
    return x


def exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) computed in float64 with basic operations only; returns float64 (the caller rounds).

    ``z = clamp(x, -700, 700)``; ``k = round_half_even(z · (1/ln2))``; ``r = (z − k·LN2_HI) − k·LN2_LO``;
    ``p = Horner(r)`` for the degree-13 Taylor polynomial, one multiply and one add per step, coefficients
    ``1/i!`` as float64; result ``p · 2^k`` with 2^k built from its exponent bits (exact). Relative error
    ~1e-16, so rounding the result to float32 almost always gives the correctly rounded expf; more
    importantly it is the same on every machine and for every element position.
    """
    z = torch.clamp(x.to(torch.float64), -_EXP_CLAMP, _EXP_CLAMP)
    k = torch.round(z * _INV_LN2)
    r = (z - k * _LN2_HI) - k * _LN2_LO
    p = torch.full_like(r, 1.0 / math.factorial(_EXP_DEGREE))
    for i in range(_EXP_DEGREE - 1, -1, -1):
        p = p * r + 1.0 / math.factorial(i)
    two_k = ((k.to(torch.int64) + 1023) << 52).view(torch.float64)
    return p * two_k


def dequant(
    y_int: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor | float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """A ternary linear's int32 result back to float32: ``float32(y_int) · (s_x · s_w)`` (the scales'
    product first, then one float32 product per element), then ``+ float32(bias)`` when given (one add).

    ``y_int`` int32 (T, N), ``s_x`` float32 (T, 1) (per token), ``s_w`` a float holding a float32 value or a
    float32 (N,) tensor (per output row: ``s_x · s_w`` is the (T, N) outer product). The same expression as
    ``BitLinear(mode="int")`` (models.bitlinear); the Program's ``dequant`` host op and every host op with
    the dequantization fused in (``dequant+<kind>``, compiler.passes.fuse_dequant) call it."""
    y = y_int.to(torch.float32) * (s_x.to(torch.float32) * s_w)
    return y if bias is None else y + bias.to(torch.float32)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis (float32): ``ms = fold_sum(x·x) / d``; ``r = sqrt(ms + eps)``;
    ``y = (x / r) · weight``. Each step is one float32 operation in that order."""
    x = x.to(torch.float32)
    ms = fold_sum(x * x) / x.shape[-1]
    r = torch.sqrt(ms + eps)
    return (x / r) * weight.to(torch.float32)


def rope_tables(n_pos: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of rotary embeddings, float32 ``(n_pos, head_dim // 2)``.

    For pair i (0 ≤ i < head_dim/2): ``inv_freq_i = theta ** (-(2i) / head_dim)`` and angle ``p · inv_freq_i``,
    both Python float64; ``math.cos``/``math.sin`` in float64, then rounded to float32. On the meta device the
    tables are empty meta tensors.
    """
    if head_dim % 2:
        raise ValueError(f"head_dim={head_dim}: RoPE needs an even head dimension")
    half = head_dim // 2
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "meta":
        return (torch.empty(n_pos, half, device=device), torch.empty(n_pos, half, device=device))
    inv = [theta ** (-(2 * i) / head_dim) for i in range(half)]
    ang = [[p * f for f in inv] for p in range(n_pos)]
    cos = torch.tensor([[math.cos(a) for a in row] for row in ang], dtype=torch.float32, device=device)
    sin = torch.tensor([[math.sin(a) for a in row] for row in ang], dtype=torch.float32, device=device)
    return cos.reshape(n_pos, half), sin.reshape(n_pos, half)


def rope(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, rotate-half convention (as Llama / BitNet-b1.58-2B in transformers).

    ``x`` is ``(..., T, head_dim)`` float32, ``positions`` ``(T,)`` int64 absolute positions, ``cos``/``sin``
    the tables of :func:`rope_tables`. Pair i is (x[i], x[i + head_dim/2]); with ``c = cos[positions]``,
    ``s = sin[positions]``: ``out[:h] = x[:h]·c − x[h:]·s``, ``out[h:] = x[h:]·c + x[:h]·s`` (two float32
    products, then one add/subtract).
    """
    h = x.shape[-1] // 2
    c = cos[positions]
    s = sin[positions]
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, float32: ``m = max(x)``; ``z = x − m`` (float32); ``e = float32(exp(z))``
    (:func:`exp`, −inf gives 0); ``s = fold_sum(e)``; ``p = e / s``. Masked entries are −inf; a row needs
    at least one finite entry."""
    x = x.to(torch.float32)
    z = x - x.amax(dim=-1, keepdim=True)
    e = exp(z).to(torch.float32)
    return e / fold_sum(e)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU, float32 result: ``float32(x64 / (1 + exp(−x64)))`` with x64 = float64(x) and :func:`exp`."""
    x64 = x.to(torch.float64)
    return (x64 / (exp(-x64) + 1.0)).to(torch.float32)


# GELU (PyTorch's two definitions): the normal CDF from erfc, computed in float64 with basic operations only
_SQRT1_2 = 0.70710678118654752440  # 1/√2
_INV_SQRT_PI = 0.56418958354775628695  # 1/√π
_ERF_SPLIT = 2.0  # erfc(t): Taylor series of erf below, continued fraction at and above
_ERF_TERMS = 60  # Taylor terms; the last one is < 1e-30 at t = 2
_ERFC_DEPTH = 100  # continued-fraction depth; converged to ~1e-13 relative at t = 2
_GELU_TANH_K = 0.79788456080286535588  # √(2/π), as PyTorch's approximate="tanh"


def erfc_pos(t: torch.Tensor) -> torch.Tensor:
    """erfc(t) for float64 ``t ≥ 0``, float64, relative error below 3e-13 (enough for a float32 GELU even where
    erfc is tiny), from basic operations in a fixed order:

    * ``t < 2``: ``1 − erf(t)`` with ``erf(t) = (2/√π) Σ_{n<60} (−1)^n t^(2n+1) / (n!·(2n+1))``; the terms are
      built as ``c_0 = a``, ``c_n = c_(n−1) · (−a²) / n`` and summed in order n = 0, 1, ... (a = min(t, 2));
    * ``t ≥ 2``: the continued fraction ``erfc(t) = exp(−t²) / (√π · f)``, ``f = t + (1/2)/(t + (2/2)/(t +
      (3/2)/(t + …)))``, evaluated from depth 100 inwards (``f = b``; ``f = b + (k/2)/f`` for k = 100 … 1,
      b = max(t, 2)) with :func:`exp` (its argument clamps at −700: erfc beyond t ≈ 26.5 is 1e-304
      instead of smaller, far below what a float32 GELU can show).
    """
    a = torch.clamp(t, max=_ERF_SPLIT)
    neg_a2 = -(a * a)
    c = a
    s = a
    for n in range(1, _ERF_TERMS):
        c = c * neg_a2 / n
        s = s + c / (2 * n + 1)
    small = 1.0 - s * (2.0 * _INV_SQRT_PI)
    b = torch.clamp(t, min=_ERF_SPLIT)
    f = b
    for k in range(_ERFC_DEPTH, 0, -1):
        f = b + (k / 2) / f
    large = exp(-(b * b)) * _INV_SQRT_PI / f
    return torch.where(t < _ERF_SPLIT, small, large)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU as ``torch.nn.functional.gelu`` defines it, float32 result, deterministic (module doc):

    * ``approximate="none"``: ``x · Φ(x)``, ``Φ(x) = ½·erfc(−x/√2)``: with ``x64 = float64(x)``,
      ``z = x64 · (1/√2)``, ``c = erfc_pos(|z|)`` (:func:`erfc_pos`), ``Φ = ½·c`` if ``z < 0`` else
      ``1 − ½·c``; result ``float32(x64 · Φ)``;
    * ``approximate="tanh"``: ``½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`` rewritten exactly as
      ``x / (1 + exp(−2u))`` with ``u = √(2/π) · (x64 + 0.044715 · x64·x64·x64)``; result ``float32`` of
      that (:func:`exp`).

    On 120,000 test points in −14..14 both gave the correctly rounded float32 of the exact formula (evaluated
    per element with Python's ``math.erfc`` / ``math.exp``); PyTorch's own float32 ``F.gelu`` differs from them
    by at most ~1.2e-6 absolute (its ``1 + erf`` cancels for negative x). tests/test_graphs_more.py checks
    both bounds."""
    x64 = x.to(torch.float64)
    if approximate == "tanh":
        u = _GELU_TANH_K * (x64 + 0.044715 * (x64 * x64 * x64))
        return (x64 / (exp(-2.0 * u) + 1.0)).to(torch.float32)
    if approximate != "none":
        raise ValueError(f"gelu: approximate={approximate!r}; expected 'none' or 'tanh'")
    z = x64 * _SQRT1_2
    c = erfc_pos(torch.abs(z))
    phi = torch.where(z < 0, 0.5 * c, 1.0 - 0.5 * c)
    return (x64 * phi).to(torch.float32)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU gating: ``silu(gate) · up`` (float32 product)."""
    return silu(gate) * up.to(torch.float32)


def relu2(gate: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """Squared ReLU ``r·r`` with ``r = max(gate, 0)``; with ``up`` given, the gated form of BitNet-b1.58-2B,
    ``(r·r) · up`` (float32 products in that order)."""
    r = torch.clamp_min(gate.to(torch.float32), 0.0)
    y = r * r
    return y if up is None else y * up.to(torch.float32)


def relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU ``max(x, 0)``, float32 (exact)."""
    return torch.clamp_min(x.to(torch.float32), 0.0)


def layernorm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """LayerNorm over the last axis (float32): ``mu = fold_sum(x) / d``; ``c = x − mu``;
    ``var = fold_sum(c·c) / d``; ``y = (c / sqrt(var + eps)) · weight + bias`` (each step one float32
    operation in that order; a missing weight or bias is skipped)."""
    x = x.to(torch.float32)
    d = x.shape[-1]
    c = x - fold_sum(x) / d
    y = c / torch.sqrt(fold_sum(c * c) / d + eps)
    if weight is not None:
        y = y * weight.to(torch.float32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Residual add, float32."""
    return x.to(torch.float32) + y.to(torch.float32)


def linear(x: torch.Tensor, weight: torch.Tensor, max_elems: int = 1 << 22) -> torch.Tensor:
    """Float32 ``x @ weight.T`` with a fixed summation order (the LM head, which stays on the host).

    ``y[m, n] = fold_sum(x[m, :] · weight[n, :])``: float32 products, then :func:`fold_sum` over K. Rows of x
    are processed in chunks of at most ``max_elems`` products (memory only; results do not depend on it).
    """
    x = x.to(torch.float32)
    w = weight.to(torch.float32)
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    rows = max(1, max_elems // max(1, w.shape[0] * k))
    outs = [fold_sum(x2[i : i + rows, None, :] * w[None, :, :])[..., 0] for i in range(0, x2.shape[0], rows)]
    y = torch.cat(outs, dim=0) if outs else x2.new_zeros(0, w.shape[0])
    return y.reshape(*lead, w.shape[0])
