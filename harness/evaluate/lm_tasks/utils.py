"""Dataset loaders for the offline task configs (``custom_dataset: !function utils.load_x``).

lm-eval imports this file by path, beside the YAMLs, so the data is found relative to
``__file__``: no path depends on the working directory (relative ``data_files`` resolve
against the CWD, pitfall 5 of offline-notes §3), and ``Dataset.from_list`` builds the
datasets in memory, so the datasets cache is never read or written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"


def _load(name: str) -> dict[str, Any]:
    import datasets

    with open(DATA_DIR / f"{name}.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return {"test": datasets.Dataset.from_list(rows)}


# lm-eval calls these with the task's metadata as keyword arguments; none is needed.
def load_context(**_: Any) -> dict[str, Any]:
    return _load("tiny_context")


def load_corrupt(**_: Any) -> dict[str, Any]:
    return _load("tiny_corrupt")


def load_swap(**_: Any) -> dict[str, Any]:
    return _load("tiny_swap")


def load_wiki(**_: Any) -> dict[str, Any]:
    return _load("tiny_wiki")
