"""Tritium hardware: Amaranth RTL of the engines, plus the pure-Python contracts every layer shares.

The contract modules (:mod:`hw.config`, :mod:`hw.isa`, :mod:`hw.program`, :mod:`hw.ternary`,
:mod:`hw.gemm_layout`, :mod:`hw.boards`, :mod:`hw.kv_numerics`, :mod:`hw.top_geometry`, :mod:`hw.data_files`)
import neither amaranth nor torch, so the cycle models and the compiler stay light. The RTL lives in
:mod:`hw.tlmm`, :mod:`hw.gemm`, :mod:`hw.kv` and :mod:`hw.top`; :mod:`hw.fpga` is the FPGA flow. Layer
order: docs/layers.md.
"""
