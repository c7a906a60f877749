"""The results store: run directories (one ``record.json`` per finished cell, the source of
truth; :mod:`~harness.store.records`) and the DuckDB index over them (:mod:`~harness.store.index`).

The names below load on first use, so importing this package does not import duckdb.
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> defining module
_EXPORTS = {
    "Store": "harness.store.index",
    "StoreBusy": "harness.store.index",
    "StoreSchemaError": "harness.store.index",
    "RECORD_FILE": "harness.store.records",
    "RecordError": "harness.store.records",
    "check_record": "harness.store.records",
    "read_record": "harness.store.records",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness.store' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
