"""Cells that ended without a result of their own, and the records this process writes for them.

Two statuses say a cell has no result. ``"failed"`` is the method's own doing: an exception in
the cell, the sparsity gate, non-finite metrics, running past its time limit, a crash of its own
code (segfault, abort), a worker that exited by itself. It is stored and not rerun until
``--retry-failed``: a deterministic failure would fail again. ``"error"`` is the machine's: the
cell's record could not be written (a full disk), its worker was killed by a signal from
outside, a cluster node failed or the task ended without a record. An error is not a result,
and a plain rerun retries it.

A worker killed by SIGKILL is ambiguous (the kernel's out-of-memory killer, or someone's
``kill -9``), and so is a Slurm task that ended without a record for no reason Slurm names: the
first time the cell is an error; ended the same way again on the retry, it is failed, so a cell
that runs out of memory every time is not retried forever.
"""
from __future__ import annotations

import logging
import signal
from datetime import datetime
from typing import Any

from harness.core.spec import RunSpec

log = logging.getLogger(__name__)

def one_line(exc: BaseException) -> str:
    """``OSError: [Errno 28] No space left on device``: an exception in one short line (an OSError
    without its file name, which the record's traceback keeps)."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
    text = str(exc).strip()
    first = text.split("\n")[0]
    return f"{type(exc).__name__}: {first}" if text else type(exc).__name__


def failed_record(spec: RunSpec, batch: Any, device: str, error: str, tb: str | None = None,
                  status: str = "failed") -> dict[str, Any]:
    """The record of a cell whose run ended outside ``run_cell`` (its worker or job died, it
    timed out, its record could not be written): ``status`` "failed" or "error"."""
    from harness.run.env import environment
    from harness.run.cell import new_record, now

    record = new_record(spec, batch.suite_text, device=device, env=environment(device))
    record.update(status=status, error=error, traceback=tb, finished_at=now(), wall_time_s=0.0)
    return record


def store_and_finish(batch: Any, record: dict[str, Any]) -> None:
    """Write a record this process made and hand it to ``batch.finish``. When it cannot be
    written either (the disk is full), the cell is reported as an error, unstored (so the next
    run retries it), and the suite goes on."""
    try:
        batch.store.write_record(record)
    except OSError as exc:
        record.update(status="error", error=f"{record['error']}; its record could not be written either "
                                            f"({one_line(exc)})")
        log.info("cell %s: %s", record["run_id"][:12], record["error"])  # the reporter shows it
        batch.finish(record, stored=False)
        return
    batch.finish(record)


def describe_exit(code: int | None) -> str:
    """Why a worker process ended, e.g. ``worker died with signal 9 (killed; out of memory?)``."""
    if code is None:
        return "worker ended without an exit code"
    if code >= 0:
        return f"worker exited with code {code}"
    num = -code
    known = {signal.SIGKILL: "killed; out of memory?", signal.SIGSEGV: "segmentation fault",
             signal.SIGABRT: "aborted", signal.SIGBUS: "bus error"}
    try:
        name = known.get(signal.Signals(num)) or signal.Signals(num).name
    except ValueError:
        name = "unknown signal"
    return f"worker died with signal {num} ({name})"


_OWN_CRASHES = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGSYS}


def death_status(code: int | None) -> str:
    """The status of a cell whose worker ended with ``code``: "failed" when the cell's own code
    ended it (it exited, or crashed: segfault, abort, bus error), "error" for a signal sent from
    outside (SIGTERM, SIGHUP, ...), "ambiguous" for SIGKILL (the out-of-memory killer, or not)."""
    if code is None or code >= 0 or -code in _OWN_CRASHES:
        return "failed"
    return "ambiguous" if -code == signal.SIGKILL else "error"


def on_disk(batch: Any, spec: RunSpec) -> dict[str, Any] | None:
    """The cell's record in its run dir (this attempt's or an earlier one), or None."""
    from harness.store.records import RECORD_FILE, RecordError, read_record

    try:
        return read_record(batch.store.run_dir(spec.run_id) / RECORD_FILE)
    except (RecordError, OSError):
        return None


def started_since(record: dict[str, Any] | None, since: datetime) -> bool:
    """Whether ``record`` is of a run that started at or after ``since`` (this attempt's)."""
    try:
        return record is not None and datetime.fromisoformat(record["started_at"]) >= since
    except (KeyError, TypeError, ValueError):
        return False


def settle(status: str, error: str, previous: dict[str, Any] | None, marker: str | None = None) -> tuple[str, str]:
    """An "ambiguous" death is an error the first time and failed when the cell's previous attempt
    (``previous``, its record) was an error of the same kind, its message containing ``marker``
    (default: ``error`` itself), so a cell that runs out of memory is not retried forever."""
    if status != "ambiguous":
        return status, error
    if previous is not None and previous.get("status") == "error" and (marker or error) in str(previous.get("error")):
        return "failed", f"{error}, as on its previous attempt"
    return "error", error
