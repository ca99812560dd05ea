"""Ternary layers (BitLinear), host ops, the BitNet-style LM with its presets and checkpoints, and the tiny-model trainer."""

import os as _os

# OpenMP threads that spin while waiting make torch ~20x slower when another job shares the 2 cores (measured:
# 8.5 s vs 0.45 s per training step next to a nextpnr run). Sleeping waits cost little when the cores are free.
# Effective only if this package is imported before torch.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
