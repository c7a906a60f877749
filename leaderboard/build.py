"""Stage one of the leaderboard: stored runs into a frozen, typed table model.

Every number is decided here: what a cell holds (``value``), what it shows (``display``)
and how it sorts (``sort_key``). Templates only lay cells out, so the view model can be
tested without HTML, and the HTML cannot compute anything wrong (HELM's
``presentation/table.py``, coverage.py's ``html.py``).

One :class:`Table` per suite and model family; rows are runs (model × method × target ×
seed); columns are declared by :mod:`leaderboard.metrics`. Recovery % compares a run with the
dense run of the same suite, model and seed, and is left empty for failed runs or when that
dense run failed or is missing.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from harness.core.metrics import in_zero_shot_average, recovery
from leaderboard.data import Run, run_order
from leaderboard.metrics import AVG_ZERO_SHOT, ZERO_SHOT_KIND, MetricInfo, as_percent, metric_info

# Model-family keywords, searched in the model name; the earliest match wins.
FAMILIES = ("llama", "opt", "mistral", "mixtral", "qwen", "phi", "gemma", "gpt2", "gpt-neox",
            "gptj", "pythia", "bloom", "falcon", "olmo", "resnet", "vit", "deit", "convnext",
            "efficientnet", "mobilenet", "swin", "bert")
_SIZE_SUFFIX = re.compile(r"[-_.]?\d+(\.\d+)?[bmk]\b.*$", re.IGNORECASE)

SortKey = float | str | None


@dataclass(frozen=True)
class Cell:
    """One table cell.

    Attributes:
        value: The raw value (a float, a string or None), for tests and data export.
        display: The text shown.
        sort_key: What the column sorts by; None sorts last in either direction.
        title: Tooltip text (stderr, error message, full value).
        href: A relative link, or None.
        css: Extra CSS classes (``"failed"``, ``"best"``).
    """

    value: float | str | None
    display: str
    sort_key: SortKey
    title: str = ""
    href: str | None = None
    css: str = ""


@dataclass(frozen=True)
class Column:
    """A column header.

    Attributes:
        key: Stable identifier, used in ``data-col``.
        label: Header text.
        kind: ``"num"`` sorts numerically, ``"text"`` alphabetically.
        better: ``"asc"`` / ``"desc"``: the first click sorts best first; ``""`` for text.
        title: Header tooltip.
    """

    key: str
    label: str
    kind: Literal["num", "text"] = "text"
    better: Literal["asc", "desc", ""] = ""
    title: str = ""


@dataclass(frozen=True)
class Row:
    """A run's row; ``model``/``method``/``status`` feed the filters' data attributes."""

    run_id: str
    model: str
    method: str
    target: str
    status: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Table:
    id: str  # HTML id, unique within the page
    title: str
    suite: str
    family: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    methods: tuple[str, ...]  # filter choices, sorted

    def column(self, key: str) -> int:
        """Index of the column with ``key``."""
        return next(i for i, c in enumerate(self.columns) if c.key == key)


# ---------------------------------------------------------------------------- helpers


def slug(text: str, *, hashed: bool = True) -> str:
    """A file-name-safe slug; with ``hashed``, a short hash keeps distinct names distinct."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "x"
    if not hashed:
        return base
    return f"{base}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def model_family(model_id: str) -> str:
    """``hf:meta-llama/Llama-2-7b-hf`` -> ``llama``; unknown names lose their size suffix."""
    name = model_id.split(":", 1)[-1].rsplit("/", 1)[-1].lower()
    hits = [(name.find(f), -len(f), f) for f in FAMILIES if f in name]
    if hits:
        return min(hits)[2]
    return _SIZE_SUFFIX.sub("", name) or name


def model_href(model: str) -> str:
    return f"models/{slug(model)}.html"


def run_href(run_id: str) -> str:
    return f"runs/{run_id}.html"


def dense_reference(runs: Iterable[Run]) -> dict[tuple[str, str, int], Run]:
    """``(suite, model, seed) -> dense run``, ok runs only: the reference for recovery."""
    return {(r.suite, r.model, r.seed): r for r in runs if r.is_dense and r.ok}


def metric_value(run: Run, metric: str, zero_shot: Sequence[str] = ()) -> float | None:
    """A run's value of ``metric``; ``avg zero-shot`` is the mean of ``zero_shot`` metrics
    and None unless every one of them is present (a partial mean would not compare)."""
    if metric == AVG_ZERO_SHOT:
        vals = [run.metrics[m].value for m in zero_shot if m in run.metrics]
        if not zero_shot or len(vals) < len(zero_shot) or any(v is None for v in vals):
            return None
        return sum(vals) / len(vals)
    mv = run.metrics.get(metric)
    return None if mv is None else mv.value


def _num_sort(v: float | None) -> SortKey:
    # One key cannot put a NaN (a diverged run) at the bad end in both sort directions, so
    # it sorts last, like a missing value; its cell still shows "nan".
    return None if v is None or not math.isfinite(v) else v


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


# ---------------------------------------------------------------------------- cells


def _metric_cell(run: Run, info: MetricInfo, value: float | None, stderr: float | None,
                 best: bool) -> Cell:
    if not run.ok:
        return Cell(None, "–", None, "failed run")
    text = info.format(value)
    se = info.format_stderr(stderr)
    title = f"{info.name} = {value!r}" + (f" ± {stderr:.4g} (stderr)" if se else "")
    if best:
        title += "; best method at this target"
    return Cell(value, f"{text} ± {se}" if se else text, _num_sort(value), title,
                css="best" if best else "")


def _recovery_cell(run: Run, metric: str, value: float | None, dense: float | None) -> Cell:
    rec = recovery(value, dense, metric) if run.ok and dense is not None else None
    if rec is None or not math.isfinite(rec):
        why = "failed run" if not run.ok else "no dense reference" if dense is None else ""
        return Cell(None, "–", None, why)
    return Cell(rec, f"{rec:.1f}", rec, f"{rec:.2f} % of the dense model's {metric}")


def _target_cell(run: Run) -> Cell:
    t = run.parsed_target
    key = None if t is None else t.sparsity + (1e-9 if t.is_nm else 0.0)  # 2:4 right after 0.5
    kind = "dense" if run.is_dense else "N:M" if t is not None and t.is_nm else "unstructured"
    return Cell(run.target, run.target, key, kind)


def variant_labels(runs: Sequence[Run]) -> dict[str, str]:
    """``run id -> "k=v, ..."`` for runs of a method that appears with more than one set of
    params in ``runs``: the params on which its variants differ, so that two rows of ``iobs``
    read as ``iobs (curvature=fisher)`` and ``iobs (curvature=activations)``. Runs of a method
    used with one set of params get no entry."""
    def shown(value: object) -> str:
        return "default" if value is None else str(value)

    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    out: dict[str, str] = {}
    for group in by_method.values():
        keys = sorted({k for r in group for k in r.params})
        differ = [k for k in keys if len({repr(r.params.get(k)) for r in group}) > 1]
        for run in group if differ else ():
            out[run.run_id] = ", ".join(f"{k}={shown(run.params.get(k))}" for k in differ)
    return out


def _method_cell(run: Run, variant: str = "") -> Cell:
    """The method's name, with ``variant`` (:func:`variant_labels`) in parentheses when the table
    holds other variants of it; a fine-tuning method carries a label so it is not read as
    one-shot, and a sparsity profile (OWL) shows as ``wanda +owl``."""
    title = ", ".join(f"{k}={v}" for k, v in sorted(run.params.items()))
    profile = run.spec.get("profile") or {}
    label = f"{run.method} +{profile['name']}" if profile else run.method
    label += f" ({variant})" if variant else ""
    if profile:
        title += f"; sparsity profile {profile['name']} " + ", ".join(
            f"{k}={v}" for k, v in sorted(profile.items()) if k != "name")
    if run.fine_tuned:
        return Cell(label, f"{label} · fine-tuned", label,
                    f"fine-tuning after pruning, not one-shot (left out of the best-cell marks); {title}",
                    css="finetune")
    return Cell(label, label, label, title)


def _sparsity_cell(run: Run) -> Cell:
    s = run.sparsity_global
    if s is None:
        return Cell(None, "–", None, "not measured")
    title = f"measured over the pruned layers: {s:.6f}"
    if run.nm_compliant is not None:
        title += "; N:M " + ("compliant in every group" if run.nm_compliant else "VIOLATED")
    mark = "" if run.nm_compliant in (None, True) else " ✗"
    return Cell(s, f"{100 * s:.1f}{mark}", s, title)


def _status_cell(run: Run) -> Cell:
    if run.ok and run.publishable is False:
        return Cell("trial", "trial", "trial", "lm-eval ran with a limit: a trial run, "
                    "not a leaderboard number", css="trial")
    if run.ok:
        return Cell("ok", "ok", "ok")
    # "failed" (the method's) or "error" (the machine's: no result, the next run retries it)
    return Cell(run.status, run.status, run.status, run.error or run.status, run_href(run.run_id), "failed")


# ---------------------------------------------------------------------------- tables


def table_metrics(runs: Sequence[Run]) -> tuple[list[MetricInfo], list[str]]:
    """The table's metrics (non-zero-shot first, then zero-shot; each sorted) and the
    zero-shot metric names that feed the average: only the tasks declared in
    :data:`harness.core.metrics.AVERAGED_TASKS` (the Wanda 7 and the offline tasks that pass
    the discrimination rule); other accuracies keep their columns. Secondary lm-eval rows
    (not headline) are left to the run pages."""
    names = sorted({m for r in runs for m, mv in r.metrics.items() if mv.shown})
    infos = [metric_info(n) for n in names]
    zero = [i for i in infos if i.kind == ZERO_SHOT_KIND]
    other = [i for i in infos if i.kind != ZERO_SHOT_KIND]
    return other + zero, [i.name for i in zero if in_zero_shot_average(i.name)]


def build_table(runs: Sequence[Run], *, suite: str, family: str, table_id: str,
                all_runs: Sequence[Run] | None = None) -> Table:
    """One table from runs of one suite and family.

    Args:
        runs: The rows, any order (they are put in :func:`leaderboard.data.run_order`).
        suite: Suite name, for the title.
        family: Model family, for the title.
        table_id: HTML id.
        all_runs: Where to look for dense references (default: ``runs``).
    """
    runs = sorted(runs, key=run_order)
    refs = dense_reference(all_runs if all_runs is not None else runs)
    infos, zero_shot = table_metrics(runs)
    best = best_runs(runs, infos, zero_shot)
    variants = variant_labels(runs)
    show_seed = len({r.seed for r in runs}) > 1
    cols = [Column("model", "model"), Column("method", "method"),
            Column("target", "target", "num", "", "target sparsity or N:M pattern")]
    if show_seed:
        cols.append(Column("seed", "seed", "num"))
    cols.append(Column("status", "status"))
    rec_cols: dict[str, Column] = {}
    for info in infos:
        better = "desc" if info.higher_is_better else "asc"
        direction = "higher" if info.higher_is_better else "lower"
        default = "" if info.declared else " (default for an unknown metric)"
        cols.append(Column(f"m:{info.name}", f"{info.label} {info.arrow}", "num", better,
                           f"{info.name}; {direction} is better{default}"))
        if info.kind != ZERO_SHOT_KIND:
            rec_cols[info.name] = Column(
                f"r:{info.name}", "recovery %", "num", "desc",
                f"{info.name} as % of the dense run (same suite, model, seed)")
            cols.append(rec_cols[info.name])
    if zero_shot:
        cols.append(Column("avg", f"{AVG_ZERO_SHOT} % ↑", "num", "desc",
                           "mean of: " + ", ".join(zero_shot)))
        cols.append(Column("r:avg", "recovery %", "num", "desc",
                           f"{AVG_ZERO_SHOT} as % of the dense run (same suite, model, seed)"))
    cols += [Column("sparsity", "sparsity %", "num", "", "measured over the pruned layers"),
             Column("prune_time", "prune time", "num", "asc"), Column("device", "device"),
             Column("run", "run")]

    rows = []
    for run in runs:
        ref = refs.get((run.suite, run.model, run.seed))
        cells = [Cell(run.model, run.model, run.model.lower(), run.model, model_href(run.model)),
                 _method_cell(run, variants.get(run.run_id, "")), _target_cell(run)]
        if show_seed:
            cells.append(Cell(run.seed, str(run.seed), run.seed))
        cells.append(_status_cell(run))
        for info in infos:
            mv = run.metrics.get(info.name)
            value = None if mv is None else mv.value
            cells.append(_metric_cell(run, info, value, None if mv is None else mv.stderr,
                                      run.run_id in best[info.name]))
            if info.name in rec_cols:
                dense = None if ref is None else metric_value(ref, info.name)
                cells.append(_recovery_cell(run, info.name, value, dense))
        if zero_shot:
            avg = metric_value(run, AVG_ZERO_SHOT, zero_shot) if run.ok else None
            shown = None if avg is None else as_percent(avg)
            top = run.run_id in best[AVG_ZERO_SHOT]
            cells.append(Cell(avg, "–" if shown is None else f"{shown:.1f}", _num_sort(avg),
                              "" if avg is not None else "needs every zero-shot metric",
                              css="best" if top else ""))
            dense = None if ref is None else metric_value(ref, AVG_ZERO_SHOT, zero_shot)
            cells.append(_recovery_cell(run, AVG_ZERO_SHOT, avg, dense))
        cells += [_sparsity_cell(run),
                  Cell(run.prune_time_s, _fmt_time(run.prune_time_s), run.prune_time_s,
                       f"wall time {_fmt_time(run.wall_time_s)}"),
                  Cell(run.device_label, run.device_short, run.device_short.lower(),
                       run.device_label),
                  Cell(run.run_id, run.short_id, run.run_id, "run details", run_href(run.run_id))]
        rows.append(Row(run.run_id, run.model, run.method, run.target, run.status, tuple(cells)))
    title = suite if family == "" else f"{suite} · {family}"
    return Table(table_id, title, suite, family, tuple(cols), tuple(rows),
                 tuple(sorted({r.method for r in runs})))


def build_tables(runs: Sequence[Run]) -> list[Table]:
    """The index: one table per (suite, model family), sorted by suite then family."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.suite, model_family(run.model)), []).append(run)
    return [build_table(rs, suite=suite, family=fam, table_id=f"t-{slug(f'{suite}/{fam}')}",
                        all_runs=runs)
            for (suite, fam), rs in sorted(groups.items())]


def best_runs(runs: Sequence[Run], infos: Sequence[MetricInfo],
              zero_shot: Sequence[str] = ()) -> dict[str, set[str]]:
    """``metric -> run ids`` of the best ok non-dense one-shot run per (model, target, seed):
    the cells a reader looks for first, highlighted in bold. Ties all count as best, but where
    every method ties (a saturated task) nothing is highlighted. Fine-tuning runs are left
    out: they answer another question (what training recovers) and are labelled instead."""
    names = [(i.name, i.higher_is_better) for i in infos]
    if zero_shot:
        names.append((AVG_ZERO_SHOT, True))
    best: dict[str, set[str]] = {}
    for name, higher in names:
        groups: dict[tuple, list[tuple[float, str]]] = {}
        for r in runs:
            v = metric_value(r, name, zero_shot)
            if r.ok and not r.is_dense and not r.fine_tuned and v is not None and math.isfinite(v):
                score = v if higher else -v
                groups.setdefault((r.model, r.target, r.seed), []).append((score, r.run_id))
        best[name] = {rid for scored in groups.values()
                      if len({s for s, _ in scored}) > 1  # someone is worse
                      for s, rid in scored if s == max(scored)[0]}
    return best
