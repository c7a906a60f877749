"""Stage one of the leaderboard: stored runs (and published numbers) into frozen tables.

One :class:`~leaderboard.view.Table` per model family and protocol (:mod:`leaderboard.rows`),
across suites: rows are (model, variant, target) with seeds aggregated (mean ± sample std, n;
per-seed values in the tooltip), never averaged across variants. Recovery % compares a row's mean
with the dense model's mean on the same metric. A cell is marked best only when its lead over the
runner-up is significant (:mod:`leaderboard.stats`); a lead that cannot be tested (one seed, no
stderr) is marked ``lead`` when it shows at the displayed precision; ties, failed rows, fine-tuning
rows, trial rows and published numbers are never marked. Published numbers (:mod:`leaderboard.reported`)
sit beside the reproduced row of the same protocol, with the difference in percent.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from harness.core.metrics import in_zero_shot_average, recovery
from leaderboard.data import Run, target_label, target_order
from leaderboard.metrics import AVG_ZERO_SHOT, ZERO_SHOT_KIND, MetricInfo, metric_info
from leaderboard.reported import ReportedRow, calibration_matches, gap, matches
from leaderboard.rows import Entry, Protocol, dense_stat, entries
from leaderboard.standing import best_marks, standing
from leaderboard.stats import Stat
from leaderboard.view import (Cell, Column, Link, Row, Table, fmt_count, fmt_time, model_family, model_href,
                              num_sort, origin_badge, run_href, slug)

__all__ = ["Cell", "Column", "Row", "Table", "avg_info", "build_table", "build_tables", "model_family",
           "model_href", "run_href", "slug", "table_metrics"]


def avg_info() -> MetricInfo:
    return MetricInfo(AVG_ZERO_SHOT, AVG_ZERO_SHOT, True, "percent", "avg", True)


def table_metrics(rows: Sequence[Entry | Run]) -> tuple[list[MetricInfo], list[str]]:
    """The metrics of these rows' ok runs (non-zero-shot first, then zero-shot; each sorted) and
    the zero-shot names that feed the average (:data:`harness.core.metrics.AVERAGED_TASKS`).
    Secondary lm-eval rows (not headline) are left to the run pages."""
    runs = [r for x in rows for r in (x.ok_runs if isinstance(x, Entry) else [x] if x.ok else [])]
    names = sorted({m for r in runs for m, mv in r.metrics.items() if mv.shown})
    infos = [metric_info(n) for n in names]
    zero = [i for i in infos if i.kind == ZERO_SHOT_KIND]
    other = [i for i in infos if i.kind != ZERO_SHOT_KIND]
    return other + zero, [i.name for i in zero if in_zero_shot_average(i.name)]


# ---------------------------------------------------------------------------- cells


def stat_text(info: MetricInfo, stat: Stat) -> tuple[str, str, str]:
    """``(display, note, title)`` of a statistic: ``24.00 ± 0.31`` with ``n=3`` over seeds
    (the per-seed values in the title), or ``66.0 ± 1.0`` with the metric's own stderr."""
    if stat.n >= 2:
        spread = info.format_stderr(stat.std)
        seeds = ", ".join(f"seed {s}: {info.format(v)}" for s, v in stat.values)
        return (f"{info.format(stat.mean)} ± {spread}" if spread else info.format(stat.mean), f"n={stat.n}",
                f"mean ± sample std over {stat.n} seeds ({seeds})")
    se = info.format_stderr(stat.stderr)
    seed = stat.values[0][0]
    title = f"seed {seed}: {stat.mean!r}" + (f" ± {stat.stderr:.4g} (the metric's stderr)" if se else "")
    return (f"{info.format(stat.mean)} ± {se}" if se else info.format(stat.mean), "", title)


def _metric_cell(e: Entry, info: MetricInfo, stat: Stat | None, mark: tuple[str, str] | None) -> Cell:
    if not e.ok_runs:
        return Cell(None, "–", None, "failed run" if e.runs else "")
    if stat is None:
        why = "not evaluated" if info.name != AVG_ZERO_SHOT else "needs every zero-shot metric"
        return Cell(None, "–", None, why)
    display, note, title = stat_text(info, stat)
    css = ""
    if mark is not None:
        css, why = mark
        title += f"; {why}"
    return Cell(stat.mean, display, num_sort(stat.mean), title, css=css, note=note)


def _recovery_cell(e: Entry, metric: str, stat: Stat | None, dense: Stat | None) -> Cell:
    rec = recovery(stat.mean, dense.mean, metric) if stat is not None and dense is not None and e.ok_runs else None
    if rec is None or not math.isfinite(rec):
        why = "failed run" if not e.ok_runs else "no dense reference" if dense is None else ""
        return Cell(None, "–", None, why)
    return Cell(rec, f"{rec:.1f}", rec, f"{rec:.2f} % of the dense model's {metric} (means over seeds)")


def target_cell(target: str, dense: bool = False) -> Cell:
    order = target_order(target)
    key = order[0] * 10 + order[1] + order[2] * 1e-6 if math.isfinite(order[1]) else None
    kind = "dense" if dense else "N:M" if order[0] == 1 else "unstructured"
    return Cell(target, target_label(target), key, f"{kind} target {target}")


def model_cell(model: str, num_params: int | None) -> Cell:
    count = fmt_count(num_params)
    title = model + (f" · {num_params:,} parameters" if num_params else "")
    return Cell(model, model, model.lower(), title, model_href(model), note=count)


def _method_cell(e: Entry) -> Cell:
    run = e.runs[0]
    title = ", ".join(f"{k}={v}" for k, v in sorted(run.params.items())) or "default params"
    if run.profile:
        title += f"; sparsity profile {run.profile.get('name')} " + ", ".join(
            f"{k}={v}" for k, v in sorted(run.profile.items()) if k != "name")
    badge = origin_badge(e.origin)
    if badge:
        title += f"; third-party method from {e.origin}"
    if e.fine_tuned:
        return Cell(e.variant, f"{e.variant} · fine-tuned", e.variant,
                    f"fine-tuning after pruning, not one-shot (left out of the best marks); {title}",
                    css="finetune", badge=badge)
    return Cell(e.variant, e.variant, e.variant, title, badge=badge)


def _status_cell(e: Entry) -> Cell:
    status = e.status
    if status == "trial":
        return Cell("trial", "trial", "trial", "lm-eval ran with a limit: a trial run, not a leaderboard number",
                    css="trial")
    if status == "ok":
        return Cell("ok", "ok", "ok")
    bad = e.failed_runs[0]
    return Cell(status, status, status, bad.error or bad.status, run_href(bad.run_id), "failed")


def _sparsity_cell(e: Entry) -> Cell:
    vals = [r.sparsity_global for r in e.ok_runs if r.sparsity_global is not None]
    if not vals:
        return Cell(None, "–", None, "not measured")
    s = sum(vals) / len(vals)
    title = "measured over the pruned layers: " + ", ".join(f"{v:.6f}" for v in vals)
    broken = any(r.nm_compliant is False for r in e.ok_runs)
    if any(r.nm_compliant is not None for r in e.ok_runs):
        title += "; N:M " + ("VIOLATED" if broken else "compliant in every group")
    return Cell(s, f"{100 * s:.1f}" + (" ✗" if broken else ""), s, title)


def _runs_cell(e: Entry) -> Cell:
    links = tuple(Link(r.short_id[:6], run_href(r.run_id), f"seed {r.seed}: {r.status}") for r in e.runs)
    return Cell(e.runs[0].run_id, " ".join(x.text for x in links), e.runs[0].run_id, "run details per seed",
                css="runs", links=links)


# ---------------------------------------------------------------------------- tables


def _columns(infos: Sequence[MetricInfo], zero_shot: Sequence[str], published_only: set[str]) -> list[Column]:
    """The columns; a metric only published numbers have (nothing here measured it) gets no recovery."""
    cols = [Column("model", "model"), Column("method", "method", title="method variant"),
            Column("target", "target", "num", "", "target sparsity or N:M pattern"), Column("status", "status")]
    for info in infos:
        better = "desc" if info.higher_is_better else "asc"
        direction = "higher" if info.higher_is_better else "lower"
        default = "" if info.declared else " (default for an unknown metric)"
        zero = info.kind == ZERO_SHOT_KIND
        cols.append(Column(f"m:{info.name}", f"{info.label} {info.arrow}", "num", better,
                           f"{info.name}; {direction} is better{default}", secondary=zero and bool(zero_shot)))
        if not zero and info.name not in published_only:
            cols.append(Column(f"r:{info.name}", f"recovery ({info.label})", "num", "desc",
                               f"{info.name} as % of the dense model's (means over seeds)"))
    if zero_shot:
        cols.append(Column("avg", f"{AVG_ZERO_SHOT} % ↑", "num", "desc", "mean of: " + ", ".join(zero_shot)))
        cols.append(Column("r:avg", f"recovery ({AVG_ZERO_SHOT})", "num", "desc",
                           f"{AVG_ZERO_SHOT} as % of the dense model's"))
    cols += [Column("sparsity", "sparsity %", "num", "", "measured over the pruned layers (mean over seeds)", True),
             Column("prune_time", "prune time", "num", "asc", "mean over seeds", True),
             Column("device", "device", secondary=True), Column("suites", "suites", secondary=True),
             Column("run", "runs", title="one link per seed")]
    return cols


def _entry_row(e: Entry, columns: Sequence[Column], infos: Sequence[MetricInfo], zero_shot: Sequence[str],
               pool: Sequence[Entry], marks: dict[str, dict[tuple, tuple[str, str]]], num_params: int | None) -> Row:
    cells = {"model": model_cell(e.model, num_params), "method": _method_cell(e),
             "target": target_cell(e.target, e.is_dense), "status": _status_cell(e)}
    for info in infos:
        stat = e.stat(info.name)
        cells[f"m:{info.name}"] = _metric_cell(e, info, stat, marks[info.name].get(e.key))
        dense = dense_stat(pool, e.model, info.name, protocol=e.protocol.key)
        cells[f"r:{info.name}"] = _recovery_cell(e, info.name, stat, dense)
    if zero_shot:
        stat = e.stat(AVG_ZERO_SHOT, zero_shot)
        cells["avg"] = _metric_cell(e, avg_info(), stat, marks[AVG_ZERO_SHOT].get(e.key))
        dense = dense_stat(pool, e.model, AVG_ZERO_SHOT, zero_shot, protocol=e.protocol.key)
        cells["r:avg"] = _recovery_cell(e, AVG_ZERO_SHOT, stat, dense)
    times = [r.prune_time_s for r in e.ok_runs if r.prune_time_s is not None]
    t = sum(times) / len(times) if times else None
    walls = [r.wall_time_s for r in e.ok_runs if r.wall_time_s is not None]
    run = e.runs[0]
    cells.update(
        sparsity=_sparsity_cell(e),
        prune_time=Cell(t, fmt_time(t), t, f"wall time {fmt_time(sum(walls) / len(walls) if walls else None)}"),
        device=Cell(run.device_label, run.device_short, run.device_short.lower(), run.device_label),
        suites=Cell(" ".join(e.suites), ", ".join(e.suites), " ".join(e.suites), "suites that asked for this cell"),
        run=_runs_cell(e))
    return Row(run.run_id, e.model, e.method, e.variant, e.target, e.status, "run", e.suites,
               tuple(cells.get(c.key, Cell(None, "–", None)) for c in columns))


def _reported_row(rep: ReportedRow, columns: Sequence[Column], pool: Sequence[Entry]) -> Row:
    """A paper's number in its metric's column; the difference to the reproduction in the note."""
    g = gap(rep, pool)
    info = metric_info(rep.metric_name)
    by_key: dict[str, Cell] = {
        "model": model_cell(rep.model, None),
        "method": Cell(rep.method, rep.method, rep.method, f"{rep.citation}, {rep.table}", badge="reported"),
        "target": target_cell(rep.target, rep.method == "dense"),
        "status": Cell("reported", "reported", "reported",
                       f"{rep.citation}; {rep.table}; {rep.provenance} ({rep.source})",
                       css="reported" + ("" if rep.verified else " unverified")),
        "suites": Cell("", "", None), "run": Cell(None, "", None),
    }
    title = f"reported {rep.value:g} ({rep.citation}, {rep.table}); never ranked"
    note = ""
    if g.delta_pct is not None:
        note = f"repro {g.delta_pct:+.1f} %"
        s = g.stat
        title += f"; reproduced here {s.mean:.4g} over {s.n} seed(s): {g.delta_pct:+.2f} %"  # type: ignore[union-attr]
    elif g.others:
        o = g.others[0]
        note = "≠ protocol"
        title += f"; reproduced only under another protocol: {o.stat.mean:.4g} ({o.metric}; {o.differences})"
    else:
        title += "; not reproduced here"
    if not rep.verified:
        title += "; unverified: " + rep.provenance
    by_key[f"m:{rep.metric_name}"] = Cell(rep.value, info.format(rep.value), num_sort(rep.value), title,
                                          css="reported", note=note)
    cells = tuple(by_key.get(c.key, Cell(None, "", None)) for c in columns)
    return Row(rep.id, rep.model, rep.method.split("+")[0].split("(")[0], rep.method, rep.target, "reported",
               "reported", (), cells)


def _missing_row(rep: ReportedRow, columns: Sequence[Column]) -> Row:
    """The empty reproduced slot beside a published number nobody has run here yet."""
    by_key = {"model": model_cell(rep.model, None), "method": Cell(rep.method, rep.method, rep.method),
              "target": target_cell(rep.target, rep.method == "dense"),
              "status": Cell("not run", "not run", "not run",
                             f"no run of this cell under {rep.protocol_label}: run a suite with this model, "
                             f"method, target and protocol", css="missing")}
    cells = tuple(by_key.get(c.key, Cell(None, "–" if c.kind == "num" else "", None)) for c in columns)
    return Row(f"missing:{rep.source}", rep.model, rep.method.split("+")[0].split("(")[0], rep.method, rep.target,
               "not run", "missing", (), cells)


def build_table(rows: Sequence[Entry] | Sequence[Run], *, family: str, table_id: str,
                protocol: Protocol | None = None, pool: Sequence[Entry] | None = None,
                reported: Sequence[ReportedRow] = (), suite: str | None = None) -> Table:
    """One ranking: the entries of one family and protocol, and the published numbers beside them.

    Args:
        rows: The entries, or runs to group into entries (any order; they are sorted).
        protocol: Their protocol (default: the first entry's).
        pool: Where to look for dense references and reproductions (default: ``rows``).
        reported: Published numbers of this family and protocol.
        suite: A title to use instead of family · protocol.
    """
    if rows and isinstance(rows[0], Run):
        rows = entries(rows)  # type: ignore[arg-type]
    rows = list(rows)  # type: ignore[assignment]
    if protocol is None and rows:
        protocol = rows[0].protocol
    pool = list(pool if pool is not None else rows)
    infos, zero_shot = table_metrics(rows)
    shown = {i.name for i in infos}
    extra = [metric_info(m) for m in sorted({r.metric_name for r in reported}) if m not in shown]
    marks = best_marks(rows, infos, zero_shot)
    cols = _columns(infos + extra, zero_shot, {i.name for i in extra})
    params = {r.model: r.num_params for e in pool for r in e.runs if r.num_params}
    by_key: dict[tuple, list] = {}
    for e in rows:
        by_key.setdefault((e.model, e.target, not e.is_dense, e.variant), []).append(e)
    placed: dict[tuple, list[ReportedRow]] = {}
    for rep in reported:
        home = next((k for k, es in by_key.items() if any(matches(rep, e) for e in es)), None)
        key = home or (rep.model, rep.target, rep.method != "dense", rep.method)
        placed.setdefault(key, []).append(rep)
    out: list[Row] = []
    for key in sorted(set(by_key) | set(placed), key=lambda k: (k[0], target_order(k[1]), k[2], k[3])):
        for e in by_key.get(key, []):
            out.append(_entry_row(e, cols, infos, zero_shot, pool, marks, params.get(e.model)))
        reps = placed.get(key, [])
        if reps and key not in by_key:
            out.append(_missing_row(reps[0], cols))
        out += [_reported_row(rep, cols, pool) for rep in reps]
    label = protocol.label if protocol is not None else (reported[0].protocol_label if reported else "")
    title = suite or (f"{family} · {label}" if family else label)
    return Table(table_id, title, family, label, tuple(cols),
                 tuple(out), tuple(sorted({r.method for r in out})), standing(rows, infos, zero_shot, pool, marks),
                 runs=sum(len(e.runs) for e in rows), key=protocol.key if protocol is not None else "")


def build_tables(runs: Sequence[Run], reported: Sequence[ReportedRow] = ()) -> list[Table]:
    """The index: one table per (model family, protocol), across suites; tables of runs first (by
    family, then protocol), then tables of published numbers that nothing here reproduces yet."""
    pool = entries(runs)
    groups: dict[tuple[str, str], list[Entry]] = {}
    protocols: dict[str, Protocol] = {}
    for e in pool:
        groups.setdefault((model_family(e.model), e.protocol.key), []).append(e)
        protocols[e.protocol.key] = e.protocol
    homes: dict[tuple[str, str], list[ReportedRow]] = {}
    for rep in reported:
        fam = model_family(rep.model)
        key = next((k for k in sorted(groups) if k[0] == fam and calibration_matches(
            rep, protocols[k[1]].calibration) and _metric_fits(rep, groups[k])), None)
        homes.setdefault(key or (fam, "reported:" + rep.protocol_label), []).append(rep)
    tables = []
    for (fam, pkey) in sorted(set(groups) | set(homes), key=lambda k: (k not in groups, k)):
        protocol = protocols.get(pkey)
        tables.append(build_table(groups.get((fam, pkey), []), family=fam, protocol=protocol,
                                  table_id=f"t-{slug(fam + pkey)}", pool=pool, reported=homes.get((fam, pkey), ())))
    return tables


def _metric_fits(rep: ReportedRow, group: Sequence[Entry]) -> bool:
    """A table takes a published number when its runs measured that metric, or nothing like it."""
    names = {m for e in group for r in e.ok_runs for m in r.metrics}
    task = rep.metric_name.split("@")[0]
    return rep.metric_name in names or not any(n.split("@")[0] == task for n in names)

