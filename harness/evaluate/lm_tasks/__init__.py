"""Offline lm-eval tasks built from the zoo's held-out text (package data).

The folder holds real lm-eval task configs (``*.yaml``), a ``utils.py`` that loads their
data relative to its own file (so no path depends on the working directory and nothing
touches the datasets cache), the data under ``data/`` and ``build.py``, which wrote it.
Load it with ``TaskManager(include_path=TASK_DIR, include_defaults=False)``.
"""
from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent

__all__ = ["TASK_DIR"]
