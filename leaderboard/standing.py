"""Best marks and a method's overall standing in one table.

Best marks (per metric, per model and target): the leader among the rows that may be ranked
(one-shot, every seed ok, no lm-eval limit, not dense, not a published number) is marked

- ``best`` when its lead over the runner-up is significant (:func:`leaderboard.stats.significance`:
  Welch's t over seeds, or the metrics' stderrs);
- ``lead`` when the lead cannot be tested (one seed of a metric without stderr, e.g. perplexity)
  but shows at the displayed precision;
- not at all when the runner-up ties it, or the lead is not significant.

Standing (per table): each variant's mean rank over the (model, target) cells of the table's first
metric (1 = best; a failed cell ranks last; ties share the mean of their ranks), and its mean
recovery % over the cells where it ran: one number for a method's overall standing.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from harness.core.metrics import recovery
from leaderboard.metrics import AVG_ZERO_SHOT, ZERO_SHOT_KIND, MetricInfo
from leaderboard.rows import Entry, dense_stat
from leaderboard.stats import significance
from leaderboard.view import Standing, StandingRow

Mark = tuple[str, str]  # (css class, why: for the tooltip)


def rankable(e: Entry) -> bool:
    return not e.is_dense and not e.fine_tuned and e.ok and e.publishable


def _score(mean: float, higher: bool) -> float:
    """Bigger is better; NaN (diverged) is the worst."""
    if math.isnan(mean):
        return -math.inf
    return mean if higher else -mean


def best_marks(rows: Sequence[Entry], infos: Sequence[MetricInfo],
               zero_shot: Sequence[str] = ()) -> dict[str, dict[tuple, Mark]]:
    """``metric -> entry key -> (css, why)`` for the marked cells (see the module doc)."""
    names = [(i, i.name) for i in infos] + ([(None, AVG_ZERO_SHOT)] if zero_shot else [])
    out: dict[str, dict[tuple, Mark]] = {}
    for info, name in names:
        higher = True if info is None else info.higher_is_better
        fmt = (lambda v: f"{100 * v:.1f}") if info is None else info.format
        groups: dict[tuple[str, str], list] = {}
        for e in rows:
            if not rankable(e):
                continue
            s = e.stat(name, zero_shot)
            if s is not None and not math.isinf(s.mean):
                groups.setdefault((e.model, e.target), []).append((_score(s.mean, higher), e, s))
        marks: dict[tuple, Mark] = {}
        for scored in groups.values():
            if len(scored) < 2:
                continue
            scored.sort(key=lambda x: (-x[0], x[1].variant))
            (top, leader, a), (second, runner, b) = scored[0], scored[1]
            if top == second or math.isnan(a.mean):
                continue  # a tie at the top is marked for nobody
            test = significance(a, b)
            if test.significant:
                marks[leader.key] = ("best", f"best at this target: ahead of {runner.variant} ({test.describe()})")
            elif test.significant is None and fmt(a.mean) != fmt(b.mean):
                marks[leader.key] = ("lead", f"leads {runner.variant}, not tested: {test.describe()}")
        out[name] = marks
    return out


def _ranks(scores: list[float]) -> list[float]:
    """1-based ranks, best (largest) first; ties share the mean of their ranks."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def standing(rows: Sequence[Entry], infos: Sequence[MetricInfo], zero_shot: Sequence[str],
             pool: Sequence[Entry], marks: dict[str, dict[tuple, Mark]]) -> Standing | None:
    """The variants' standing over the table's cells; None with fewer than two variants."""
    ranked = [e for e in rows if not e.is_dense and not e.fine_tuned]
    if len({e.variant for e in ranked}) < 2:
        return None
    first = next((i for i in infos if i.kind != ZERO_SHOT_KIND), None)
    metric = first.name if first else (AVG_ZERO_SHOT if zero_shot else None)
    if metric is None:
        return None
    higher = first.higher_is_better if first else True
    recs = [i.name for i in infos if i.kind != ZERO_SHOT_KIND] + ([AVG_ZERO_SHOT] if zero_shot else [])
    cells: dict[tuple[str, str], list[Entry]] = {}
    for e in ranked:
        cells.setdefault((e.model, e.target), []).append(e)
    rank_of: dict[str, list[float]] = {}
    for group in cells.values():
        scores = []
        for e in group:
            s = e.stat(metric, zero_shot) if e.ok else None
            scores.append(-math.inf if s is None else _score(s.mean, higher))
        for e, r in zip(group, _ranks(scores)):
            rank_of.setdefault(e.variant, []).append(r)
    out = []
    for variant in sorted(rank_of):
        mine = [e for e in ranked if e.variant == variant]
        means = []
        for name in recs:
            vals = []
            for e in mine:
                s, d = e.stat(name, zero_shot), dense_stat(pool, e.model, name, zero_shot, e.protocol.key)
                rec = recovery(s.mean, d.mean, name) if s is not None and d is not None and e.ok else None
                if rec is not None and math.isfinite(rec):
                    vals.append(rec)
            means.append(sum(vals) / len(vals) if vals else None)
        ranks = rank_of[variant]
        wins = sum(marks.get(metric, {}).get(e.key, ("",))[0] == "best" for e in mine)
        out.append(StandingRow(variant, len(mine), sum(not e.ok for e in mine), sum(ranks) / len(ranks),
                               tuple(means), wins))
    out.sort(key=lambda r: (r.mean_rank if r.mean_rank is not None else math.inf, r.variant))
    label = first.label if first else AVG_ZERO_SHOT
    return Standing(label, tuple(AVG_ZERO_SHOT if n == AVG_ZERO_SHOT else n for n in recs), tuple(out), len(cells))
