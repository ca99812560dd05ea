"""Tritium compiler: quantized PyTorch LM → accelerator Program (hw.program) + weight image + listing.

Pipeline (each stage has its own test in tests/test_compiler.py):

    capture (torch.export, tritium custom ops)  → compiler.capture
    IR of named ops                             → compiler.ir.from_export
    graph passes                                → compiler.passes (split_bitlinear, dedupe_quant,
                                                  fuse_quant, check_weights, mark_engines)
    per-step lowering                           → compiler.lower (tile TLMM, lower attention, allocate,
                                                  pack weights, emit)

Programs are executed by sim.runtime (the numba models + host ops), one layer up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from compiler.ir import CompileError, Graph

__all__ = ["CompileError", "CompiledModel", "compile_model", "load_model"]


@dataclass
class CompiledModel:
    """A captured, pass-processed model for one accelerator config; ``program(T, pos)`` emits a step."""

    graph: Graph
    lowering: object
    timings: dict = field(default_factory=dict)

    def program(self, tokens: int, pos: int = 0, logits: str = "all"):
        return self.lowering.program(tokens, pos, logits)


def load_model(spec: str, device: str = "cpu"):
    """A preset name (built on the meta device: shapes only) or a checkpoint path (real weights)."""
    from pathlib import Path

    from models.presets import PRESETS, build_model

    if spec in PRESETS:
        return build_model(spec, device="meta")
    if Path(spec).suffix in (".pt", ".pth") or Path(spec).exists():
        from models.checkpoint import load_checkpoint

        return load_checkpoint(spec, device=device)
    raise ValueError(f"MODEL: {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint file")


def compile_model(model, acfg, capture_len: int = 8) -> CompiledModel:
    """Capture ``model`` with torch.export and run the graph passes; cheap per-step emission follows."""
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
    low = Lowering(g, acfg, state, cfg)
    t2 = time.perf_counter()
    return CompiledModel(g, low, {"export_s": t1 - t0, "passes_s": t2 - t1})
