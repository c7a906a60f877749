"""The results store: run directories (one ``record.json`` per finished cell, the source of
truth; :mod:`~harness.store.records`, checked against :mod:`~harness.store.validate`, bad ones
quarantined) and the DuckDB index over them (:mod:`~harness.store.index`, tables in
:mod:`~harness.store.tables`). Storage faults raise :class:`StoreError` subclasses whose message is
one line with the fix (:mod:`~harness.store.faults`).

The names below load on first use, so importing this package does not import duckdb.
"""
from __future__ import annotations

from harness.core.lazy import lazy_exports

# name -> defining module
_EXPORTS = {
    "Store": "harness.store.index",
    "StoreBusy": "harness.store.faults",
    "StoreCorrupt": "harness.store.faults",
    "StoreError": "harness.store.faults",
    "StorePathError": "harness.store.faults",
    "StoreSchemaError": "harness.store.faults",
    "StoreUnwritable": "harness.store.faults",
    "RECORD_FILE": "harness.store.records",
    "RecordError": "harness.store.records",
    "check_record": "harness.store.records",
    "read_record": "harness.store.records",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
