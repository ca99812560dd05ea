"""A ``torch.ao`` dynamically quantized MLP (``quantize_dynamic``, qint8) → Program → GEMM engine, checked.

``torch.ao.quantization.quantize_dynamic`` turns every ``nn.Linear`` of a float MLP into
``torch.ao.nn.quantized.dynamic.Linear``: int8 weights (per tensor by default, per output channel with
``--per-channel``) and activations quantized at run time. ``compiler.compile_model`` keeps torch's weight
codes, scales and float32 bias (``models.w8a8.FixedInt8Linear``, made by ``convert_ao_dynamic``) and
quantizes the activations per row with Tritium's absmax rule (torch uses one asymmetric uint8 scale per
tensor, which the int8 GEMM engine does not take), so the Program equals ``models.intref.int_reference`` bit
for bit and torch's own output within quantization error; both distances are printed. ``--rtl`` also runs
the Program through the Verilator-simulated RTL top level.

Run from the repository root::

    python examples/ao_dynamic.py [--rows 4] [--per-channel] [--config configs/default.yaml] [--rtl]
"""

from __future__ import annotations

import warnings

import torch  # noqa: E402
from _common import compile_and_check, parse_args  # examples/_common.py (puts the checkout on sys.path)
from torch import nn  # noqa: E402


def build(per_channel: bool = False, seed: int = 0) -> nn.Module:
    """A float MLP 64 → 128 → 64 with biases, dynamically quantized by torch (qint8)."""
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    spec = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig} if per_channel else {nn.Linear}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return torch.ao.quantization.quantize_dynamic(mlp, spec, dtype=torch.qint8)


def main(argv=None) -> int:
    args = parse_args(__doc__, argv, lambda ap: ap.add_argument("--per-channel", action="store_true"))
    module = build(args.per_channel)
    x = torch.randn(args.rows, 64)

    def describe(y, stats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = module(x)
        rel = float((y - theirs).norm() / theirs.norm())
        return f"; GEMM {stats.cycles['gemm']} cycles, modeled; relative distance to torch's own output {rel:.2e}"

    return compile_and_check(module, x, args, describe)


if __name__ == "__main__":
    raise SystemExit(main())
