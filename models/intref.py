"""The integer reference of a general module built from Tritium's supported pieces.

``int_reference(module, *inputs)`` runs ``module(*inputs)`` with every supported piece computing the
definition the compiled Program computes (docs/models.md, "General graphs"):

=====================================  =====================================================================
piece                                  computed as
=====================================  =====================================================================
``models.bitlinear.BitLinear``         ``mode="int"`` (ternary weights × int8 activations; per tensor or,
                                       ``per_channel=True``, per output row), whatever mode the forward passes
``models.w8a8.Int8Linear``             ``mode="int"`` (W8A8)
``models.w8a8.FixedInt8Linear``,       W8A8 with the layer's own int8 codes and per-row scales
``torch.ao...dynamic.Linear`` (qint8)  (:func:`models.w8a8.ao_dynamic_params`); activations per token
``models.lm.RMSNorm``, ``nn.RMSNorm``  :func:`models.hostops.rmsnorm`
``nn.LayerNorm``, ``F.layer_norm``     :func:`models.hostops.layernorm`
``nn.SiLU``, ``F.silu``                :func:`models.hostops.silu`
``nn.GELU``, ``F.gelu``                :func:`models.hostops.gelu` (``approximate="none"`` or ``"tanh"``)
``models.attention.SelfAttention``     its projections as above, its core :func:`models.attention.self_attention_int`
a linear layer's bias                  :func:`models.bitlinear.add_bias`: ``y + b`` in float32 after the
                                       dequantization
ReLU, ``+``, ``*``, ``x**2``           as PyTorch computes them (single IEEE operations: every
                                       implementation gives the same bits)
=====================================  =====================================================================

The substitution is one table, :func:`piece_patches`, which the compiler's capture (compiler/capture.py)
also uses with its custom ops in place of these functions, so reference and capture cannot diverge on what
a piece means.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import hostops, lm
from models.attention import SelfAttention, self_attention_int
from models.bitlinear import BitLinear, add_bias
from models.w8a8 import FixedInt8Linear, Int8Linear, ao_dynamic_params, w8a8_linear

__all__ = ["piece_patches", "patched", "int_reference", "REFERENCE_IMPLS"]


def _rmsnorm_eps(norm: nn.RMSNorm, x: torch.Tensor) -> float:
    return float(norm.eps) if norm.eps is not None else float(torch.finfo(x.dtype).eps)


#: name → function with the semantics of the piece (the reference's; capture passes its custom ops)
REFERENCE_IMPLS = {
    "bitlinear": lambda x, w, per_channel=False: _bitlinear_int(x, w, per_channel),
    "int8linear": lambda x, w: _int8linear_int(x, w),
    "rmsnorm": lambda x, w, eps: hostops.rmsnorm(x, w, eps),
    "layernorm": lambda x, w, b, eps: hostops.layernorm(x, w, b, eps),
    "silu": lambda x: hostops.silu(x),
    "gelu": lambda x, approximate: hostops.gelu(x, approximate),
    "bias": lambda y, b: add_bias(y, b),
    "attention": lambda q, k, v, h, hkv, causal, div: self_attention_int(q, k, v, h, hkv, causal, div),
    "int8linear_fixed": lambda x, wq, sw: w8a8_linear(x, wq, sw)[2],
}


def _bitlinear_int(x, w, per_channel=False):
    from models.bitlinear import int_matmul, quantize_act, ternary_weight, ternary_weight_rows

    wq, sw = ternary_weight_rows(w) if per_channel else ternary_weight(w)
    xq, sx = quantize_act(x)
    return int_matmul(xq, wq.T).to(torch.float32) * (sx * sw)


def _int8linear_int(x, w):
    from models.w8a8 import quantize_weight_rows, w8a8_linear

    return w8a8_linear(x, *quantize_weight_rows(w))[2]


def _ao_dynamic_linear():
    import torch.ao.nn.quantized.dynamic as nnqd

    return nnqd.Linear


def piece_patches(impl: dict) -> list[tuple[object, str, object]]:
    """(owner, attribute, replacement) for every supported piece, calling ``impl[name]``."""

    def biased(y, bias):
        return y if bias is None else impl["bias"](y, bias)

    def bitlinear_forward(self, x, mode=None):
        return biased(impl["bitlinear"](x, self.weight, self.per_channel), self.bias)

    def int8_forward(self, x, mode=None):
        return biased(impl["int8linear"](x, self.weight), self.bias)

    def fixed_int8_forward(self, x, mode=None):
        return biased(impl["int8linear_fixed"](x, self.weight_q, self.weight_scale), self.bias)

    def ao_dynamic_forward(self, x):  # torch.ao.nn.quantized.dynamic.Linear: its codes as FixedInt8Linear
        wq, sw, b = ao_dynamic_params(self)
        return biased(impl["int8linear_fixed"](x, wq, sw), b)

    def attention_forward(self, x, mode=None):
        if not (x.ndim == 2 or (x.ndim == 3 and x.shape[0] == 1)):
            raise ValueError(
                f"SelfAttention: input of shape {list(x.shape)}; one sequence (T, features) or "
                "(1, T, features) is supported"
            )
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # the (patched) projections
        out = impl["attention"](q, k, v, self.n_heads, self.n_kv_heads, self.causal, float(self.score_div))
        return self.o_proj(out)

    def lm_rmsnorm_forward(self, x, mode=None):
        return impl["rmsnorm"](x, self.weight, float(self.eps))

    def nn_rmsnorm_forward(self, x):
        if tuple(self.normalized_shape) != (x.shape[-1],):
            raise ValueError("nn.RMSNorm over more than the last axis is not supported")
        if self.weight is None:
            raise ValueError("nn.RMSNorm without elementwise_affine is not supported (give it a weight)")
        return impl["rmsnorm"](x, self.weight, _rmsnorm_eps(self, x))

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        if tuple(normalized_shape) != (x.shape[-1],):
            raise ValueError(
                f"layer_norm: normalized_shape {tuple(normalized_shape)} on an input of {x.shape[-1]} features "
                "(only the last axis is supported)"
            )
        return impl["layernorm"](x, weight, bias, float(eps))

    def silu(x, inplace=False):
        return impl["silu"](x)

    def gelu(x, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate={approximate!r}; expected 'none' or 'tanh'")
        return impl["gelu"](x, approximate)

    return [
        (BitLinear, "forward", bitlinear_forward),
        (Int8Linear, "forward", int8_forward),
        (FixedInt8Linear, "forward", fixed_int8_forward),
        (_ao_dynamic_linear(), "forward", ao_dynamic_forward),
        (SelfAttention, "forward", attention_forward),
        (lm.RMSNorm, "forward", lm_rmsnorm_forward),
        (nn.RMSNorm, "forward", nn_rmsnorm_forward),
        (F, "layer_norm", layer_norm),
        (F, "silu", silu),
        (F, "gelu", gelu),
    ]


@contextlib.contextmanager
def patched(patches):
    """Apply ``(owner, attribute, replacement)`` patches for the duration of the block."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, new in patches:
            setattr(owner, name, new)
        yield
    finally:
        for owner, name, old in reversed(saved):
            setattr(owner, name, old)


@torch.no_grad()
def int_reference(module: nn.Module, *inputs):
    """``module(*inputs)`` with every supported piece computing its integer / host definition (module doc)."""
    with patched(piece_patches(REFERENCE_IMPLS)):
        return module(*inputs)
