"""A W8A8 model (int8 weights per output row, int8 activations per token) → Program → GEMM engine, checked
bit for bit.

A float MLP block (``LayerNorm → Linear → SiLU → Linear`` plus a residual, two blocks) is converted
layer by layer with ``models.w8a8.Int8Linear.from_linear`` (the quantization rule of the ``acc_int8`` LM
head: ``models.bitlinear.quantize_act`` per weight row and per token), compiled with
``compiler.compile_model(module, acfg, example_inputs=(x,))`` — every Int8Linear becomes host quantize →
GEMM commands over int8 weight panels → host dequantize — and executed on the numba cycle models; the output
must equal ``models.intref.int_reference(module, x)`` bit for bit. ``--rtl`` also runs the Program through
the Verilator-simulated RTL top level (``sim.cosim.run_program_cosim``).

Run from the repository root::

    python examples/w8a8_model.py [--rows 4] [--config configs/default.yaml] [--rtl]
"""

from __future__ import annotations

import torch  # noqa: E402
from _common import compile_and_check, parse_args  # examples/_common.py (puts the checkout on sys.path)
from torch import nn  # noqa: E402

from models.w8a8 import Int8Linear  # noqa: E402


class Block(nn.Module):
    """``x + fc2(silu(fc1(layernorm(x))))``."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return x + self.fc2(nn.functional.silu(self.fc1(self.norm(x))))


class Model(nn.Module):
    def __init__(self, d: int = 64, hidden: int = 128, blocks: int = 2):
        super().__init__()
        self.blocks = nn.Sequential(*(Block(d, hidden) for _ in range(blocks)))

    def forward(self, x):
        return self.blocks(x)


def to_w8a8(module: nn.Module) -> nn.Module:
    """Replace every bias-free ``nn.Linear`` by an :class:`Int8Linear` with the same weights (in place)."""
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, Int8Linear.from_linear(child))
        else:
            to_w8a8(child)
    return module


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    torch.manual_seed(0)
    module = to_w8a8(Model())
    x = torch.randn(args.rows, 64)

    def describe(y, stats):
        fq = module(x).detach()  # the fake-quant float forward, for scale
        rel = float((y - fq).norm() / fq.norm())
        return f"; GEMM {stats.cycles['gemm']} cycles, modeled; relative distance to the fake-quant forward {rel:.2e}"

    return compile_and_check(module, x, args, describe)


if __name__ == "__main__":
    raise SystemExit(main())
