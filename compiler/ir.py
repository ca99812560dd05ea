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


_TRITIUM = {"bitlinear", "attention", "rmsnorm", "relu2", "swiglu", "add", "linear"}


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

    output = None
    for n in ep.graph.nodes:
        if n.op == "placeholder":
            if n.name in user_inputs:
                alias[n.name] = "tokens"
            continue
        if n.op == "output":
            output = val(n.args[0][0] if isinstance(n.args[0], (tuple, list)) else n.args[0])
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
            if kind == "bitlinear":
                wshape = a[1].meta["val"].shape
                attrs = {"weight": params[a[1].name], "k": int(wshape[1]), "n": int(wshape[0])}
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
            else:
                inputs = [val(a[0]), val(a[1])]
        else:
            hint = ""
            if "linear" in opname or "addmm" in opname or "mm" == opname.split("::")[-1]:
                hint = (
                    "; a float linear layer: the accelerator runs ternary weights only — use "
                    "models.bitlinear.BitLinear"
                )
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
