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

import torch  # noqa: E402
from _common import compile_and_check, parse_args  # examples/_common.py (puts the checkout on sys.path)
from torch import nn  # noqa: E402

from models.bitlinear import BitLinear  # noqa: E402


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
    args = parse_args(__doc__, argv)
    torch.manual_seed(0)
    module = TernaryMLP()
    x = torch.randn(args.rows, 64)
    return compile_and_check(
        module, x, args, lambda y, st: f"; TLMM {st.cycles['tlmm']} cycles, GEMM {st.cycles['gemm']}, modeled"
    )


if __name__ == "__main__":
    raise SystemExit(main())
