"""``harness``: run, validate, ls, zoo, results. Parses arguments, calls the library, prints.

Heavy modules (torch, transformers, duckdb) are imported inside the commands so that
``harness --help`` and ``harness validate`` answer quickly. Only this module prints.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from harness.cli.executor_args import add_executor_args, executor_from_args, first_ctrl_c_stops

EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_DB = "results/sparsebench.duckdb"


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # logs and pipes: do not squeeze tables into 80 columns
    return console


def _load_suite_or_exit(path: str):
    from harness.suite.loader import SuiteError, load_suite

    try:
        return load_suite(path)
    except SuiteError as err:
        for line in str(err).splitlines():
            print(line, file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _hub_needed(suite) -> bool:
    if any(m.id.startswith("hf:") or (m.id.startswith("timm:") and m.weights is None) for m in suite.models):
        return True
    if suite.lm_eval is not None:
        from harness.evaluate.lm_eval_adapter import needs_hub

        if needs_hub(suite.lm_eval):
            return True
    from harness.data.text import LOCAL_DATASETS

    datasets = {suite.calibration.dataset} | {p.dataset for p in suite.perplexity}
    return bool(datasets - set(LOCAL_DATASETS))


def _hub_reachable(timeout: float = 2.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _set_offline(args, suite, console) -> None:
    """Offline unless the suite needs the hub and the hub answers (a missing model then fails
    in seconds instead of hanging ~50 s in retries)."""
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        offline = True
    elif args.offline:
        offline = True
    elif args.online:
        offline = False
    elif not _hub_needed(suite):
        offline = True
    else:
        offline = not _hub_reachable()
        if offline:
            console.print("[yellow]Hugging Face hub unreachable: running offline (local caches only)[/]")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def _set_tf32(args) -> None:
    """``--tf32``: every cell (workers, Slurm tasks) allows TF32; recorded in each run's environment."""
    from harness.run.env import TF32_ENV

    if args.tf32:
        os.environ[TF32_ENV] = "1"


def cmd_validate(args) -> int:
    from harness.suite.loader import SuiteError, expand, load_suite

    status = EXIT_OK
    for path in args.suites:
        try:
            suite = load_suite(path)
        except SuiteError as err:
            for line in str(err).splitlines():
                print(line, file=sys.stderr)
            status = EXIT_BAD_INPUT
            continue
        print(f"{path}: ok ({len(expand(suite))} cells)")
    return status


def cmd_run(args) -> int:
    from harness.cli.report import CliReporter, grid_table, summary_table
    from harness.run.runner import select
    from harness.suite.loader import expand

    console = _console()
    suite = _load_suite_or_exit(args.suite)
    if args.dry_run:
        cells = select(expand(suite), args.only)
        console.print(grid_table(suite, cells))
        return EXIT_OK
    _set_offline(args, suite, console)
    _set_tf32(args)
    from rich.markup import escape

    from harness.run.executors import ExecutorError
    from harness.run.runner import run_suite
    from harness.store.index import Store, StoreBusy, StoreSchemaError

    store = Store(args.db, on_wait=lambda msg: console.print(f"[yellow]{msg}[/]"))
    reporter = CliReporter(console)
    try:
        executor = executor_from_args(args)
    except ValueError as err:
        print(err, file=sys.stderr)
        return EXIT_BAD_INPUT
    stop = threading.Event()
    try:
        with reporter, first_ctrl_c_stops(stop, console):
            results = run_suite(
                suite, store=store, only=args.only, force=args.force, retry_failed=args.retry_failed,
                device=args.device, reporter=reporter, executor=executor, stop=stop,
            )
    except KeyboardInterrupt:
        console.print(
            f"[yellow]Interrupted. Every finished cell is saved in {args.db}; "
            "run the same command again to resume.[/]"
        )
        return EXIT_INTERRUPTED
    except (StoreBusy, StoreSchemaError, ExecutorError) as err:
        return _store_problem(err)
    console.print(summary_table(suite.name, results))
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        earlier = " (stored earlier)" if r.stored else ""
        console.print(f"[red]failed[/]{earlier} {r.spec.short_id} {r.spec.model.id} {r.spec.method} {r.spec.target}: "
                      f"{escape(r.error or '')}")
    console.print(f"Results: {args.db} (query the 'results' view).")
    if any(r.stored for r in failed):
        console.print("Cells stored as failed are not rerun; add --retry-failed to rerun them.")
    not_run = [r for r in results if r.status == "not run"]
    if not_run:
        console.print(f"[yellow]Stopped: {len(not_run)} cells not run. Run the same command again to resume.[/]")
        return EXIT_INTERRUPTED
    return EXIT_FAILED_CELLS if failed else EXIT_OK


def cmd_reindex(args) -> int:
    from harness.store.index import Store, StoreBusy, StoreSchemaError

    store = Store(args.db, on_wait=lambda msg: print(msg, file=sys.stderr))
    if not store.runs_dir.is_dir():
        print(f"no run directories at {store.runs_dir}; nothing to index", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        n = store.reindex()
    except (StoreBusy, StoreSchemaError) as err:
        return _store_problem(err)
    print(f"{n} records from {store.runs_dir} indexed into {store.db_path}")
    return EXIT_OK


def cmd_ls(args) -> int:
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    if args.what == "methods":
        from harness.core.method import METHODS, params_dict
        from harness.plugins import list_methods

        list_methods()
        table.add_column("method"), table.add_column("params (defaults)"), table.add_column("origin")
        for e in METHODS:
            params = ", ".join(f"{k}={v!r}" for k, v in params_dict(e.obj.Params()).items())
            table.add_row(e.name, params or "-", e.origin)
    elif args.what == "models":
        from harness.core.ids import LM_ZOO_NAMES, SOURCES, VISION_ZOO_NAMES

        table.add_column("model id"), table.add_column("what")
        for z in LM_ZOO_NAMES:
            table.add_row(f"zoo:{z}", "tiny offline LM trained by sparsebench on stdlib English text")
        for z in VISION_ZOO_NAMES:
            table.add_row(f"zoo:{z}", "tiny offline image classifier (timm) trained by sparsebench on sklearn digits")
        from harness.core.problems import PROBLEMS

        for name, what in PROBLEMS.items():
            table.add_row(f"synthetic:{name}", what)
        for src, what in SOURCES.items():
            if src not in ("zoo", "synthetic"):
                table.add_row(f"{src}:...", what)
    else:
        from harness.data.text import DATASETS

        table.add_column("dataset"), table.add_column("what")
        for name, what in sorted(DATASETS.items()):
            table.add_row(name, what)
    _console().print(table)
    return EXIT_OK


def cmd_zoo(args) -> int:
    from harness.models import zoo
    from harness.cli.report import step_progress

    console = _console()
    if args.snapshot:
        path = zoo.snapshot_corpus()
        console.print(f"corpus snapshot written: {path}")
    names = [args.name] if args.name else list(zoo.ZOO_MODELS)
    for name in names:
        out = Path(args.out) / name if args.out else zoo.shipped_dir(name)
        with step_progress(console, f"training zoo:{name}") as cb:
            path = zoo.build_model(name, out, steps=args.steps, progress=cb)
        console.print(f"zoo:{name} written to {path} (sha256 {zoo.checkpoint_sha256(path)[:16]})")
    return EXIT_OK


def cmd_results(args) -> int:
    from harness.cli.report import results_table
    from harness.store.index import Store

    if not Path(args.db).exists():
        print(f"no results database at {args.db}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _console().print(results_table(Store(args.db), args.suite))
    return EXIT_OK


def _store_problem(err: Exception) -> int:
    """A results database that is busy, of another schema, or not one: one line, exit 2."""
    print(err, file=sys.stderr)
    return EXIT_BAD_INPUT


def _no_db(db: str) -> int:
    print(f"no results database at {db}; run a suite first (harness run SUITE --db {db})",
          file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_leaderboard(args) -> int:
    if not Path(args.db).exists():
        return _no_db(args.db)
    from harness.store.index import StoreBusy, StoreSchemaError
    from leaderboard.render import SiteError, build_site

    console = _console()
    try:
        with console.status("building the leaderboard…"):
            summary = build_site(args.db, args.out, plots=not args.no_plots)
    except (SiteError, StoreBusy, StoreSchemaError) as err:
        return _store_problem(err)
    failed = f", {summary.failed} failed" if summary.failed else ""
    console.print(
        f"{summary.runs} runs{failed}, {summary.tables} tables, {summary.models} model pages, "
        f"{summary.plots} plots: {Path(args.out) / 'index.html'} (open it in a browser; no server needed)",
        markup=False,
    )
    return EXIT_OK


def cmd_compare(args) -> int:
    if not Path(args.db).exists():
        return _no_db(args.db)
    from harness.store.index import Store, StoreBusy, StoreSchemaError
    from leaderboard.compare import CompareError, compare, compare_table
    from leaderboard.data import load_runs

    try:
        result = compare(load_runs(Store(args.db)), args.method, args.baseline or (), args.suite)
    except (CompareError, StoreBusy, StoreSchemaError) as err:
        return _store_problem(err)
    console = _console()
    console.print(compare_table(result))
    worse = result.worse
    if worse:
        console.print(f"{args.method} is worse on {len(worse)} of {len(result.deltas)} compared cells.",
                      markup=False, style="red")
    else:
        console.print(f"{args.method} is not worse on any of {len(result.deltas)} compared cells.",
                      markup=False, style="green")
    return EXIT_FAILED_CELLS if args.fail_if_worse and worse else EXIT_OK


def cmd_export(args) -> int:
    if not Path(args.db).exists():
        return _no_db(args.db)
    import tempfile

    from harness.store.index import Store, StoreBusy, StoreSchemaError
    from leaderboard.data import export_results

    out = args.out or f"results.{args.format}"
    store = Store(args.db)
    if out == "-" and args.format == "parquet":
        print("parquet is binary: give --out FILE", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if out == "-":
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"results.{args.format}"
                export_results(store, args.format, path)
                sys.stdout.write(path.read_text(encoding="utf-8"))
            return EXIT_OK
        n = export_results(store, args.format, Path(out))
    except (StoreBusy, StoreSchemaError) as err:
        return _store_problem(err)
    print(f"{n} rows of the results view written to {out}", file=sys.stderr)
    return EXIT_OK


def _add_leaderboard_parsers(sub) -> None:
    """Parsers of ``leaderboard``, ``compare`` and ``export`` (they read the results database)."""
    from leaderboard.compare import WORSE_RULE

    lb = sub.add_parser("leaderboard", help="build the static leaderboard site")
    lbsub = lb.add_subparsers(dest="leaderboard_command", required=True)
    lbb = lbsub.add_parser(
        "build", help="write a self-contained static site (works from file://, no server)",
        description="Write index.html (a sortable, filterable table per suite and model family), "
        "a page per model (metric-vs-sparsity plots) and per run (params, suite YAML, layers, "
        "environment, reproduce command), and data/ (Parquet and JSON).",
    )
    lbb.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    lbb.add_argument("--out", default="site", help="output folder (default site/)")
    lbb.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots (faster)")
    lbb.set_defaults(func=cmd_leaderboard)

    c = sub.add_parser(
        "compare", help="deltas of one method versus baselines, per model, target and metric",
        description="Compare --method with each baseline on every (suite, model, target, metric) "
        "cell where both have ok runs. " + WORSE_RULE,
    )
    c.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    c.add_argument("--method", required=True, help="the method under test")
    c.add_argument("--baseline", action="append", metavar="NAME",
                   help="a baseline method; repeat for more (default: magnitude, wanda, sparsegpt "
                   "when present, else every other non-dense method)")
    c.add_argument("--suite", help="only this suite")
    c.add_argument("--fail-if-worse", action="store_true",
                   help="exit 1 if the method is worse on any compared cell (rule above)")
    c.set_defaults(func=cmd_compare)

    e = sub.add_parser("export", help="write the results view as Parquet, JSON or CSV")
    e.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    e.add_argument("--format", required=True, choices=["parquet", "json", "csv"])
    e.add_argument("--out", help="output file (default results.FORMAT; '-' for stdout, json/csv)")
    e.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="sparsebench: prune, evaluate, record, compare.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run every cell of a suite not yet stored")
    r.add_argument("suite")
    r.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    r.add_argument("--only", help="run id prefix, or a glob over 'model/method/target'")
    r.add_argument("--force", action="store_true", help="rerun every cell, even those stored as ok")
    r.add_argument("--retry-failed", action="store_true",
                   help="rerun cells stored as failed (by default they are shown, not rerun)")
    r.add_argument("--dry-run", action="store_true", help="print the expanded grid and exit")
    r.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    r.add_argument("--tf32", action="store_true",
                   help="let CUDA matmuls and convolutions use TF32 (faster, 10-bit mantissa inputs; default: "
                        "strict float32, recorded per run)")
    net = r.add_mutually_exclusive_group()
    net.add_argument("--offline", action="store_true", help="never contact the Hugging Face hub")
    net.add_argument("--online", action="store_true", help="skip the hub reachability check")
    add_executor_args(r)
    r.set_defaults(func=cmd_run)

    ri = sub.add_parser(
        "reindex", help="rebuild the results database from the run directories",
        description="Drop every table of the results database and rebuild it from "
        "<db folder>/runs/*/record.json (the source of truth). Also the fix for a database of "
        "an older schema version or a lost or damaged database file.")
    ri.add_argument("--db", "--store", dest="db", default=DEFAULT_DB,
                    help=f"results database; its run dirs are in <its folder>/runs (default {DEFAULT_DB})")
    ri.set_defaults(func=cmd_reindex)

    v = sub.add_parser("validate", help="check suites (schema, methods, params, targets, ids) without running")
    v.add_argument("suites", nargs="+")
    v.set_defaults(func=cmd_validate)

    ls = sub.add_parser("ls", help="list registered methods, model sources or datasets")
    ls.add_argument("what", choices=["methods", "models", "datasets"])
    ls.set_defaults(func=cmd_ls)

    z = sub.add_parser("zoo", help="build the offline model zoo")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zb = zsub.add_parser("build", help="train the zoo models (deterministic) into the package")
    zb.add_argument("--name", help="one zoo model (default: all)")
    zb.add_argument("--steps", type=int, help="override the training steps (for quick trials)")
    zb.add_argument("--out", help="write checkpoints under this folder instead of the package")
    zb.add_argument("--snapshot", action="store_true", help="first re-snapshot the corpus from this Python's stdlib")
    zb.set_defaults(func=cmd_zoo)

    res = sub.add_parser("results", help="print the stored results as a table")
    res.add_argument("--db", default=DEFAULT_DB)
    res.add_argument("--suite", help="only this suite")
    res.set_defaults(func=cmd_results)
    _add_leaderboard_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
