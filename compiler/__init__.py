"""Tritium compiler: quantized PyTorch LM → accelerator Program (hw.program) + weight image + listing.

Pipeline (each stage has its own test in tests/test_compiler.py):

    capture (torch.export, tritium custom ops)  → compiler.capture
    IR of named ops                             → compiler.ir.from_export
    graph passes                                → compiler.passes (split_bitlinear, fold_bias,
                                                  dedupe_quant, fuse_quant, check_weights,
                                                  fuse_dequant, mark_engines)
    per-step lowering                           → compiler.lower (tile TLMM, lower attention, allocate,
                                                  pack weights, emit)

Programs are executed by sim.runtime (the numba models + host ops), one layer up.

Activations are quantized to int8 (BitNet absmax per token), so the compiler accepts only configs whose
TLMM activation width ``tlmm.act_bits`` is 8; narrower engines are refused before any work (a narrower
engine would drop the high bits of every activation the DMA hands it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from compiler.ir import CompileError, Graph

__all__ = [
    "CompileError",
    "CompiledModel",
    "compile_model",
    "load_model",
    "load_module",
    "parse_input_shape",
    "check_config",
    "ACT_BITS",
]

ACT_BITS = 8  # width of the activations the compiler's quantization (models.bitlinear.quantize_act) produces


@dataclass
class CompiledModel:
    """A captured, pass-processed model for one accelerator config; ``program(T, pos)`` emits a step."""

    graph: Graph
    lowering: object
    timings: dict = field(default_factory=dict)

    def program(self, tokens: int | None = None, pos: int = 0, logits: str = "all"):
        """The Program of one step: ``tokens`` new tokens at ``pos`` (a general module: ``tokens`` input
        rows, default the example input's)."""
        if tokens is None:
            rows = self.graph.model_config.get("rows")
            if rows is None:
                raise TypeError("program(): the number of tokens is required for a language model")
            tokens = rows
        return self.lowering.program(tokens, pos, logits)

    def relower(self, acfg, lm_head: str | None = None, retrieval: bool | None = None) -> CompiledModel:
        """The same captured, pass-processed graph lowered for another config (what :func:`compile_model`
        returns for ``acfg``, without capturing the model again: the capture and the passes do not read the
        config; the lowering only reads the graph). A language model only."""
        from compiler.lower import Lowering

        low = self.lowering
        if low.general:
            raise TypeError("relower(): a general module is compiled with compile_model")
        check_config(acfg)
        lm_head = acfg.system.lm_head if lm_head is None else lm_head
        t0 = time.perf_counter()
        new = Lowering(self.graph, acfg, low.state, low.mc, lm_head, retrieval)
        return CompiledModel(self.graph, new, {**self.timings, "lower_s": time.perf_counter() - t0})


def load_model(spec: str, device: str = "cpu"):
    """The model a MODEL argument names: a preset name (built on the meta device: shapes only), a Hugging
    Face BitNet folder (``config.json`` + ``*.safetensors``, :mod:`models.hf`), or a tritium checkpoint file
    (``.safetensors`` or the older torch ``.pt``, :mod:`models.checkpoint`). A ``.safetensors`` file inside a
    Hugging Face folder loads the folder. ``device="meta"`` reads shapes only (no weight data)."""
    from pathlib import Path

    from models.presets import PRESETS, build_model

    if spec in PRESETS:
        return build_model(spec, device="meta")
    p = Path(spec)
    from models import hf

    if hf.is_hf_folder(p):
        return hf.load_hf(p, device=device)
    if p.suffix == ".safetensors" and hf.is_hf_folder(p.parent) and not _is_tritium_file(p):
        return hf.load_hf(p.parent, device=device)
    if p.is_dir():
        raise ValueError(
            f"MODEL: {spec!r} is a folder without config.json (a Hugging Face model folder needs "
            "config.json and *.safetensors)"
        )
    if p.suffix in (".pt", ".pth", ".safetensors") or p.exists():
        from models.checkpoint import load_checkpoint

        return load_checkpoint(spec, device=device)
    raise ValueError(
        f"MODEL: {spec!r} is neither a preset ({', '.join(PRESETS)}), a Hugging Face folder nor a "
        "checkpoint file"
    )


def load_module(spec: str):
    """The general module a ``--module FILE.py:FACTORY`` argument names: FILE is *run as Python code* (like
    ``python FILE.py``, with its folder on ``sys.path`` while it loads; give only files you trust), then
    ``FACTORY()`` — a function or class in it, called without arguments — must return a ``torch.nn.Module``
    (set to eval mode). No pickles are read. Raises ValueError with one line naming what is wrong."""
    import importlib.util
    import sys
    from pathlib import Path

    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise ValueError(
            f"--module {spec!r}: expected FILE.py:FACTORY (a Python file and a function or class in it that "
            "returns the module)"
        )
    p = Path(path)
    if p.suffix != ".py" or not p.is_file():
        raise ValueError(f"--module {spec!r}: {path} is not a Python file (.py)")
    mod_name = f"_tritium_user_{abs(hash(str(p.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(mod_name, p)
    mod = importlib.util.module_from_spec(loader_spec)
    folder = str(p.resolve().parent)
    sys.path.insert(0, folder)
    try:
        loader_spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - the user's file: report its error in one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"--module {spec!r}: running {path} failed: {type(e).__name__}: {first}") from e
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    factory = getattr(mod, name, None)
    if factory is None or not callable(factory):
        found = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_"))
        raise ValueError(
            f"--module {spec!r}: {path} has no function or class {name!r} (it has: {', '.join(found) or 'none'})"
        )
    try:
        module = factory()
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"--module {spec!r}: {name}() failed: {type(e).__name__}: {first}") from e
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            f"--module {spec!r}: {name}() returned {type(module).__name__}, not a torch.nn.Module"
        )
    return module.eval()


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape R,F`` (or ``1,R,F``; commas or x): positive integers, the last the features."""
    parts = [t for t in text.replace("x", ",").split(",") if t.strip()]
    try:
        shape = tuple(int(t) for t in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"--input-shape {text!r}: expected positive integers ROWS,FEATURES (e.g. 4,64)")
    return shape


def _is_tritium_file(path) -> bool:
    """A .safetensors file that carries tritium-lm metadata (our own checkpoint format)."""
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format") == "tritium-lm"
    except Exception:  # noqa: BLE001 - unreadable: let the HF loader report it
        return False


def check_config(acfg) -> None:
    """Refuse, with a CompileError naming the field, accelerator configs the compiler cannot target."""
    bits = acfg.tlmm.act_bits
    if bits != ACT_BITS:
        raise CompileError(
            f"config {acfg.name}: tlmm.act_bits is {bits}, but the compiler quantizes activations "
            f"to int{ACT_BITS}; set tlmm.act_bits: {ACT_BITS} (or use a config that has it)"
        )


def compile_model(
    model,
    acfg,
    capture_len: int = 8,
    lm_head: str | None = None,
    example_inputs=None,
    retrieval: bool | None = None,
) -> CompiledModel:
    """Capture ``model`` with torch.export and run the graph passes; cheap per-step emission follows.

    ``model`` is a :class:`models.lm.TernaryLM` (token ids in, logits out; ``lm_head`` places the LM head:
    ``host_fp32``, ``host_fp16`` or ``acc_int8``, models/lm_head.py, recorded in every Program's
    ``meta["lm_head"]``; None takes the config's ``system.lm_head``), or, with ``example_inputs`` (a tensor
    or a 1-tuple: float ``(..., features)``), any module built from the supported pieces (docs/models.md,
    "General graphs"; ``compiler.ir.SUPPORTED_PIECES``): its Programs take the input's rows (``cm.program()``
    for the example's row count) and compute :func:`models.intref.int_reference` bit for bit (attention:
    ``models.attention.SelfAttention``; ``torch.ao`` qint8 dynamic linears are converted first,
    :func:`models.w8a8.convert_ao_dynamic`). Raises
    CompileError (one line) for a config the compiler cannot target (:func:`check_config`), an unknown
    ``lm_head`` or an unsupported op (naming the op, the module and the source line). ``retrieval`` (None: the
    config's ``system.attention == "resv"``) emits KV retrieval in the loop (docs/design.md); False keeps
    dense attention on a resv config (the estimate costs retrieval in closed form, tritium/retrieval.py)."""
    check_config(acfg)
    if example_inputs is not None or getattr(model, "config", None) is None:
        return _compile_module(model, acfg, example_inputs)
    from hw.program import LM_HEAD_OPTIONS

    lm_head = acfg.system.lm_head if lm_head is None else lm_head
    if lm_head not in LM_HEAD_OPTIONS:
        raise CompileError(f"lm_head={lm_head!r}: expected one of {', '.join(LM_HEAD_OPTIONS)}")
    from compiler.capture import capture
    from compiler.ir import from_export
    from compiler.lower import Lowering
    from compiler.passes import run_pipeline

    t0 = time.perf_counter()
    cfg = model.config.to_dict()
    ep = capture(model, min(capture_len, cfg["max_seq"]))
    t1 = time.perf_counter()
    g = from_export(ep, cfg)
    state = dict(model.state_dict(keep_vars=True))
    state.update({n: b for n, b in model.named_buffers()})
    g = run_pipeline(g, state)
    low = Lowering(g, acfg, state, cfg, lm_head, retrieval)
    t2 = time.perf_counter()
    return CompiledModel(g, low, {"export_s": t1 - t0, "passes_s": t2 - t1})


class _Found(Exception):
    pass


def _call_site(module, path: str, inputs) -> str:
    """``file:line`` where ``module``'s submodule ``path`` is called in the user's code (one eager forward on
    the example inputs, stopped at the call), or "" if it cannot be found."""
    import traceback
    from pathlib import Path

    import torch

    root = str(Path(__file__).resolve().parent.parent) + "/"
    found: list[str] = []

    def hook(mod, args):
        frames = [
            f
            for f in traceback.extract_stack()[:-1]
            if f.name == "forward"  # the user's forward that calls the submodule
            and "/torch/" not in f.filename
            and "site-packages" not in f.filename
            and not f.filename.startswith(root + "compiler/")
        ]
        if frames:
            f = frames[-1]
            found.append(f"{f.filename.removeprefix(root)}:{f.lineno}")
        raise _Found

    try:
        handle = module.get_submodule(path).register_forward_pre_hook(hook)
    except (AttributeError, RuntimeError):
        return ""
    try:
        with torch.no_grad():
            module(*inputs)
    except _Found:
        pass
    except Exception:  # noqa: BLE001 - best effort: the message names the module path anyway
        pass
    finally:
        handle.remove()
    return found[0] if found else ""


def _compile_module(module, acfg, example_inputs) -> CompiledModel:
    """The general-module path of :func:`compile_model`."""
    import torch

    name = type(module).__name__
    if example_inputs is None:
        raise CompileError(
            f"<model>: {name} is not a models.lm.TernaryLM; compile a general module with "
            "compile_model(module, acfg, example_inputs=(x,)) (x float, (..., features))"
        )
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor) or not inputs[0].is_floating_point():
        raise CompileError(
            f"<model>: example_inputs must be one float tensor (..., features); got "
            f"{[type(x).__name__ for x in inputs]}"
        )
    from models.w8a8 import UnsupportedModule, convert_ao_dynamic

    try:  # torch.ao dynamically quantized linears → FixedInt8Linear (their own int8 codes and scales)
        module = convert_ao_dynamic(module)
    except UnsupportedModule as e:  # torch.export cannot trace it: find its call line by running the module
        where = _call_site(module, e.path, inputs)
        raise CompileError(f"{e.path}{f' ({where})' if where else ''}: {e.message}") from None
    x = inputs[0]
    if x.ndim < 1 or x.numel() == 0:
        raise CompileError(f"<model>: example input of shape {list(x.shape)} has no rows of features")
    from compiler.capture import capture_module
    from compiler.ir import from_export
    from compiler.lower import Lowering
    from compiler.passes import run_pipeline

    t0 = time.perf_counter()
    try:
        ep = capture_module(module, inputs)
    except CompileError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.export's own errors are many lines: keep the first
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompileError(f"<model>: torch.export of {name} failed: {first}") from e
    t1 = time.perf_counter()
    cfg = {
        "graph": "module",
        "module": name,
        "rows": int(x.numel() // x.shape[-1]),
        "input_features": int(x.shape[-1]),
    }
    cfg["max_seq"] = cfg["rows"]  # an attention's K/V panels hold at most the example's rows
    g = from_export(ep, cfg)
    state = dict(module.state_dict(keep_vars=True))
    state.update({n: b for n, b in module.named_buffers()})
    g = run_pipeline(g, state)
    low = Lowering(g, acfg, state, cfg, "host_fp32")
    t2 = time.perf_counter()
    return CompiledModel(g, low, {"export_s": t1 - t0, "passes_s": t2 - t1})
