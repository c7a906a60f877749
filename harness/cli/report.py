"""Terminal presentation for the CLI: rich progress and tables (renderables, no logic).

Every string that comes from a suite, a store or a plugin becomes a cell or a part through
:func:`~harness.cli.console.text`: shown as it is, never read as markup, control characters escaped.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from harness.cli.console import text
from harness.cli.tables import number, results_table  # noqa: F401  (results_table: re-exported, harness results)
from harness.core.visible import visible
from harness.core.metrics import recovery
from harness.core.spec import RunSpec
from harness.run.reporter import CellResult, Reporter
from harness.run.runner import cell_label


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )


class CliReporter(Reporter):
    """Progress bars for zoo training, calibration/pruning and evaluation, one line per cell."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = _progress(console)
        self.tasks: dict[str, Any] = {}
        self.prefix = ""
        self.started: dict[str, tuple[str, float]] = {}  # run_id -> (line prefix, start time)
        # (status, error) -> the first cell that printed it: a model that cannot be loaded fails
        # every cell of it with one message, printed once (then "same error as [1/20]")
        self.errors_shown: dict[tuple[str, str], str] = {}

    def __enter__(self) -> "CliReporter":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def plan(self, cells: list[RunSpec], skipped: int, failed: int = 0) -> None:
        msg = f"{len(cells)} cells; {len(cells) - skipped} to run"
        if skipped - failed:
            msg += f", {skipped - failed} already stored (use --force to rerun)"
        if failed:
            msg += f", {failed} stored as failed (use --retry-failed to rerun)"
        self.console.print(msg)

    def note(self, message: str) -> None:
        self.console.print(message, markup=False)

    def cell_start(self, index: int, total: int, spec: RunSpec) -> None:
        self.prefix = f"[{index + 1}/{total}] {visible(cell_label(spec))}"
        self.started[spec.run_id] = (self.prefix, time.perf_counter())
        for task in self.tasks.values():
            self.bars.remove_task(task)
        self.tasks.clear()

    def progress(self, task: str, done: int, total: int) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.bars.add_task(f"{self.prefix} {visible(task)}", total=total)
        self.bars.update(self.tasks[task], completed=done, total=total)

    def cell_end(self, result: CellResult) -> None:
        style = "green" if result.status == "ok" else "red"
        metrics = "  ".join(f"{k}={v:.3f}" for k, v in result.metrics.items())
        prefix, t0 = self.started.pop(result.spec.run_id, (visible(cell_label(result.spec)), time.perf_counter()))
        extra = ""
        if result.error:
            first = self.errors_shown.setdefault((result.status, result.error), prefix.partition(" ")[0])
            shown = first != prefix.partition(" ")[0]
            extra = f" (same error as {first})" if shown else f" {visible(result.error)}"
        self.console.print(Text.assemble(
            f"{prefix} ", (visible(result.status), style), f" {time.perf_counter() - t0:.1f}s {metrics}{extra}"),
            soft_wrap=True)  # one line per cell, the terminal wraps it


@contextlib.contextmanager
def step_progress(console: Console, description: str) -> Iterator[Callable[[int, int, float], None]]:
    """A bar for a (step, total, loss) callback, e.g. zoo training."""
    with _progress(console) as bars:
        task = bars.add_task(visible(description), total=None)

        def cb(step: int, total: int, loss: float) -> None:
            bars.update(task, completed=step, total=total, description=f"{visible(description)} loss {loss:.3f}")

        yield cb


def grid_table(suite: Any, cells: list[RunSpec], stored: dict[str, str] | None = None) -> Table:
    """The expanded grid for ``--dry-run``; settings shared by every cell go in the caption.

    Args:
        stored: ``run_id -> status`` of the cells already in the store; given, a ``stored``
            column shows each cell's status there (``-``: not stored).
    """
    cal = suite.calibration
    evals = [f"{p.dataset} ppl@{p.seqlen}" for p in suite.perplexity]
    if suite.lm_eval is not None:
        evals.append("lm-eval " + ", ".join(suite.lm_eval.tasks))
    evals += [f"{e.dataset} top-1" for e in suite.image_evals]
    shape = f"{cal.n_samples}x{cal.seqlen}" if cal.seqlen else f"{cal.n_samples} images"
    caption = f"calibration {cal.dataset} {shape}; evals: {', '.join(evals) or 'none'}"
    if suite.models and all(m.problem for m in suite.models):
        caption = "synthetic sparse recovery: target = 1 - k/d; metrics final_dist, steps_to_tol, dist_at_10, " \
                  "support_recall (medians over each cell's trials)"
    t = Table(
        title=text(f"{suite.name}: {len(cells)} cells"),
        caption=text(caption),
        header_style="bold",
    )
    t.add_column("run id", no_wrap=True)
    if stored is not None:
        t.add_column("stored", no_wrap=True)
    t.add_column("model", no_wrap=True)
    t.add_column("method", no_wrap=True)
    t.add_column("target", no_wrap=True)
    t.add_column("seed")
    t.add_column("params")
    for c in cells:
        params = ", ".join(f"{k}={v}" for k, v in c.params.items()) or "-"
        status = [stored.get(c.run_id, "-")] if stored is not None else []
        t.add_row(*(text(v) for v in (c.short_id[:8], *status, c.model.label, method_label(c), c.target, c.seed,
                                       params)))
    return t


def summary_table(title: str, results: list[CellResult]) -> Table:
    """Rows model x method x target; a column per headline metric, and the first metric's
    recovery vs the dense row of the same model and seed (100% = as good as dense). A method
    listed with several params gets a column of the params that tell its rows apart; a suite of
    synthetic problems (no dense model) has no recovery column."""
    metrics: list[str] = []
    for r in results:
        metrics += [m for m in r.metrics if m not in metrics]
    dense = {(r.spec.model.id, r.spec.seed): r.metrics for r in results if r.spec.method == "dense"}
    with_recovery = not all(r.spec.model.problem for r in results)
    varying = _varying_params(results)
    t = Table(title=text(title), header_style="bold")
    for col in ("model", "method", "target"):
        t.add_column(col, no_wrap=True)
    if varying:
        t.add_column("params", no_wrap=True)
    t.add_column("status")
    t.add_column("sparsity", justify="right")
    for i, m in enumerate(metrics):
        t.add_column(Text("/\n").join(text(part) for part in m.split("/", 1)), justify="right")
        if i == 0 and with_recovery:
            t.add_column("vs dense", justify="right")
    for r in results:
        row = [r.spec.model.label, method_label(r.spec), r.spec.target]
        if varying:
            row.append(",".join(f"{k}={r.spec.params[k]}" for k in varying.get(r.spec.method, ())) or "-")
        row += [r.status, f"{r.sparsity:.3f}" if r.sparsity is not None else "-"]
        ref = dense.get((r.spec.model.id, r.spec.seed), {})
        for i, m in enumerate(metrics):
            row.append(number(r.metrics.get(m)))
            if i == 0 and with_recovery:
                rec = recovery(r.metrics.get(m), ref.get(m), m) if r.spec.method != "dense" else None
                row.append(f"{rec:.1f}%" if rec is not None else "-")
        t.add_row(*(text(v) for v in row))
    return t


def _varying_params(results: list[CellResult]) -> dict[str, list[str]]:
    """method -> the params whose values differ between its cells (empty when none differ)."""
    seen: dict[str, dict[str, set]] = {}
    for r in results:
        for k, v in r.spec.params.items():
            seen.setdefault(r.spec.method, {}).setdefault(k, set()).add(repr(v))
    out = {m: [k for k, vals in ps.items() if len(vals) > 1] for m, ps in seen.items()}
    return {m: ks for m, ks in out.items() if ks}


def method_label(spec: Any) -> str:
    """The method as tables show it: ``wanda +owl`` when a sparsity profile is set."""
    return f"{spec.method} +{spec.profile.name}" if spec.profile is not None else spec.method
