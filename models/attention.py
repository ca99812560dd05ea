"""Multi-head self-attention for general graphs: :class:`SelfAttention`, bidirectional (an encoder's) or causal.

The compiler recognises attention in a general module (``compiler.compile_model(module, acfg,
example_inputs=...)``) as this module: its four projections are ordinary pieces (``BitLinear`` on the TLMM or
``Int8Linear`` on the GEMM engine, with or without bias) and its core is one op that the compiler lowers like the
language model's attention — host ``attn_prep`` (int8 q/k/v per head and token) → GEMM ``Q·Kᵀ`` → host
``attn_softmax`` → GEMM ``P·V`` → host ``attn_out`` — without RoPE and without positions: the K/V panels are
filled by the step itself (every step sees its own rows only) and the mask is none (``causal=False``) or the
causal one.

The integer reference of the core, :func:`self_attention_int`, is the language model's int-mode attention
(:func:`compiler.capture.attention_int`) without RoPE and KV cache, operation for operation:

    q, k, v   (T, H·hd) → heads (H, T, hd), (Hkv, T, hd)
    qq, s_q   = quantize_act(q)            # int8 absmax per head and token
    kq, s_k   = quantize_act(k); vq, s_v = quantize_act(v)
    scores    = int_matmul(qq, kqᵀ).to(f32) * (s_q * s_kᵀ)      # GEMM, int32 exact
    scores    = scores / score_div                              # score_div = sqrt(hd) (float)
    scores    = where(key ≤ query, scores, −inf) if causal
    p         = hostops.softmax(scores) * s_vᵀ                 # V's per-key scale folded into P
    pq, s_p   = quantize_act(p)
    out       = int_matmul(pq, vq).to(f32) * s_p               # GEMM, int32 exact; heads back to (T, H·hd)

Grouped-query attention (``n_kv_heads`` < ``n_heads``, each KV head shared by ``n_heads/n_kv_heads`` query
heads) works the same way. Not supported (the module does not take them): attention masks other than causal,
dropout, cross-attention (keys/values from another input), more than one sequence per input (the input is
``(T, d)`` or ``(1, T, d)``), and RoPE (use ``models.lm.TernaryLM`` for a rotary decoder).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import hostops
from models.bitlinear import MODES, BitLinear, int_matmul, quantize_act
from models.w8a8 import Int8Linear

__all__ = ["LINEARS", "self_attention_int", "SelfAttention"]

#: projection kinds of :class:`SelfAttention`
LINEARS = ("ternary", "int8")


def _rows(x: torch.Tensor, what: str) -> torch.Tensor:
    """``(T, F)`` of one sequence: ``x`` must be ``(T, F)`` or ``(1, T, F)``."""
    if x.ndim == 2:
        return x
    if x.ndim == 3 and x.shape[0] == 1:
        return x[0]
    raise ValueError(
        f"SelfAttention: {what} has shape {list(x.shape)}; one sequence (T, features) or (1, T, features) "
        "is supported"
    )


def self_attention_int(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    causal: bool,
    score_div: float,
) -> torch.Tensor:
    """The integer attention core (module doc) on flat projections ``q (T, H·hd)``, ``k, v (T, Hkv·hd)``
    (or with a leading 1); returns float32 of ``q``'s shape."""
    shape = q.shape
    q, k, v = _rows(q, "q"), _rows(k, "k"), _rows(v, "v")
    t = q.shape[0]
    h, hkv = n_heads, n_kv_heads
    hd = q.shape[-1] // h
    q = q.to(torch.float32).reshape(t, h, hd).transpose(0, 1)[None]
    k = k.to(torch.float32).reshape(t, hkv, hd).transpose(0, 1)[None]
    v = v.to(torch.float32).reshape(t, hkv, hd).transpose(0, 1)[None]
    qq, sq = quantize_act(q)
    kq, sk = quantize_act(k)
    vq, sv = quantize_act(v)
    rep = h // hkv
    if rep > 1:
        kq, sk, vq, sv = (z.repeat_interleave(rep, dim=1) for z in (kq, sk, vq, sv))
    scores = int_matmul(qq, kq.transpose(-1, -2)).to(torch.float32) * (sq * sk.transpose(-1, -2))
    scores = scores / score_div
    if causal:
        pos = torch.arange(t, device=q.device)
        visible = pos[None, :] <= pos[:, None]
        scores = torch.where(visible, scores, torch.full_like(scores, float("-inf")))
    p = hostops.softmax(scores) * sv.transpose(-1, -2)
    pq, sp = quantize_act(p)
    out = int_matmul(pq, vq).to(torch.float32) * sp
    return out[0].transpose(0, 1).reshape(shape)


class SelfAttention(nn.Module):
    """Multi-head self-attention ``o_proj(attn(q_proj(x), k_proj(x), v_proj(x)))`` (module doc).

    ``linear``: ``"ternary"`` (:class:`models.bitlinear.BitLinear`, TLMM; ``per_channel`` scales optional) or
    ``"int8"`` (:class:`models.w8a8.Int8Linear`, GEMM). ``causal=False`` is an encoder's bidirectional
    attention. ``forward(x, mode)``: ``mode="int"`` is the integer reference (what the compiled Program
    computes); ``"float"`` and ``"fake"`` use ``F.scaled_dot_product_attention`` on the float (or fake-quant)
    projections, for training."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        causal: bool = False,
        linear: str = "ternary",
        bias: bool = False,
        per_channel: bool = False,
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"SelfAttention: d_model={d_model} is not a multiple of n_heads={n_heads}")
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"SelfAttention: n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
        if linear not in LINEARS:
            raise ValueError(f"SelfAttention: linear={linear!r}; expected one of {', '.join(LINEARS)}")
        hd = d_model // n_heads
        if linear == "ternary":

            def make(i, o):
                return BitLinear(i, o, bias=bias, per_channel=per_channel)
        else:
            if per_channel:
                raise ValueError(
                    "SelfAttention: per_channel is for ternary projections (int8 ones are per row)"
                )

            def make(i, o):
                return Int8Linear(i, o, bias=bias)

        self.n_heads, self.n_kv_heads, self.head_dim, self.causal = n_heads, n_kv_heads, hd, causal
        self.score_div = math.sqrt(hd)
        self.q_proj = make(d_model, n_heads * hd)
        self.k_proj = make(d_model, n_kv_heads * hd)
        self.v_proj = make(d_model, n_kv_heads * hd)
        self.o_proj = make(n_heads * hd, d_model)

    def core(self, q, k, v):
        """The attention core of the int mode (what the compiler replaces by its op)."""
        return self_attention_int(q, k, v, self.n_heads, self.n_kv_heads, self.causal, self.score_div)

    def forward(self, x: torch.Tensor, mode: str = "fake") -> torch.Tensor:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        q, k, v = self.q_proj(x, mode), self.k_proj(x, mode), self.v_proj(x, mode)
        if mode == "int":
            out = self.core(q, k, v)
        else:
            shape = q.shape
            t, h, hkv, hd = _rows(q, "q").shape[0], self.n_heads, self.n_kv_heads, self.head_dim
            qh = _rows(q, "q").reshape(t, h, hd).transpose(0, 1)
            kh = _rows(k, "k").reshape(t, hkv, hd).transpose(0, 1).repeat_interleave(h // hkv, dim=0)
            vh = _rows(v, "v").reshape(t, hkv, hd).transpose(0, 1).repeat_interleave(h // hkv, dim=0)
            out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=self.causal)
            out = out.transpose(0, 1).reshape(shape)
        return self.o_proj(out, mode)

    def extra_repr(self) -> str:
        return (
            f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
            f"causal={self.causal}"
        )
