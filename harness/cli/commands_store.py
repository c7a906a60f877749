"""``harness results``, ``leaderboard build``, ``compare`` and ``export``: read the results database.

duckdb, jinja2 and matplotlib are imported inside the commands, so ``harness --help`` stays light.
"""
from __future__ import annotations

import sys
from pathlib import Path

from harness.cli.common import EXIT_BAD_INPUT, EXIT_FAILED_CELLS, EXIT_OK, eprint, make_console, no_db, store_problem


def cmd_results(args) -> int:
    from harness.cli.tables import results_table, stored_suites, view_columns
    from harness.core.registry import unknown_message
    from harness.store.faults import StoreError
    from harness.store.index import Store

    if args.db and not Path(args.db).exists():
        eprint(f"no results database at {args.db}")
        return EXIT_BAD_INPUT
    console = make_console()
    try:
        store = Store(args.db)
        columns = view_columns(store)
        if args.suite and args.suite not in (suites := stored_suites(store, columns)):
            eprint(f"{unknown_message('suite', args.suite, suites)} (the suites of the runs in {args.db})")
            return EXIT_BAD_INPUT
        table = results_table(store, args.suite, columns, width=console.width)
    except StoreError as err:  # damaged, a directory, busy, another schema: one line with the fix
        return store_problem(err)
    console.print(table)
    return EXIT_OK


def cmd_leaderboard(args) -> int:
    if args.db and not Path(args.db).exists():
        return no_db(args.db)
    from harness.store.faults import StoreError, one_line
    from leaderboard.render import SiteError, build_site
    from leaderboard.reported import ReportedError

    console = make_console()
    try:
        with console.status("building the leaderboard…"):
            summary = build_site(args.db, args.out, plots=not args.no_plots)
    except (SiteError, StoreError, ReportedError) as err:
        return store_problem(err)
    except OSError as err:  # the site's folder: full, read-only
        return store_problem(one_line(f"cannot write the site to {args.out}: {err}", 1000))
    failed = f", {summary.failed} failed" if summary.failed else ""
    console.print(
        f"{summary.runs} runs{failed}, {summary.tables} tables, {summary.models} model pages, "
        f"{summary.plots} plots: {Path(args.out) / 'index.html'} (open it in a browser; no server needed)",
        markup=False,
    )
    return EXIT_OK


def cmd_compare(args) -> int:
    if args.db and not Path(args.db).exists():
        return no_db(args.db)
    if not args.method and not args.reported:
        eprint("compare needs --method NAME (the method under test), or --reported for the published numbers")
        return EXIT_BAD_INPUT
    from harness.store.faults import StoreError
    from harness.store.index import Store
    from leaderboard.compare import CompareError, compare, compare_table
    from leaderboard.data import load_runs

    console = make_console()
    try:
        runs = load_runs(Store(args.db))
        if args.reported:
            return _print_reported(console, runs, args)
        result = compare(runs, args.method, args.baseline or (), args.suite)
    except (CompareError, StoreError) as err:
        return store_problem(err)
    console.print(compare_table(result))
    worse = result.worse
    if worse:
        console.print(f"{args.method} is worse on {len(worse)} of {len(result.deltas)} compared cells.",
                      markup=False, style="red")
    else:
        console.print(f"{args.method} is not worse on any of {len(result.deltas)} compared cells.",
                      markup=False, style="green")
    return EXIT_FAILED_CELLS if args.fail_if_worse and worse else EXIT_OK


def _print_reported(console, runs, args) -> int:
    """``compare --reported``: published numbers beside this store's reproductions (same protocol)."""
    from leaderboard.compare import reported_gaps, reported_table
    from leaderboard.reported import ReportedError, load_reported

    try:
        found = reported_gaps(runs, load_reported(), args.method)
    except ReportedError as err:
        return store_problem(err)
    table, shown = reported_table(found, all_rows=args.all_reported)
    if shown:
        console.print(table)
    same = sum(g.stat is not None for g in found)
    other = sum(g.stat is None and bool(g.others) for g in found)
    console.print(f"{len(found)} published numbers: {same} reproduced here under the same protocol, {other} only "
                  f"under another protocol, {len(found) - same - other} not run here"
                  + ("" if args.all_reported else " (--all lists them)") + ".", markup=False)
    return EXIT_OK


def cmd_export(args) -> int:
    if args.db and not Path(args.db).exists():
        return no_db(args.db)
    import tempfile

    import duckdb

    from harness.store.faults import StoreError, one_line
    from harness.store.index import Store
    from leaderboard.data import export_results

    out = args.out or f"results.{args.format}"
    if out == "-" and args.format == "parquet":
        print("parquet is binary: give --out FILE", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        store = Store(args.db)
        if out == "-":
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"results.{args.format}"
                export_results(store, args.format, path)
                from harness.cli.common import stdout_data  # no raw control character reaches a terminal

                sys.stdout.write(stdout_data(path.read_bytes().decode("utf-8"), args.format))  # "\r" kept
            return EXIT_OK
        n = export_results(store, args.format, Path(out))
    except StoreError as err:
        return store_problem(err)
    except (OSError, duckdb.IOException) as err:  # the output file: full disk, read-only folder
        return store_problem(one_line(f"cannot write {out}: {err}", 1000))
    print(f"{n} rows of the results view written to {out}", file=sys.stderr)
    return EXIT_OK
