"""Tritium application layer: the ``tritium`` command line, reports and benchmarks.

Nothing imports this package; it is the only layer that imports all the others."""
