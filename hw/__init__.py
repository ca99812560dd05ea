"""Tritium hardware: Amaranth RTL of the engines, plus the pure-Python contracts every layer shares.

The contract modules (:mod:`hw.config`, :mod:`hw.ternary`, :mod:`hw.isa`) import neither amaranth nor
torch, so the cycle model and the compiler stay light. The RTL lives in :mod:`hw.tlmm` and :mod:`hw.fpga`.
"""
