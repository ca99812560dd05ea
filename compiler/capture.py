"""Capture a ternary LM with ``torch.export`` at the granularity the compiler maps onto the accelerator.

The model's integer reference forward (``mode="int"``) is traced with its building blocks replaced by
*custom ops* (``torch.library``, namespace ``tritium``), so the exported graph holds one node per block
instead of their decomposition into aten ops:

===========================  ========================================================================
op                           semantics (exactly the model's ``mode="int"`` code, which these call)
===========================  ========================================================================
``tritium::bitlinear``       int8 activations (absmax per token) × ternary weights (absmean) → float32
``tritium::attention``       RoPE, int8 Q·Kᵀ, scale, causal mask, softmax, int8 P·V over ``positions``
``tritium::rmsnorm``         hostops.rmsnorm
``tritium::swiglu``          hostops.swiglu (gate, up)
``tritium::relu2``           hostops.relu2 (gate, up)
``tritium::add``             hostops.add (residual)
``tritium::linear``          hostops.linear (float LM head)
===========================  ========================================================================

Everything else in the graph must be shape bookkeeping the compiler understands (``aten.embedding`` for
the token embedding, ``aten.arange`` for positions); any other op is reported by :mod:`compiler.ir` with
the module path and source line it comes from. The export is checked against the model: running the
exported program gives logits bit-identical to ``model(tokens, mode="int")`` (tests).
"""

from __future__ import annotations

import contextlib

import torch

from models import hostops, intref, lm
from models.attention import self_attention_int
from models.bitlinear import BitLinear, int_matmul, quantize_act, ternary_weight

__all__ = ["capture", "capture_module", "attention_int", "IntForward"]


# ------------------------------------------------------------------ the int-mode attention, one function
def attention_int(
    q, k, v, positions, cos, sin, n_heads: int, n_kv_heads: int, score_div: float, cache_k=None, cache_v=None
):
    """The model's int-mode attention core on flat projections ``q (B,T,H·hd)``, ``k, v (B,T,Hkv·hd)``.

    Same operations, same order as :meth:`models.lm.Attention.forward` with ``mode="int"`` (that method
    is the reference; the compiler's tests check the two agree bit for bit). ``cache_k``/``cache_v`` are
    the earlier tokens' ``(kq, s_k)`` and ``(vq, s_v)`` or None. Returns ``(out (B,T,H·hd), kq, sk, vq, sv)``
    where the k/v tensors include the cache.
    """
    b, t, _ = q.shape
    h, hkv = n_heads, n_kv_heads
    hd = q.shape[-1] // h
    q = q.view(b, t, h, hd).transpose(1, 2)
    k = k.view(b, t, hkv, hd).transpose(1, 2)
    v = v.view(b, t, hkv, hd).transpose(1, 2)
    q = hostops.rope(q, positions, cos, sin)
    k = hostops.rope(k, positions, cos, sin)
    qq, sq = quantize_act(q)
    kq, sk = quantize_act(k)
    vq, sv = quantize_act(v)
    if cache_k is not None:
        kq, sk = torch.cat([cache_k[0], kq], dim=2), torch.cat([cache_k[1], sk], dim=2)
        vq, sv = torch.cat([cache_v[0], vq], dim=2), torch.cat([cache_v[1], sv], dim=2)
    rep = h // hkv
    kr, skr, vr, svr = kq, sk, vq, sv
    if rep > 1:
        kr, skr, vr, svr = (z.repeat_interleave(rep, dim=1) for z in (kq, sk, vq, sv))
    s = kr.shape[2]
    scores = int_matmul(qq, kr.transpose(-1, -2)).to(torch.float32) * (sq * skr.transpose(-1, -2))
    scores = scores / score_div
    visible = torch.arange(s, device=q.device)[None, :] <= positions[:, None]
    scores = torch.where(visible, scores, torch.full_like(scores, float("-inf")))
    p = hostops.softmax(scores) * svr.transpose(-1, -2)
    pq, sp = quantize_act(p)
    out = int_matmul(pq, vr).to(torch.float32) * sp
    return out.transpose(1, 2).reshape(b, t, h * hd), kq, sk, vq, sv


# ------------------------------------------------------------------ custom ops
# the host functions themselves (capture swaps the module attributes for the custom ops while tracing)
_rmsnorm_fn, _swiglu_fn, _relu2_fn, _add_fn, _linear_fn = (
    hostops.rmsnorm,
    hostops.swiglu,
    hostops.relu2,
    hostops.add,
    hostops.linear,
)


@torch.library.custom_op("tritium::bitlinear", mutates_args=())
def _bitlinear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    wq, sw = ternary_weight(weight)
    xq, sx = quantize_act(x)
    return int_matmul(xq, wq.T).to(torch.float32) * (sx * sw)


@_bitlinear.register_fake
def _(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)


@torch.library.custom_op("tritium::bitlinear_rows", mutates_args=())
def _bitlinear_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``tritium::bitlinear`` with per-channel ternary scales (``BitLinear(..., per_channel=True)``)."""
    return intref.REFERENCE_IMPLS["bitlinear"](x, weight, True)


@_bitlinear_rows.register_fake
def _(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)


@torch.library.custom_op("tritium::attention", mutates_args=())
def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    score_div: float,
) -> torch.Tensor:
    return attention_int(q, k, v, positions, cos, sin, n_heads, n_kv_heads, score_div)[0]


@_attention.register_fake
def _(q, k, v, positions, cos, sin, n_heads, n_kv_heads, score_div):
    return q.new_empty(q.shape, dtype=torch.float32)


@torch.library.custom_op("tritium::rmsnorm", mutates_args=())
def _rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rmsnorm_fn(x, weight, eps)


@_rmsnorm.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape, dtype=torch.float32)


def _swiglu_impl(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _swiglu_fn(gate, up)


def _relu2_impl(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _relu2_fn(gate, up)


def _add_impl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _add_fn(x, y)


_swiglu = torch.library.custom_op("tritium::swiglu", _swiglu_impl, mutates_args=())
_relu2 = torch.library.custom_op("tritium::relu2", _relu2_impl, mutates_args=())
_add = torch.library.custom_op("tritium::add", _add_impl, mutates_args=())
for _op in (_swiglu, _relu2, _add):
    _op.register_fake(lambda a, b: a.new_empty(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.float32))


@torch.library.custom_op("tritium::linear", mutates_args=())
def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _linear_fn(x, weight)


@_linear.register_fake
def _(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)


# general modules (capture_module): W8A8 linears, LayerNorm, SiLU
@torch.library.custom_op("tritium::int8linear", mutates_args=())
def _int8linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return intref.REFERENCE_IMPLS["int8linear"](x, weight)


@_int8linear.register_fake
def _(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)


@torch.library.custom_op("tritium::int8linear_fixed", mutates_args=())
def _int8linear_fixed(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    return intref.REFERENCE_IMPLS["int8linear_fixed"](x, weight_q, weight_scale)


@_int8linear_fixed.register_fake
def _(x, weight_q, weight_scale):
    return x.new_empty((*x.shape[:-1], weight_q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("tritium::layernorm", mutates_args=())
def _layernorm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    return hostops.layernorm(x, weight, bias, eps)


@_layernorm.register_fake
def _(x, weight, bias, eps):
    return x.new_empty(x.shape, dtype=torch.float32)


@torch.library.custom_op("tritium::silu", mutates_args=())
def _silu(x: torch.Tensor) -> torch.Tensor:
    return hostops.silu(x)


@_silu.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=torch.float32)


@torch.library.custom_op("tritium::gelu", mutates_args=())
def _gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return hostops.gelu(x, approximate)


@_gelu.register_fake
def _(x, approximate):
    return x.new_empty(x.shape, dtype=torch.float32)


@torch.library.custom_op("tritium::bias", mutates_args=())
def _bias(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return intref.REFERENCE_IMPLS["bias"](y, bias)


@_bias.register_fake
def _(y, bias):
    return y.new_empty(y.shape, dtype=torch.float32)


#: the integer attention core itself (models.attention.self_attention_int, the same function
#: intref.REFERENCE_IMPLS["attention"] calls), registered as an op: its typed signature is the op's schema
_self_attention = torch.library.custom_op("tritium::self_attention", mutates_args=())(self_attention_int)


@_self_attention.register_fake
def _(q, k, v, n_heads, n_kv_heads, causal, score_div):
    return q.new_empty(q.shape, dtype=torch.float32)


#: the custom ops standing in for the supported pieces of a general module (models.intref.piece_patches)
CAPTURE_IMPLS = {
    "bitlinear": lambda x, w, per_channel=False: (
        torch.ops.tritium.bitlinear_rows(x, w) if per_channel else torch.ops.tritium.bitlinear(x, w)
    ),
    "int8linear": lambda x, w: torch.ops.tritium.int8linear(x, w),
    "int8linear_fixed": lambda x, wq, sw: torch.ops.tritium.int8linear_fixed(x, wq, sw),
    "rmsnorm": lambda x, w, eps: torch.ops.tritium.rmsnorm(x, w, eps),
    "layernorm": lambda x, w, b, eps: torch.ops.tritium.layernorm(x, w, b, eps),
    "silu": lambda x: torch.ops.tritium.silu(x),
    "gelu": lambda x, approximate: torch.ops.tritium.gelu(x, approximate),
    "bias": lambda y, b: torch.ops.tritium.bias(y, b),
    "attention": lambda q, k, v, h, hkv, causal, div: torch.ops.tritium.self_attention(
        q, k, v, h, hkv, causal, div
    ),
}


def capture_module(module: torch.nn.Module, example_inputs: tuple) -> torch.export.ExportedProgram:
    """``torch.export`` of a general module (``module(*example_inputs)``) with its supported pieces routed
    through the custom ops (:data:`CAPTURE_IMPLS`, the table of :func:`models.intref.piece_patches`)."""
    with intref.patched(intref.piece_patches(CAPTURE_IMPLS)), torch.no_grad():
        return torch.export.export(module, tuple(example_inputs), strict=False)


def run_captured_module(ep: torch.export.ExportedProgram, *inputs) -> torch.Tensor:
    """Run an exported general module eagerly (its custom ops call the reference definitions)."""
    with torch.no_grad():
        return ep.module()(*inputs)


# ------------------------------------------------------------------ capture-time forwards
def _bitlinear_forward(self, x, mode="fake"):
    if mode != "int":
        raise ValueError("capture traces mode='int' only")
    return CAPTURE_IMPLS["bitlinear"](x, self.weight, self.per_channel)


def _attention_forward(self, x, cos, sin, positions, mode, cache, layer):
    q, k, v = self.q_proj(x, mode), self.k_proj(x, mode), self.v_proj(x, mode)
    out = torch.ops.tritium.attention(
        q, k, v, positions, cos, sin, self.n_heads, self.n_kv_heads, self.score_div
    )
    if self.sub_norm is not None:
        out = self.sub_norm(out, mode)
    return self.o_proj(out, mode)


@contextlib.contextmanager
def _capture_ops():
    """Route the model's int-mode blocks through the custom ops while tracing."""
    patches = [(BitLinear, "forward", _bitlinear_forward), (lm.Attention, "forward", _attention_forward)]
    patches += [
        (hostops, op, getattr(torch.ops.tritium, op))
        for op in ("rmsnorm", "swiglu", "relu2", "add", "linear")
    ]
    with intref.patched(patches):
        yield


class IntForward(torch.nn.Module):
    """``model(tokens, mode="int")`` as a module of its own, the form ``torch.export`` takes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(tokens, mode="int")


def capture(model: torch.nn.Module, seq_len: int = 8) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model(tokens (1, seq_len), mode="int")`` with the custom ops above.

    Works on real and on meta-device models (the ops have fake implementations)."""
    device = next(model.parameters()).device
    tokens = torch.zeros((1, seq_len), dtype=torch.int64, device=device)
    with _capture_ops(), torch.no_grad():
        return torch.export.export(IntForward(model), (tokens,), strict=False)


def run_captured(ep: torch.export.ExportedProgram, tokens: torch.Tensor) -> torch.Tensor:
    """Run an exported program eagerly (its custom ops call the model's int-mode code)."""
    with _capture_ops(), torch.no_grad():
        return ep.module()(tokens)
