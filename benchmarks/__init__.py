"""Benchmarks: scripts that measure pingan on this machine and write JSON to ``benchmarks/results/``.

Run them with ``pingan bench …`` or ``python -m benchmarks.<name>``. The runtime never imports this package.
"""
