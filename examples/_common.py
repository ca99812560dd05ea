"""What the general-graph examples share: the command line, compile → execute → compare with the PyTorch
int reference, and optionally the same Program through the RTL top level (see examples/ternary_mlp.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def parse_args(doc: str, argv=None, extra=None) -> argparse.Namespace:
    """The examples' common options; ``extra(parser)`` adds an example's own."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4, help="input rows (tokens) of the Program")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--rtl", action="store_true", help="also run through the RTL top level (Verilator)")
    if extra is not None:
        extra(ap)
    return ap.parse_args(argv)


def workload_parser(doc: str, prompt: int = 128, contexts=(128, 1024)) -> argparse.ArgumentParser:
    """The estimate examples' workload options: a model preset on a config (default BitNet-0.7B on the KV260
    design), the prompt length and the decode contexts; the caller adds its own and parses."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", default="bitnet-0.7b", help="model preset (default bitnet-0.7b)")
    ap.add_argument("--config", default="configs/kv260.yaml", help="accelerator config (default kv260)")
    ap.add_argument("--prompt", type=int, default=prompt, help=f"prompt tokens (default {prompt})")
    ap.add_argument(
        "--context",
        type=int,
        nargs="+",
        default=list(contexts),
        help="decode contexts (tokens in the KV cache)",
    )
    return ap


def compile_and_check(module, x, args, describe=None) -> int:
    """Compile ``module`` for ``x``'s shape, run the Program on the numba models and compare with
    ``models.intref.int_reference`` bit for bit; with ``args.rtl`` also through the RTL top level (outputs
    bit-exact, every command's cycles equal to the model's). ``describe(y, stats)``: extra text for the
    executor line. Returns the exit code (0: every check passed)."""
    import torch

    from compiler import compile_model
    from hw.config import load_config
    from models.intref import int_reference
    from sim.runtime import execute

    acfg = load_config(args.config)
    prog = compile_model(module, acfg, example_inputs=(x,)).program()
    print(prog.listing.splitlines()[1])
    y, stats = execute(prog, x)
    ref = int_reference(module, x)
    exact = torch.equal(y, ref)
    extra = describe(y, stats) if describe else ""
    print(
        f"executor vs PyTorch int reference: {'bit-exact' if exact else 'MISMATCH'} ({tuple(y.shape)}{extra})"
    )
    ok = exact
    if args.rtl:
        from sim.cosim import run_program_cosim

        rep = run_program_cosim(prog, x, acfg, reference=ref)
        same = all(rep.rtl_equals_model + rep.rtl_equals_reference)
        print(
            f"RTL top level: outputs {'bit-exact' if same else 'MISMATCH'}, "
            f"cycles {'equal' if rep.cycles_equal else 'DIFFERENT'} ({sum(map(sum, rep.rtl_cycles))} RTL cycles)"
        )
        ok = ok and rep.ok
    return 0 if ok else 1
