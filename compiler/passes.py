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
4b. :func:`fuse_dequant`    a ``dequant`` whose float output exactly one op reads, an op whose lowering hands
                            that input to a host op (any kind but ``tlmm``; ``attention``'s q/k/v go to
                            ``attn_prep``), not the graph output, is folded into that op: its input becomes
                            the int32 TLMM result and ``attrs["dequant"]`` says how to dequantize it
                            (o_proj → ``add``, gate/up → ``swiglu+quant``, q/k/v → ``attention``); the
                            lowering emits the host op as ``dequant+<kind>`` (hw.program.DEQUANT_PREFIX),
                            which dequantizes in memory: no float32 tensor written and read back.
5. :func:`mark_engines`     ``tlmm`` → TLMM engine, ``attention`` and ``int8linear`` → GEMM engine + host
                            (lowered per step by :mod:`compiler.lower`), everything else → host.
"""

from __future__ import annotations

import copy

import numpy as np

from compiler.ir import CompileError, Graph, Op

PIPELINE = (
    "split_bitlinear",
    "fold_bias",
    "dedupe_quant",
    "fuse_quant",
    "check_weights",
    "fuse_dequant",
    "mark_engines",
)
__all__ = [*PIPELINE, "FUSABLE", "OPTIONAL", "PIPELINE", "run_pipeline"]

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
    """Fold each ``quant`` into the host op that produces its input when nobody else reads that float
    value (module doc, 3): ``rmsnorm`` → ``rmsnorm+quant``."""
    return _replace_ops(g, "quant", _fuse_quant_op)


def _fuse_quant_op(g: Graph, op: Op) -> list[Op]:
    x = op.inputs[0]
    prod = g.producer(x)
    others = [c for c in g.consumers(x) if c is not op]
    if prod is None or prod.kind not in FUSABLE or others or x == g.output:
        return [op]
    prod.kind = f"{prod.kind}+quant"
    prod.outputs = list(op.outputs)
    prod.attrs["k"] = op.attrs["k"]
    return []


#: graph kinds whose inputs an engine reads (the rest hand theirs to a host op: compiler.lower)
ENGINE_READS = ("tlmm",)
#: what a fused dequantization keeps of the dequant op (hw.program.DEQUANT_PREFIX; ``weight``: the
#: per-channel scales' source, for the lowering's host constants)
DEQUANT_KEYS = ("scale", "scale_rows", "bias", "weight")


def fuse_dequant(g: Graph) -> Graph:
    """Fold each ``dequant`` into the single op that reads its float output (module doc, 4b). Runs after
    :func:`check_weights` (the dequant's scale is known). The consumer's ``attrs["dequant"]`` gets one entry
    per fused dequant, ``{"input": int32 value, "sx": scales value, "scale" | "scale_rows", "bias"?,
    "weight"}``, and its input list the int32 value in place of the float one."""
    return _replace_ops(g, "dequant", _fuse_dequant_op)


def _fuse_dequant_op(g: Graph, op: Op) -> list[Op]:
    y = op.outputs[0]
    users = g.consumers(y)
    if y == g.output or len(users) != 1 or users[0].kind in ENGINE_READS + ("dequant",):
        return [op]
    user = users[0]
    yi, sx = op.inputs
    user.inputs = [yi if v == y else v for v in user.inputs]
    entry = {"input": yi, "sx": sx} | {k: op.attrs[k] for k in DEQUANT_KEYS if op.attrs.get(k)}
    user.attrs["dequant"] = [*user.attrs.get("dequant", []), entry]
    return []


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


#: passes that are optimizations (the Program computes the same values without them)
OPTIONAL = ("fuse_dequant",)


def run_pipeline(g: Graph, state: dict, skip: tuple[str, ...] = ()) -> Graph:
    """The passes of :data:`PIPELINE` in order; ``skip`` leaves out optional ones (:data:`OPTIONAL`; e.g.
    tests compare a Program with and without ``fuse_dequant``)."""
    bad = [p for p in skip if p not in OPTIONAL]
    if bad:
        raise ValueError(f"skip={bad}: only optional passes can be left out ({', '.join(OPTIONAL)})")
    for name in PIPELINE:
        if name in skip:
            continue
        g = check_weights(g, state) if name == "check_weights" else globals()[name](g)
    return g
