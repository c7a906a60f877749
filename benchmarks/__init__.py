"""Benchmarks (not part of the test run): ``python -m benchmarks run [--quick]``; the stage
breakdown of a whole-model prune, ``python -m benchmarks.stages``; other libraries on the same
layers and models, ``python -m benchmarks.peers`` (in its own virtual environment).

Every speed figure is a ratio against a baseline measured in the same run on the same machine.
"""
