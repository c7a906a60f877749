"""What a run reports back: one result per cell, and the progress sink the CLI implements."""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.core.spec import RunSpec


def error_line(exc: BaseException) -> str:
    """``ValueError: <first line>``: a cell's exception as its record's one-line error."""
    first = str(exc).strip().split("\n")[0]  # the first line; a "\r" inside it stays (made visible on print)
    return f"{type(exc).__name__}: {first}"


@dataclass
class CellResult:
    spec: RunSpec
    status: str  # "ok", "failed", "error" (the machine's fault, rerun), "skipped" (stored as ok), "not run"
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    sparsity: float | None = None
    wall_time_s: float = 0.0
    stored: bool = False  # from an earlier run, not run now


@dataclass
class FailureGroup:
    """Cells that ended with the same status and the same error (see :func:`group_failures`)."""

    status: str  # "failed" or "error"
    error: str
    results: list[CellResult]


def group_failures(results: list[CellResult]) -> list[FailureGroup]:
    """The failed and error cells grouped by (status, error), in order of first appearance.

    A model that cannot be loaded (offline hub, missing folder) fails each of its cells with the
    same message, which names the model: one group per model, so it is shown once, not per cell.
    """
    groups: dict[tuple[str, str], FailureGroup] = {}
    for r in results:
        if r.status in ("failed", "error"):
            key = (r.status, r.error or "")
            groups.setdefault(key, FailureGroup(r.status, r.error or "", [])).results.append(r)
    return list(groups.values())


class Reporter:
    """Progress sink. The library calls it; the CLI implements it with rich. Default: silent."""

    def plan(self, cells: list[RunSpec], skipped: int, failed: int = 0) -> None:
        """``skipped`` cells are already stored; ``failed`` of them as failed."""

    def note(self, message: str) -> None:
        """Something the user should see (a submitted Slurm array, a busy database)."""

    def cell_start(self, index: int, total: int, spec: RunSpec) -> None: ...

    def progress(self, task: str, done: int, total: int) -> None: ...

    def cell_end(self, result: CellResult) -> None: ...
