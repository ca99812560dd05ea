"""Tritium simulation: the numba cycle/energy model, the golden reference and the cocotb/Verilator
co-simulation harness."""
