"""How the leaderboard and ``compare`` show metrics: column labels, arrows, number formats.

The declarations (measures, directions, formats) live in :mod:`harness.core.metrics`; this
module only presents them. A name with an unknown measure still gets a sensible default: its
direction from :func:`harness.core.metrics.higher_is_better` (the same function that
:func:`harness.core.metrics.recovery` uses, so a column's arrow and its recovery % never
disagree) and a 4-significant-digit format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from harness.core.metrics import (  # re-exported: the leaderboard's names for the declarations
    AVG_ZERO_SHOT,
    MEASURES,
    ZERO_SHOT_KIND,
    Measure,
    declared_measure,
    higher_is_better,
    parse_metric,
)

__all__ = [
    "AVG_ZERO_SHOT", "MEASURES", "ZERO_SHOT_KIND", "Measure", "MetricInfo", "as_percent", "better",
    "format_value", "metric_info",
]


@dataclass(frozen=True)
class MetricInfo:
    """Everything the leaderboard needs to show one metric column."""

    name: str  # as stored, e.g. "wikitext2/ppl@2048"
    label: str  # header, e.g. "wikitext2 ppl@2048"
    higher_is_better: bool
    fmt: str
    kind: str
    declared: bool  # False when the measure is unknown and defaults were used

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    def format(self, value: float | None) -> str:
        """Display text of a value; ``"–"`` when missing, ``"nan"``/``"inf"`` when diverged."""
        return format_value(value, self.fmt)

    def format_stderr(self, stderr: float | None) -> str:
        return "" if stderr is None or not math.isfinite(stderr) else format_value(stderr, self.fmt)


def metric_info(name: str) -> MetricInfo:
    """Look up how a metric is shown; unknown measures get defaults derived from the name."""
    parts = parse_metric(name)
    m = declared_measure(name)
    if m is None:
        return MetricInfo(name, name, higher_is_better(name), "general", "other", declared=False)
    label = f"{parts.task} {m.label}" + (f" @{parts.seqlen}" if parts.seqlen else "") + \
        (f" ({parts.lm_filter})" if parts.lm_filter else "")
    return MetricInfo(name, label, m.higher_is_better, m.fmt, m.kind, declared=True)


def format_value(value: float | None, fmt: str) -> str:
    """Format a number for display (see :class:`Measure` for the formats)."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)  # "nan", "inf": a diverged model, shown as such
    if fmt == "fixed2":
        return f"{value:.2f}"
    if fmt == "percent":
        return f"{as_percent(value):.1f}"
    return f"{value:.4g}"


def as_percent(value: float) -> float:
    """Accuracies are stored as fractions by lm-eval; a value above 1 is taken as already x100."""
    return value * 100.0 if abs(value) <= 1.0 else value


def better(a: float, b: float, higher_is_better: bool) -> bool:
    """Is ``a`` strictly better than ``b``? NaN (a diverged run) is worse than any number."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if higher_is_better else a < b
