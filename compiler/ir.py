"""The compiler's IR: a straight-line list of named ops over named values, built from a torch.export graph.

Values are activations of shape ``(T, features)`` for the T tokens of a step (batch 1), or model
parameters (bound by their qualified name). Every op remembers where it comes from in the model (module
path and source line) so that every error can point there.

Op kinds after :func:`from_export` (later passes add ``quant``, ``tlmm``, ``dequant`` and fused kinds):

=============  =================================  ==========================================
kind           inputs                             attrs
=============  =================================  ==========================================
``embed``      tokens                             weight, features
``rmsnorm``    x                                  weight, eps
``bitlinear``  x                                  weight, k (in), n (out)
``attention``  q, k, v                            layer, n_heads, n_kv_heads, head_dim, score_div
``relu2``      gate, up
``swiglu``     gate, up
``add``        x, y
``lm_head``    x                                  weight, vocab
=============  =================================  ==========================================

General modules (``compiler.compile_model(module, acfg, example_inputs=...)``; the graph's input value is
``input``, float32 ``(T, features)``) add:

==============  ================================  ==========================================
``int8linear``  x                                 weight, k (in), n (out): W8A8 on the GEMM engine;
                                                  scales: given codes (weight int8) and row scales
``layernorm``   x                                 weight, bias (or None), eps
``relu``        x
``silu``        x
``gelu``        x                                 (``approximate="none"``: erf form; models.hostops.gelu)
``gelu_tanh``   x                                 (``approximate="tanh"``)
``bias``        x                                 bias: a linear's bias, folded into its dequant by
                                                  compiler.passes.fold_bias (``attrs["bias"]`` there)
``square``      x                                 (``x**2``, ``x.square()``: float32 ``x·x``)
``mul``         x, y                              (elementwise float32 product of two activations)
``attention``   q, k, v                           as above with ``rope=False`` and ``causal`` (True/False):
                                                  models.attention.SelfAttention (no positions, no cache
                                                  across steps)
==============  ================================  ==========================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CompileError", "Op", "Graph", "from_export", "where_of"]

#: Source locations are printed relative to the repository (or site-packages) root.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent) + "/"


class CompileError(ValueError):
    """The model cannot be compiled; one line naming the op, where it is in the model, and why."""


@dataclass
class Op:
    name: str
    kind: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    where: str = ""
    engine: str = "host"

    def __str__(self) -> str:
        a = ", ".join(f"{k}={v}" for k, v in self.attrs.items() if k not in ("weight",))
        return (
            f"{self.engine:<5} {self.kind:<14} {', '.join(self.outputs)} = {self.name}({', '.join(self.inputs)})"
            + (f" [{a}]" if a else "")
        )


@dataclass
class Graph:
    ops: list[Op]
    features: dict[str, int]  # value name → features (last dimension)
    params: dict[str, str]  # placeholder → parameter/buffer qualified name
    output: str
    model_config: dict = field(default_factory=dict)

    def producer(self, value: str) -> Op | None:
        for op in self.ops:
            if value in op.outputs:
                return op
        return None

    def consumers(self, value: str) -> list[Op]:
        return [op for op in self.ops if value in op.inputs]

    def listing(self) -> str:
        return "\n".join(f"{i:4d}  {op}   # {op.where}" for i, op in enumerate(self.ops))


def where_of(node) -> str:
    """``module.path (file:line)`` of an exported graph node."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    path = re.sub(r"^model\.?", "", path) or "<model>"
    src = ""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    own = [fr for fr in frames if "site-packages" not in fr[0] and "/torch/" not in fr[0]]
    frames = own or frames
    if frames:
        f, line = frames[-1]
        src = f"{f.removeprefix(_REPO_ROOT).split('site-packages/')[-1]}:{line}"
    return f"{path} ({src})" if src else path


_TRITIUM = {
    "bitlinear_rows",
    "bitlinear",
    "attention",
    "rmsnorm",
    "relu2",
    "swiglu",
    "add",
    "linear",
    "int8linear",
    "int8linear_fixed",
    "layernorm",
    "silu",
    "gelu",
    "bias",
    "self_attention",
}

#: what a general module may contain (the one-line error for anything else lists it)
SUPPORTED_PIECES = (
    "models.bitlinear.BitLinear (TLMM)",
    "models.w8a8.Int8Linear (GEMM)",
    "torch.ao.nn.quantized.dynamic.Linear (qint8; GEMM)",
    "models.lm.RMSNorm / nn.RMSNorm",
    "nn.LayerNorm / F.layer_norm",
    "ReLU",
    "SiLU",
    "models.attention.SelfAttention (bidirectional or causal)",
    "GELU (exact or tanh)",
    "linear biases",
    "x**2 / x.square()",
    "x + y",
    "x * y (two activations)",
)


#: aten ops of a hand-written activation/weight quantizer (abs-max, round, clamp, dtype casts)
_QUANTIZER_OPS = {"abs", "amax", "max", "round", "clamp", "clip", "_to_copy", "to", "div"}


#: what an attention that is not models.attention.SelfAttention is told
ATTENTION_HINT = (
    "attention in a general graph is models.attention.SelfAttention (multi-head self-attention, "
    "bidirectional or causal=True, ternary or int8 projections, optional bias, GQA; no RoPE, no masks "
    "or dropout, no cross-attention)"
)

#: aten ops that only a hand-written (or torch.nn) attention produces
_ATTENTION_OPS = ("scaled_dot_product", "softmax", "bmm", "baddbmm")


def _attention_like(n, opname: str) -> bool:
    """The node is part of an attention the compiler does not take (F.scaled_dot_product_attention, a
    hand-written softmax attention, nn.MultiheadAttention)."""
    stack = n.meta.get("nn_module_stack") or {}
    in_mha = any("MultiheadAttention" in str(t) for _, t in stack.values())
    return in_mha or any(s in opname.split("::")[-1] for s in _ATTENTION_OPS)


def _first_attention_like(ep) -> object | None:
    """The first node of an unsupported attention in the graph (reported before its reshapes and linears)."""
    for n in ep.graph.nodes:
        if n.op != "call_function" or getattr(n.target, "namespace", None) == "tritium":
            continue
        name = getattr(getattr(n.target, "_schema", None), "name", str(n.target))
        if _attention_like(n, name):
            return n, name
    return None


def _float_input(n) -> bool:
    fake = n.meta.get("val")
    return fake is not None and getattr(fake, "dtype", None) is not None and fake.dtype.is_floating_point


def _aten_kind(n, torch) -> str | None:
    """The IR kind of an elementwise aten node of a general module, or None if it is not one we map."""
    aten = torch.ops.aten
    t, a = n.target, n.args
    tensors = [x for x in a if hasattr(x, "meta")]
    if t in (aten.relu.default,):
        return "relu"
    if t == aten.square.default or (t == aten.pow.Tensor_Scalar and len(a) == 2 and a[1] == 2):
        return "square"
    both = (
        len(a) >= 2
        and len(tensors) == 2
        and all(_float_input(x) for x in a[:2])
        and tuple(a[0].meta["val"].shape) == tuple(a[1].meta["val"].shape)
    )
    if t == aten.add.Tensor and both and n.kwargs.get("alpha", 1) == 1 and len(a) == 2:
        return "add"
    if t == aten.mul.Tensor and both:
        return "mul"
    return None


def from_export(ep, model_config: dict) -> Graph:
    """Lower an exported program (compiler.capture) to IR; unsupported ops raise :class:`CompileError`."""
    import torch

    sig = ep.graph_signature
    params = {**getattr(sig, "inputs_to_parameters", {}), **getattr(sig, "inputs_to_buffers", {})}
    params = {k: re.sub(r"^model\.", "", v) for k, v in params.items()}
    user_inputs = [s for s in sig.user_inputs]
    ops: list[Op] = []
    features: dict[str, int] = {}
    alias: dict[str, str] = {}  # graph node → IR value
    positions: set[str] = set()

    def val(n) -> str:
        return alias.get(n.name, n.name)

    def feat(n) -> int:
        fake = n.meta.get("val")
        return int(fake.shape[-1]) if fake is not None and len(fake.shape) else 1

    general = model_config.get("graph") == "module"
    if general and len(user_inputs) != 1:
        raise CompileError(
            f"<model>: a general module takes exactly one input tensor (T, features); it takes {len(user_inputs)}"
        )
    if general and (att := _first_attention_like(ep)) is not None:
        n, opname = att
        stack = n.meta.get("nn_module_stack") or {}
        mha = [t for _, t in stack.values() if "MultiheadAttention" in str(t)]
        what = "module nn.MultiheadAttention" if mha else f"op {opname}"
        raise CompileError(
            f"{where_of(n)}: unsupported {what}; {ATTENTION_HINT}; supported: {', '.join(SUPPORTED_PIECES)}"
        )
    output = None
    for n in ep.graph.nodes:
        if n.op == "placeholder":
            if n.name in user_inputs:
                alias[n.name] = "input" if general else "tokens"
                features["input"] = feat(n)
            continue
        if n.op == "output":
            outs = n.args[0] if isinstance(n.args[0], (tuple, list)) else [n.args[0]]
            if general and (len(outs) != 1 or not hasattr(outs[0], "name") or val(outs[0]) == "input"):
                raise CompileError(
                    f"<model>: a general module must return one tensor computed from its input "
                    f"(it returns {len(outs)} value(s))"
                )
            output = val(outs[0])
            continue
        where = where_of(n)
        target = n.target
        ns = getattr(target, "namespace", None)
        opname = getattr(getattr(target, "_schema", None), "name", str(target))
        name = re.sub(r"^model\.?", "", where.split(" ")[0]) or n.name
        if target in (
            torch.ops.aten.arange.start,
            torch.ops.aten.arange.default,
            torch.ops.aten.arange.start_step,
        ):
            positions.add(n.name)
            continue
        if target == torch.ops.aten.embedding.default:
            w, idx = n.args[0], n.args[1]
            if val(idx) != "tokens":
                raise CompileError(
                    f"{where}: aten.embedding of something other than the input tokens is not supported"
                )
            kind, inputs, attrs = "embed", ["tokens"], {"weight": params[w.name], "features": feat(n)}
        elif ns == "tritium" and target._opname in _TRITIUM:
            kind, a = target._opname, n.args
            inputs, attrs = [val(a[0])], {}
            if kind in ("bitlinear", "bitlinear_rows"):
                wshape = a[1].meta["val"].shape
                attrs = {"weight": params[a[1].name], "k": int(wshape[1]), "n": int(wshape[0])}
                if kind == "bitlinear_rows":
                    kind, attrs["per_channel"] = "bitlinear", True
            elif kind == "attention":
                if a[3].name not in positions:
                    raise CompileError(f"{where}: attention positions must be the step's token positions")
                h, hkv = int(a[6]), int(a[7])
                m = re.search(r"layers\.(\d+)\.", name + ".")
                inputs = [val(a[0]), val(a[1]), val(a[2])]
                attrs = {
                    "layer": int(m.group(1)) if m else 0,
                    "n_heads": h,
                    "n_kv_heads": hkv,
                    "head_dim": feat(a[0]) // h,
                    "score_div": float(a[8]),
                }
            elif kind == "rmsnorm":
                attrs = {"weight": params[a[1].name], "eps": float(a[2])}
            elif kind == "linear":
                kind, attrs = "lm_head", {"weight": params[a[1].name], "vocab": feat(n)}
            elif kind in ("int8linear", "int8linear_fixed"):
                wshape = a[1].meta["val"].shape
                attrs = {"weight": params[a[1].name], "k": int(wshape[1]), "n": int(wshape[0])}
                if kind == "int8linear_fixed":  # given int8 codes + row scales (models.w8a8.FixedInt8Linear)
                    kind, attrs["scales"] = "int8linear", params[a[2].name]
            elif kind == "layernorm":
                attrs = {
                    "weight": params[a[1].name] if a[1] is not None else None,
                    "bias": params[a[2].name] if a[2] is not None else None,
                    "eps": float(a[3]),
                }
            elif kind == "self_attention":  # models.attention.SelfAttention: no RoPE, no positions
                h, hkv = int(a[3]), int(a[4])
                kind, inputs = "attention", [val(a[0]), val(a[1]), val(a[2])]
                attrs = {
                    "layer": sum(1 for o in ops if o.kind == "attention"),
                    "n_heads": h,
                    "n_kv_heads": hkv,
                    "head_dim": feat(a[0]) // h,
                    "score_div": float(a[6]),
                    "causal": bool(a[5]),
                    "rope": False,
                }
            elif kind == "gelu":  # two kinds: the definitions differ (and cost differently on the host)
                kind = "gelu" if a[1] == "none" else "gelu_tanh"
            elif kind == "bias":  # folded into the linear's dequantization (compiler.passes.fold_bias)
                attrs = {"bias": params[a[1].name]}
            elif kind != "silu":
                inputs = [val(a[0]), val(a[1])]
        elif general and (kind := _aten_kind(n, torch)) is not None:
            inputs, attrs = [val(x) for x in n.args[: 2 if kind in ("add", "mul") else 1]], {}
        else:
            hint = ""
            if "linear" in opname or "addmm" in opname or "mm" == opname.split("::")[-1]:
                hint = (
                    "; a float linear layer: the accelerator runs ternary weights only — use "
                    "models.bitlinear.BitLinear"
                )
                if general:
                    hint = (
                        "; a float linear layer: use models.bitlinear.BitLinear (ternary, TLMM) or "
                        "models.w8a8.Int8Linear (int8, GEMM; Int8Linear.from_linear)"
                    )
            if general and opname.split("::")[-1] in _QUANTIZER_OPS:
                hint = (
                    "; a hand-written quantizer? quantized linears are models.w8a8.Int8Linear (int8 "
                    "W8A8, GEMM) or models.bitlinear.BitLinear (ternary, TLMM)"
                )
            if general and _attention_like(n, opname):
                hint = f"; {ATTENTION_HINT}"
            if general:
                hint += f"; supported: {', '.join(SUPPORTED_PIECES)}"
            raise CompileError(f"{where}: unsupported op {opname}{hint}")
        op = Op(n.name, kind, inputs, [n.name], attrs, where)
        if name == "<model>":
            name = op.kind
        op.name = name if not any(o.name == name for o in ops) else f"{name}.{n.name}"
        features[n.name] = feat(n)
        ops.append(op)
    if output is None:
        raise CompileError("<model>: the exported graph has no output")
    return Graph(ops, features, params, output, model_config)
