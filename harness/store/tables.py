"""The DuckDB tables of the results index: schema, its version check, and row writes.

Used by :class:`harness.store.index.Store`, which owns the connections; every function here
takes an open connection and, for writes, runs inside the caller's transaction.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from harness.store.faults import StoreSchemaError, one_line, reindex_hint
from harness.store.rows import TABLES, record_rows

SCHEMA_VERSION = 3  # 2: runs.publishable, runs.eval_info_json, metrics.headline; 3: a run per pruned model (variant, suites, artifact, aliases), evals, metrics.eval_id

# The whole DuckDB schema. Every statement is idempotent; `meta` holds schema_version.
# A run is one pruned model (its id covers what was run, not the suite); `evals` holds each of its
# evaluations (kind, settings, status, the suites that asked), and a metric row names its eval.
# `results` is the documented, stable view: one row per (run, evaluation, metric), and a run
# without metrics (typically a failure) still has one row, with metric NULL.
# runs.seed is INTEGER: the record schema (harness.store.validate) bounds seeds to 0..2**31-1.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, suite VARCHAR, model VARCHAR, method VARCHAR, target VARCHAR,
    seed INTEGER, status VARCHAR, error VARCHAR, traceback VARCHAR, spec_json VARCHAR,
    suite_text VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP, wall_time_s DOUBLE,
    prune_time_s DOUBLE, peak_rss_bytes BIGINT, peak_cuda_bytes BIGINT, device VARCHAR,
    sparsity_global DOUBLE, nm_compliant BOOLEAN, model_sha256 VARCHAR,
    environment_json VARCHAR, ingested_at TIMESTAMP, publishable BOOLEAN, eval_info_json VARCHAR,
    variant VARCHAR, label VARCHAR, params_json VARCHAR, suites_json VARCHAR, suite_path VARCHAR,
    pruned BOOLEAN, artifact_json VARCHAR, aliases_json VARCHAR
);
CREATE TABLE IF NOT EXISTS evals (
    run_id VARCHAR, eval_id VARCHAR, kind VARCHAR, status VARCHAR, error VARCHAR, publishable BOOLEAN,
    spec_json VARCHAR, suites_json VARCHAR, PRIMARY KEY (run_id, eval_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, eval_id VARCHAR, metric VARCHAR, value DOUBLE, stderr DOUBLE, n BIGINT, headline BOOLEAN,
    PRIMARY KEY (run_id, eval_id, metric)
);
CREATE TABLE IF NOT EXISTS layers (
    run_id VARCHAR, layer VARCHAR, block INTEGER, rows BIGINT, cols BIGINT, numel BIGINT,
    zeros BIGINT, sparsity DOUBLE, nm_ok BOOLEAN, rel_error DOUBLE, time_s DOUBLE,
    info_json VARCHAR, PRIMARY KEY (run_id, layer)
);
CREATE TABLE IF NOT EXISTS series (run_id VARCHAR, name VARCHAR, step INTEGER, value DOUBLE);
CREATE VIEW IF NOT EXISTS results AS
    SELECT r.run_id, r.suite, r.model, r.method, r.target, m.metric, m.value, r.status,
           r.variant, r.seed, r.params_json AS params, m.stderr, m.n, r.suites_json AS suites, m.eval_id
    FROM runs r LEFT JOIN metrics m ON m.run_id = r.run_id;
"""
# Errors one record's rows can raise on insert: that record is unstorable, the store is fine.
DATA_ERRORS = (duckdb.ConversionException, duckdb.ConstraintException, duckdb.InvalidInputException,
                duckdb.OutOfRangeException, duckdb.TypeMismatchException, TypeError, ValueError,
                OverflowError, KeyError, AttributeError, RecursionError)


class Unstorable(Exception):
    """A record the schema let through but DuckDB refused (rolls back a reindex; never escapes)."""

    def __init__(self, record: dict[str, Any], error: BaseException) -> None:
        super().__init__(str(error))
        self.record, self.error = record, error


def _insert(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, list]) -> None:
    # One statement per table: unnest() of list parameters is ~50x faster than executemany.
    if not next(iter(columns.values())):
        return
    names = ", ".join(columns)
    unnests = ", ".join("unnest(?)" for _ in columns)
    con.execute(f"INSERT INTO {table} ({names}) SELECT {unnests}", list(columns.values()))


def upsert(con: duckdb.DuckDBPyConnection, rows: dict[str, Any]) -> None:
    """Replace one run's rows in every table (the caller holds the transaction)."""
    run_id = rows["runs"]["run_id"][0]
    for table in TABLES:
        con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        _insert(con, table, rows[table])


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:  # the connection is gone or the transaction already ended: keep the first error
            pass
        raise
    con.execute("COMMIT")


def replace_all(con: duckdb.DuckDBPyConnection, records: list[dict[str, Any]]) -> None:
    """Drop every table and fill new ones from ``records`` (the caller holds the transaction)."""
    con.execute("DROP VIEW IF EXISTS results")
    for table in (*TABLES, "meta"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    create_schema(con)
    for record in records:
        try:
            upsert(con, record_rows(record))
        except DATA_ERRORS as e:
            raise Unstorable(record, e) from e


def read_all(con: duckdb.DuckDBPyConnection) -> None:
    """Read every row of our tables, so a damaged block raises now (DuckDB reads blocks lazily)."""
    names = con.execute("SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = 'main' AND table_type = 'BASE TABLE'").fetchall()
    for (name,) in names:
        if name in (*TABLES, "meta"):
            con.execute(f"SELECT sum(hash(t)) FROM {name} t").fetchall()


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA)
    con.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                [str(SCHEMA_VERSION)])


def check_schema(con: duckdb.DuckDBPyConnection, db_path: Path, *, create: bool) -> None:
    """Create the schema if ``create`` and it is missing; raise if its version differs."""
    has_meta = con.execute("SELECT count(*) FROM information_schema.tables "
                           "WHERE table_schema = 'main' AND table_name = 'meta'").fetchone()[0]
    if has_meta:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            err = StoreSchemaError(
                f"{db_path} has schema version {row and one_line(row[0], 40)}, this sparsebench uses "
                f"{SCHEMA_VERSION}; {reindex_hint(db_path)}")
            err.older = row is not None and row[0].isdigit() and int(row[0]) < SCHEMA_VERSION
            raise err
    elif not create:
        raise StoreSchemaError(f"{db_path} is not a sparsebench results database (no meta table); "
                               f"{reindex_hint(db_path)}")
    if create:
        create_schema(con)
