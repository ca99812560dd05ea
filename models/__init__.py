"""Ternary layers (BitLinear), LM definitions and model-shape presets (arrives with the models/compiler issue)."""
