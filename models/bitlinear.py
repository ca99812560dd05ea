"""BitLinear: the BitNet b1.58 linear layer (ternary weights, int8 activations), in three modes.

Numeric definition (the same as :mod:`hw.ternary`, docs/design.md "Numeric definition"; tested bit for bit):

* Weights, absmean per tensor: ``s_w = max(mean|w|, 1e-5)``, ``wq = clip(round(w / s_w), -1, 1)``. The mean
  is numpy's float32 mean; :func:`ternary_weight` calls :func:`hw.ternary.quantize_weights` itself, because
  torch's float32 sum adds in another order and differs from numpy's in the last bit. ``s_w`` is used as
  float32.
* Activations, absmax per token (last axis): ``a = max|x|`` (an all-zero row uses ``a = 127``: scale 1, q 0),
  ``q = clip(round(x · (127 / a)), -128, 127)`` — the float32 quotient 127/a first, then one float32 product,
  exactly as numpy does it — and ``s_x = a / 127`` (float32). ``round`` is round-half-to-even.

Modes of :meth:`BitLinear.forward`:

``"float"``  ``F.linear(x, w)``: no quantization (the float baseline of the same architecture).
``"fake"``   training forward: ``F.linear(x̂, ŵ)`` with ``x̂ = q·s_x`` and ``ŵ = wq·s_w`` (float32), gradients
             passed straight through both (``x + (x̂ − x).detach()``).
``"int"``    the integer reference, what the TLMM engine computes::

                 xq, s_x = quantize_act(x)                        # int8 (..., K), float32 (..., 1)
                 y_int   = int_matmul(xq, wq.T)                   # int32 (..., N), exact
                 y       = y_int.to(float32) * (s_x * s_w)        # s_x·s_w first (float32), then one product

             ``int_matmul`` sums int8·int8 products exactly in int64 and wraps to int32 (no valid shape
             wraps); the int32 → float32 conversion rounds to nearest even (exact for |y_int| ≤ 2^24).

The ternary weights of a layer are cached in the non-persistent buffers ``weight_q`` (int8) and
``weight_scale`` (float32, 0-d) and recomputed whenever the weight tensor changes (optimizer step,
``load_state_dict``, ``.to()``). Under ``torch.export`` the cache is used as it is: run one forward in int or
fake mode (or call :meth:`BitLinear.refresh`) before exporting.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hw.ternary import quantize_weights

__all__ = [
    "MODES",
    "quantize_act",
    "ternary_weight",
    "ternary_weight_rows",
    "int_matmul",
    "add_bias",
    "BitLinear",
]

MODES = ("float", "fake", "int")


def quantize_act(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax per token over the last axis → ``(q int8, scale float32 (..., 1))`` with ``x ≈ q·scale``.

    Bit-identical to :func:`hw.ternary.quantize_activations`: ``a = max|x|`` (a row of zeros uses
    ``a = qmax``, giving scale 1 and q = 0), ``q = clip(round_half_even(x · (qmax / a)), -qmax-1, qmax)``,
    ``scale = a / qmax``, all in float32.
    """
    x = x.to(torch.float32)
    qmax = (1 << (bits - 1)) - 1
    amax = x.abs().amax(dim=-1, keepdim=True)
    amax = torch.where(amax > 0, amax, torch.full_like(amax, qmax))
    # A tensor numerator: torch computes `scalar / tensor` as reciprocal(tensor)·scalar (two roundings).
    inv = torch.full_like(amax, qmax) / amax
    q = torch.clamp(torch.round(x * inv), -qmax - 1, qmax).to(torch.int8)
    return q, amax / qmax


def ternary_weight(w: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Absmean ternary weights → ``(wq int8 in {-1, 0, 1} on w's device, s_w)`` — exactly
    :func:`hw.ternary.quantize_weights` (``s_w`` is a Python float holding a float32 value or 1e-5)."""
    wq, scale = quantize_weights(w.detach().to("cpu", torch.float32).numpy())
    return torch.from_numpy(np.ascontiguousarray(wq)).to(w.device), scale


def ternary_weight_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel absmean ternary weights: the per-tensor rule (:func:`ternary_weight`) applied to each output
    row → ``(wq int8 (N, K), s_w float32 (N,))`` (``BitLinear(..., per_channel=True)``)."""
    rows = [quantize_weights(r) for r in w.detach().to("cpu", torch.float32).numpy()]
    wq = np.stack([r[0] for r in rows]) if rows else np.zeros(tuple(w.shape), np.int8)
    s = np.array([r[1] for r in rows], np.float32)
    return torch.from_numpy(np.ascontiguousarray(wq)).to(w.device), torch.from_numpy(s).to(w.device)


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact integer ``a @ b`` of int8 operands (int64 products and sums), wrapped to int32."""
    return torch.matmul(a.to(torch.int64), b.to(torch.int64)).to(torch.int32)


def add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A linear layer's bias in the integer reference: ``y + float32(bias)`` after the dequantization (one
    float32 add per element, on the host: the Program's dequant op does the same add); no bias: ``y``."""
    return y if bias is None else y + bias.to(torch.float32)


def _exporting() -> bool:
    comp = torch.compiler
    return bool(comp.is_compiling() or (hasattr(comp, "is_exporting") and comp.is_exporting()))


class BitLinear(nn.Linear):
    """``nn.Linear`` whose forward is BitNet b1.58's, in mode ``"float" | "fake" | "int"``.
    ``per_channel=True`` scales each output row by its own absmean (:func:`ternary_weight_rows`); the int
    forward is the same expression, ``s_x · s_w`` then being the (…, N) outer product. ``bias=True`` (not
    BitNet's; for general graphs) adds a float32 bias after the dequantization: ``y_int·(s_x·s_w) + b``,
    one float32 add (:func:`add_bias`), in every mode."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        device=None,
        dtype=None,
        per_channel: bool = False,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.per_channel = per_channel
        self.register_buffer("weight_q", None, persistent=False)
        self.register_buffer("weight_scale", None, persistent=False)
        self._cache_key = None

    def refresh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(weight_q int8 (out, in), weight_scale float32 0-d)``, recomputing them if the weight
        changed since they were cached."""
        w = self.weight
        if _exporting():
            if self.weight_q is None:
                raise RuntimeError(
                    "BitLinear: ternary weights not cached; run a forward in int or fake mode "
                    "(or call refresh()) before exporting"
                )
            return self.weight_q, self.weight_scale
        key = (w.data_ptr(), w._version, w.device, tuple(w.shape))
        if self.weight_q is None or key != self._cache_key:
            if self.per_channel:
                self.weight_q, self.weight_scale = ternary_weight_rows(w)
            else:
                wq, scale = ternary_weight(w)
                self.weight_q = wq
                self.weight_scale = torch.tensor(scale, dtype=torch.float32, device=w.device)
            self._cache_key = key
        return self.weight_q, self.weight_scale

    def forward(self, x: torch.Tensor, mode: str = "fake") -> torch.Tensor:
        if mode == "float":
            return F.linear(x, self.weight, self.bias)
        wq, sw = self.refresh()
        if mode == "fake":
            xq, sx = quantize_act(x)
            x_hat = x + (xq.to(torch.float32) * sx - x).detach()
            sw_w = sw[:, None] if sw.ndim else sw  # per channel: one scale per output row
            w_hat = self.weight + (wq.to(torch.float32) * sw_w - self.weight).detach()
            return F.linear(x_hat, w_hat, self.bias)
        if mode == "int":
            xq, sx = quantize_act(x)
            return add_bias(int_matmul(xq, wq.T).to(torch.float32) * (sx * sw), self.bias)
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, ternary weights, int8 activations"
