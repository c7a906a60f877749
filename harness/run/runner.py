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

    from harness.plugins import method_defaults
    from harness.store.migrate import set_method_defaults

    set_method_defaults(method_defaults)
    reporter = reporter or Reporter()
    store.ingest_pending()  # records a crashed run wrote to disk but never indexed
    every = expand(suite)
    cells = select(every, only)
    if not cells and only:  # an id from before the identity changed (version 1): its pruned model now
        new_ids = set(store.aliases(only))
        cells = [c for c in every if c.run_id in new_ids]
    known = store.cells([c.run_id for c in cells])
    evals = store.evaluations([c.run_id for c in cells])
    plan = {c.run_id: _decide(c, known.get(c.run_id), evals.get(c.run_id, {}), force, retry_failed) for c in cells}
    for c in cells:  # a stored cell whose checkpoint this suite wants and does not have yet
        if c.save and plan[c.run_id] == "skip" and not _saved(store.read(c.run_id), c.save):
            plan[c.run_id] = "run"
    todo = [replace(c, fresh=force) for c in cells if plan[c.run_id] == "run"]
    spec_by_id = {c.run_id: c for c in todo}
    failed_before = sum(1 for c in cells if plan[c.run_id] == "failed")
    reporter.plan(cells, len(cells) - len(todo), failed=failed_before)
    errors_before = sum(1 for c in cells if (known.get(c.run_id) or {}).get("status") == "error")
    if errors_before:
        reporter.note(f"rerunning {errors_before} cells stored as error (the machine's fault, not a result)")
    _tag(store, [c for c in cells if plan[c.run_id] == "skip"], known)
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
        spec = spec_by_id[record["run_id"]]
        save_error = (record.get("saved") or {}).get("error")
        if spec.save and record["status"] == "ok" and save_error is not None:  # this run's export failed
            reporter.note(f"warning: {cell_label(spec)}: the checkpoint was not saved "
                          f"(the cell's results are kept; a rerun tries again): {save_error}")
        res = CellResult(
            spec, record["status"], headline_metrics(record["metrics"]),
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


def _decide(cell: RunSpec, known: dict[str, Any] | None, evals: dict[str, str], force: bool,
            retry_failed: bool) -> str:
    """"run" (prune, or only evaluate what is missing), "skip" (stored with every evaluation this
    suite asks for) or "failed" (stored as failed: shown, rerun with ``retry_failed``)."""
    if force or known is None or known["status"] == "error":
        return "run"
    wanted = [evals.get(e.eval_id) for e in cell.evals()]
    if known["pruned"]:
        if all(w == "ok" for w in wanted):
            return "skip"
        if any(w is None for w in wanted):  # an evaluation no suite asked for before
            return "run"
    return "run" if retry_failed else "failed"


def _saved(record: dict[str, Any] | None, save: dict[str, str]) -> bool:
    """Whether the record says its checkpoint was saved in ``save``'s folder and format, still there."""
    from pathlib import Path

    saved = (record or {}).get("saved") or {}
    return (saved.get("format") == save["format"] and bool(saved.get("path"))
            and Path(saved["path"]).parent == Path(save["dir"]) and Path(saved["path"]).is_dir())


def _tag(store: Any, cells: list[RunSpec], known: dict[str, dict[str, Any]]) -> None:
    """Stored cells this suite asks for again: add the suite to their records' tags."""
    for c in cells:
        info = known[c.run_id]
        if c.suite in info["suites"] and info.get("suite_path") == c.suite_path:
            continue
        record = store.read(c.run_id)
        if record is None:
            continue
        record["suites"] = sorted({*record["suites"], c.suite})
        record["suite_path"] = c.suite_path or record.get("suite_path")
        for ref in c.evals():
            entry = record["evals"].get(ref.eval_id)
            if entry is not None:
                entry["suites"] = sorted({*entry.get("suites", []), c.suite})
        store.save(record)


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
