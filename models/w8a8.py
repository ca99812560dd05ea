"""W8A8 linear layers: int8 weights per output row × int8 activations per token, on the GEMM engine.

One numeric definition, shared with the ``acc_int8`` LM head (models/lm_head.py calls these functions):

    wq, s_w = quantize_weight_rows(W)       # absmax per output row: int8 (N, K), s_w float32 (N,)
    xq, s_x = quantize_act(x)               # absmax per token (models.bitlinear.quantize_act): int8, (…, 1)
    y_int   = int_matmul(xq, wqᵀ)           # int32 (…, N): the GEMM engine, no requantization
    y       = y_int.to(f32) * (s_x * s_wᵀ)  # the float32 outer product first, then one product

``quantize_weight_rows`` is ``quantize_act`` over each row of W (``s_w = max|W[n]| / 127``, codes in
−127..127), so weights and activations follow the one absmax rule of docs/design.md ("Numeric definition").
``|y_int| ≤ K·127·128`` cannot wrap int32 for any K the GEMM fields allow. A bias ``b`` is added after that,
``y + float32(b)`` (one float32 add, on the host in the Program's ``int8_dequant``).

:class:`Int8Linear` is an ``nn.Linear`` (optionally with a bias) whose forward takes the modes of
:class:`models.bitlinear.BitLinear` (``float``, ``fake`` with straight-through estimators, ``int`` = the
integer reference above). The compiler (``compiler.compile_model(module, acfg, example_inputs=...)``) maps it
to GEMM commands over int8 B panels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.bitlinear import MODES, add_bias, int_matmul, quantize_act

__all__ = ["quantize_weight_rows", "dequant_rows", "w8a8_linear", "Int8Linear"]


def quantize_weight_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wq int8 (N, K), s_w float32 (N,))``: absmax per output row (:func:`quantize_act` over each row)."""
    wq, s = quantize_act(w.detach())
    return wq, s[:, 0]


def dequant_rows(y_int: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """``y_int.to(f32) * (s_x * s_wᵀ)``: ``y_int`` int32 (rows, N), ``s_x`` float32 (rows, 1), ``s_w`` (N,)."""
    return y_int.to(torch.float32) * (s_x.to(torch.float32) * s_w.to(torch.float32)[None, :])


def w8a8_linear(
    x: torch.Tensor, wq: torch.Tensor, s_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The W8A8 product of ``x`` (..., K): ``(y_int int32 (..., N), s_x (..., 1), y float32 (..., N))``."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    xq, sx = quantize_act(x2)
    y = int_matmul(xq, wq.T)
    out = dequant_rows(y, sx, s_w)
    return y.reshape(*lead, -1), sx.reshape(*lead, 1), out.reshape(*lead, -1)


class Int8Linear(nn.Linear):
    """``nn.Linear`` with int8 per-row weights and int8 per-token activations (module doc); a bias is added in
    float32 after the dequantization (:func:`models.bitlinear.add_bias`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> Int8Linear:
        """An Int8Linear with the float weights (and bias, if any) of an ``nn.Linear``."""
        m = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device=lin.weight.device)
        with torch.no_grad():
            m.weight.copy_(lin.weight)
            if lin.bias is not None:
                m.bias.copy_(lin.bias)
        return m

    def forward(self, x: torch.Tensor, mode: str = "fake") -> torch.Tensor:
        if mode == "float":
            return F.linear(x, self.weight, self.bias)
        if mode == "fake":
            wq, sw = quantize_weight_rows(self.weight)
            xq, sx = quantize_act(x)
            x_hat = x + (xq.to(torch.float32) * sx - x).detach()
            w_hat = self.weight + (wq.to(torch.float32) * sw[:, None] - self.weight).detach()
            return F.linear(x_hat, w_hat, self.bias)
        if mode == "int":
            wq, sw = quantize_weight_rows(self.weight)
            return add_bias(w8a8_linear(x, wq, sw)[2], self.bias)
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights per row, int8 activations"
