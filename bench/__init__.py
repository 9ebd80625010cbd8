"""Benchmarks, each runnable as ``python -m bench.<name>`` (and a make target)."""
