"""``harness sql "SELECT ..."``: one read-only query on the results database, printed as a table.

There is no ``duckdb`` shell in the environment; this is the way to ask the store anything the
``results`` view and ``harness results`` do not show. The query runs on a read-only connection
(:meth:`harness.store.index.Store.query`) and must be one statement of DuckDB's SELECT kind
(``SELECT``, ``WITH``, ``FROM``, ``VALUES``, ``SHOW``, ``DESCRIBE``, ``SUMMARIZE``): no ``COPY``,
``ATTACH``, ``SET`` or ``INSTALL``. A query DuckDB refuses is one line on stderr, exit 2.
"""
from __future__ import annotations

from pathlib import Path

from harness.cli.common import EXIT_BAD_INPUT, EXIT_OK, eprint, make_console, no_db, store_problem

READ_ONLY_KINDS = "SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE"


def sql_error_line(err: BaseException) -> str:
    """DuckDB's message on one line: its ``LINE 1: ...`` echo of the query and the caret under it
    dropped (the query is the user's own), the rest joined."""
    lines = [ln.strip() for ln in str(err).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith("LINE ") and set(ln) - {"^", " "}]
    return " ".join(kept) or type(err).__name__


def _statement_problem(query: str) -> str | None:
    """Why ``query`` is not one read-only statement, or None. Raises duckdb's parser error."""
    import duckdb

    statements = duckdb.extract_statements(query)
    if len(statements) != 1:
        return f"expected one query, got {len(statements)} statements; run them one at a time"
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        name = getattr(kind, "name", str(kind))
        return f"only read-only queries run here ({READ_ONLY_KINDS}); got {name}"
    return None


def _tables_hint(store) -> str:
    """`` The store has: results (view), runs, ...`` for a query that named an unknown table."""
    import duckdb

    from harness.store.faults import StoreError

    try:
        rows = store.query("SELECT table_name, table_type FROM information_schema.tables "
                           "WHERE table_schema = 'main' ORDER BY table_type DESC, table_name", [])
    except (StoreError, duckdb.Error):  # only a hint: the error itself is what the user needs
        return ""
    names = [f"{n} (view)" if kind == "VIEW" else n for n, kind in rows]
    return f" The store has: {', '.join(names)}." if names else ""


def cmd_sql(args) -> int:
    if args.db and not Path(args.db).exists():
        return no_db(args.db)
    import duckdb

    from harness.cli.tables import sql_table
    from harness.store.faults import StoreError
    from harness.store.index import Store

    if args.max_rows < 0:
        eprint(f"harness sql: --max-rows must be 0 (all) or more, got {args.max_rows}")
        return EXIT_BAD_INPUT
    query = args.query.strip().rstrip(";").strip()
    if not query:
        eprint("harness sql: the query is empty; e.g. harness sql \"SELECT * FROM results LIMIT 5\"")
        return EXIT_BAD_INPUT
    try:
        problem = _statement_problem(query)
    except duckdb.Error as err:
        problem = sql_error_line(err)
    if problem:
        eprint(f"harness sql: {problem}")
        return EXIT_BAD_INPUT
    try:
        store = Store(args.db, wait_s=30)
        described = store.query(f"DESCRIBE {query}", [])  # (column_name, column_type, ...) per column
        rows = store.query(query, [])
    except StoreError as err:
        return store_problem(err)
    except duckdb.Error as err:
        hint = _tables_hint(store) if isinstance(err, duckdb.CatalogException) else ""
        eprint(f"harness sql: {sql_error_line(err)}{hint}")
        return EXIT_BAD_INPUT
    shown = rows if args.max_rows == 0 else rows[: args.max_rows]
    console = make_console()
    console.print(sql_table([d[0] for d in described], [d[1] for d in described], shown))
    more = f", {len(shown)} shown (--max-rows 0 shows all)" if len(shown) < len(rows) else ""
    console.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}{more}")
    return EXIT_OK
