"""The results index: DuckDB over the run directories of :mod:`harness.store.records`.

Run directories are the source of truth; the process that owns the results database ingests
each record into ``<root>/sparsebench.duckdb``. Cells that run in other processes or on other
cluster nodes only write run directories; :meth:`Store.ingest_pending` or :meth:`Store.reindex`
indexes them later.

DuckDB lets one process open a file for writing, and while it does, no other process can open
it at all, not even read-only. So a connection is opened per operation and closed at once,
and an open that hits another process's lock is retried with backoff for up to ``wait_s``.

Non-finite floats (noted in ``record.json``, see :mod:`harness.store.records`) are stored as
is: ``DOUBLE`` holds NaN and ±inf, so a diverged perplexity reads as NaN, never as NULL.
Timestamps are naive UTC ``TIMESTAMP`` values in DuckDB.
"""
from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from harness.store.records import (RECORD_FILE, atomic_write_text, check_record, decode_nonfinite, dump_record,
                                   encode_nonfinite, is_run_id, scan_records)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: runs.publishable, runs.eval_info_json, metrics.headline
DEFAULT_DB_NAME = "sparsebench.duckdb"

# The whole DuckDB schema. Every statement is idempotent; `meta` holds schema_version.
# `results` is the documented, stable view: one row per (run, metric), and a run without
# metrics (typically a failure) still has one row, with metric NULL.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, suite VARCHAR, model VARCHAR, method VARCHAR, target VARCHAR,
    seed INTEGER, status VARCHAR, error VARCHAR, traceback VARCHAR, spec_json VARCHAR,
    suite_text VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP, wall_time_s DOUBLE,
    prune_time_s DOUBLE, peak_rss_bytes BIGINT, peak_cuda_bytes BIGINT, device VARCHAR,
    sparsity_global DOUBLE, nm_compliant BOOLEAN, model_sha256 VARCHAR,
    environment_json VARCHAR, ingested_at TIMESTAMP, publishable BOOLEAN, eval_info_json VARCHAR
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, metric VARCHAR, value DOUBLE, stderr DOUBLE, n BIGINT, headline BOOLEAN,
    PRIMARY KEY (run_id, metric)
);
CREATE TABLE IF NOT EXISTS layers (
    run_id VARCHAR, layer VARCHAR, block INTEGER, rows BIGINT, cols BIGINT, numel BIGINT,
    zeros BIGINT, sparsity DOUBLE, nm_ok BOOLEAN, rel_error DOUBLE, time_s DOUBLE,
    info_json VARCHAR, PRIMARY KEY (run_id, layer)
);
CREATE TABLE IF NOT EXISTS series (run_id VARCHAR, name VARCHAR, step INTEGER, value DOUBLE);
CREATE VIEW IF NOT EXISTS results AS
    SELECT r.run_id, r.suite, r.model, r.method, r.target, m.metric, m.value, r.status
    FROM runs r LEFT JOIN metrics m ON m.run_id = r.run_id;
"""
_TABLES = ("runs", "metrics", "layers", "series")  # each has run_id; `meta` is separate
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.*) \(PID (\d+)\)")


class StoreBusy(RuntimeError):
    """Another process held the results database for longer than ``wait_s``."""


class StoreSchemaError(RuntimeError):
    """The database was written by another schema version, or is not a results database."""


# ------------------------------------------------------------------------------- rows


def _utc(value: str | None) -> datetime | None:
    """ISO-8601 text to a naive UTC datetime (naive input is taken to be UTC already)."""
    if value is None:
        return None
    dt = datetime.fromisoformat(value)
    return dt.astimezone(timezone.utc).replace(tzinfo=None) if dt.tzinfo else dt


def _num(x: Any, kind: type) -> Any:
    """Coerce to one Python type so DuckDB infers one list type per column; None stays."""
    return None if x is None else kind(x)


def _json(obj: Any) -> str | None:
    return None if obj is None else json.dumps(encode_nonfinite(obj), sort_keys=True, allow_nan=False)


def _columns(items: list[dict], spec: dict[str, Callable[[dict], Any]]) -> dict[str, list]:
    """Column lists (one per table column) from a list of dicts."""
    return {col: [get(item) for item in items] for col, get in spec.items()}


def _rows(record: dict[str, Any]) -> dict[str, Any]:
    """The DuckDB rows of one (decoded, checked) record, as one list per column."""
    rid = record["run_id"]
    sparsity = record.get("sparsity") or {}
    run = {
        "run_id": rid, "suite": record["suite"], "model": record["model"],
        "method": record["method"], "target": str(record["target"]), "seed": int(record["seed"]),
        "status": record["status"], "error": record.get("error"),
        "traceback": record.get("traceback"), "spec_json": record["spec_json"],
        "suite_text": record.get("suite_text"),
        "started_at": _utc(record.get("started_at")),
        "finished_at": _utc(record.get("finished_at")),
        "wall_time_s": _num(record.get("wall_time_s"), float),
        "prune_time_s": _num(record.get("prune_time_s"), float),
        "peak_rss_bytes": _num(record.get("peak_rss_bytes"), int),
        "peak_cuda_bytes": _num(record.get("peak_cuda_bytes"), int),
        "device": record.get("device"),
        "sparsity_global": _num(sparsity.get("global"), float),
        "nm_compliant": _num(sparsity.get("nm_compliant"), bool),
        "model_sha256": (record.get("model_info") or {}).get("sha256"),
        "environment_json": _json(record.get("environment")),
        "ingested_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "publishable": _num(record.get("publishable", True), bool),
        "eval_info_json": _json(record.get("eval_info")),
    }
    metrics = _columns(record.get("metrics") or [], {
        "run_id": lambda m: rid, "metric": lambda m: m["name"],
        "value": lambda m: _num(m.get("value"), float),
        "stderr": lambda m: _num(m.get("stderr"), float), "n": lambda m: _num(m.get("n"), int),
        "headline": lambda m: _num(m.get("headline"), bool),
    })
    layers = _columns(record.get("layers") or [], {
        "run_id": lambda r: rid, "layer": lambda r: r["name"],
        **{c: (lambda r, c=c: _num(r.get(c), int))
           for c in ("block", "rows", "cols", "numel", "zeros")},
        **{c: (lambda r, c=c: _num(r.get(c), float)) for c in ("sparsity", "rel_error", "time_s")},
        "nm_ok": lambda r: _num(r.get("nm_ok"), bool), "info_json": lambda r: _json(r.get("info")),
    })
    series = _columns(record.get("series") or [], {
        "run_id": lambda s: rid, "name": lambda s: s["name"],
        "step": lambda s: _num(s.get("step"), int), "value": lambda s: _num(s.get("value"), float),
    })
    return {"runs": {k: [v] for k, v in run.items()}, "metrics": metrics, "layers": layers,
            "series": series}


def _insert(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, list]) -> None:
    # One statement per table: unnest() of list parameters is ~50x faster than executemany.
    if not next(iter(columns.values())):
        return
    names = ", ".join(columns)
    unnests = ", ".join("unnest(?)" for _ in columns)
    con.execute(f"INSERT INTO {table} ({names}) SELECT {unnests}", list(columns.values()))


def _upsert(con: duckdb.DuckDBPyConnection, rows: dict[str, Any]) -> None:
    """Replace one run's rows in every table (the caller holds the transaction)."""
    run_id = rows["runs"]["run_id"][0]
    for table in _TABLES:
        con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        _insert(con, table, rows[table])


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


# ------------------------------------------------------------------------------ store


class Store:
    """Run directories plus their DuckDB index, under one root folder.

    Args:
        db_path: The DuckDB file; its parent folder is the root, run dirs go in ``root/runs``.
        wait_s: How long to retry while another process holds the database.
        on_wait: Called once per operation that has to wait, with a message to show the user.
    """

    def __init__(self, db_path: str | Path, *, wait_s: float = 600,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.db_path = Path(db_path).expanduser().resolve()
        self.root = self.db_path.parent
        self.runs_dir = self.root / "runs"
        self.wait_s = wait_s
        self.on_wait = on_wait
        self._rng = random.Random()  # backoff jitter only; never the global RNG

    @classmethod
    def in_root(cls, root: str | Path, **kwargs: Any) -> "Store":
        """The store with the default database name, ``<root>/sparsebench.duckdb``."""
        return cls(Path(root) / DEFAULT_DB_NAME, **kwargs)

    def run_dir(self, run_id: str) -> Path:
        if not is_run_id(run_id):  # it becomes a path: no "..", no "/"
            raise ValueError(f"run_id {run_id!r} is not a lowercase SHA-256 hex digest")
        return self.runs_dir / run_id

    def write_record(self, record: dict[str, Any]) -> Path:
        """Check ``record`` and write it atomically to ``runs/<run_id>/record.json``."""
        text = dump_record(record)
        path = self.run_dir(record["run_id"]) / RECORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        return path

    def ingest(self, record: dict[str, Any]) -> None:
        """Upsert one run: its rows in every table are replaced in a single transaction."""
        rows = _rows(check_record(decode_nonfinite(record)))
        with self._connect() as con, _transaction(con):
            _upsert(con, rows)

    def save(self, record: dict[str, Any]) -> None:
        """Write the record, then ingest it. If ingest fails the record is still on disk."""
        self.write_record(record)
        self.ingest(record)

    def statuses(self, run_ids: Iterable[str]) -> dict[str, str]:
        """``run_id -> 'ok' | 'failed'`` for those of ``run_ids`` in the database."""
        ids = list(run_ids)
        if not ids or not self.db_path.exists():
            return {}
        sql = "SELECT run_id, status FROM runs WHERE list_contains(?, run_id)"
        return dict(self.query(sql, [ids]))

    def finished_on_disk(self) -> dict[str, str]:
        """``run_id -> status`` of every valid record in the run dirs, ingested or not."""
        return {r["run_id"]: r["status"] for r in scan_records(self.runs_dir)}

    def ingest_pending(self) -> int:
        """Ingest records missing from the database or whose ``finished_at`` differs.

        Returns:
            The number of records ingested.
        """
        records = list(scan_records(self.runs_dir))
        with self._connect() as con:
            known = dict(con.execute("SELECT run_id, finished_at FROM runs").fetchall())
            pending = [_rows(r) for r in records
                       if r["run_id"] not in known
                       or known[r["run_id"]] != _utc(r.get("finished_at"))]
            for rows in pending:
                with _transaction(con):
                    _upsert(con, rows)
        log.info("ingested %d pending of %d records in %s", len(pending), len(records),
                 self.runs_dir)
        return len(pending)

    def reindex(self) -> int:
        """Drop every table and rebuild the database from the run dirs, in one transaction.

        Also the fix for a database of another schema version.

        Returns:
            The number of records indexed.
        """
        all_rows = [_rows(r) for r in scan_records(self.runs_dir)]
        with self._connect(rebuild=True) as con, _transaction(con):
            con.execute("DROP VIEW IF EXISTS results")
            for table in (*_TABLES, "meta"):
                con.execute(f"DROP TABLE IF EXISTS {table}")
            _create_schema(con)
            for rows in all_rows:
                _upsert(con, rows)
        log.info("reindexed %d records from %s into %s", len(all_rows), self.runs_dir, self.db_path)
        return len(all_rows)

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        """Run ``sql`` on a read-only connection and return all rows."""
        with self._connect(read_only=True) as con:
            return con.execute(sql, params or []).fetchall()

    def query_df(self, sql: str, params: list | None = None) -> "pandas.DataFrame":  # noqa: F821
        """Like :meth:`query`, as a pandas DataFrame."""
        with self._connect(read_only=True) as con:
            return con.execute(sql, params or []).df()

    # -- internals

    @contextmanager
    def _connect(self, *, read_only: bool = False,
                 rebuild: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one operation, closed on exit; schema created or checked."""
        if read_only and not self.db_path.exists():
            with self._connect():  # create the schema, so readers see empty tables
                pass
        con = self._open(read_only)
        try:
            if not rebuild:
                _check_schema(con, self.db_path, create=not read_only)
            yield con
        finally:
            con.close()

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the database, retrying with backoff while another process holds its lock."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        delay, waited = 0.05, False
        while True:
            try:
                return duckdb.connect(str(self.db_path), read_only=read_only)
            except duckdb.IOException as e:
                if "lock" not in str(e).lower():
                    raise
                m = _LOCK_HOLDER.search(str(e))
                holder = f" (PID {m[2]}, {m[1]})" if m else ""
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreBusy(
                        f"the results database {self.db_path} is held by another process{holder} "
                        f"and was not released within {self.wait_s:g} s. Wait for that process "
                        f"to finish (or stop it) and retry, or raise the wait. Finished records "
                        f"stay in {self.runs_dir}; ingest_pending() indexes them later."
                    ) from e
                if not waited:
                    waited = True
                    msg = (f"waiting for the results database {self.db_path} held by another "
                           f"process{holder} (up to {remaining:.0f} s)…")
                    log.info(msg)
                    if self.on_wait is not None:
                        self.on_wait(msg)
                time.sleep(min(delay * self._rng.uniform(0.75, 1.25), remaining))
                delay = min(delay * 2, 2.0)


def _create_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA)
    con.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                [str(SCHEMA_VERSION)])


def _check_schema(con: duckdb.DuckDBPyConnection, db_path: Path, *, create: bool) -> None:
    """Create the schema if ``create`` and it is missing; raise if its version differs."""
    has_meta = con.execute("SELECT count(*) FROM information_schema.tables "
                           "WHERE table_schema = 'main' AND table_name = 'meta'").fetchone()[0]
    if has_meta:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise StoreSchemaError(
                f"{db_path} has schema version {row and row[0]}, this sparsebench uses "
                f"{SCHEMA_VERSION}. Rebuild it from the run dirs with Store.reindex().")
    elif not create:
        raise StoreSchemaError(f"{db_path} is not a sparsebench results database (no meta table)")
    if create:
        _create_schema(con)
