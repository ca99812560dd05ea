"""A ternary MLP built from Tritium's pieces → Program → run on the cycle models, checked bit for bit.

The module is ordinary PyTorch: ``RMSNorm → BitLinear → ReLU² → BitLinear`` plus a residual add, two
blocks deep, with random weights (nothing trained). ``compiler.compile_model(module, acfg,
example_inputs=(x,))`` captures it with ``torch.export``, maps the BitLinear layers onto the TLMM engine
and the rest onto host ops, and ``sim.runtime.execute`` runs the Program on the numba cycle models; the
output must equal ``models.intref.int_reference(module, x)`` (the PyTorch integer reference) bit for bit.
With ``--rtl`` the same Program also runs through the Verilator-simulated RTL top level
(``sim.cosim.run_program_cosim``: outputs bit-exact, every command's cycles equal to the model; needs the
sim extra and Verilator; the first build takes minutes).

Run from the repository root::

    python examples/ternary_mlp.py [--rows 4] [--config configs/default.yaml] [--rtl]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402
from torch import nn  # noqa: E402

from compiler import compile_model  # noqa: E402
from hw.config import load_config  # noqa: E402
from models.bitlinear import BitLinear  # noqa: E402
from models.intref import int_reference  # noqa: E402
from sim.runtime import execute  # noqa: E402


class TernaryBlock(nn.Module):
    """``x + down(relu(up(rmsnorm(x)))²)``: both projections ternary (BitLinear, per-tensor scale)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.norm = nn.RMSNorm(d, eps=1e-5)
        self.up = BitLinear(d, hidden)
        self.down = BitLinear(hidden, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))) ** 2)


class TernaryMLP(nn.Module):
    def __init__(self, d: int = 64, hidden: int = 192, blocks: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(TernaryBlock(d, hidden) for _ in range(blocks))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4, help="input rows (tokens) of the Program")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--rtl", action="store_true", help="also run through the RTL top level (Verilator)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    module = TernaryMLP()
    x = torch.randn(args.rows, 64)
    acfg = load_config(args.config)
    cm = compile_model(module, acfg, example_inputs=(x,))
    prog = cm.program()
    print(prog.listing.splitlines()[1])
    y, stats = execute(prog, x)
    ref = int_reference(module, x)
    exact = torch.equal(y, ref)
    print(
        f"executor vs PyTorch int reference: {'bit-exact' if exact else 'MISMATCH'} "
        f"({tuple(y.shape)}; TLMM {stats.cycles['tlmm']} cycles, GEMM {stats.cycles['gemm']}, modeled)"
    )
    ok = exact
    if args.rtl:
        from sim.cosim import run_program_cosim

        rep = run_program_cosim(prog, x, acfg, reference=ref)
        print(
            f"RTL top level: outputs {'bit-exact' if all(rep.rtl_equals_model + rep.rtl_equals_reference) else 'MISMATCH'}, "
            f"cycles {'equal' if rep.cycles_equal else 'DIFFERENT'} ({sum(map(sum, rep.rtl_cycles))} RTL cycles)"
        )
        ok = ok and rep.ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
