"""Metric declarations: a metric's name, direction and display format, declared once.

A metric name is ``<task or dataset>/<measure>``, optionally with ``@<eval seqlen>`` and, for
lm-eval filters other than ``none``, ``:<filter>``: ``wikitext2/ppl@2048``, ``arc_easy/acc``,
``imagenet/top1``, ``gsm8k/exact_match:strict-match``.

Direction has one source: :func:`higher_is_better`. A declared measure (:data:`MEASURES`)
carries its own; any other name falls back to :data:`LOWER_IS_BETTER_PATTERNS`. The CLI's
summary, the leaderboard's arrows and sort orders and every recovery % (:func:`recovery`)
read it, so a column's arrow and its recovery % never disagree.

Pure declarations: nothing here imports anything beyond the standard library.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# Rows in a table with accuracy metrics get an "avg zero-shot" column: the mean of the headline
# accuracies of the tasks in AVERAGED_TASKS (see in_zero_shot_average). Every other accuracy
# keeps its own column but stays out of the mean.
ZERO_SHOT_KIND = "zero-shot"
AVG_ZERO_SHOT = "avg zero-shot"

# The Wanda paper's seven zero-shot tasks, whose mean accuracy is the published average.
WANDA_ZERO_SHOT_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
# The offline tasks (harness/evaluate/lm_tasks) that pass the discrimination rule of README
# "Zero-shot evaluation (lm-eval)" on both zoo LMs and three item draws: stderr <= 2 points,
# dense >= chance + 20 points and <= 95 %, magnitude 70 % >= 3 stderr below dense, a
# random-pruning control at 50 % within 2 stderr of chance or >= 5 below dense, no rise from
# dense to magnitude 50 % to 70 %. Measured by benchmarks/zero_shot_tasks.py, which fails when
# its verdict and this list disagree; tiny_suite runs exactly these (and tiny_wiki; a test
# checks). tiny_corrupt and tiny_swap are shipped but fail the rule, so they are not here.
AVERAGED_OFFLINE_TASKS = ("tiny_context",)
AVERAGED_TASKS = WANDA_ZERO_SHOT_TASKS + AVERAGED_OFFLINE_TASKS


@dataclass(frozen=True)
class Measure:
    """How one kind of measure is judged and shown.

    Attributes:
        label: Column header suffix, e.g. ``"ppl"``.
        higher_is_better: Direction.
        fmt: ``"fixed2"`` (12.34), ``"percent"`` (fractions shown x100, 81.0) or ``"general"``.
        kind: ``"zero-shot"`` for lm-eval accuracies (averaged), else the measure's own name.
    """

    label: str
    higher_is_better: bool
    fmt: str
    kind: str


# measure (the part after the slash, before any "@" or ":") -> how it is judged and shown.
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

# Names whose measure is not declared (synthetic final_dist, steps_to_tol, a loss, ...): lower
# is better when the last path segment contains one of these, or the name contains "/ppl";
# otherwise higher is better.
LOWER_IS_BETTER_PATTERNS = ("perplexity", "bits_per_byte", "loss", "error", "dist", "steps_to_tol", "kl_")


class MetricName(NamedTuple):
    """A metric name taken apart: ``task/measure@seqlen:lm_filter`` (missing parts are "")."""

    task: str
    measure: str
    seqlen: str
    lm_filter: str


def parse_metric(name: str) -> MetricName:
    """Split a metric name; ``measure`` is "" when the name has no slash."""
    task, _, rest = name.partition("/")
    rest, _, lm_filter = rest.partition(":")  # lm-eval filters other than "none"
    measure, _, seqlen = rest.partition("@")
    return MetricName(task, measure, seqlen, lm_filter)


def declared_measure(name: str) -> Measure | None:
    """The declaration of a metric's measure, or None when it is not in :data:`MEASURES`."""
    measure = parse_metric(name).measure
    return MEASURES.get(measure) if measure else None


def higher_is_better(metric: str) -> bool:
    """The direction of a metric: its declared measure's, else by :data:`LOWER_IS_BETTER_PATTERNS`."""
    m = declared_measure(metric)
    if m is not None:
        return m.higher_is_better
    last = metric.rsplit("/", 1)[-1]
    return not ("/ppl" in metric or any(k in last for k in LOWER_IS_BETTER_PATTERNS))


def lower_is_better(metric: str) -> bool:
    """Perplexities, losses, errors and distances are better when smaller; the rest when larger."""
    return not higher_is_better(metric)


def recovery(value: float | None, dense: float | None, metric: str) -> float | None:
    """Percent of the dense model's quality kept: 100 = as good as dense (ppl: dense/value)."""
    if value is None or dense is None:
        return None
    if lower_is_better(metric):
        return None if value == 0 else 100.0 * (dense / value)
    return None if dense == 0 else 100.0 * (value / dense)  # an accuracy of 0 keeps 0 %


def in_zero_shot_average(metric: str) -> bool:
    """Does ``metric`` feed :data:`AVG_ZERO_SHOT`? True for an accuracy (a zero-shot measure) of
    a task in :data:`AVERAGED_TASKS` with lm-eval's default filter; the caller passes only the
    headline rows, so a task counts once (``acc`` or its override, e.g. ``acc_norm``)."""
    m = declared_measure(metric)
    parts = parse_metric(metric)
    return m is not None and m.kind == ZERO_SHOT_KIND and parts.task in AVERAGED_TASKS and not parts.lm_filter
