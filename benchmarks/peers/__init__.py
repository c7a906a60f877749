"""Peer benchmark (not part of the test run): ``python -m benchmarks.peers``.

The same layers pruned by this project and by other libraries' per-matrix entry points, timed
A/B interleaved in one process against the plain reference (``benchmarks/reference.py``), masks
compared. The peers live in their own virtual environment (``benchmarks/peers/.venv``) that sees
this project's environment (so the very same torch and transformers) and adds the peers,
installed without their dependencies, since they pin other torch versions.
"""
