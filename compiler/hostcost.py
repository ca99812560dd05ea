"""The host cost model: what a host op costs the host CPU (flops and DRAM bytes per element, counted from
models/hostops.py), its time at the config's host, and that time in accelerator cycles.

One definition for the compiler (each host op of a Program carries its latency in cycles, ``attrs["cycles"]``:
the co-simulation host answers after that many cycles and sim/top_model.py charges the same number) and the
estimate (tritium/estimate.py charges the time in seconds). Pure Python: no torch, no numba.
"""

from __future__ import annotations

import math

from compiler.chunks import row_attention
from hw.config import AcceleratorConfig
from hw.program import DEQUANT_PREFIX

__all__ = ["HOST_COST", "HOST_COST_SOURCE", "host_cost", "host_seconds", "host_cycles"]

# Host-op cost per element: (flops, bytes moved). Counted from models/hostops.py (fold_sum: 1 add per
# element; exp: ~30 float64 operations for the degree-13 polynomial and range reduction).
HOST_COST = {
    "embed": (0, 8),  # copy a row: read + write float32
    "rmsnorm": (4, 8),  # square, sum, scale, weight
    "relu2": (3, 12),
    "swiglu": (34, 12),
    "add": (1, 12),
    "quant": (4, 5),  # absmax, scale, round, clamp; reads float32, writes int8
    "dequant": (2, 12),  # int32 → float32 × (s_x · s_w)
    "attn_prep": (10, 6),  # RoPE + quantize, per q/k/v element
    "attn_softmax": (40, 6),  # dequant, scale, mask, exp, sum, divide, fold s_v, quantize, per score
    "attn_out": (2, 8),  # per output element
    # general modules (docs/models.md "General graphs"): per element of the first input
    "layernorm": (7, 8),  # sum, subtract, square, sum, divide, weight, bias
    "relu": (1, 8),
    "silu": (32, 8),
    "gelu": (420, 8),  # erfc: 60 Taylor terms (4 flops each) and 100 continued-fraction levels (2), exp
    "gelu_tanh": (40, 8),  # cube, scale, exp, add, divide
    "square": (1, 8),
    "mul": (1, 12),
}
# An op with the next linear's activation quantization fused ("<op>+quant"): the quantization's 4 flops per
# element, and an int8 instead of a float32 result (3 bytes fewer).
HOST_COST.update(
    {
        f"{k}+quant": (HOST_COST[k][0] + 4, HOST_COST[k][1] - 3)
        for k in (
            "rmsnorm",
            "relu2",
            "swiglu",
            "layernorm",
            "relu",
            "silu",
            "gelu",
            "gelu_tanh",
            "square",
            "mul",
        )
    }
)
# The int8 linears' quantize / dequantize (the acc_int8 LM head, models/w8a8.py): as quant and dequant.
for _q, _d in (("lm_head_quant", "lm_head_dequant"), ("int8_quant", "int8_dequant")):
    HOST_COST[_q], HOST_COST[_d] = HOST_COST["quant"], HOST_COST["dequant"]
HOST_COST_SOURCE = (
    "counted from models/hostops.py's implementations (tritium.estimate.HOST_COST): flops and "
    "bytes per element; every byte counted as a DRAM byte (no cache model)"
)


def host_cost(tensors: dict, op) -> tuple[float, float]:
    """(flops, bytes) of a host op (hw.program.HostOp) from its tensors' sizes (``tensors``: name →
    hw.program.TensorInfo, a Program's tensor table). A ``dequant+<kind>`` op (compiler.passes.fuse_dequant)
    costs its kind's flops and bytes — it reads each dequantized input as int32, 4 bytes like the float32 it
    replaces — plus the dequantization's 2 flops per dequantized element; the dequant op's own pass over
    memory (12 bytes per element) is gone."""
    kind = op.kind
    if kind.startswith(DEQUANT_PREFIX):
        f, b = _cost(tensors, op, kind.removeprefix(DEQUANT_PREFIX))
        n = sum(math.prod(tensors[e["input"]].shape) for e in op.attrs["dequant"])
        f, b = f + HOST_COST["dequant"][0] * n, b
    else:
        f, b = _cost(tensors, op, kind)
    rows = op.attrs.get("row_chunk")
    if rows:  # a row chunk (compiler.chunks): its share of the rows (tokens), every cost per row
        total = op.attrs["tokens"] if row_attention(kind) else None
        share = (rows[1] - rows[0]) / (total or tensors[op.inputs[0]].shape[0])
        f, b = f * share, b * share
    return f, b


def _cost(tensors: dict, op, kind: str) -> tuple[float, float]:
    t = tensors
    a = op.attrs
    if kind == "lm_head":  # host_fp32 / host_fp16: the weights' own element size (4 or 2 bytes)
        wt = t[a["weight"]]
        w = wt.shape
        x = t[op.inputs[0]].shape
        rows = 1 if a.get("last_only") else x[0]
        wsize = 2 if wt.dtype == "float16" else 4
        return 2.0 * rows * w[0] * w[1], float(wsize) * w[0] * w[1] + 4.0 * rows * w[0]
    if kind in ("lm_head_quant", "lm_head_dequant", "int8_quant", "int8_dequant"):  # W8A8: per x / output
        deq = kind.endswith("_dequant")
        rows = a["rows"] if deq else (1 if a.get("last_only") else t[op.inputs[0]].shape[0])
        n = rows * (a["vocab"] if deq else a["k"])
        f, b = HOST_COST[kind]
        return float(f * n), float(b * n)
    if kind in ("attn_prep", "attn_softmax", "attn_out"):
        h, hkv, hd, T = a["n_heads"], a["n_kv_heads"], a["head_dim"], a["tokens"]
        ctx = a["pos"] + T
        heads = h  # an attn_softmax of groups group_lo..group_hi-1 (system.overlap) covers their heads only
        if kind == "attn_softmax" and "group_lo" in a:
            heads = (a["group_hi"] - a["group_lo"]) * a["group"] * (h // hkv)
        n = {"attn_prep": T * (h + 2 * hkv) * hd, "attn_softmax": heads * T * ctx, "attn_out": h * T * hd}[
            kind
        ]
        if kind == "attn_softmax" and "qk_bands" in a:
            # a causal prefill's Q·Kᵀ in bands of query rows (compiler.tiling.attention_bands): the host reads
            # each band's scores and writes its P, over the keys the band's rows attend — not the square
            groups = heads // (a.get("group", 1) * (h // hkv))  # a group's rows: its heads × T tokens
            n = groups * sum((b1 - b0) * keys for b0, b1, keys in a["qk_bands"])
    else:
        first = t.get(op.inputs[0]) if op.inputs else None
        if first is not None and first.attrs.get("parts"):
            n = first.shape[0] * first.shape[1]
        elif kind == "embed":
            out = t[op.outputs[0]].shape
            n = out[0] * out[1]
        else:
            n = math.prod(first.shape) if first is not None else 0
    f, b = HOST_COST[kind]
    return float(f * n), float(b * n)


def host_seconds(acfg: AcceleratorConfig, tensors: dict, op) -> tuple[float, float]:
    """(seconds, bytes) of a host op on the config's host: ``max(flops / host_gflops, bytes / min(host_gbs,
    dram_gbs)) + host_op_us`` (the fixed cost of an op)."""
    dev = acfg.device
    flops, nbytes = host_cost(tensors, op)
    s = max(flops / (dev.host_gflops * 1e9), nbytes / (min(dev.host_gbs, dev.dram_gbs) * 1e9))
    return s + dev.host_op_us * 1e-6, nbytes


def host_cycles(acfg: AcceleratorConfig, tensors: dict, op) -> int:
    """The host op's latency in accelerator cycles at ``clock_mhz`` (at least 1): what the co-simulation
    host waits before it reports the op done and what sim/top_model.py charges."""
    s, _ = host_seconds(acfg, tensors, op)
    return max(1, math.ceil(s * acfg.clock_mhz * 1e6 - 1e-9))
