"""The Slurm executor: one Slurm array task per cell, through submitit (``sparsebench[slurm]``).

Each task runs :func:`slurm_cell`, which runs the cell and writes its record to the run dir
on the shared file system; this process polls the jobs and indexes each record as it appears.
A task that ends without a record is stored with Slurm's reason: as failed when the cell ran
past its time limit (``TIMEOUT``: ``timed out after N min``) or out of its memory
(``OUT_OF_MEMORY``), as an error (:mod:`harness.run.faults`; a plain rerun retries it) when the
machine got in the way (a node failure, preemption, a cancel, the task raising outside the cell,
e.g. its record could not be written); any other end without a record is ambiguous (an error
the first time, failed the second). ``cluster="local"`` runs the same array with submitit's
local executor (no Slurm; used in tests).

Off a cluster (no ``srun`` or ``sbatch``), :func:`slurm_missing` says so in one line.

Without Slurm accounting (``sacct``), submitit cannot see a killed job end; on such clusters put
an ``scontrol``-based ``sacct`` on the PATH (see ``tests/slurm/sacct``).
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.core.spec import DEFAULT_TIMEOUT_MIN, RunSpec
from harness.run.executors import Batch, ExecutorError
from harness.run.faults import failed_record, on_disk, settle, started_since, store_and_finish

log = logging.getLogger(__name__)

# Slurm states of a task that ended without a record through no doing of its cell (the machine's)
INFRA_STATES = ("BOOT_FAIL", "CANCELLED", "DEADLINE", "NODE_FAIL", "PREEMPTED", "REVOKED", "SUSPENDED")


def slurm_missing() -> str | None:
    """One line when this machine has no Slurm (``srun``, ``sbatch`` not on PATH), else None."""
    missing = [cmd for cmd in ("srun", "sbatch") if shutil.which(cmd) is None]
    if not missing:
        return None
    return (f"--executor slurm: Slurm was not found on this machine (no {' or '.join(missing)} on PATH); "
            "run on the cluster's login node, or run here with --executor local (the default; --jobs N runs "
            "N cells at once)")


def slurm_cell(spec: RunSpec, suite_text: str, db_path: str, device: str) -> str:
    """One array task: run the cell, write its record (never the database); return the status."""
    from harness.run.env import environment
    from harness.run.cell import run_cell
    from harness.run.reporter import Reporter
    from harness.store.index import Store

    caches: dict[str, dict] = {"calibration": {}, "tokens": {}}
    store = Store(db_path)
    record = run_cell(spec, suite_text, device=device, env=environment(device), caches=caches,
                      reporter=Reporter(), store=store)
    store.write_record(record)
    return record["status"]


@dataclass
class SlurmExecutor:
    """Submit every cell as one task of a Slurm job array and collect the run dirs.

    The store's folder must be on a file system the compute nodes share with this machine, and
    the nodes must run the same Python environment (submitit starts ``sys.executable``).
    """

    partition: str | None = None  # Slurm partition; None: the cluster's default
    gpus_per_job: int = 0  # GPUs per task; with 0 the cells run on the CPU unless --device says
    timeout_min: float | None = None  # a task's time limit; None: the batch's (suite, --timeout-min, 24 h)
    array_parallelism: int = 32  # tasks of the array running at once
    cpus_per_job: int | None = None  # None: Slurm's default
    mem_gb: float | None = None  # None: Slurm's default
    folder: str | None = None  # submitit's logs and pickles; None: <store root>/slurm
    cluster: str = "slurm"  # "slurm", or "local" (submitit's local executor, no Slurm)
    poll_s: float = 1.0  # seconds between polls of the jobs' states
    cell_fn: Callable[[RunSpec, str, str, str], str] = slurm_cell  # what a task runs (module-level)

    def run(self, batch: Batch) -> None:
        if not batch.cells:
            return
        try:
            import submitit
        except ImportError as exc:
            raise ExecutorError("--executor slurm needs submitit: pip install 'sparsebench[slurm]'") from exc
        if self.cluster == "slurm" and (why := slurm_missing()):
            raise ExecutorError(why)
        folder = Path(self.folder) if self.folder else batch.store.root / "slurm"
        try:
            executor = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster)
        except RuntimeError as exc:  # e.g. 'Could not detect "srun"'
            raise ExecutorError(f"--executor slurm: {exc}; run here with --executor local") from exc
        # Slurm counts whole minutes
        minutes = max(1, math.ceil(self.timeout_min or batch.timeout_min or DEFAULT_TIMEOUT_MIN))
        params: dict[str, Any] = {"timeout_min": minutes, "name": "sparsebench",
                                  "slurm_array_parallelism": self.array_parallelism}
        for key, value in (("gpus_per_node", self.gpus_per_job or None), ("slurm_partition", self.partition),
                           ("cpus_per_task", self.cpus_per_job), ("mem_gb", self.mem_gb)):
            if value is not None:
                params[key] = value
        executor.update_parameters(**params)
        device = batch.device or ("cuda" if self.gpus_per_job else "cpu")
        n = len(batch.cells)
        submitted = datetime.now(timezone.utc)
        try:
            jobs = executor.map_array(self.cell_fn, batch.cells, [batch.suite_text] * n,
                                      [str(batch.store.db_path)] * n, [device] * n)
        except Exception as exc:  # sbatch refused: bad partition, no such account, limits
            lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
            raise ExecutorError(f"could not submit the job array ({lines[-1].strip()}); check --partition, "
                                f"--gpus-per-job and --timeout-min against `sinfo`") from exc
        array = jobs[0].job_id.split("_")[0]
        batch.reporter.note(f"submitted {n} cells as {self.cluster} job array {array}; logs in {folder / array}*")
        for i, spec in enumerate(batch.cells):
            batch.reporter.cell_start(i, n, spec)
        pending = list(zip(jobs, batch.cells))
        cancelled: set[str] = set()
        try:
            while pending:
                if batch.stop.is_set() and not cancelled:
                    cancelled = self._cancel_waiting(pending)
                for job, spec in list(pending):
                    if job.done():
                        pending.remove((job, spec))
                        self._collect(job, spec, batch, device, submitted, job.job_id in cancelled, minutes)
                if pending:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:  # a second Ctrl-C: cancel everything, index nothing more
            for job, _ in pending:
                job.cancel(check=False)
            raise

    @staticmethod
    def _cancel_waiting(pending: list[tuple[Any, RunSpec]]) -> set[str]:
        """Cancel the tasks that have not started; running ones finish."""
        out = set()
        for job, _ in pending:
            if job.state == "PENDING":
                job.cancel(check=False)
                out.add(job.job_id)
        return out

    def _collect(self, job: Any, spec: RunSpec, batch: Batch, device: str, submitted: datetime,
                 cancelled: bool, minutes: int) -> None:
        from harness.store.records import RECORD_FILE, RecordError, read_record

        path = batch.store.run_dir(spec.run_id) / RECORD_FILE
        try:
            job.result()
        except Exception as exc:  # the task died without returning (cancelled, timeout, killed)
            error: Exception = exc
        else:
            try:
                record = read_record(path)
            except (RecordError, OSError) as exc:
                error = RuntimeError(f"the task finished but its record {path} is missing or invalid ({exc}); "
                                     "is the results folder on a file system the nodes share?")
            else:
                batch.finish(record)
                return
        found = on_disk(batch, spec)
        if started_since(found, submitted):  # it wrote its record before it was killed
            batch.finish(found)
            return
        if cancelled:
            return  # stopped before it started: "not run"
        status, why, marker = self._fault(job, error, minutes)
        status, why = settle(status, why, found, marker)
        log.info("%s", why)  # the reporter shows it too
        store_and_finish(batch, failed_record(spec, batch, device, why, str(error), status=status))

    def _fault(self, job: Any, error: Exception, minutes: int) -> tuple[str, str, str]:
        """(status, message, marker for :func:`~harness.run.faults.settle`) of a task that ended
        without a record."""
        from submitit.core.utils import FailedJobError

        try:
            state = (str(job.state).split() or ["UNKNOWN"])[0].upper()  # "CANCELLED by 1234": CANCELLED
        except Exception:  # sacct failed: the state is unknown, not a reason to stop
            state = "UNKNOWN"
        head = f"{self.cluster} job {job.job_id}"
        if state == "TIMEOUT":  # the cell's own slowness, as with local workers
            return "failed", f"timed out after {minutes} min ({head})", ""
        if state == "OUT_OF_MEMORY":
            return "failed", f"{head} ran out of memory (Slurm state OUT_OF_MEMORY)", ""
        marker = f"ended without a result ({state})"
        why = f"{head} {marker}: {type(error).__name__}: {_summary(error)}"
        if isinstance(error, FailedJobError) or state in INFRA_STATES:  # raised outside the cell, or the machine
            return "error", why, marker
        return "ambiguous", why, marker


def _summary(error: Exception) -> str:
    """One line from a submitit error: its message before the ``----`` separator, plus the last
    line of a trace that follows (the exception); log excerpts are left to the record's traceback."""
    head, _, tail = str(error).strip().partition("\n----")
    detail = " ".join(ln.strip() for ln in head.splitlines()[:2] if ln.strip())
    trace = [ln.strip() for ln in tail.splitlines() if ln.strip() and not ln.startswith("---")]
    if "trace" in head and trace:
        detail += f" ... {trace[-1]}"
    return detail
