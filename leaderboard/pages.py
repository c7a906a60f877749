"""View models of the per-model and per-run pages, and the plots they show (as data).

Like :mod:`leaderboard.build`, everything here is decided before rendering: plots are
frozen descriptions (:class:`ParetoPlot`, :class:`LayerPlot`, :class:`SeriesPlot`) that
:mod:`leaderboard.plots` draws with matplotlib, and every string a page shows is computed.
Paths are relative to the site root.
"""
from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from harness.core.metrics import recovery
from leaderboard.build import (
    Table,
    build_table,
    dense_reference,
    metric_value,
    model_family,
    model_href,
    run_href,
    slug,
    table_metrics,
    variant_labels,
)
from leaderboard.data import LayerRow, Run
from leaderboard.metrics import AVG_ZERO_SHOT, MetricInfo, format_value, metric_info


@dataclass(frozen=True)
class Point:
    method: str
    target: str
    x: float  # measured sparsity (target sparsity when not measured), 0..1
    y: float  # mean over seeds
    nm: bool  # N:M target: drawn with its own marker, not joined to the line


@dataclass(frozen=True)
class ParetoPlot:
    file: str
    title: str
    metric: MetricInfo
    points: tuple[Point, ...]
    dense: float | None  # the dense run's value: a horizontal reference line


@dataclass(frozen=True)
class LayerPlot:
    file: str
    title: str
    layers: tuple[LayerRow, ...]


@dataclass(frozen=True)
class SeriesPlot:
    file: str
    title: str
    points: tuple[tuple[int, float], ...]  # (step, value)


Plot = ParetoPlot | LayerPlot | SeriesPlot


@dataclass(frozen=True)
class ModelSection:
    suite: str
    plots: tuple[ParetoPlot, ...]
    table: Table


@dataclass(frozen=True)
class ModelPage:
    model: str
    family: str
    file: str
    sections: tuple[ModelSection, ...]


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    href: str | None = None  # relative to the site root, like every path here


@dataclass(frozen=True)
class MetricRow:
    metric: str
    label: str
    value: str
    stderr: str
    n: str
    dense: str
    recovery: str
    secondary: bool  # an lm-eval row that is not its task's headline: not on the index


@dataclass(frozen=True)
class LayerLine:
    layer: str
    block: str
    shape: str
    sparsity: str
    nm_ok: str
    rel_error: str
    time: str


@dataclass(frozen=True)
class RunPage:
    run: Run
    file: str
    title: str
    summary: tuple[KeyValue, ...]
    params: tuple[KeyValue, ...]
    metrics: tuple[MetricRow, ...]
    layers: tuple[LayerLine, ...]
    layer_plot: LayerPlot | None
    series_plots: tuple[SeriesPlot, ...]
    suite_text: str
    spec_json: str
    environment: str
    eval_info: str
    reproduce: str


# ---------------------------------------------------------------------------- model pages


def pareto_plots(runs: Sequence[Run], model: str, suite: str) -> list[ParetoPlot]:
    """Metric vs sparsity for one model in one suite: one plot per metric, failed runs and
    non-finite (diverged) values left out, seeds averaged, variants of a method (other params) kept apart."""
    mine = [r for r in runs if r.model == model and r.suite == suite and r.ok]
    infos, zero_shot = table_metrics(mine)
    names = [i.name for i in infos] + ([AVG_ZERO_SHOT] if zero_shot else [])
    dense_runs = [r for r in mine if r.is_dense]
    variants = variant_labels(mine)  # variants of one method are separate lines, never averaged together
    plots = []
    for name in names:
        info = metric_info(name) if name != AVG_ZERO_SHOT else MetricInfo(
            name, f"{AVG_ZERO_SHOT} %", True, "percent", "avg", True)
        cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in mine:
            y, t = metric_value(r, name, zero_shot), r.parsed_target
            if r.is_dense or y is None or not math.isfinite(y) or t is None:
                continue
            x = r.sparsity_global if r.sparsity_global is not None else t.sparsity
            label = f"{r.method} ({variants[r.run_id]})" if r.run_id in variants else r.method
            cells.setdefault((label, r.target), []).append((x, y))
        points = tuple(
            Point(method, target, _mean(p[0] for p in xy), _mean(p[1] for p in xy),
                  target.count(":") == 1)
            for (method, target), xy in sorted(cells.items()))
        dense_vals = [v for r in dense_runs
                      if (v := metric_value(r, name, zero_shot)) is not None and math.isfinite(v)]
        if not points and not dense_vals:
            continue
        plots.append(ParetoPlot(
            file=f"plots/{slug(model)}-{slug(suite)}-{slug(name, hashed=False)}.svg",
            title=f"{model} · {suite}: {info.label}", metric=info, points=points,
            dense=_mean(dense_vals) if dense_vals else None))
    return plots


def model_pages(runs: Sequence[Run]) -> list[ModelPage]:
    """One page per model: per suite, its Pareto plots and its rows of the index table."""
    pages = []
    for model in sorted({r.model for r in runs}):
        sections = []
        for suite in sorted({r.suite for r in runs if r.model == model}):
            mine = [r for r in runs if r.model == model and r.suite == suite]
            table = build_table(mine, suite=suite, family="", table_id=f"t-{slug(suite)}")
            sections.append(ModelSection(suite, tuple(pareto_plots(runs, model, suite)), table))
        pages.append(ModelPage(model, model_family(model), model_href(model), tuple(sections)))
    return pages


# ---------------------------------------------------------------------------- run pages


def _mean(values) -> float:
    vals = list(values)
    return sum(vals) / len(vals)


def _fmt(v: float | int | None, spec: str = ".4g") -> str:
    return "–" if v is None else format(v, spec)


def _bytes(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.1f} MiB"


def _pretty(obj) -> str:
    return "" if obj is None else json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)


def reproduce_command(run: Run) -> str:
    """The command that reruns exactly this cell (the suite file is assumed under suites/)."""
    return f"harness run {shlex.quote(f'suites/{run.suite}.yaml')} --only {run.run_id}"


def run_page(run: Run, runs: Sequence[Run]) -> RunPage:
    """The detail page of one run; ``runs`` supplies its dense reference."""
    ref = dense_reference(runs).get((run.suite, run.model, run.seed))
    sparsity = "–" if run.sparsity_global is None else f"{100 * run.sparsity_global:.2f} %"
    if run.nm_compliant is not None:
        sparsity += " (N:M " + ("compliant)" if run.nm_compliant else "VIOLATED)")
    summary = [
        KeyValue("run id", run.run_id), KeyValue("suite", run.suite),
        KeyValue("model", run.model, model_href(run.model)),
        KeyValue("method", run.method), KeyValue("target", run.target),
        KeyValue("seed", str(run.seed)),
        KeyValue("status", run.status if run.publishable is not False else
                 f"{run.status}, trial (lm-eval ran with a limit: not a leaderboard number)"),
        KeyValue("measured sparsity", sparsity),
        KeyValue("prune time", _fmt(run.prune_time_s, ".2f") + " s"),
        KeyValue("wall time", _fmt(run.wall_time_s, ".2f") + " s"),
        KeyValue("peak RSS", _bytes(run.peak_rss_bytes)),
        KeyValue("peak CUDA", _bytes(run.peak_cuda_bytes)),
        KeyValue("device", run.device_label),
    ]
    if ref is not None and ref.run_id != run.run_id:
        summary.append(KeyValue("dense reference", ref.short_id, run_href(ref.run_id)))
    params = tuple(KeyValue(k, json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)
                   for k, v in sorted(run.params.items()))
    metrics = []
    infos, _ = table_metrics([run])
    shown = {i.name for i in infos}
    infos += [metric_info(n) for n in sorted(run.metrics) if n not in shown]  # secondary rows
    for info in infos:
        mv = run.metrics[info.name]
        dense = None if ref is None else metric_value(ref, info.name)
        rec = recovery(mv.value, dense, info.name) if run.ok and dense is not None else None
        metrics.append(MetricRow(
            info.name, info.label, info.format(mv.value), info.format_stderr(mv.stderr) or "–",
            _fmt(mv.n, "d"), info.format(dense) if dense is not None else "–",
            "–" if rec is None or not math.isfinite(rec) else f"{rec:.1f} %",
            not mv.shown))
    layers = tuple(LayerLine(
        ly.layer, _fmt(ly.block, "d"), f"{ly.rows}×{ly.cols}" if ly.rows and ly.cols else "–",
        "–" if ly.sparsity is None else f"{100 * ly.sparsity:.2f} %",
        {None: "–", True: "yes", False: "NO"}[ly.nm_ok],
        format_value(ly.rel_error, "general"), _fmt(ly.time_s, ".3f")) for ly in run.layers)
    base = f"plots/run-{run.run_id[:16]}"
    # Plots of a failed run's partial layers would look like results: table only.
    layer_plot = (LayerPlot(f"{base}-layers.svg", f"{run.model} · {run.method} {run.target}",
                            run.layers) if run.layers and run.ok else None)
    series = tuple(SeriesPlot(f"{base}-series-{slug(name)}.svg", name, pts)
                   for name, pts in sorted(run.series.items()) if pts)
    title = f"{run.model} · {run.method} · {run.target}"
    return RunPage(
        run=run, file=run_href(run.run_id), title=title, summary=tuple(summary), params=params,
        metrics=tuple(metrics), layers=layers, layer_plot=layer_plot, series_plots=series,
        suite_text=run.suite_text or "", spec_json=_pretty(run.spec),
        environment=_pretty(run.environment), eval_info=_pretty(run.eval_info),
        reproduce=reproduce_command(run))
