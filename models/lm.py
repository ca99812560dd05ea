"""A BitNet-b1.58-style decoder LM with three forward modes and a KV cache.

Architecture (pre-norm decoder, Llama layout): token embedding → ``n_layers`` × [RMSNorm → grouped-query
attention with RoPE → residual add; RMSNorm → gated FFN → residual add] → RMSNorm → LM head. Every q/k/v/o and
gate/up/down projection is a :class:`~models.bitlinear.BitLinear`; the embedding, the norms and the LM head stay
float on the host. ``activation="swiglu"``: ``down(silu(gate(x))·up(x))`` (bitnet_b1_58-large);
``"relu2"``: ``down(relu(gate(x))²·up(x))`` (BitNet-b1.58-2B-4T). ``subln=True`` adds BitNet-2B's sub-LN: an
RMSNorm on the attention output before ``o_proj`` (``attn.sub_norm``) and on the gated FFN hidden before
``down_proj`` (``ffn.sub_norm``).

Module names (what a compiler looks for): ``embed_tokens``, ``layers[i].attn_norm``,
``layers[i].attn.{q,k,v,o}_proj``, ``layers[i].attn.sub_norm``, ``layers[i].ffn_norm``,
``layers[i].ffn.{gate,up,down}_proj``, ``layers[i].ffn.sub_norm``, ``norm``, ``lm_head`` (shares
``embed_tokens.weight`` when ``tie_embeddings``). Buffers ``rope_cos``/``rope_sin`` hold the RoPE tables.

Modes of :meth:`TernaryLM.forward`:

``"float"``  no quantization anywhere; torch's own RMSNorm/SiLU/SDPA kernels.
``"fake"``   the training forward: BitLinears fake-quantized with straight-through gradients; attention, norms
             and activations as in ``"float"``.
``"int"``    the integer reference, one layer (``x`` float32 (B, T, d); ``pos`` absolute positions)::

                 h = hostops.rmsnorm(x, attn_norm.weight, eps)
                 q, k, v = q_proj(h), k_proj(h), v_proj(h)      # BitLinear int path (models.bitlinear);
                                                                # all three quantize the same h identically
                 q, k = hostops.rope(q, pos, cos, sin), hostops.rope(k, pos, cos, sin)   # per head
                 o = attention(q, k, v)                         # below
                 o = hostops.rmsnorm(o, attn.sub_norm.weight)   # subln only
                 x = hostops.add(x, o_proj(o))
                 h = hostops.rmsnorm(x, ffn_norm.weight, eps)
                 a = hostops.swiglu(gate_proj(h), up_proj(h))   # or hostops.relu2(gate, up)
                 a = hostops.rmsnorm(a, ffn.sub_norm.weight)    # subln only
                 x = hostops.add(x, down_proj(a))
             and at the end ``logits = hostops.linear(hostops.rmsnorm(x, norm.weight), lm_head.weight)``
             (fixed summation order; ``forward(..., lm_head="host_fp16" | "acc_int8")`` uses the other
             LM-head definitions of :mod:`models.lm_head`). Attention runs on an int8 GEMM engine, per layer and head::

                 qq, s_q = quantize_act(q)             # per token per head, over head_dim
                 kq, s_k = quantize_act(k)             # (stored in the KV cache as int8 + scale)
                 vq, s_v = quantize_act(v)             #  "
                 scores  = int_matmul(qq, kqᵀ).to(f32) * (s_q * s_kᵀ)  /  f32(sqrt(head_dim))
                 scores  = where(key_pos <= query_pos, scores, -inf)
                 p       = hostops.softmax(scores)
                 p'      = p * s_vᵀ                      # fold V's per-key scale into P
                 pq, s_p = quantize_act(p')             # per query row, over keys
                 out     = int_matmul(pq, vq).to(f32) * s_p

             Each line is evaluated left to right, one float32 operation at a time (``s_q * s_kᵀ`` is the
             outer product of the two scale vectors, formed before it multiplies the scores). K/V heads are
             shared by ``n_heads / n_kv_heads`` consecutive query heads (kv head j serves query heads
             j·g .. j·g+g−1). Heads are concatenated in head order before ``o_proj``.

In int mode every operation is per token or has a fixed order (see :mod:`models.hostops`), so incremental
decoding with the KV cache gives logits bit-identical to a full forward. The forward takes no ``.item()`` and
no Python branch on tensor values; Python branches depend only on the mode, the config, shapes and the cache's
length, so ``torch.export`` specializes on them. The one host-side data access is BitLinear computing its
ternary weights with numpy when the weight tensor has changed (see :mod:`models.bitlinear`); it is cached, and
under export the cache is used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import hostops
from models.bitlinear import MODES, BitLinear, int_matmul, quantize_act
from models.lm_head import check_lm_head, lm_head_logits

__all__ = ["LMConfig", "KVCache", "RMSNorm", "Attention", "FeedForward", "Block", "TernaryLM", "generate"]

ACTIVATIONS = ("swiglu", "relu2")


@dataclass(frozen=True)
class LMConfig:
    """Shape of a :class:`TernaryLM`; ``head_dim = d_model // n_heads``."""

    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    activation: str = "swiglu"
    rope_theta: float = 10000.0
    max_seq: int = 2048
    norm_eps: float = 1e-5
    subln: bool = False
    tie_embeddings: bool = False

    def __post_init__(self):
        for f in ("vocab", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn", "max_seq"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"LMConfig.{f}={v!r}: must be a positive integer")
        if self.d_model % self.n_heads:
            raise ValueError(f"LMConfig: d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"LMConfig: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"LMConfig: head_dim={self.head_dim} must be even (RoPE)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"LMConfig.activation={self.activation!r}: expected one of {', '.join(ACTIVATIONS)}"
            )
        if not self.rope_theta > 0 or not self.norm_eps > 0:
            raise ValueError("LMConfig: rope_theta and norm_eps must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LMConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"LMConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**d)


class KVCache:
    """Per-layer keys and values of the tokens seen so far (``length`` of them), for one forward mode.

    Float/fake modes store float32 ``k, v`` of shape ``(B, n_kv_heads, S, head_dim)``; int mode stores
    ``kq, vq`` int8 with per-token-per-head float32 scales ``s_k, s_v`` of shape ``(B, n_kv_heads, S, 1)``.
    """

    def __init__(self, n_layers: int):
        self.layers: list[tuple[torch.Tensor, ...] | None] = [None] * n_layers
        self.length = 0
        self.mode: str | None = None
        self.retrieval = None  # int mode: a models.retrieval.RetrievalCache restricts decode attention

    def append(self, layer: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Concatenate new entries (along the sequence axis) to layer ``layer``; return the whole cache."""
        old = self.layers[layer]
        new = (
            tensors
            if old is None
            else tuple(torch.cat([o, t], dim=2) for o, t in zip(old, tensors, strict=True))
        )
        self.layers[layer] = new
        return new


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device))

    def forward(self, x: torch.Tensor, mode: str = "fake") -> torch.Tensor:
        if mode == "int":
            return hostops.rmsnorm(x, self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig, device=None):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.score_div = float(np.float32(math.sqrt(cfg.head_dim)))  # f32(sqrt(head_dim)), int-mode scores
        d, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
        self.q_proj = BitLinear(d, d, device=device)
        self.k_proj = BitLinear(d, kv, device=device)
        self.v_proj = BitLinear(d, kv, device=device)
        self.sub_norm = RMSNorm(d, cfg.norm_eps, device=device) if cfg.subln else None
        self.o_proj = BitLinear(d, d, device=device)

    def forward(self, x, cos, sin, positions, mode, cache: KVCache | None, layer: int):
        b, t, _ = x.shape
        h, hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x, mode).view(b, t, h, hd).transpose(1, 2)
        k = self.k_proj(x, mode).view(b, t, hkv, hd).transpose(1, 2)
        v = self.v_proj(x, mode).view(b, t, hkv, hd).transpose(1, 2)
        q = hostops.rope(q, positions, cos, sin)
        k = hostops.rope(k, positions, cos, sin)
        start = cache.length if cache is not None else 0
        rep = h // hkv
        if mode == "int":
            qq, sq = quantize_act(q)
            kq, sk = quantize_act(k)
            vq, sv = quantize_act(v)
            kq_new = kq
            if cache is not None:
                kq, sk, vq, sv = cache.append(layer, kq, sk, vq, sv)
            retrieval = getattr(cache, "retrieval", None)
            restricted = None
            if retrieval is not None:  # KV retrieval in the loop (models/retrieval.py)
                restricted = retrieval.attend(
                    layer, qq, sq, kq, sk, vq, sv, kq_new, start + t - 1, rep, self.score_div
                )
            if restricted is not None:
                out = restricted.transpose(1, 2).reshape(b, t, h * hd)
                if self.sub_norm is not None:
                    out = self.sub_norm(out, mode)
                return self.o_proj(out, mode)
            if rep > 1:
                kq, sk, vq, sv = (z.repeat_interleave(rep, dim=1) for z in (kq, sk, vq, sv))
            s = kq.shape[2]
            scores = int_matmul(qq, kq.transpose(-1, -2)).to(torch.float32) * (sq * sk.transpose(-1, -2))
            scores = scores / self.score_div
            visible = torch.arange(s, device=x.device)[None, :] <= positions[:, None]
            scores = torch.where(visible, scores, torch.full_like(scores, float("-inf")))
            p = hostops.softmax(scores) * sv.transpose(-1, -2)
            pq, sp = quantize_act(p)
            out = int_matmul(pq, vq).to(torch.float32) * sp
        else:
            if cache is not None:
                k, v = cache.append(layer, k, v)
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            if start == 0:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                visible = torch.arange(k.shape[2], device=x.device)[None, :] <= positions[:, None]
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        out = out.transpose(1, 2).reshape(b, t, h * hd)
        if self.sub_norm is not None:
            out = self.sub_norm(out, mode)
        return self.o_proj(out, mode)


class FeedForward(nn.Module):
    def __init__(self, cfg: LMConfig, device=None):
        super().__init__()
        self.activation = cfg.activation
        self.gate_proj = BitLinear(cfg.d_model, cfg.ffn, device=device)
        self.up_proj = BitLinear(cfg.d_model, cfg.ffn, device=device)
        self.sub_norm = RMSNorm(cfg.ffn, cfg.norm_eps, device=device) if cfg.subln else None
        self.down_proj = BitLinear(cfg.ffn, cfg.d_model, device=device)

    def forward(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        g, u = self.gate_proj(x, mode), self.up_proj(x, mode)
        if self.activation == "relu2":
            hid = hostops.relu2(g, u) if mode == "int" else F.relu(g).square() * u
        else:
            hid = hostops.swiglu(g, u) if mode == "int" else F.silu(g) * u
        if self.sub_norm is not None:
            hid = self.sub_norm(hid, mode)
        return self.down_proj(hid, mode)


class Block(nn.Module):
    def __init__(self, cfg: LMConfig, device=None):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, device=device)
        self.attn = Attention(cfg, device=device)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, device=device)
        self.ffn = FeedForward(cfg, device=device)

    def forward(self, x, cos, sin, positions, mode, cache, layer):
        a = self.attn(self.attn_norm(x, mode), cos, sin, positions, mode, cache, layer)
        x = hostops.add(x, a) if mode == "int" else x + a
        f = self.ffn(self.ffn_norm(x, mode), mode)
        return hostops.add(x, f) if mode == "int" else x + f


class TernaryLM(nn.Module):
    """BitNet-b1.58-style decoder LM; see the module docstring."""

    def __init__(self, cfg: LMConfig, device=None):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.d_model, device=device)
        self.layers = nn.ModuleList(Block(cfg, device=device) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, device=device)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab, bias=False, device=device)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = hostops.rope_tables(cfg.max_seq, cfg.head_dim, cfg.rope_theta, device=device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Normal(0, std) for embeddings and projections (down/o projections scaled by 1/sqrt(2·n_layers)),
        ones for the norms. Uses torch's global RNG (seed it first)."""
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, mod in self.named_modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)) and not (
                mod is self.lm_head and self.config.tie_embeddings
            ):
                s = out_std if name.endswith(("o_proj", "down_proj")) else std
                nn.init.normal_(mod.weight, 0.0, s)
            elif isinstance(mod, RMSNorm):
                nn.init.ones_(mod.weight)

    def bitlinears(self) -> dict[str, BitLinear]:
        """Every BitLinear by qualified name, in forward order."""
        return {n: m for n, m in self.named_modules() if isinstance(m, BitLinear)}

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        mode: str = "fake",
        lm_head: str = "host_fp32",
    ) -> torch.Tensor:
        """``tokens`` (B, T) int64 → logits (B, T, vocab) float32. With a ``cache`` the tokens continue the
        cached sequence (positions ``cache.length ..``) and are appended to it. ``lm_head`` picks the LM
        head's placement and precision in int mode (:mod:`models.lm_head`; other modes take only
        ``"host_fp32"``, their own float head)."""
        check_lm_head(lm_head)
        if mode != "int" and lm_head != "host_fp32":
            raise ValueError(f"lm_head={lm_head!r} applies to mode='int' only")
        x = self.final_hidden(tokens, cache, mode)
        if mode == "int":
            return lm_head_logits(x, self.lm_head.weight, lm_head)
        return self.lm_head(x)

    def final_hidden(self, tokens: torch.Tensor, cache: KVCache | None = None, mode: str = "fake"):
        """The final RMSNorm's output (B, T, d_model) float32: what the LM head reads (see :meth:`forward`)."""
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
        start = 0
        if cache is not None:
            if cache.mode not in (None, mode):
                raise ValueError(f"KV cache was filled in mode {cache.mode!r}, not {mode!r}")
            if len(cache.layers) != self.config.n_layers:
                raise ValueError(f"KV cache has {len(cache.layers)} layers, the model {self.config.n_layers}")
            start = cache.length
        t = tokens.shape[1]
        if start + t > self.config.max_seq:
            raise ValueError(f"sequence of {start + t} tokens exceeds max_seq={self.config.max_seq}")
        positions = torch.arange(start, start + t, device=tokens.device)
        x = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rope_cos, self.rope_sin, positions, mode, cache, i)
        x = self.norm(x, mode)
        if cache is not None:
            cache.length = start + t
            cache.mode = mode
        return x

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers)


@torch.no_grad()
def generate(
    model: TernaryLM, prompt_tokens, n_new: int, mode: str = "int", lm_head: str = "host_fp32"
) -> torch.Tensor:
    """Greedy decoding with the KV cache: the prompt in one forward, then one token per forward.

    ``prompt_tokens`` is a 1-D sequence (list or tensor) of token ids; returns the 1-D int64 tensor of the
    prompt followed by ``n_new`` generated tokens. Stops with ValueError beyond ``max_seq``.
    """
    device = model.embed_tokens.weight.device
    prompt = torch.as_tensor(prompt_tokens, dtype=torch.int64, device=device).reshape(1, -1)
    if prompt.shape[1] == 0:
        raise ValueError("generate: empty prompt")
    cache = model.new_cache()
    out = [prompt]
    logits = model(prompt, cache=cache, mode=mode, lm_head=lm_head)
    for i in range(n_new):
        nxt = logits[:, -1:].argmax(dim=-1)
        out.append(nxt)
        if i + 1 < n_new:
            logits = model(nxt, cache=cache, mode=mode, lm_head=lm_head)
    return torch.cat(out, dim=1)[0]
