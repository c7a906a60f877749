"""The worker side of :class:`harness.run.executors.LocalExecutor`: a process that takes cells
from a pipe, runs each and writes its record to the run directory (never the database).

A worker answers each cell with ``("done", run_id, status)`` once the record is on disk, or
``("error", run_id, message, traceback, infrastructure)`` when something outside ``run_cell``
went wrong, e.g. the record could not be written (a full disk: ``infrastructure`` is True, the
parent stores the cell as ``"error"``, which a plain rerun retries).
"""
from __future__ import annotations

import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from harness.core.spec import RunSpec
from harness.run.faults import one_line


class ProgressPipe:
    """The reporter a worker passes to ``run_cell``: forwards progress to the parent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def progress(self, task: str, done: int, total: int) -> None:
        try:
            self.conn.send(("progress", task, done, total))
        except OSError:  # the parent is gone: still finish the cell and write its record
            pass

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


def run_and_write(spec: RunSpec, suite_text: str, store: Any, device: str, env: dict[str, Any],
                  caches: dict[str, dict], reporter: Any) -> str:
    """What a worker does with one cell: run it and write its record; returns the status."""
    from harness.run.cell import run_cell

    record = run_cell(spec, suite_text, device=device, env=env, caches=caches, reporter=reporter, store=store)
    store.write_record(record)
    return record["status"]


def worker_main(conn: Connection, db_path: str, device: str, threads: int | None,
                cell_fn: Callable[..., str]) -> None:
    """A worker: take cells from ``conn`` until it sends None or closes; write each record."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from harness.run.env import environment
    from harness.store.index import Store

    import torch

    from harness.plugins import discover

    if threads:
        torch.set_num_threads(threads)
    discover()  # methods and plugins: imported before "ready", so a cell's time limit counts the cell
    store = Store(db_path)
    env = environment(device)
    caches: dict[str, dict] = {"calibration": {}, "tokens": {}}
    reporter = ProgressPipe(conn)
    try:
        conn.send(("ready",))
    except OSError:  # the parent died while this worker started
        return
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return
        if msg is None:
            return
        spec, suite_text = msg
        try:
            status = cell_fn(spec, suite_text, store, device, env, caches, reporter)
            conn.send(("done", spec.run_id, status))
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # outside run_cell, e.g. the record cannot be written (disk full)
            # An OSError is the machine's (disk, quota, permissions); anything else, e.g. a method
            # whose info cannot be written as JSON, is the cell's own.
            conn.send(("error", spec.run_id, one_line(exc), traceback.format_exc(), isinstance(exc, OSError)))
