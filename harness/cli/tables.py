"""Tables of what the store holds, at readable widths: ``harness results`` and ``harness sql``.

``harness results`` shows one row per run and a column per metric. The columns that name a run
(model, method variant, target, seed, status) are never cut: each is as wide as its longest
value, so ``zoo:tiny-llama`` and ``zoo:tiny-opt`` never both read ``zoo:tiny…`` (a long variant
breaks at its spaces when space is short; a seed or status shared by every row goes in the
title). Metric headers break at ``/`` (``pydoc/`` over ``ppl@128``). When the metric columns do
not fit the console, they are split over several tables, each repeating the naming columns,
instead of squeezing every column. ``harness sql`` prints any query's rows; its cells wrap (fold) rather
than end in an ellipsis. Every string is a :func:`~harness.cli.console.text` (never markup).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from harness.cli.console import text
from harness.core.visible import visible

# The columns of the `results` view that `harness results` reads: these seven are in every store
# version; the optional ones are read when the view has them (see view_columns).
RESULTS_COLUMNS = ("suite", "model", "method", "target", "status", "metric", "value")
OPTIONAL_COLUMNS = ("run_id", "variant", "seed", "suites")  # suites: JSON list of the suites that asked


def number(v: float | None) -> str:
    """A metric value for a table cell: ``-`` when missing, 3 decimals below 10, else 2."""
    if v is None:
        return "-"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.2e}"  # distances near machine precision
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"


def view_columns(store: Any) -> tuple[str, ...]:
    """The columns of ``store``'s ``results`` view that :func:`results_table` reads."""
    rows = store.query("SELECT column_name FROM information_schema.columns "
                       "WHERE table_schema = 'main' AND table_name = 'results'", [])
    have = {r[0] for r in rows}
    return tuple(c for c in RESULTS_COLUMNS if c in have) + tuple(c for c in OPTIONAL_COLUMNS if c in have)


def stored_suites(store: Any, columns: Sequence[str]) -> list[str]:
    """The suites that asked for the stored runs (``harness results --suite`` takes one)."""
    sql = "SELECT DISTINCT suite FROM results WHERE suite IS NOT NULL"
    if "suites" in columns:
        sql += """ UNION SELECT DISTINCT unnest(from_json(suites, '["VARCHAR"]')) FROM results"""
    return sorted({r[0] for r in store.query(sql, []) if r[0] is not None})


WRAP_AT = 24  # a wrapping column (a variant's params) breaks at spaces to this width when space is short


@dataclass
class _Column:
    """One column before rendering: its header lines, its cells, and how it is aligned.

    ``wrap``: the cells may break at spaces (``sparsegpt(blocksize=64,`` over ``dampening_frac=0.1)``);
    :func:`fold_columns` narrows such a column to ``limit`` before it splits a table.
    """

    header: list[str]
    cells: list[str] = field(default_factory=list)
    justify: str = "left"
    wrap: bool = False
    limit: int | None = None

    @property
    def full(self) -> int:
        return max(cell_len(s) for s in [*self.header, *self.cells, ""])

    @property
    def width(self) -> int:
        return self.full if self.limit is None else self.limit

    def narrow(self) -> None:
        """Break at spaces, down to :data:`WRAP_AT` columns or the longest word."""
        words = [w for s in self.cells for w in s.split(" ")]
        self.limit = min(self.full, max([WRAP_AT, *(cell_len(w) for w in words + self.header)]))


def _table_width(columns: Sequence[_Column]) -> int:
    """Rendered width: each column plus one space of padding either side, and n + 1 rules."""
    return sum(c.width + 2 for c in columns) + len(columns) + 1


def fold_columns(keys: list[_Column], metrics: list[_Column], width: int | None) -> list[list[_Column]]:
    """Split ``metrics`` into groups that fit ``width`` next to ``keys`` (one group when
    ``width`` is None or everything fits; at least one metric per group). Wrapping key columns
    are narrowed first."""
    if width is None or _table_width(keys + metrics) <= width or not metrics:
        return [metrics]
    for col in keys:
        if col.wrap:
            col.narrow()
    groups: list[list[_Column]] = [[]]
    for m in metrics:
        if groups[-1] and _table_width(keys + groups[-1] + [m]) > width:
            groups.append([])
        groups[-1].append(m)
    k = len(groups)  # as many tables as needed; now even them out (6 metrics: 3 + 3, not 5 + 1)
    size = -(-len(metrics) // k)
    even = [metrics[i:i + size] for i in range(0, len(metrics), size)]
    fits = len(even) == k and all(_table_width(keys + g) <= width for g in even)
    return even if fits else groups


def _render(keys: list[_Column], metrics: list[_Column], title: str | None, caption: str | None) -> Table:
    t = Table(title=text(title) if title is not None else None, caption=text(caption) if caption else None,
              header_style="bold")
    for col in (*keys, *metrics):
        header = Text("\n").join(text(line) for line in col.header)  # visible lines, real line breaks
        # as wide as the longest value (or its limit, then broken at spaces); folded, never cut
        # with "…", only when even that cannot fit the console
        t.add_column(header, justify=col.justify, overflow="fold", min_width=col.width,  # type: ignore[arg-type]
                     max_width=col.limit)
    for i in range(len(keys[0].cells) if keys else 0):
        t.add_row(*(text(c.cells[i]) for c in (*keys, *metrics)))
    return t


def metric_header(name: str) -> list[str]:
    """``pydoc/ppl@128`` as the lines ``pydoc/`` and ``ppl@128``."""
    head, sep, tail = visible(name).partition("/")
    return [head + sep, tail] if sep and tail else [head]


def results_table(store: Any, suite: str | None, columns: Sequence[str] = RESULTS_COLUMNS,
                  width: int | None = None) -> Group:
    """The stored ``results`` view, pivoted: one row per run, one column per metric; one table per
    suite, its metric columns folded over several tables when they do not fit ``width``.

    Args:
        columns: the view's columns to read (:func:`view_columns`); the seven of
            :data:`RESULTS_COLUMNS` by default, in that order. With ``run_id`` each run is its own
            row; ``variant`` is shown as the method, ``seed`` gets a column.
        width: the console's width; None renders every metric in one table.
    """
    where, params = "", []
    if suite and "suites" in columns:  # a run is shared by every suite that asked for it
        where, params = """WHERE suite = ? OR list_contains(from_json(suites, '["VARCHAR"]'), ?)""", [suite, suite]
    elif suite and "suite" in columns:
        where, params = "WHERE suite = ?", [suite]
    method = "variant" if "variant" in columns else "method"
    order = [c for c in ("suite", "model", method, "target", "seed") if c in columns] + ["metric"]
    rows = store.query(f"SELECT {', '.join(columns)} FROM results {where} ORDER BY {', '.join(order)}", params)
    runs: dict[Any, dict[str, Any]] = {}
    for row in rows:
        r = dict(zip(columns, row))
        key = r.get("run_id") or tuple(r.get(c) for c in ("suite", "model", "method", "target", "status", "seed"))
        run = runs.setdefault(key, {**r, "metrics": {}})
        if r["metric"] is not None:
            run["metrics"][r["metric"]] = r["value"]
    by_suite: dict[Any, list[dict[str, Any]]] = {}
    for run in runs.values():
        by_suite.setdefault(suite or run.get("suite"), []).append(run)
    naming = ["model", "method", "target", *(["seed"] if "seed" in columns else []), "status"]
    tables = [t for name, group in by_suite.items() for t in _suite_tables(name, group, naming, width)]
    if not tables:  # nothing stored (for this suite): the header alone
        tables.append(_render([_Column([c]) for c in naming], [], suite, None))
    return Group(*tables)


def _suite_tables(name: Any, runs: list[dict[str, Any]], naming: list[str], width: int | None) -> list[Table]:
    """One suite's runs: the table, or its folds. A seed or status shared by every run goes in the
    title (``quickstart: seed 0, all ok``) instead of a column."""
    shown = [{**run, "method": run.get("variant") or run["method"]} for run in runs]
    same = {c: shown[0][c] for c in ("seed", "status") if c in naming and len({r[c] for r in shown}) == 1}
    title = ", ".join([*([f"seed {same['seed']}"] if "seed" in same else []),
                       *([f"all {same['status']}"] if "status" in same else [])])
    title = f"{name}: {title}" if name is not None and title else str(name) if name is not None else title
    metrics = sorted({m for run in runs for m in run["metrics"]})
    keys = [_Column([c], justify="right" if c == "seed" else "left", wrap=c == "method")
            for c in naming if c not in same]
    cols = [_Column(metric_header(m), justify="right") for m in metrics]
    for run in shown:
        for col in keys:
            value = run[col.header[0]]
            col.cells.append("-" if value is None else visible(value))
        for col, m in zip(cols, metrics):
            col.cells.append(number(run["metrics"].get(m)))
    parts = fold_columns(keys, cols, width)
    return [_render(keys, part, title or None, f"metrics {i + 1} of {len(parts)}" if len(parts) > 1 else None)
            for i, part in enumerate(parts)]


NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL")


def sql_table(names: Sequence[str], types: Sequence[str], rows: Sequence[tuple]) -> Table:
    """Any query's rows as a table: NULL as ``NULL``, numbers right-aligned, long cells folded."""
    t = Table(header_style="bold")
    for name, kind in zip(names, types):
        numeric = kind.upper().startswith(NUMERIC_TYPES)
        t.add_column(text(name), justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        t.add_row(*(text("NULL" if v is None else v) for v in row))
    return t
