"""KV trace format (:mod:`traces.format`), recorder (:mod:`traces.record`) and the recorded traces of the tiny
model (``tiny-val-*.npz``, shipped as package data; list them with :func:`hw.data_files.trace_files`)."""
