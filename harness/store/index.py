"""Results store: run directories are the source of truth, DuckDB is the index.

Each finished cell (ok or failed) writes one self-contained JSON record, atomically, to
``<root>/runs/<run_id>/record.json``. The process that owns the results database then
ingests it into ``<root>/sparsebench.duckdb``. Cells that run in other processes or on other
cluster nodes only write run directories; :meth:`Store.ingest_pending` or :meth:`Store.reindex`
indexes them later.

DuckDB lets one process open a file for writing, and while it does, no other process can open
it at all, not even read-only. So a connection is opened per operation and closed at once,
and an open that hits another process's lock is retried with backoff for up to ``wait_s``.

Non-finite floats: JSON cannot carry NaN or infinity, so in ``record.json`` a non-finite float
in any object is written as ``null``, and the object gains a note naming the field, e.g.
``{"name": "pydoc/ppl@128", "value": null, "nonfinite": {"value": "nan"}}``. :func:`read_record`
restores the float, and DuckDB stores it as is (``DOUBLE`` holds NaN and ±inf), so a diverged
perplexity reads as NaN, never as a missing value (NULL). A non-finite float directly inside
a list (not under an object key) has nowhere to keep its note and becomes ``null``.

Timestamps are ISO-8601 in records and naive UTC ``TIMESTAMP`` values in DuckDB.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from harness.core.spec import canonical_json

log = logging.getLogger(__name__)

RECORD_VERSION = 1
SCHEMA_VERSION = 2  # 2: runs.publishable, runs.eval_info_json, metrics.headline
RECORD_FILE = "record.json"
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
_REQUIRED = ("record_version", "run_id", "spec_json", "suite", "model", "method", "target",
             "seed", "status")
_RUN_ID = re.compile(r"[0-9a-f]{64}")
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.*) \(PID (\d+)\)")


class StoreBusy(RuntimeError):
    """Another process held the results database for longer than ``wait_s``."""


class StoreSchemaError(RuntimeError):
    """The database was written by another schema version, or is not a results database."""


class RecordError(ValueError):
    """A record (dict or ``record.json``) is not valid JSON or lacks required fields."""


# ---------------------------------------------------------------------------- record files


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a torn one.

    Writes a temporary file in the same folder, flushes and fsyncs it, ``os.replace``-s it
    over ``path`` and fsyncs the folder, so the rename itself survives a crash.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, unlike mkstemp
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # a directory cannot be opened for fsync on Windows
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def dump_record(record: dict[str, Any]) -> str:
    """Checked, strict JSON text of a record, non-finite floats noted (see the module doc)."""
    check_record(record)
    return json.dumps(_encode(record), indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def read_record(path: Path) -> dict[str, Any]:
    """Read and check one ``record.json``; non-finite floats come back as floats.

    Raises:
        RecordError: the file is not valid JSON (e.g. torn) or not a valid record.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(record).__name__}")
    try:
        return check_record(_decode(record))
    except RecordError as e:
        raise RecordError(f"{path}: {e}") from e


def check_record(record: dict[str, Any]) -> dict[str, Any]:
    """Check a record's version, required fields and that ``run_id`` hashes ``spec_json``.

    Returns:
        The record itself, for chaining.

    Raises:
        RecordError: naming every problem found.
    """
    problems = [f"missing '{k}'" for k in _REQUIRED if k not in record]
    if record.get("record_version", RECORD_VERSION) != RECORD_VERSION:
        problems.append(f"record_version {record['record_version']!r}, expected {RECORD_VERSION}")
    run_id = record.get("run_id")
    if not (isinstance(run_id, str) and _RUN_ID.fullmatch(run_id)):
        problems.append(f"run_id {run_id!r} is not a lowercase SHA-256 hex digest")
    elif isinstance(spec_json := record.get("spec_json"), str):
        if hashlib.sha256(spec_json.encode()).hexdigest() != run_id:
            problems.append("run_id is not the SHA-256 of spec_json")
        elif "spec" in record and canonical_json(record["spec"]) != spec_json:
            problems.append("spec does not match spec_json")
    if "status" in record and record["status"] not in ("ok", "failed"):
        problems.append(f"status {record['status']!r}, expected 'ok' or 'failed'")
    for key in ("metrics", "layers", "series"):
        items = record.get(key) or []
        if not isinstance(items, list) or any(not isinstance(i, dict) or "name" not in i
                                              for i in items):
            problems.append(f"'{key}' must be a list of objects, each with a 'name'")
    if problems:
        raise RecordError(f"invalid record {str(run_id)[:12]}: " + "; ".join(problems))
    return record


def _encode(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to null plus a note."""
    if isinstance(obj, numbers.Number) and not isinstance(obj, (int, float)):
        obj = obj.item() if hasattr(obj, "item") else obj  # numpy scalars: np.int64 is no int
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        prior = obj.get("nonfinite")  # already encoded: keep its notes
        notes = dict(prior) if isinstance(prior, dict) else {}
        for k, v in obj.items():
            if k == "nonfinite" and isinstance(prior, dict):
                continue
            v = _encode(v)
            if isinstance(v, float) and not math.isfinite(v):
                notes[k], v = str(v), None  # "nan", "inf" or "-inf"
            out[k] = v
        if notes:
            out["nonfinite"] = notes
        return out
    if isinstance(obj, (list, tuple)):
        items = (_encode(v) for v in obj)
        return [None if isinstance(v, float) and not math.isfinite(v) else v for v in items]
    return obj


def _decode(obj: Any) -> Any:
    """Inverse of :func:`_encode`: restore noted non-finite floats. Idempotent."""
    if isinstance(obj, dict):
        notes = obj.get("nonfinite")
        out = {k: _decode(v) for k, v in obj.items() if k != "nonfinite"}
        if not isinstance(notes, dict):  # not one of our notes: leave it alone
            return out if notes is None else {**out, "nonfinite": notes}
        for k, name in notes.items():
            if name not in ("nan", "inf", "-inf"):
                raise RecordError(f"nonfinite note {k}={name!r}, expected 'nan', 'inf' or '-inf'")
            out[k] = float(name)
        return out
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


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
    return None if obj is None else json.dumps(_encode(obj), sort_keys=True, allow_nan=False)


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
        if not _RUN_ID.fullmatch(run_id):  # it becomes a path: no "..", no "/"
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
        rows = _rows(check_record(_decode(record)))
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
        return {r["run_id"]: r["status"] for r in self._scan()}

    def ingest_pending(self) -> int:
        """Ingest records missing from the database or whose ``finished_at`` differs.

        Returns:
            The number of records ingested.
        """
        records = list(self._scan())
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
        all_rows = [_rows(r) for r in self._scan()]
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

    def _scan(self) -> Iterator[dict[str, Any]]:
        """Valid records under ``runs/``; invalid ones are skipped with a warning."""
        if not self.runs_dir.is_dir():
            return
        for path in sorted(self.runs_dir.glob(f"*/{RECORD_FILE}")):
            try:
                record = read_record(path)
            except RecordError as e:
                log.warning("skipping %s", e)
                continue
            if record["run_id"] != path.parent.name:
                log.warning("skipping %s: run_id %s... does not match its folder", path,
                            record["run_id"][:12])
                continue
            yield record

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
