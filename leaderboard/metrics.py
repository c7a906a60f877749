"""Metric names, directions and formats, declared once for the leaderboard and ``compare``.

A metric name is ``<task or dataset>/<measure>``, optionally with ``@<eval seqlen>``:
``wikitext2/ppl@2048``, ``arc_easy/acc``, ``imagenet/top1``. Known measures are declared in
:data:`MEASURES`; a name with an unknown measure still gets a sensible default: its direction
from :func:`harness.cli.report.lower_is_better` (the same function that :func:`harness.cli.report.recovery`
uses, so a column's arrow and its recovery % never disagree) and a 4-significant-digit format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Rows in a table with accuracy metrics get an "avg zero-shot" column: the mean of these.
ZERO_SHOT_KIND = "zero-shot"
AVG_ZERO_SHOT = "avg zero-shot"


@dataclass(frozen=True)
class Measure:
    """How one kind of measure is shown.

    Attributes:
        label: Column header suffix, e.g. ``"ppl"``.
        higher_is_better: Direction; must agree with ``lower_is_better`` (tested).
        fmt: ``"fixed2"`` (12.34), ``"percent"`` (fractions shown x100, 81.0) or ``"general"``.
        kind: ``"zero-shot"`` for lm-eval accuracies (averaged), else the measure's own name.
    """

    label: str
    higher_is_better: bool
    fmt: str
    kind: str


# measure (the part after the slash, before any "@") -> how it is shown.
MEASURES: dict[str, Measure] = {
    "ppl": Measure("ppl", False, "fixed2", "ppl"),
    "word_perplexity": Measure("word ppl", False, "fixed2", "ppl"),
    "byte_perplexity": Measure("byte ppl", False, "general", "ppl"),
    "bits_per_byte": Measure("bits/byte", False, "general", "bpb"),
    "acc": Measure("acc %", True, "percent", ZERO_SHOT_KIND),
    "acc_norm": Measure("acc_norm %", True, "percent", ZERO_SHOT_KIND),
    "exact_match": Measure("exact match %", True, "percent", "exact_match"),
    "top1": Measure("top-1 %", True, "percent", "top1"),
    "top5": Measure("top-5 %", True, "percent", "top5"),
    "agree_top1": Measure("agreement with dense %", True, "percent", "agreement"),
    "kl_dense": Measure("KL from dense", False, "general", "kl"),
}


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
    task, _, rest = name.partition("/")
    rest, _, lm_filter = rest.partition(":")  # lm-eval filters other than "none"
    measure, _, seqlen = rest.partition("@")
    m = MEASURES.get(measure) if rest else None
    if m is None:
        from harness.cli.report import lower_is_better  # rich and the runner: only when needed

        higher = not lower_is_better(name)
        return MetricInfo(name, name, higher, "general", "other", declared=False)
    label = f"{task} {m.label}" + (f" @{seqlen}" if seqlen else "") + \
        (f" ({lm_filter})" if lm_filter else "")
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
