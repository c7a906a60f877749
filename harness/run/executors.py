"""Executors: where a suite's cells run.

Every executor runs :func:`harness.run.cell.run_cell` for each cell, writes the record to the
cell's run directory (atomically) and hands it to ``Batch.finish``, which the runner uses to
index it in DuckDB. Only the process that called :func:`harness.run.runner.run_suite` touches
DuckDB; workers and cluster jobs only write run directories.

- :class:`InlineExecutor`: one cell after another in this process (debugging, tests).
- :class:`LocalExecutor`: a pool of long-lived worker processes (:mod:`harness.run.worker`),
  one cell per worker at a time, so an out-of-memory kill, a segfault or a CUDA error loses
  only that cell. With several GPUs each worker sees one (``CUDA_VISIBLE_DEVICES``).
- :class:`SlurmExecutor` (in :mod:`harness.run.slurm`): one Slurm array task per cell through
  submitit.

A cell that ends without a record of its own (its worker died, it timed out, its record could
not be written) is stored as ``"failed"`` or ``"error"`` by this process: see
:mod:`harness.run.faults` for which is which.

Time limit: with ``Batch.timeout_min`` set, a worker whose cell runs longer is killed (a fresh
one takes its place) and the cell is stored as failed, ``timed out after N min``. The inline
executor cannot stop its own cell and has no limit.

Stopping: once ``Batch.stop`` is set no cell starts; cells in flight finish (or reach their time
limit). A ``KeyboardInterrupt`` (a second Ctrl-C) kills the workers at once; their cells write
nothing.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection, wait
from collections.abc import Callable, Iterator
from typing import Any

from harness.core.spec import RunSpec
from harness.run.faults import (death_status, describe_exit, failed_record, on_disk, one_line, settle,
                                started_since, store_and_finish)
from harness.run.worker import run_and_write, worker_main

log = logging.getLogger(__name__)

EXECUTORS = ("local", "inline", "slurm")
__all__ = ["EXECUTORS", "Batch", "ExecutorError", "InlineExecutor", "LocalExecutor", "describe_exit",
           "failed_record", "run_and_write", "store_and_finish"]


class ExecutorError(RuntimeError):
    """An executor cannot run cells at all (workers do not start, a job array is refused)."""


@dataclass
class Batch:
    """The cells an executor runs, and where their records go."""

    cells: list[RunSpec]
    suite_text: str  # stored in every record
    device: str | None  # None: cuda when available, else cpu
    store: Any  # harness.store.index.Store; executors use write_record and run_dir only
    reporter: Any  # harness.run.reporter.Reporter
    stop: threading.Event  # set: start no more cells
    finish: Callable[..., None]  # finish(record, stored=True): each record, in this process
    timeout_min: float | None = None  # a cell's time limit (worker executors); None: no limit


# ------------------------------------------------------------------------------ inline


class InlineExecutor:
    """Run the cells one after another in this process (no time limit: it cannot stop itself)."""

    def run(self, batch: Batch) -> None:
        from harness.run.env import environment
        from harness.run.cell import default_device, run_cell

        device = batch.device or default_device()
        env = environment(device)
        caches: dict[str, dict] = {"calibration": {}, "tokens": {}}
        for i, spec in enumerate(batch.cells):
            if batch.stop.is_set():
                break
            batch.reporter.cell_start(i, len(batch.cells), spec)
            record = run_cell(spec, batch.suite_text, device=device, env=env, caches=caches,
                              reporter=batch.reporter, store=batch.store)
            try:
                batch.store.write_record(record)
            except OSError as exc:  # a full disk, a read-only folder: not a result
                store_and_finish(batch, failed_record(
                    spec, batch, device, f"the cell's record could not be written: {one_line(exc)}",
                    traceback.format_exc(), status="error"))
                continue
            batch.finish(record)


# ------------------------------------------------------------------------------- local


@dataclass
class _Worker:
    proc: Any  # multiprocessing.Process
    conn: Connection
    device: str
    spec: RunSpec | None = None  # the cell in flight
    ready: bool = False
    sent_at: datetime | None = None  # when the cell in flight was sent (UTC)
    deadline: float | None = None  # time.monotonic() past which the cell in flight is killed


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start children with SIGINT ignored (inherited through exec), so a Ctrl-C during their
    startup cannot kill them; only possible from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@dataclass
class LocalExecutor:
    """A pool of ``jobs`` worker processes on this machine, each running one cell at a time.

    Workers are started with ``spawn`` (never ``fork``: CUDA and threads do not survive it) and
    live for the whole suite, so torch is imported and calibration data is cached once per
    worker. A worker that dies loses only its cell (``worker died with signal 9 ...``, stored
    as "failed" or "error": :mod:`harness.run.faults`) and is replaced, as is one whose cell
    runs past ``Batch.timeout_min`` (killed; the cell is stored as failed, ``timed out after N
    min``). With ``device`` cuda (or unset) and GPUs present, worker ``i`` sees GPU ``i % n_gpus``
    only; on CPU each of ``jobs`` workers gets ``cpu_count // jobs`` threads.

    Methods registered at runtime in this process (not through ``methods/`` or an entry point)
    do not exist in the workers; use :class:`InlineExecutor` for those.
    """

    jobs: int = 1
    cell_fn: Callable[..., str] = run_and_write  # a module-level function (it is pickled by name)
    workers: list[_Worker] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {self.jobs}")

    def run(self, batch: Batch) -> None:
        if not batch.cells:
            return
        devices, threads = _slots(batch.device, min(self.jobs, len(batch.cells)))
        queue = deque(batch.cells)
        index = {c.run_id: i for i, c in enumerate(batch.cells)}
        ctx = multiprocessing.get_context("spawn")
        try:
            self.workers = [self._start(ctx, batch, dev, threads) for dev in devices]
            while True:
                if not batch.stop.is_set():
                    for w in self.workers:
                        if queue and w.ready and w.spec is None:
                            w.spec = queue.popleft()
                            batch.reporter.cell_start(index[w.spec.run_id], len(batch.cells), w.spec)
                            w.sent_at = datetime.now(timezone.utc)
                            w.deadline = time.monotonic() + batch.timeout_min * 60 if batch.timeout_min else None
                            w.conn.send((w.spec, batch.suite_text))
                busy = [w for w in self.workers if w.spec is not None or not w.ready]
                if not busy or (batch.stop.is_set() and all(w.spec is None for w in busy)):
                    break
                waitables = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
                ready = wait(waitables, timeout=0.5)
                for w in list(busy):
                    if w.conn in ready:
                        self._receive(w, batch)
                    # not elif: a dead worker's closed pipe is always ready too, and checking only
                    # the pipe would spin forever without ever seeing the exit
                    if w.proc.sentinel in ready:
                        self._died(w, batch, ctx, threads, replace=bool(queue) and not batch.stop.is_set())
                now = time.monotonic()
                for w in [w for w in self.workers if w.spec is not None and w.deadline and now >= w.deadline]:
                    self._timed_out(w, batch, ctx, threads, replace=bool(queue) and not batch.stop.is_set())
        finally:
            self._shutdown()

    def _start(self, ctx: Any, batch: Batch, device: str, threads: int | None) -> _Worker:
        parent, child = ctx.Pipe()
        gpu = None
        if device.startswith("cuda#"):  # one GPU of the list: the worker sees only it
            gpu, device = device.split("#", 1)[1], "cuda"
        proc = ctx.Process(target=worker_main, name="sparsebench-worker", daemon=True,
                           args=(child, str(batch.store.db_path), device, threads, self.cell_fn))
        with _sigint_ignored(), _environ(CUDA_VISIBLE_DEVICES=gpu):
            proc.start()
        child.close()
        return _Worker(proc, parent, device + (f"#{gpu}" if gpu is not None else ""))

    def _receive(self, w: _Worker, batch: Batch) -> None:
        """Handle every message waiting from ``w``; a closed pipe means the worker died."""
        from harness.store.records import RECORD_FILE, read_record

        while True:
            try:
                if not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError):
                return  # its sentinel fires next
            kind = msg[0]
            if kind == "ready":
                w.ready = True
            elif kind == "progress":
                if self.jobs == 1:
                    batch.reporter.progress(*msg[1:])
            elif kind == "done":
                spec, w.spec = w.spec, None
                batch.finish(read_record(batch.store.run_dir(spec.run_id) / RECORD_FILE))
            elif kind == "error":  # outside run_cell; msg[4]: the machine's fault (an OSError)
                spec, w.spec = w.spec, None
                infra = len(msg) > 4 and bool(msg[4])
                error = f"the cell's record could not be written: {msg[2]}" if infra else msg[2]
                store_and_finish(batch, failed_record(spec, batch, w.device.split("#")[0], error, msg[3],
                                                      status="error" if infra else "failed"))

    def _died(self, w: _Worker, batch: Batch, ctx: Any, threads: int | None, replace: bool) -> None:
        self._receive(w, batch)  # a "done" sent just before dying still counts
        w.proc.join()
        why = describe_exit(w.proc.exitcode)
        self.workers.remove(w)
        w.conn.close()
        if not w.ready:  # it never took a cell; do not restart it in a loop
            log.warning("%s while starting", why)
            if not self.workers:
                raise ExecutorError(f"the worker processes could not start ({why}); run with "
                                   "--executor inline to see the error in this process")
            return
        if w.spec is not None:
            self._lost(w, batch, f"{why} while running this cell", death_status(w.proc.exitcode))
        if replace:
            self.workers.append(self._start(ctx, batch, w.device, threads))

    def _timed_out(self, w: _Worker, batch: Batch, ctx: Any, threads: int | None, replace: bool) -> None:
        """Kill a worker whose cell ran past the time limit; store the cell as failed."""
        self._receive(w, batch)  # it may have finished just now
        if w.spec is None:
            return
        w.proc.kill()
        w.proc.join()
        self.workers.remove(w)
        w.conn.close()
        self._lost(w, batch, f"timed out after {batch.timeout_min:g} min", "failed")
        if replace:
            self.workers.append(self._start(ctx, batch, w.device, threads))

    @staticmethod
    def _lost(w: _Worker, batch: Batch, error: str, status: str) -> None:
        """Store the cell of a worker that is gone: its own record if it wrote one before it
        ended, else a record of why (``status`` "failed", "error" or "ambiguous", see settle)."""
        spec, w.spec = w.spec, None
        assert spec is not None and w.sent_at is not None
        found = on_disk(batch, spec)
        if started_since(found, w.sent_at):  # written, then killed before it could say so
            batch.finish(found)
            return
        status, error = settle(status, error, found)
        log.info("cell %s: %s", spec.short_id, error)  # the reporter shows it too
        store_and_finish(batch, failed_record(spec, batch, w.device.split("#")[0], error, status=status))

    def _shutdown(self) -> None:
        """Idle workers are told to exit; busy ones (a second Ctrl-C, an error) are killed."""
        for w in self.workers:
            try:
                if w.spec is None:
                    w.conn.send(None)
                else:
                    w.proc.kill()
            except OSError:
                pass
        for w in self.workers:
            w.proc.join(timeout=10)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        self.workers = []


@contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Set (or, for None, leave alone) environment variables around a child's start."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is not None:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if values[k] is None:
                continue
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _slots(device: str | None, jobs: int) -> tuple[list[str], int | None]:
    """One device string per worker (``cuda#<gpu id>`` pins a worker to one GPU), and the CPU
    threads per worker (None: torch's default)."""
    if device is None or device == "cuda":
        gpus = _gpu_ids()
        if gpus:
            if jobs > len(gpus):
                log.warning("%d workers share %d GPUs", jobs, len(gpus))
            return [f"cuda#{gpus[i % len(gpus)]}" for i in range(jobs)], None
        if device == "cuda":
            raise ExecutorError("--device cuda was asked for, but no CUDA GPU is visible; use --device cpu")
        device = "cpu"
    threads = max(1, (os.cpu_count() or 1) // jobs) if device == "cpu" and jobs > 1 else None
    return [device] * jobs, threads


def _gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()][:count]
    return [str(i) for i in range(count)]
