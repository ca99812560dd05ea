"""Compiler: PyTorch capture → IR → passes → Program + weight image (arrives with the models/compiler issue).

The Program format it will emit is fixed already: hw.isa command words (contract 2)."""
