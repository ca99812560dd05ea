"""A transformer encoder block (bidirectional self-attention + GELU MLP) → Program → run, checked bit for bit.

The module is ordinary PyTorch built from Tritium's pieces, BERT-style (pre-norm here)::

    x = x + attn(layernorm1(x))            # models.attention.SelfAttention: 4 heads, bidirectional
    x = x + fc2(gelu(fc1(layernorm2(x))))  # exact (erf) GELU

with ternary projections (``BitLinear``, TLMM) by default or int8 ones (``--linear int8``: ``Int8Linear``,
GEMM), every linear with a bias, random weights (nothing trained). ``compiler.compile_model(module, acfg,
example_inputs=(x,))`` maps the projections onto their engine, the attention core onto the GEMM engine
(Q·Kᵀ and P·V, no mask, no RoPE) and norms, softmax, GELU, biases and residuals onto host ops;
``sim.runtime.execute`` runs the Program on the numba cycle models and the output must equal
``models.intref.int_reference(module, x)`` bit for bit. ``factory`` builds the module for
``tritium compile --module examples/encoder_block.py:factory --input-shape 4,64``. With ``--rtl`` the same
Program also runs through the Verilator-simulated RTL top level (``sim.cosim.run_program_cosim``: outputs
bit-exact, every command's cycles equal to the model; needs the sim extra and Verilator).

Run from the repository root::

    python examples/encoder_block.py [--rows 4] [--linear ternary|int8] [--config configs/default.yaml] [--rtl]
"""

from __future__ import annotations

import torch  # noqa: E402
from _common import compile_and_check, parse_args  # examples/_common.py (puts the checkout on sys.path)
from torch import nn  # noqa: E402

from models.attention import SelfAttention  # noqa: E402
from models.bitlinear import BitLinear  # noqa: E402
from models.w8a8 import Int8Linear  # noqa: E402


class EncoderBlock(nn.Module):
    """``x + attn(ln1(x))``, then ``x + fc2(gelu(fc1(ln2(x))))``; ``linear``: ``ternary`` or ``int8``."""

    def __init__(self, d: int = 64, heads: int = 4, hidden: int = 128, linear: str = "ternary"):
        super().__init__()
        lin = (
            (lambda i, o: BitLinear(i, o, bias=True))
            if linear == "ternary"
            else (lambda i, o: Int8Linear(i, o, bias=True))
        )
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads, causal=False, linear=linear, bias=True)
        self.fc1, self.fc2 = lin(d, hidden), lin(hidden, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


def factory(linear: str = "ternary", seed: int = 0) -> EncoderBlock:
    """The example's module with seeded random weights and biases (what ``tritium compile --module`` loads)."""
    torch.manual_seed(seed)
    m = EncoderBlock(linear=linear)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") and "ln" not in name:
                p.normal_(0.0, 0.1)
    return m


def main(argv=None) -> int:
    args = parse_args(
        __doc__, argv, lambda ap: ap.add_argument("--linear", choices=("ternary", "int8"), default="ternary")
    )
    module = factory(args.linear)
    x = torch.randn(args.rows, 64)

    def describe(y, stats):
        flt = module(x).detach()  # the fake-quant float forward, for scale
        rel = float((y - flt).norm() / flt.norm())
        return (
            f"; TLMM {stats.cycles['tlmm']} cycles, GEMM {stats.cycles['gemm']}, modeled; relative distance "
            f"to the fake-quant forward {rel:.2e}"
        )

    return compile_and_check(module, x, args, describe)


if __name__ == "__main__":
    raise SystemExit(main())
