"""Model-shape presets and :func:`build_model`.

``bitnet-0.7b``  bitnet_b1_58-large (1bitLLM reproduction, TeLLMe's model): 24 layers, d=1536, FFN 4096 SwiGLU,
                 16 heads × 96, 16 KV heads, vocab 32002, 2048 context. Embeddings tied: 728.7 M parameters,
                 the published 0.73 B (an untied LM head would make it 777.9 M).
``bitnet-2b``    BitNet-b1.58-2B-4T: 30 layers, d=2560, FFN 6912 gated ReLU², sub-LN, 20 heads × 128, 5 KV heads,
                 RoPE θ=500000, vocab 128256, 4096 context, tied embeddings: 2.413 B parameters.
``tiny``         the model trained by ``python -m models.train`` (byte vocabulary, BitNet-2B layout in small).
``tiny-long``    ``tiny`` with 1024 positions: fine-tuned from ``tiny.pt`` on 1024-byte windows
                 (``models/checkpoints/tiny-long.json`` records the command), for retrieval at long context.

Build the big presets on the meta device (``build_model("bitnet-2b", device="meta")``) for shapes and
whole-model estimates; they have no trained weights here.
"""

from __future__ import annotations

import torch

from models.lm import LMConfig, TernaryLM

__all__ = ["PRESETS", "get_config", "build_model", "bitnet_2b_layout"]


def bitnet_2b_layout(**shape) -> LMConfig:
    """An :class:`LMConfig` laid out like BitNet-b1.58-2B-4T (gated ReLU² FFN, sub-LN norms, tied embeddings) at
    the size ``shape`` gives: vocab, d_model, n_layers, n_heads, n_kv_heads, ffn, max_seq, rope_theta, ... (a
    layout field given there wins). The 2B preset, the tiny model and the small test and example models."""
    return LMConfig(**{"activation": "relu2", "subln": True, "tie_embeddings": True, **shape})


# bitnet-0.7b is LMConfig's default layout (SwiGLU, no sub-norms, RoPE θ 10000, 2048 positions, eps 1e-5)
PRESETS: dict[str, LMConfig] = {
    "bitnet-0.7b": LMConfig(
        vocab=32002, d_model=1536, n_layers=24, n_heads=16, n_kv_heads=16, ffn=4096, tie_embeddings=True
    ),
    "bitnet-2b": bitnet_2b_layout(
        vocab=128256,
        d_model=2560,
        n_layers=30,
        n_heads=20,
        n_kv_heads=5,
        ffn=6912,
        rope_theta=500000.0,
        max_seq=4096,
    ),
    "tiny": bitnet_2b_layout(
        vocab=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn=352, max_seq=256
    ),
    "tiny-long": bitnet_2b_layout(
        vocab=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn=352, max_seq=1024
    ),
}


def get_config(name_or_config: str | LMConfig | dict) -> LMConfig:
    """A preset name, an :class:`LMConfig` or a config dict → :class:`LMConfig` (ValueError names the problem)."""
    if isinstance(name_or_config, LMConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return LMConfig.from_dict(name_or_config)
    if name_or_config not in PRESETS:
        raise ValueError(f"unknown model preset {name_or_config!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name_or_config]


def build_model(
    name_or_config: str | LMConfig | dict, device: str | torch.device = "cpu", seed: int | None = None
) -> TernaryLM:
    """Instantiate a (randomly initialised) :class:`~models.lm.TernaryLM`; ``device="meta"`` allocates nothing.
    ``seed`` seeds torch's global RNG before initialisation."""
    cfg = get_config(name_or_config)
    if seed is not None:
        torch.manual_seed(seed)
    return TernaryLM(cfg, device=device)
