"""Benchmarks (not part of the test run): ``python -m benchmarks run [--quick]``.

Every speed figure is a ratio against a baseline measured in the same run on the same machine.
"""
