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

__all__ = [
    "quantize_weight_rows",
    "dequant_rows",
    "w8a8_linear",
    "Int8Linear",
    "FixedInt8Linear",
    "ao_dynamic_params",
    "convert_ao_dynamic",
    "UnsupportedModule",
]


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


# ---------------------------------------------------------------- torch.ao dynamically quantized linears
#: the torch.ao module this file converts (``torch.ao.quantization.quantize_dynamic``'s qint8 ``nn.Linear``)
AO_DYNAMIC_LINEAR = "torch.ao.nn.quantized.dynamic.Linear"


def _ao_dynamic_linear_type():
    import torch.ao.nn.quantized.dynamic as nnqd

    return nnqd.Linear


def is_ao_quantized(m: nn.Module) -> bool:
    """``m`` is a torch.ao quantized module (static or dynamic)."""
    return type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))


def ao_dynamic_params(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(codes int8 (N, K), scales float32 (N,), bias float32 (N,) or None)`` of a
    ``torch.ao.nn.quantized.dynamic.Linear`` with qint8 weights: torch's own weight codes (``int_repr``) and
    scales (per tensor: one scale for every row; per channel: one per output row), rounded to float32.
    Raises ValueError naming what is not supported (float16 weights, a non-zero weight zero point, per-channel
    quantization along another axis)."""
    name = type(m).__name__
    if not isinstance(m, _ao_dynamic_linear_type()):
        raise ValueError(f"{type(m).__module__}.{name} is not {AO_DYNAMIC_LINEAR}")
    if m._packed_params.dtype != torch.qint8:
        raise ValueError(
            f"{AO_DYNAMIC_LINEAR} with {m._packed_params.dtype} weights is not supported; quantize_dynamic with "
            "dtype=torch.qint8 (int8 weights) maps onto the int8 GEMM"
        )
    w = m.weight()
    codes = w.int_repr().to(torch.int8)
    n = codes.shape[0]
    if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        if int(w.q_zero_point()) != 0:
            raise ValueError(
                f"{AO_DYNAMIC_LINEAR}: weight zero point {int(w.q_zero_point())}; only 0 is supported"
            )
        scales = torch.full((n,), float(w.q_scale()), dtype=torch.float32)
    elif w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        if int(w.q_per_channel_axis()) != 0 or bool(w.q_per_channel_zero_points().ne(0).any()):
            raise ValueError(
                f"{AO_DYNAMIC_LINEAR}: per-channel weights need axis 0 and zero points 0 (symmetric)"
            )
        scales = w.q_per_channel_scales().to(torch.float32)
    else:
        raise ValueError(f"{AO_DYNAMIC_LINEAR}: weight qscheme {w.qscheme()} is not supported")
    b = m.bias()
    return codes, scales, None if b is None else b.detach().to(torch.float32)


class UnsupportedModule(ValueError):
    """A submodule the conversion cannot take; ``path`` is its qualified name in the module."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


class FixedInt8Linear(nn.Module):
    """A W8A8 linear layer with *given* int8 weight codes and float32 per-row scales (buffers ``weight_q``,
    ``weight_scale``) and an optional float32 ``bias``: ``y = y_int·(s_x·s_wᵀ) + b`` with ``y_int =
    int_matmul(quantize_act(x)[0], weight_qᵀ)`` — :func:`w8a8_linear` without re-quantizing the weights. It is
    what :func:`convert_ao_dynamic` makes of a ``torch.ao.nn.quantized.dynamic.Linear``; the compiler maps it
    onto the GEMM engine like :class:`Int8Linear`."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if codes.dtype != torch.int8 or codes.ndim != 2 or tuple(scales.shape) != (codes.shape[0],):
            raise ValueError("FixedInt8Linear: codes int8 (N, K) and scales (N,)")
        self.out_features, self.in_features = (int(s) for s in codes.shape)
        self.register_buffer("weight_q", codes.clone())
        self.register_buffer("weight_scale", scales.to(torch.float32).clone())
        self.bias = (
            None if bias is None else nn.Parameter(bias.to(torch.float32).clone(), requires_grad=False)
        )

    @classmethod
    def from_ao(cls, m: nn.Module) -> FixedInt8Linear:
        return cls(*ao_dynamic_params(m))

    def forward(self, x: torch.Tensor, mode: str = "int") -> torch.Tensor:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        if mode == "float":  # the dequantized weights in a float product
            return F.linear(x, self.weight_q.to(torch.float32) * self.weight_scale[:, None], self.bias)
        return add_bias(w8a8_linear(x, self.weight_q, self.weight_scale)[2], self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fixed int8 weights per row"


def convert_ao_dynamic(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every ``torch.ao.nn.quantized.dynamic.Linear`` (qint8) replaced by a
    :class:`FixedInt8Linear` holding torch's weight codes, scales and bias (``module`` itself is unchanged).
    Any other torch.ao quantized module raises :class:`UnsupportedModule` (a ValueError) naming it and the
    supported alternatives."""
    import copy

    def has_ao(m):
        return any(is_ao_quantized(c) for c in m.modules())

    if not has_ao(module):
        return module
    out = copy.deepcopy(module)

    def walk(parent: nn.Module, prefix: str):
        for name, child in parent.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, _ao_dynamic_linear_type()):
                try:
                    setattr(parent, name, FixedInt8Linear.from_ao(child))
                except ValueError as e:
                    raise UnsupportedModule(path, str(e)) from None
            elif is_ao_quantized(child):
                raise UnsupportedModule(
                    path,
                    f"unsupported module {type(child).__module__}.{type(child).__name__}; supported "
                    f"torch.ao modules: {AO_DYNAMIC_LINEAR} (qint8, from quantize_dynamic) → int8 GEMM; or "
                    "use models.w8a8.Int8Linear / models.bitlinear.BitLinear",
                )
            else:
                walk(child, f"{path}.")

    walk(out, "")
    return out
