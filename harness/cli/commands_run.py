"""``harness run``, ``validate`` and ``reindex``: check a suite, run its cells, rebuild the index.

Torch, transformers and duckdb are imported inside the commands, so ``harness --help`` and
``harness validate`` answer quickly.
"""
from __future__ import annotations

import os
import sys
import threading

from harness.cli.common import EXIT_BAD_INPUT, EXIT_FAILED_CELLS, EXIT_INTERRUPTED, EXIT_OK, make_console, store_problem
from harness.cli.executor_args import executor_from_args, first_ctrl_c_stops


def _load_suite_or_exit(path: str):
    from harness.suite import SuiteError, load_suite

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
    from harness.suite import SuiteError, expand, load_suite

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
    from harness.suite import expand

    console = make_console()
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
        return store_problem(err)
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
        return store_problem(err)
    print(f"{n} records from {store.runs_dir} indexed into {store.db_path}")
    return EXIT_OK
