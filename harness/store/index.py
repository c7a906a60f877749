"""The results index: DuckDB over the run directories of :mod:`harness.store.records`.

Run directories are the source of truth; the process that owns the results database ingests
each record into ``<root>/sparsebench.duckdb``. Cells that run in other processes or on other
cluster nodes only write run directories; :meth:`Store.ingest_pending` or :meth:`Store.reindex`
indexes them later.

DuckDB lets one process open a file for writing, and while it does, no other process can open
it at all, not even read-only. So a connection is opened per operation and closed at once,
and an open that hits another process's lock is retried with backoff for up to ``wait_s``.

Faults outside sparsebench (a damaged or non-DuckDB file, a read-only file or file system, a
full disk, a path that is a directory) raise a :class:`~harness.store.faults.StoreError` whose
message is one line with the fix (:mod:`harness.store.faults`). Invalid records found while
scanning the run directories are quarantined (:mod:`harness.store.records`) and skipped;
:meth:`Store.reindex` moves a damaged database file aside (``<db>.corrupt-<UTC time>``) and
rebuilds it.

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
from pathlib import Path
from typing import Any

import duckdb

from harness.store.faults import (StoreBusy, StoreCorrupt, StoreError, StorePathError, StoreSchemaError,  # noqa: F401
                                  StoreUnwritable, directory_fault, move_aside, one_line, store_fault)
from harness.store.records import (RECORD_FILE, RecordError, atomic_write_text, check_record, decode_nonfinite,
                                   dump_record, encode_nonfinite, is_run_id, read_record, reject, scan_records)
from harness.store.migrate import Defaults, migrate_runs
from harness.store.rows import record_rows, utc
from harness.store.tables import (SCHEMA, SCHEMA_VERSION, DATA_ERRORS, Unstorable, check_schema,  # noqa: F401
                                  read_all, replace_all, transaction, upsert)

log = logging.getLogger(__name__)

DEFAULT_DB_NAME = "sparsebench.duckdb"
QUARANTINE_DIR = "quarantine"  # <root>/quarantine/<folder name>/: invalid run directories, moved aside

_LOCK = re.compile(r"\block\b", re.IGNORECASE)  # "lock", never "block"
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.*) \(PID (\d+)\)")


# ------------------------------------------------------------------------------ store


class Store:
    """Run directories plus their DuckDB index, under one root folder.

    Args:
        db_path: The DuckDB file; its parent folder is the root, run dirs go in ``root/runs``,
            quarantined ones in ``root/quarantine``.
        wait_s: How long to retry while another process holds the database.
        on_wait: Called once per operation that has to wait, with a message to show the user.

    Raises:
        StorePathError: ``db_path`` is empty or a directory.
    """

    def __init__(self, db_path: str | Path, *, wait_s: float = 600,
                 on_wait: Callable[[str], None] | None = None, method_defaults: Defaults | None = None) -> None:
        if str(db_path) == "":
            raise StorePathError("the results database path is empty; give a file path "
                                 f"(e.g. --db results/{DEFAULT_DB_NAME})")
        self.db_path = Path(db_path).expanduser().resolve()
        if self.db_path.is_dir():
            raise directory_fault(self.db_path)
        self.root = self.db_path.parent
        self.runs_dir = self.root / "runs"
        self.quarantine_dir = self.root / QUARANTINE_DIR
        self.quarantined: list[Path] = []  # run directories this Store moved to quarantine_dir
        self.moved_aside: Path | None = None  # where reindex() moved a damaged database file
        self.wait_s = wait_s
        self.on_wait = on_wait
        self._rng = random.Random()  # backoff jitter only; never the global RNG
        self.method_defaults = method_defaults  # names variants of migrated records (harness.store.migrate)

    @classmethod
    def in_root(cls, root: str | Path, **kwargs: Any) -> "Store":
        """The store with the default database name, ``<root>/sparsebench.duckdb``."""
        return cls(Path(root) / DEFAULT_DB_NAME, **kwargs)

    def run_dir(self, run_id: str) -> Path:
        if not is_run_id(run_id):  # it becomes a path: no "..", no "/"
            raise ValueError(f"run_id {run_id!r} is not a lowercase SHA-256 hex digest")
        return self.runs_dir / run_id

    def write_record(self, record: dict[str, Any]) -> Path:
        """Check ``record`` and write it atomically to ``runs/<run_id>/record.json``.

        Raises:
            RecordError: the record breaks the record schema (nothing is written).
            OSError: the run directory cannot be written (read-only, disk full): the executors
                store the cell as an error (:mod:`harness.run.faults`), so it is kept as raised.
        """
        text = dump_record(record)
        path = self.run_dir(record["run_id"]) / RECORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        return path

    def ingest(self, record: dict[str, Any]) -> None:
        """Upsert one run: its rows in every table are replaced in a single transaction.

        Raises:
            RecordError: the record breaks the record schema or DuckDB refuses its values.
        """
        record = check_record(decode_nonfinite(encode_nonfinite(record)))  # as written: numpy scalars as numbers
        try:
            rows = record_rows(record)
            with self._connect() as con, transaction(con):
                upsert(con, rows)
        except DATA_ERRORS as e:
            raise RecordError(f"record {record['run_id'][:12]} cannot be stored: {one_line(e, 200)}") from e

    def save(self, record: dict[str, Any]) -> None:
        """Write the record, then ingest it. If ingest fails the record is still on disk."""
        self.write_record(record)
        self.ingest(record)

    def statuses(self, run_ids: Iterable[str]) -> dict[str, str]:
        """``run_id -> status`` for those of ``run_ids`` in the database."""
        ids = list(run_ids)
        if not ids or not self.db_path.exists():
            return {}
        sql = "SELECT run_id, status FROM runs WHERE list_contains(?, run_id)"
        return dict(self.query(sql, [ids]))

    def cells(self, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``run_id -> {"status", "pruned", "suites", "suite_path"}`` for those of ``run_ids`` in the database."""
        ids = list(run_ids)
        if not ids or not self.db_path.exists():
            return {}
        rows = self.query("SELECT run_id, status, pruned, suites_json, suite_path FROM runs "
                          "WHERE list_contains(?, run_id)", [ids])
        return {r: {"status": st, "pruned": bool(pr), "suites": json.loads(su or "[]"), "suite_path": sp}
                for r, st, pr, su, sp in rows}

    def read(self, run_id: str) -> dict[str, Any] | None:
        """The stored record of ``run_id`` from its run directory; None when absent or invalid."""
        path = self.run_dir(run_id) / RECORD_FILE
        try:
            return read_record(path) if path.is_file() else None
        except RecordError:
            return None

    def evaluations(self, run_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """``run_id -> {eval_id: status}`` for those of ``run_ids`` in the database."""
        ids = list(run_ids)
        if not ids or not self.db_path.exists():
            return {}
        out: dict[str, dict[str, str]] = {}
        for run_id, eval_id, status in self.query(
                "SELECT run_id, eval_id, status FROM evals WHERE list_contains(?, run_id)", [ids]):
            out.setdefault(run_id, {})[eval_id] = status
        return out

    def pruned(self, run_ids: Iterable[str]) -> set[str]:
        """Those of ``run_ids`` whose pruned model is stored (its evaluations may be missing)."""
        ids = list(run_ids)
        if not ids or not self.db_path.exists():
            return set()
        return {r for (r,) in self.query("SELECT run_id FROM runs WHERE pruned AND list_contains(?, run_id)", [ids])}

    def aliases(self, prefix: str) -> list[str]:
        """Run ids whose older ids (before the identity changed) start with ``prefix``."""
        if not prefix or not self.db_path.exists():
            return []
        rows = self.query("SELECT run_id, aliases_json FROM runs WHERE aliases_json LIKE ?", [f'%"{prefix}%'])
        return sorted(r for r, aliases in rows if any(a.startswith(prefix) for a in json.loads(aliases or "[]")))

    def finished_on_disk(self) -> dict[str, str]:
        """``run_id -> status`` of every valid record in the run dirs, ingested or not (invalid
        ones are skipped with a warning, not quarantined: this only reads)."""
        return {r["run_id"]: r["status"] for r in scan_records(self.runs_dir)}

    def ingest_pending(self) -> int:
        """Ingest records missing from the database or whose ``finished_at`` differs; invalid
        records are quarantined (one warning line each, listed in :attr:`quarantined`).

        Returns:
            The number of records ingested.
        """
        records = list(self._scan())
        done = 0
        with self._connect() as con:
            known = dict(con.execute("SELECT run_id, finished_at FROM runs").fetchall())
            pending = [r for r in records
                       if r["run_id"] not in known or known[r["run_id"]] != utc(r.get("finished_at"))]
            for record in pending:
                try:
                    rows = record_rows(record)
                    with transaction(con):
                        upsert(con, rows)
                except DATA_ERRORS as e:
                    self._reject(record, e)
                    continue
                done += 1
        log.info("ingested %d pending of %d records in %s", done, len(records), self.runs_dir)
        return done

    def reindex(self) -> int:
        """Drop every table and rebuild the database from the run dirs, in one transaction.

        Also the fix for a database of another schema version, and for a damaged or non-DuckDB
        file: that is moved aside to ``<db>.corrupt-<UTC time>`` (:attr:`moved_aside`), never
        deleted, and a new database is built. Invalid records are quarantined (:attr:`quarantined`).

        Returns:
            The number of records indexed.
        """
        records = list(self._scan())
        try:
            n = self._rebuild(records)
        except StoreCorrupt:
            self.moved_aside = move_aside(self.db_path, self.runs_dir)
            n = self._rebuild(records)
        log.info("reindexed %d records from %s into %s", n, self.runs_dir, self.db_path)
        return n

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
        migrate_runs(self.runs_dir, self.method_defaults)  # version 1 run directories, once
        return scan_records(self.runs_dir, self.quarantine_dir, self.quarantined.append)

    def _reject(self, record: dict[str, Any], error: BaseException) -> None:
        """Quarantine a record the schema let through but DuckDB refused."""
        path = self.runs_dir / record["run_id"] / RECORD_FILE
        reject(path.parent, f"{path}: cannot be stored ({one_line(error, 200)})", self.quarantine_dir,
               self.quarantined.append)

    def _rebuild(self, records: list[dict[str, Any]]) -> int:
        """Drop and rebuild every table from ``records`` in one transaction; a record DuckDB
        refuses is quarantined and the rebuild starts over without it."""
        records = list(records)
        while True:
            try:
                with self._connect(rebuild=True) as con:
                    read_all(con)  # a damaged file fails here (StoreCorrupt), not after the rebuild
                    with transaction(con):
                        replace_all(con, records)
                return len(records)
            except Unstorable as bad:
                self._reject(bad.record, bad.error)
                records.remove(bad.record)

    @contextmanager
    def _connect(self, *, read_only: bool = False,
                 rebuild: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one operation, closed on exit; schema created or checked. DuckDB and
        OS errors that are storage faults come out as :class:`StoreError` (one line, with the fix)."""
        if read_only and not self.db_path.exists():
            with self._connect():  # create the schema, so readers see empty tables
                pass
        con = self._open(read_only)
        try:
            if not rebuild:
                try:
                    check_schema(con, self.db_path, create=not read_only)
                except StoreSchemaError as e:
                    if not e.older:
                        raise
                    con.close()  # a database of an earlier schema: rebuilt from the run directories
                    log.warning("the results database %s has an earlier schema; rebuilding it from %s",
                                one_line(self.db_path), one_line(self.runs_dir))
                    self.reindex()
                    con = self._open(read_only)
            yield con
        except (duckdb.Error, OSError) as e:
            fault = store_fault(e, self.db_path, self.runs_dir, opening=False)
            if fault is None:
                raise
            raise fault from e
        finally:
            try:
                con.close()
            except duckdb.Error as e:  # e.g. the checkpoint on close hit a full disk: the commit is in the WAL
                log.warning("closing the results database %s: %s", one_line(self.db_path), one_line(e, 200))

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the database, retrying with backoff while another process holds its lock."""
        if self.db_path.is_dir():
            raise directory_fault(self.db_path)
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise store_fault(e, self.db_path, self.runs_dir, opening=True) from e
        deadline = time.monotonic() + self.wait_s
        delay, waited = 0.05, False
        while True:
            try:
                return duckdb.connect(str(self.db_path), read_only=read_only)
            except (duckdb.Error, OSError) as e:
                if not (isinstance(e, duckdb.IOException) and _LOCK.search(str(e))):
                    fault = store_fault(e, self.db_path, self.runs_dir, opening=True)
                    if fault is None:
                        raise
                    raise fault from e
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
