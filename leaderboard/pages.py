"""View models of the per-model and per-run pages, and the plots they show (as data).

Like :mod:`leaderboard.build`, everything here is decided before rendering: plots are frozen
descriptions (:mod:`leaderboard.figures`) that :mod:`leaderboard.plots` draws, and every string a
page shows is computed. Paths are relative to the site root. A page's breadcrumb names the pages
above it by their titles.
"""
from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from harness.core.metrics import recovery
from harness.core.target import Target, TargetError
from leaderboard.build import Table, avg_info, build_table, model_href, run_href, slug, table_metrics
from leaderboard.data import LayerRow, Run, target_label
from leaderboard.figures import LayerPlot, OverviewPanel, OverviewPlot, ParetoPlot, Point, SeriesPlot
from leaderboard.metrics import AVG_ZERO_SHOT, ZERO_SHOT_KIND, MetricInfo, format_value, metric_info
from leaderboard.reported import Gap, ReportedRow, calibration_matches, gaps
from leaderboard.rows import Entry, dense_stat, entries
from leaderboard.view import fmt_count, model_family


@dataclass(frozen=True)
class ModelSection:
    protocol: str
    plots: tuple[ParetoPlot, ...]
    table: Table


@dataclass(frozen=True)
class ModelPage:
    model: str
    family: str
    file: str
    num_params: int | None
    sections: tuple[ModelSection, ...]
    gaps: tuple[Gap, ...]  # published numbers of this model beside their reproductions

    @property
    def params_text(self) -> str:
        return f"{self.num_params:,} parameters ({fmt_count(self.num_params)})" if self.num_params else ""


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
    eval_id: str


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
    title: str  # the h1 and the last breadcrumb
    variant: str
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
    reproduce_note: str


# ---------------------------------------------------------------------------- plots


def _x(e: Entry) -> float | None:
    """Measured sparsity (mean over seeds), else the target's."""
    vals = [r.sparsity_global for r in e.ok_runs if r.sparsity_global is not None]
    if vals:
        return sum(vals) / len(vals)
    t = e.runs[0].parsed_target
    return None if t is None else t.sparsity


def _targets(rows: Sequence[Entry]) -> tuple[float, ...]:
    out = set()
    for e in rows:
        try:
            t = Target.parse(e.target)
        except TargetError:
            continue
        if t.sparsity > 0:
            out.add(t.sparsity)
    return tuple(sorted(out))


def pareto_plots(rows: Sequence[Entry], model: str, pool: Sequence[Entry], key: str) -> list[ParetoPlot]:
    """Metric vs sparsity for one model under one protocol: one plot per metric, failed runs and
    non-finite (diverged) values left out, seeds averaged (std as error bars), variants kept apart."""
    mine = [e for e in rows if e.model == model and e.ok_runs]
    infos, zero_shot = table_metrics(mine)
    plots = []
    for info in infos + ([avg_info()] if zero_shot else []):
        points = []
        for e in mine:
            s, x = e.stat(info.name, zero_shot), _x(e)
            if e.is_dense or s is None or not math.isfinite(s.mean) or x is None:
                continue
            points.append(Point(e.variant, e.target, x, s.mean, ":" in e.target, s.std))
        dense = dense_stat(pool, model, info.name, zero_shot, mine[0].protocol.key) if mine else None
        if not points and dense is None:
            continue
        name = info.name if info.name != AVG_ZERO_SHOT else "avg-zero-shot"
        plots.append(ParetoPlot(
            file=f"plots/{slug(model)}-{slug(key)}-{slug(name, hashed=False)}.svg",
            title=f"{model}: {info.label}", metric=info,
            points=tuple(sorted(points, key=lambda p: (p.method, p.x))),
            dense=dense.mean if dense is not None and math.isfinite(dense.mean) else None, targets=_targets(mine)))
    return plots


def overview_plot(table: Table, rows: Sequence[Entry], pool: Sequence[Entry]) -> OverviewPlot | None:
    """Recovery % of the table's first metric versus sparsity, one panel per model."""
    infos, zero_shot = table_metrics(rows)
    info = next((i for i in infos if i.kind != ZERO_SHOT_KIND), avg_info() if zero_shot else None)
    if info is None:
        return None
    panels = []
    for model in sorted({e.model for e in rows}):
        points = []
        for e in rows:
            if e.model != model or e.is_dense or not e.ok_runs:
                continue
            s, x = e.stat(info.name, zero_shot), _x(e)
            d = dense_stat(pool, model, info.name, zero_shot, e.protocol.key)
            rec = recovery(s.mean, d.mean, info.name) if s is not None and d is not None else None
            if rec is not None and math.isfinite(rec) and x is not None:
                points.append(Point(e.variant, e.target, x, rec, ":" in e.target))
        if points:
            panels.append(OverviewPanel(model, tuple(sorted(points, key=lambda p: (p.method, p.x)))))
    if not panels:
        return None
    return OverviewPlot(f"plots/overview-{table.id}.svg", f"{table.title}: recovery vs sparsity",
                        f"recovery ({info.label}) %", tuple(panels), _targets(rows))


# ---------------------------------------------------------------------------- model pages


def model_pages(runs: Sequence[Run], reported: Sequence[ReportedRow] = ()) -> list[ModelPage]:
    """One page per model (stored or reported): per protocol, its plots and its rows; and the
    published numbers of the model beside their reproductions."""
    pool = entries(runs)
    all_gaps = gaps(reported, pool)
    pages = []
    for model in sorted({e.model for e in pool} | {r.model for r in reported}):
        sections = []
        mine = [e for e in pool if e.model == model]
        reps = [r for r in reported if r.model == model]
        for key in sorted({e.protocol.key for e in mine}):
            rows = [e for e in mine if e.protocol.key == key]
            protocol = rows[0].protocol
            here = [r for r in reps if calibration_matches(r, protocol.calibration)]
            reps = [r for r in reps if r not in here]
            table = build_table(rows, family="", protocol=protocol, table_id=f"t-{slug(key)}", pool=pool,
                                reported=here)
            sections.append(ModelSection(protocol.label, tuple(pareto_plots(rows, model, pool, key)), table))
        for label in sorted({r.protocol_label for r in reps}):
            here = [r for r in reps if r.protocol_label == label]
            table = build_table([], family="", protocol=None, table_id=f"t-{slug('reported' + label)}", pool=pool,
                                reported=here)
            sections.append(ModelSection(label, (), table))
        num = next((r.num_params for e in mine for r in e.runs if r.num_params), None)
        pages.append(ModelPage(model, model_family(model), model_href(model), num, tuple(sections),
                               tuple(g for g in all_gaps if g.reported.model == model)))
    return pages


# ---------------------------------------------------------------------------- run pages


def _fmt(v: float | int | None, spec: str = ".4g") -> str:
    return "–" if v is None else format(v, spec)


def _bytes(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.1f} MiB"


def _pretty(obj) -> str:
    return "" if obj is None else json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)


def reproduce_command(run: Run) -> tuple[str, str]:
    """The command that reruns exactly this cell, and a note on the suite file it names: the stored
    suite path when known, else ``<suite>.yaml`` written from the frozen YAML on the page."""
    only = f"--only {run.short_id}"
    if run.suite_path:
        return (f"harness run {shlex.quote(run.suite_path)} {only}",
                "the suite file of the last run that stored this cell; its frozen copy is under Suite YAML")
    return (f"harness run {shlex.quote(f'{run.suite}.yaml')} {only}",
            f"save the suite YAML below as {run.suite}.yaml first (where the suite file was is not recorded)")


def run_title(run: Run, variant: str) -> str:
    return f"{variant} · {target_label(run.target)} · seed {run.seed}"


def run_page(run: Run, runs: Sequence[Run], pool: Sequence[Entry] | None = None) -> RunPage:
    """The detail page of one run; ``runs`` (or their entries, ``pool``) supply its dense reference."""
    pool = entries(runs) if pool is None else pool
    mine = next((e for e in pool if any(r.run_id == run.run_id for r in (*e.runs, *e.duplicates))), None)
    variant = mine.variant if mine else run.method
    key = mine.protocol.key if mine else None
    sparsity = "–" if run.sparsity_global is None else f"{100 * run.sparsity_global:.2f} %"
    if run.nm_compliant is not None:
        sparsity += " (N:M " + ("compliant)" if run.nm_compliant else "VIOLATED)")
    suites = ", ".join(run.all_suites)
    summary = [
        KeyValue("run id", run.run_id), KeyValue("model", run.model, model_href(run.model)),
        KeyValue("method", run.method + (f" ({run.origin})" if run.third_party else "")),
        KeyValue("variant", variant), KeyValue("target", f"{target_label(run.target)} ({run.target})"),
        KeyValue("seed", str(run.seed)), KeyValue("protocol", mine.protocol.label if mine else "–"),
        KeyValue("suites", suites),
        KeyValue("status", run.status if run.publishable is not False else
                 f"{run.status}, trial (lm-eval ran with a limit: not a leaderboard number)"),
        KeyValue("measured sparsity", sparsity),
        KeyValue("prune time", _fmt(run.prune_time_s, ".2f") + " s"),
        KeyValue("wall time", _fmt(run.wall_time_s, ".2f") + " s"),
        KeyValue("peak RSS", _bytes(run.peak_rss_bytes)), KeyValue("peak CUDA", _bytes(run.peak_cuda_bytes)),
        KeyValue("device", run.device_label),
    ]
    if run.artifact:
        a = run.artifact
        kept = "kept at " + str(a.get("path")) if a.get("kept") else "not kept"
        summary.append(KeyValue("pruned weights", f"sha256 {str(a.get('sha256', '?'))[:16]}…, "
                                f"{_bytes(a.get('bytes'))}, {kept}"))
    if run.aliases:
        summary.append(KeyValue("older run ids", ", ".join(a[:12] for a in run.aliases)))
    dense_entry = next((e for e in pool if e.is_dense and e.model == run.model and e.ok_runs
                        and (e.protocol.key == key or key is None)), None) or \
        next((e for e in pool if e.is_dense and e.model == run.model and e.ok_runs), None)
    if dense_entry is not None and dense_entry is not mine:
        ref = dense_entry.ok_runs[0]
        summary.append(KeyValue("dense reference", ref.short_id, run_href(ref.run_id)))
    params = tuple(KeyValue(k, json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)
                   for k, v in sorted(run.params.items()))
    metrics = []
    infos, _ = table_metrics([run])
    shown = {i.name for i in infos}
    infos += [metric_info(n) for n in sorted(run.metrics) if n not in shown]  # secondary rows
    for info in infos:
        mv = run.metrics[info.name]
        d = dense_stat(pool, run.model, info.name, protocol=key)
        dense = None if d is None or run.is_dense else d.mean
        rec = recovery(mv.value, dense, info.name) if run.ok and dense is not None else None
        metrics.append(MetricRow(
            info.name, info.label, info.format(mv.value), info.format_stderr(mv.stderr) or "–",
            _fmt(mv.n, "d"), info.format(dense) if dense is not None else "–",
            "–" if rec is None or not math.isfinite(rec) else f"{rec:.1f} %", not mv.shown, mv.eval_id or "–"))
    layers = tuple(LayerLine(
        ly.layer, _fmt(ly.block, "d"), f"{ly.rows}×{ly.cols}" if ly.rows and ly.cols else "–",
        "–" if ly.sparsity is None else f"{100 * ly.sparsity:.2f} %",
        {None: "–", True: "yes", False: "NO"}[ly.nm_ok],
        format_value(ly.rel_error, "general"), _fmt(ly.time_s, ".3f")) for ly in run.layers)
    base = f"plots/run-{run.run_id[:16]}"
    # Plots of a failed run's partial layers would look like results: table only.
    layer_plot = (LayerPlot(f"{base}-layers.svg", f"{run.model} · {variant} {target_label(run.target)}",
                            run.layers) if run.layers and run.ok else None)
    series = tuple(SeriesPlot(f"{base}-series-{slug(name)}.svg", name, pts)
                   for name, pts in sorted(run.series.items()) if pts)
    command, note = reproduce_command(run)
    return RunPage(
        run=run, file=run_href(run.run_id), title=run_title(run, variant), variant=variant,
        summary=tuple(summary), params=params, metrics=tuple(metrics), layers=layers, layer_plot=layer_plot,
        series_plots=series, suite_text=run.suite_text or "", spec_json=_pretty(run.spec),
        environment=_pretty(run.environment), eval_info=_pretty(run.eval_info), reproduce=command,
        reproduce_note=note)


def metric_label(name: str) -> str:
    return avg_info().label if name == AVG_ZERO_SHOT else metric_info(name).label


__all__ = ["KeyValue", "LayerLine", "LayerRow", "MetricInfo", "MetricRow", "ModelPage", "ModelSection",
           "OverviewPlot", "ParetoPlot", "RunPage", "metric_label", "model_pages", "overview_plot", "pareto_plots",
           "reproduce_command", "run_page", "run_title"]
