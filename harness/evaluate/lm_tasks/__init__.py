"""Offline lm-eval tasks built from the zoo's held-out text (package data).

The folder holds real lm-eval task configs (``*.yaml``), a ``utils.py`` that loads their
data relative to its own file (so no path depends on the working directory and nothing
touches the datasets cache), the data under ``data/`` and ``build.py``, which wrote it.
Load it with ``TaskManager(include_path=TASK_DIR, include_defaults=False)``.

``AVERAGED_OFFLINE_TASKS``: the tasks here that pass the discrimination rule (README
"Zero-shot evaluation (lm-eval)", measured by ``benchmarks/zero_shot_tasks.py``); they make
up ``tiny_suite`` with ``tiny_wiki`` and count in the leaderboard's "avg zero-shot". The list
is declared in :mod:`harness.core.metrics`, the one module both this package and the
leaderboard may import, and re-exported here.
"""
from pathlib import Path

from harness.core.metrics import AVERAGED_OFFLINE_TASKS

TASK_DIR = Path(__file__).resolve().parent

__all__ = ["AVERAGED_OFFLINE_TASKS", "TASK_DIR"]
