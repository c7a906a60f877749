"""``harness``: run, validate, reindex, ls, zoo, results, sql, leaderboard, compare, export.

This module builds the argument parser and dispatches to the commands
(:mod:`~harness.cli.commands_run`, :mod:`~harness.cli.commands_store`,
:mod:`~harness.cli.commands_catalog`). Heavy modules (torch, transformers, duckdb) are imported
inside the commands so that ``harness --help`` and ``harness validate`` answer quickly.
"""
from __future__ import annotations

import argparse
import logging
import sys

from harness.cli.commands_catalog import cmd_ls, cmd_zoo
from harness.cli.commands_run import cmd_reindex, cmd_run, cmd_validate
from harness.cli.commands_sql import cmd_sql
from harness.cli.commands_store import cmd_compare, cmd_export, cmd_leaderboard, cmd_results
from harness.cli.common import DEFAULT_DB
from harness.cli.executor_args import add_executor_args
from harness.core.visible import visible


def _add_leaderboard_parsers(sub) -> None:
    """Parsers of ``leaderboard``, ``compare`` and ``export`` (they read the results database)."""
    from leaderboard.compare import WORSE_RULE

    lb = sub.add_parser("leaderboard", help="build the static leaderboard site")
    lbsub = lb.add_subparsers(dest="leaderboard_command", required=True)
    lbb = lbsub.add_parser(
        "build", help="write a self-contained static site (works from file://, no server)",
        description="Write index.html (one sortable, filterable ranking per model family and protocol across "
        "suites: rows are (model, method variant, target) with seeds as mean ± std; each table's standing, "
        "a recovery-vs-sparsity overview, and the papers' published numbers from leaderboard/reported/ "
        "beside the reproduced rows), a page per model (metric-vs-sparsity plots, published numbers and "
        "their gaps) and per run (params, suite YAML, layers, environment, reproduce command), and data/ "
        "(Parquet and JSON). The build date is today's, or SOURCE_DATE_EPOCH's when set.",
    )
    lbb.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    lbb.add_argument("--out", default="site", help="output folder (default site/)")
    lbb.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots (faster)")
    lbb.set_defaults(func=cmd_leaderboard)

    c = sub.add_parser(
        "compare", help="deltas of one method versus baselines, per model, target and metric",
        description="Compare --method with each baseline on every (protocol, model, target, metric) "
        "cell where the baseline has ok runs. " + WORSE_RULE + " With --reported: the papers' published "
        "numbers (leaderboard/reported/*.yaml) beside this store's reproductions of the same protocol, with "
        "the difference in percent; a reproduction under another protocol is shown, not compared.",
    )
    c.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    c.add_argument("--method", help="the method under test: a method (each of its variants) or one variant, "
                   "e.g. wanda+owl (required unless --reported)")
    c.add_argument("--baseline", action="append", metavar="NAME",
                   help="a baseline method or variant; repeat for more (default: magnitude, wanda, sparsegpt "
                   "when present, else every other non-dense method)")
    c.add_argument("--suite", help="only the cells this suite asked for")
    c.add_argument("--fail-if-worse", action="store_true",
                   help="exit 1 if the method is worse on any compared cell (rule above)")
    c.add_argument("--reported", action="store_true",
                   help="print published numbers beside their reproductions here (of --method only, if given)")
    c.add_argument("--all", dest="all_reported", action="store_true",
                   help="with --reported: also the published numbers nothing here reproduces")
    c.set_defaults(func=cmd_compare)

    e = sub.add_parser("export", help="write the results view as Parquet, JSON or CSV")
    e.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    e.add_argument("--format", required=True, choices=["parquet", "json", "csv"],
                   help="parquet (binary, needs --out FILE), json (a list of row objects) or csv")
    e.add_argument("--out", help="output file (default results.FORMAT; '-' for stdout, json/csv)")
    e.set_defaults(func=cmd_export)


REMOTE_CODE_FLAG = "--trust-remote-code"
REMOTE_CODE_HELP = ("allow the suite's models marked trust_remote_code: true to run code from their own "
                    "repositories (both keys are needed; without this flag such a suite is refused)")


class _Parser(argparse.ArgumentParser):
    """argparse, with control characters in its one-line errors (which quote the arguments) escaped."""

    def error(self, message: str):  # type: ignore[override]
        super().error(visible(message))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="sparsebench: prune, evaluate, record, compare.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run every cell of a suite not yet stored")
    r.add_argument("suite", help="the suite YAML file (suites/quickstart.yaml, ...)")
    r.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    r.add_argument("--only", help="run id prefix, or a glob over 'model/method/target'")
    r.add_argument("--force", action="store_true", help="rerun every cell, even those stored as ok")
    r.add_argument("--retry-failed", action="store_true",
                   help="rerun cells stored as failed (by default they are shown, not rerun)")
    r.add_argument("--dry-run", action="store_true",
                   help="print the expanded grid, marking the cells already stored, and exit (writes nothing)")
    r.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    r.add_argument("--tf32", action="store_true",
                   help="let CUDA matmuls and convolutions use TF32 (faster, 10-bit mantissa inputs; default: "
                        "strict float32, recorded per run)")
    r.add_argument("--save", metavar="DIR",
                   help="write each ok cell's pruned checkpoint under DIR (overrides the suite's save: dir)")
    r.add_argument("--save-format", choices=["dense", "compressed"],
                   help="dense (default): a save_pretrained/timm folder; compressed: compressed-tensors' "
                        "sparse-bitmask / sparse-24-bitmask (language models)")
    net = r.add_mutually_exclusive_group()
    net.add_argument("--offline", action="store_true", help="never contact the Hugging Face hub")
    net.add_argument("--online", action="store_true", help="skip the hub reachability check")
    r.add_argument(REMOTE_CODE_FLAG, action="store_true", help=REMOTE_CODE_HELP)
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
    v.add_argument("suites", nargs="+", metavar="SUITE", help="suite YAML files; every error of each is listed")
    v.add_argument(REMOTE_CODE_FLAG, action="store_true", help=REMOTE_CODE_HELP)
    v.set_defaults(func=cmd_validate)

    ls = sub.add_parser("ls", help="list registered methods, model sources or datasets")
    ls.add_argument("what", choices=["methods", "models", "datasets"],
                    help="methods (with their params and origin), models (id sources and zoo models) or datasets")
    ls.set_defaults(func=cmd_ls)

    z = sub.add_parser("zoo", help="build the offline model zoo")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zb = zsub.add_parser("build", help="train the zoo models (deterministic) into the package")
    zb.add_argument("--name", help="one zoo model (default: all)")
    zb.add_argument("--steps", type=int, metavar="N",
                    help="train N steps instead of the model's configured steps (quick trials; the shipped "
                    "checkpoints use the configured steps)")
    zb.add_argument("--out", help="write checkpoints under this folder instead of the package")
    zb.add_argument("--snapshot", action="store_true", help="first re-snapshot the corpus from this Python's stdlib")
    zb.set_defaults(func=cmd_zoo)

    res = sub.add_parser(
        "results", help="print the stored results as a table",
        description="One row per stored run (model, method variant, target, seed, status) and a column per "
        "metric, one table per suite. No column is cut: metric columns that do not fit the terminal "
        "go into further tables that repeat the run's columns.")
    res.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    res.add_argument("--suite", help="only the runs this suite asked for")
    res.set_defaults(func=cmd_results)

    q = sub.add_parser(
        "sql", help="run a read-only SQL query on the results database and print a table",
        description="Run one read-only DuckDB query (SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE) on "
        "the results database and print its rows. The documented view is `results` (one row per run and "
        "metric); the tables behind it are runs, evals, metrics, layers and series (README, Results store).")
    q.add_argument("query", help="the query, quoted as one argument, e.g. \"SELECT * FROM results LIMIT 5\"")
    q.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    q.add_argument("--max-rows", type=int, default=1000, metavar="N",
                   help="print at most N rows (default 1000; 0 prints all); the row count is always printed")
    q.set_defaults(func=cmd_sql)
    _add_leaderboard_parsers(sub)
    return p


class _VisibleFormatter(logging.Formatter):
    """Log lines with control characters escaped (a logged model id or error may hold any)."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record), keep="\n")  # a logged traceback keeps its lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_VisibleFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    from harness.plugins import method_defaults
    from harness.store.migrate import set_method_defaults

    set_method_defaults(method_defaults)  # version 1 stores migrate with their variants named as new ones
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
