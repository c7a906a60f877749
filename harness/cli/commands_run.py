"""``harness run``, ``validate`` and ``reindex``: check a suite, run its cells, rebuild the index.

Torch, transformers and duckdb are imported inside the commands, so ``harness --help`` and
``harness validate`` answer quickly.
"""
from __future__ import annotations

import os
import sys
import threading

from harness.cli.common import (EXIT_BAD_INPUT, EXIT_FAILED_CELLS, EXIT_INTERRUPTED, EXIT_OK, eprint, make_console,
                                store_problem)
from harness.cli.executor_args import executor_from_args, first_ctrl_c_stops
from harness.core.visible import visible


def _load_suite_or_exit(path: str, trust_remote_code: bool = False):
    from harness.suite import SuiteError, load_suite

    try:
        return load_suite(path, trust_remote_code=trust_remote_code)
    except SuiteError as err:
        eprint(err)
        sys.exit(EXIT_BAD_INPUT)


def _allow_remote_code(args, suite, console) -> None:
    """``--trust-remote-code`` (the suite's key was checked with it): let the workers load such
    models, and say which ones will run code from their own repositories."""
    from harness.models.load import REMOTE_CODE_ENV

    if args.trust_remote_code:
        os.environ[REMOTE_CODE_ENV] = "1"
    trusted = [m.id for m in suite.models if m.trust_remote_code]
    if trusted:
        console.print(f"running code from their own repositories (trust_remote_code): {', '.join(trusted)}",
                      style="yellow")


def _hub_needed(suite) -> bool:
    from harness.cli.run_plan import hub_needs

    return any(hub_needs(suite).values())


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
            console.print("Hugging Face hub unreachable: running offline (local caches only)", style="yellow")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def _set_tf32(args) -> None:
    """``--tf32``: every cell (workers, Slurm tasks) allows TF32; recorded in each run's environment."""
    from harness.run.env import TF32_ENV

    if args.tf32:
        os.environ[TF32_ENV] = "1"


def cmd_validate(args) -> int:
    from harness.suite import SuiteError, expand, load_suite

    status = EXIT_OK
    for path in args.suites:
        try:
            suite = load_suite(path, trust_remote_code=args.trust_remote_code)
        except SuiteError as err:
            eprint(err)
            status = EXIT_BAD_INPUT
            continue
        print(f"{visible(path)}: ok ({len(expand(suite))} cells)")
    return status


def _with_save(suite, folder: str | None, fmt: str | None):
    """The suite with ``--save DIR`` / ``--save-format`` applied to its ``save:`` (a relative DIR is
    relative to the working directory); (suite, None) or (suite, the one-line problem)."""
    import dataclasses
    import os

    from harness.core.ids import model_kind, parse_model_id

    base = suite.save or {}
    if folder is None and not base:
        return suite, "--save-format needs --save DIR (or a suite with save:)"
    save = {"dir": os.path.abspath(os.path.expanduser(folder)) if folder is not None else base["dir"],
            "format": fmt or (base.get("format", "dense") if folder is None else "dense")}
    if save["format"] == "compressed" and any(model_kind(parse_model_id(m.id)) == "vision" for m in suite.models):
        return suite, ("--save-format compressed is for language models (compressed-tensors); "
                       "image classifiers save with --save-format dense")
    return dataclasses.replace(suite, save=save), None


def _dry_run(args, suite, cells, console) -> int:
    """``--dry-run``: the grid, each cell marked with its status in the store (reads only)."""
    from harness.cli.report import grid_table
    from harness.cli.run_plan import dry_run_line
    from harness.store.faults import StoreError
    from harness.store.index import Store

    try:
        stored = Store(args.db, wait_s=10).statuses(c.run_id for c in cells)
    except StoreError as err:  # the grid is still worth showing
        console.print(f"the store cannot be read, so no cell is marked stored: {err}", style="yellow")
        stored = {}
    console.print(grid_table(suite, cells, stored))
    console.print(dry_run_line(cells, stored, args.force, args.retry_failed))
    return EXIT_OK


def cmd_run(args) -> int:
    from harness.cli.report import CliReporter, summary_table
    from harness.cli.run_plan import failure_lines, offline_line, only_problem
    from harness.run.runner import select
    from harness.suite import expand

    console = make_console()
    suite = _load_suite_or_exit(args.suite, args.trust_remote_code)
    _allow_remote_code(args, suite, console)
    if args.save is not None or args.save_format is not None:
        suite, problem = _with_save(suite, args.save, args.save_format)
        if problem:
            eprint(problem)
            return EXIT_BAD_INPUT
    cells = expand(suite)
    if problem := only_problem(cells, args.only, suite.name):
        eprint(problem)
        return EXIT_BAD_INPUT
    if args.dry_run:
        return _dry_run(args, suite, select(cells, args.only), console)
    _set_offline(args, suite, console)
    _set_tf32(args)
    from rich.text import Text

    from harness.run.executors import ExecutorError
    from harness.run.runner import run_suite
    from harness.store.faults import StoreError
    from harness.store.index import Store
    from harness.store.records import RecordError

    try:
        store = Store(args.db, on_wait=lambda msg: console.print(msg, style="yellow"))
    except StoreError as err:  # --db "" (a directory, a damaged file: when it is opened, below)
        return store_problem(err)
    reporter = CliReporter(console)
    try:
        executor = executor_from_args(args)
    except ValueError as err:
        eprint(err)
        return EXIT_BAD_INPUT
    stop = threading.Event()
    from harness.core.spec import DEFAULT_TIMEOUT_MIN

    limit = None if args.executor == "inline" else args.timeout_min or suite.timeout_min or DEFAULT_TIMEOUT_MIN
    try:
        with reporter, first_ctrl_c_stops(stop, console, limit):
            results = run_suite(
                suite, store=store, only=args.only, force=args.force, retry_failed=args.retry_failed,
                device=args.device, reporter=reporter, executor=executor, stop=stop, timeout_min=args.timeout_min,
            )
    except KeyboardInterrupt:
        console.print(f"Interrupted. Every finished cell is saved in {args.db}; "
                      "run the same command again to resume.", style="yellow")
        return EXIT_INTERRUPTED
    except (StoreError, RecordError, ExecutorError) as err:  # one line each, with the fix (harness.store.faults)
        return store_problem(err)
    console.print(summary_table(suite.name, results))
    failed = [r for r in results if r.status in ("failed", "error")]  # error: the machine's fault, rerun
    for status, line in failure_lines(results):  # one line per distinct error (per model, when it cannot load)
        console.print(Text.assemble((status, "red"), visible(line)), soft_wrap=True)  # one line, however long
    if hub := offline_line(suite, results):
        console.print(hub, style="yellow", soft_wrap=True)
    console.print(f"Results: {args.db} (query the 'results' view).")
    if any(r.stored for r in failed):
        console.print("Cells stored as failed are not rerun; add --retry-failed to rerun them.")
    if any(r.status == "error" for r in failed):
        console.print("Cells in error (the machine's fault, not a result) run again when you rerun the same command.")
    not_run = [r for r in results if r.status == "not run"]
    if not_run:
        console.print(f"Stopped: {len(not_run)} cells not run. Run the same command again to resume.", style="yellow")
        return EXIT_INTERRUPTED
    return EXIT_FAILED_CELLS if failed else EXIT_OK


def cmd_reindex(args) -> int:
    from harness.store.faults import StoreError
    from harness.store.index import Store

    try:
        store = Store(args.db, on_wait=eprint)
        if not store.runs_dir.is_dir():
            eprint(f"no run directories at {store.runs_dir}; nothing to index")
            return EXIT_BAD_INPUT
        n = store.reindex()  # quarantines invalid records, moves a damaged database aside
    except StoreError as err:
        return store_problem(err)
    line = f"{n} records from {store.runs_dir} indexed into {store.db_path}"
    if store.quarantined:
        line += f"; {len(store.quarantined)} invalid records quarantined in {store.quarantine_dir}"
    if store.moved_aside is not None:
        line += f"; the damaged database was moved to {store.moved_aside}"
    print(visible(line))
    return EXIT_OK
