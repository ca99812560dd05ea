"""Graph passes of the compiler, in pipeline order. Each takes and returns an IR :class:`~compiler.ir.Graph`
and has its own test (tests/test_compiler.py).

1. :func:`split_bitlinear`  ``bitlinear`` → ``quant`` (host: int8 absmax per token) → ``tlmm`` (engine:
   int8 × ternary → int32) → ``dequant`` (host: ``y_int · (s_x · s_w)``).
1b. :func:`fold_bias`      a linear's ``bias`` op → ``attrs["bias"]`` of its ``dequant`` / ``int8linear`` (the
                            bias is added in float32 right after the dequantization, on the host).
2. :func:`dedupe_quant`     one ``quant`` per quantized value (q/k/v share their input's quantization).
3. :func:`fuse_quant`       a ``quant`` whose input comes from a host op whose float output nobody else reads
                            is folded into that op (``rmsnorm`` → ``rmsnorm+quant``, ``relu2+quant``, ...):
                            quantization fused into norms.
4. :func:`check_weights`    every ``tlmm`` weight ternarizes (finite, positive absmean scale; values in
                            {−1, 0, +1}); records the scale the dequant needs.
5. :func:`mark_engines`     ``tlmm`` → TLMM engine, ``attention`` and ``int8linear`` → GEMM engine + host
                            (lowered per step by :mod:`compiler.lower`), everything else → host.
"""

from __future__ import annotations

import copy

import numpy as np

from compiler.ir import CompileError, Graph, Op

__all__ = [
    "split_bitlinear",
    "fold_bias",
    "dedupe_quant",
    "fuse_quant",
    "check_weights",
    "mark_engines",
    "PIPELINE",
    "run_pipeline",
]

FUSABLE = ("rmsnorm", "relu2", "swiglu", "layernorm", "relu", "silu", "gelu", "gelu_tanh", "square", "mul")


def _replace_ops(g: Graph, kind: str, replace) -> Graph:
    """A copy of ``g`` in which each op of ``kind`` stands replaced by the ops ``replace(g_copy, op)`` returns
    (none: the op goes; ``replace`` may also update the copy's other ops and features)."""
    g = copy.deepcopy(g)
    out: list[Op] = []
    for op in g.ops:
        out.extend(replace(g, op) if op.kind == kind else [op])
    g.ops = out
    return g


def split_bitlinear(g: Graph) -> Graph:
    return _replace_ops(g, "bitlinear", _split_bitlinear_op)


def _split_bitlinear_op(g: Graph, op: Op) -> list[Op]:
    x = op.inputs[0]
    xq, sx, yi = f"{x}.q", f"{x}.s", f"{op.outputs[0]}.int"
    g.features[xq], g.features[sx], g.features[yi] = op.attrs["k"], 1, op.attrs["n"]
    return [
        Op(f"{op.name}.quant", "quant", [x], [xq, sx], {"k": op.attrs["k"]}, op.where),
        Op(op.name, "tlmm", [xq], [yi], dict(op.attrs), op.where, engine="tlmm"),
        Op(
            f"{op.name}.dequant",
            "dequant",
            [yi, sx],
            [op.outputs[0]],
            {"weight": op.attrs["weight"], "n": op.attrs["n"]}
            | ({"per_channel": True} if op.attrs.get("per_channel") else {}),
            op.where,
        ),
    ]


def fold_bias(g: Graph) -> Graph:
    """Each ``bias`` op (a BitLinear's / Int8Linear's bias, compiler.capture) joins the linear it follows: its
    ``dequant`` (ternary) or ``int8linear`` op gets ``attrs["bias"]`` and the bias op's output."""
    return _replace_ops(g, "bias", _fold_bias_op)


def _fold_bias_op(g: Graph, op: Op) -> list[Op]:
    x = op.inputs[0]
    prod = g.producer(x)
    others = [c for c in g.consumers(x) if c is not op]
    if prod is None or prod.kind not in ("dequant", "int8linear") or others or x == g.output:
        raise CompileError(f"{op.where}: a bias that does not directly follow its linear layer")
    prod.attrs["bias"] = op.attrs["bias"]
    prod.outputs = list(op.outputs)
    return []


def dedupe_quant(g: Graph) -> Graph:
    g = copy.deepcopy(g)
    first: dict[str, Op] = {}
    rename: dict[str, str] = {}
    out = []
    for op in g.ops:
        op.inputs = [rename.get(v, v) for v in op.inputs]
        if op.kind == "quant":
            x = op.inputs[0]
            if x in first:
                for old, new in zip(op.outputs, first[x].outputs, strict=True):
                    rename[old] = new
                continue
            first[x] = op
        out.append(op)
    g.ops = out
    return g


def fuse_quant(g: Graph) -> Graph:
    g = copy.deepcopy(g)
    out = []
    for op in g.ops:
        if op.kind == "quant":
            x = op.inputs[0]
            prod = g.producer(x)
            others = [c for c in g.consumers(x) if c is not op]
            if prod is not None and prod.kind in FUSABLE and not others and x != g.output:
                prod.kind = f"{prod.kind}+quant"
                prod.outputs = list(op.outputs)
                prod.attrs["k"] = op.attrs["k"]
                continue
        out.append(op)
    g.ops = out
    return g


def check_weights(g: Graph, state: dict) -> Graph:
    """``state``: parameter name → tensor. On meta tensors only shapes are checked."""
    from models.bitlinear import ternary_weight, ternary_weight_rows

    g = copy.deepcopy(g)
    for op in g.ops:
        if op.kind == "int8linear":
            _check_int8_weight(op, state)
        if op.kind != "tlmm":
            continue
        w = _weight(op, state)
        if w.device.type == "meta":
            continue
        if not bool(w.isfinite().all()):
            raise CompileError(
                f"{op.where}: weight {op.attrs['weight']} has non-finite values; it cannot be ternarized"
            )
        if op.attrs.get("per_channel"):  # BitLinear(per_channel=True): one scale per output row
            wq, swr = ternary_weight_rows(w.detach())
            sw = float(swr.min()) if swr.numel() else 0.0
        else:
            wq, sw = ternary_weight(w.detach())
        vals = np.unique(wq.numpy())
        if not set(vals.tolist()) <= {-1, 0, 1}:
            raise CompileError(
                f"{op.where}: weight {op.attrs['weight']} is not ternary after quantization "
                f"(values {vals.tolist()[:6]})"
            )
        if not (np.isfinite(sw) and sw > 0):
            raise CompileError(
                f"{op.where}: weight {op.attrs['weight']} has scale {sw}; expected a positive number"
            )
        if op.attrs.get("per_channel"):
            op.attrs["scale_rows"] = f"{op.attrs['weight']}.tscale"  # a host constant (compiler.lower)
        else:
            op.attrs["scale"] = float(sw)
    for op in g.ops:
        if op.kind == "dequant":
            prod = g.producer(op.inputs[0])
            for key in ("scale", "scale_rows"):
                if key in prod.attrs:
                    op.attrs[key] = prod.attrs[key]
    return g


def _weight(op: Op, state: dict):
    """The weight of a linear op (``tlmm`` or ``int8linear``): it must exist and have shape (n, k)."""
    w = state.get(op.attrs["weight"])
    if w is None:
        raise CompileError(f"{op.where}: weight {op.attrs['weight']} not found in the model")
    if tuple(w.shape) != (op.attrs["n"], op.attrs["k"]):
        raise CompileError(
            f"{op.where}: weight {op.attrs['weight']} has shape {tuple(w.shape)}, "
            f"expected {(op.attrs['n'], op.attrs['k'])}"
        )
    return w


def _check_int8_weight(op: Op, state: dict) -> None:
    """A W8A8 weight (models.w8a8.Int8Linear) must exist, have its shape and be finite."""
    w = _weight(op, state)
    if w.device.type != "meta" and not bool(w.isfinite().all()):
        raise CompileError(f"{op.where}: weight {op.attrs['weight']} has non-finite values")


def mark_engines(g: Graph) -> Graph:
    g = copy.deepcopy(g)
    for op in g.ops:
        op.engine = {"tlmm": "tlmm", "attention": "gemm", "int8linear": "gemm"}.get(op.kind, "host")
    return g


PIPELINE = ("split_bitlinear", "fold_bias", "dedupe_quant", "fuse_quant", "check_weights", "mark_engines")


def run_pipeline(g: Graph, state: dict) -> Graph:
    g = split_bitlinear(g)
    g = fold_bias(g)
    g = dedupe_quant(g)
    g = fuse_quant(g)
    g = check_weights(g, state)
    return mark_engines(g)
