"""Fingerprint benchmark: recall per degradation, false positives, speed vs fpcalc, latency.

Run with ``python -m bench.fingerprint`` (``make bench-fingerprint``).
"""
