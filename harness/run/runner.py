"""Run a suite: for each cell, skip if stored, load, prune, measure, evaluate, record.

Each cell's record is self-contained and written atomically to its run directory before it
is indexed in DuckDB, so a crash loses at most the cell in flight and the cells can later
run in other processes. A failing cell is recorded with its error and the suite goes on.

Rerun policy: a cell stored as ``"ok"`` is skipped (``force`` reruns it), one stored as
``"failed"`` (the method's own failure) is reported and skipped (``retry_failed`` reruns it),
and one stored as ``"error"`` (the machine's fault, not a result: :mod:`harness.run.faults`)
always runs again.
"""
from __future__ import annotations

import fnmatch
import logging
import threading
from dataclasses import replace
from typing import Any

from harness.core.spec import DEFAULT_TIMEOUT_MIN, RunSpec
from harness.run.reporter import CellResult, Reporter
from harness.suite.loader import Suite, expand

log = logging.getLogger(__name__)


def select(cells: list[RunSpec], only: str | None) -> list[RunSpec]:
    """Keep cells whose run id starts with ``only`` or whose ``model/method/target`` matches it."""
    if not only:
        return cells
    return [c for c in cells if c.run_id.startswith(only) or fnmatch.fnmatch(cell_label(c), only)]


def cell_label(spec: RunSpec) -> str:
    return f"{spec.model.label}/{spec.method}/{spec.target}"


def run_suite(
    suite: Suite,
    *,
    store: Any,
    only: str | None = None,
    force: bool = False,
    retry_failed: bool = False,
    device: str | None = None,
    reporter: Reporter | None = None,
    executor: Any = None,
    stop: threading.Event | None = None,
    timeout_min: float | None = None,
) -> list[CellResult]:
    """Run every cell of ``suite`` not already stored; return one result per cell.

    Args:
        force: rerun every cell, even those stored as ok.
        retry_failed: rerun cells stored as failed (by default they are reported, not rerun).
            Cells stored as ``"error"`` are always rerun.
        executor: where cells run (:mod:`harness.run.executors`); default in this process.
        stop: once set (e.g. by a first Ctrl-C), no new cell starts; cells in flight finish and
            the cells never started come back with status ``"not run"``.
        timeout_min: a cell's time limit in minutes (worker executors: local, slurm); past it the
            cell is killed and stored as failed. Default: the suite's ``timeout_min``, else
            :data:`~harness.core.spec.DEFAULT_TIMEOUT_MIN` (24 h).
    """
    from harness.run.executors import Batch, InlineExecutor

    reporter = reporter or Reporter()
    cells = select(expand(suite), only)
    store.ingest_pending()  # records a crashed run wrote to disk but never indexed
    stored = store.statuses([c.run_id for c in cells])
    rerun = {"ok", "failed", "error"} if force else {"failed", "error"} if retry_failed else {"error"}
    todo = [c for c in cells if c.run_id not in stored or stored[c.run_id] in rerun]
    spec_by_id = {c.run_id: c for c in todo}
    failed_before = sum(1 for c in cells if stored.get(c.run_id) == "failed" and c.run_id not in spec_by_id)
    reporter.plan(cells, len(cells) - len(todo), failed=failed_before)
    errors_before = sum(1 for c in cells if stored.get(c.run_id) == "error")
    if errors_before:
        reporter.note(f"rerunning {errors_before} cells stored as error (the machine's fault, not a result)")
    limit = timeout_min or suite.timeout_min or DEFAULT_TIMEOUT_MIN
    results: dict[str, CellResult] = {}
    busy: list[str] = []

    def finish(record: dict[str, Any], stored: bool = True) -> None:
        """The executor wrote ``record`` to its run dir (``stored`` False: it could not, and the
        cell is an error that the next run retries): index it and report it."""
        from harness.store.index import StoreBusy

        try:
            if stored:
                store.ingest(record)
        except StoreBusy as exc:  # the record is safe on disk; index it at the end
            busy.append(record["run_id"])
            reporter.note(f"{exc} (the record is kept; indexing is retried at the end)")
        res = CellResult(
            spec_by_id[record["run_id"]], record["status"], headline_metrics(record["metrics"]),
            record["error"], (record.get("sparsity") or {}).get("global"), record["wall_time_s"] or 0.0,
        )
        results[res.spec.run_id] = res
        reporter.cell_end(res)

    executor = executor or InlineExecutor()
    executor.run(Batch(todo, suite.text, device, store, reporter, stop or threading.Event(), finish, limit))
    if busy:
        store.ingest_pending()  # waits up to store.wait_s for the database again
    previous = _stored_results(store, [c.run_id for c in cells if c.run_id not in results])
    out = []
    for c in cells:
        if c.run_id in results:
            out.append(results[c.run_id])
        elif c.run_id in spec_by_id or c.run_id not in previous:
            out.append(CellResult(c, "not run"))  # stopped before it started
        else:
            out.append(replace(previous[c.run_id], spec=c))
    return out


def headline_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Metrics worth a summary column: perplexities and each lm-eval task's declared metric."""
    return {m["name"]: m["value"] for m in rows if m.get("headline") is not False}


def _stored_results(store: Any, run_ids: list[str]) -> dict[str, CellResult]:
    """Stored cells as results: ok ones as "skipped", failed (or error) ones with their error."""
    if not run_ids:
        return {}
    rows = store.query(
        "SELECT r.run_id, r.status, r.error, r.sparsity_global, r.wall_time_s, m.metric, m.value "
        "FROM runs r LEFT JOIN metrics m ON m.run_id = r.run_id AND m.headline IS NOT false "
        "WHERE r.run_id IN (SELECT unnest(?))",
        [run_ids],
    )
    out: dict[str, CellResult] = {}
    for run_id, status, error, sparsity, wall, metric, value in rows:
        res = out.get(run_id)
        if res is None:
            res = out[run_id] = CellResult(
                None, "skipped" if status == "ok" else status, {}, error, sparsity,  # type: ignore[arg-type]
                wall or 0.0, stored=True)
        if metric is not None:
            res.metrics[metric] = value
    return out
