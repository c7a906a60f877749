"""``harness compare``: one method against baselines, cell by cell, direction-aware.

A compared cell is (suite, model, target, metric, baseline). Both sides average their ok
runs of that cell over seeds; failed runs are left out. The verdict rule is
:data:`WORSE_RULE`, shown verbatim in ``harness compare --help``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from harness.core.registry import did_you_mean
from harness.core.visible import visible
from leaderboard.build import variant_labels
from leaderboard.data import Run, target_order
from leaderboard.metrics import better, metric_info

DEFAULT_BASELINES = ("magnitude", "wanda", "sparsegpt")
SIGMAS = 2.0  # |Δ| > SIGMAS·sqrt(se1² + se2²) is marked significant

WORSE_RULE = (
    "The method is worse on a cell (suite, model, target, metric, baseline) when its value is "
    "worse than the baseline's in the metric's direction (higher perplexity, lower accuracy; a "
    "NaN from a diverged run is worse than any number) and, where both stderrs are known, by "
    f"more than {SIGMAS:g}·sqrt(se1² + se2²); without stderrs any worse value counts. Values "
    "are means over the seeds of ok runs; failed runs are not compared. --fail-if-worse exits "
    "1 when the method is worse on any compared cell, else 0."
)


class CompareError(ValueError):
    """Nothing to compare: an unknown method or baseline, or no common cells."""


@dataclass(frozen=True)
class Side:
    value: float
    stderr: float | None  # of the mean over seeds; None unless every run has one
    runs: int


@dataclass(frozen=True)
class Delta:
    """The method versus one baseline on one cell."""

    suite: str
    model: str
    target: str
    metric: str
    baseline: str
    method: Side
    base: Side
    variant: str = ""  # the method's params that differ between its variants, when it has several
    base_variant: str = ""  # the same for the baseline

    @property
    def baseline_label(self) -> str:
        """The baseline's name, with its variant's params in parentheses when it has several."""
        return f"{self.baseline} ({self.base_variant})" if self.base_variant else self.baseline

    @property
    def delta(self) -> float:
        """method − baseline, in the metric's units (NaN if either side diverged)."""
        return self.method.value - self.base.value

    @property
    def relative(self) -> float | None:
        """Δ as a fraction of the baseline's value."""
        b = self.base.value
        return None if b == 0 or not math.isfinite(b) else self.delta / abs(b)

    @property
    def combined_stderr(self) -> float | None:
        if self.method.stderr is None or self.base.stderr is None:
            return None
        return math.hypot(self.method.stderr, self.base.stderr)

    @property
    def significant(self) -> bool | None:
        """|Δ| > 2·sqrt(se1² + se2²); None when a stderr is unknown."""
        se = self.combined_stderr
        if se is None:
            return None
        d = self.delta
        return True if math.isnan(d) else abs(d) > SIGMAS * se

    @property
    def verdict(self) -> str:
        """``"better"``, ``"worse"`` or ``"tie"``, by direction only (significance aside)."""
        higher = metric_info(self.metric).higher_is_better
        if better(self.method.value, self.base.value, higher):
            return "better"
        if better(self.base.value, self.method.value, higher):
            return "worse"
        return "tie"

    @property
    def worse(self) -> bool:
        """The :data:`WORSE_RULE`: worse in direction, and significantly when it can tell."""
        return self.verdict == "worse" and self.significant is not False


@dataclass(frozen=True)
class Comparison:
    method: str
    baselines: tuple[str, ...]
    deltas: tuple[Delta, ...]
    failed_runs: int  # failed runs of the method or the baselines, not compared

    @property
    def worse(self) -> tuple[Delta, ...]:
        return tuple(d for d in self.deltas if d.worse)


def _side(runs: list[Run], metric: str) -> Side | None:
    vals = [r.metrics[metric] for r in runs if metric in r.metrics]
    vals = [m for m in vals if m.value is not None]
    if not vals:
        return None
    mean = sum(m.value for m in vals) / len(vals)
    if all(m.stderr is not None for m in vals):
        se = math.sqrt(sum(m.stderr ** 2 for m in vals)) / len(vals)  # of a mean of independents
    else:
        se = None
    return Side(mean, se, len(vals))


def _unknown(kind: str, name: str, present: Sequence[str]) -> CompareError:
    hint = did_you_mean(name, list(present))
    return CompareError(f"Unknown {kind} '{name}' in the results.{hint} "
                        f"Available: {', '.join(present) or 'none'}.")


def compare(runs: Sequence[Run], method: str, baselines: Sequence[str] = (),
            suite: str | None = None) -> Comparison:
    """Compare ``method`` with each baseline on every cell both have ok runs for.

    Args:
        runs: Stored runs (:func:`leaderboard.data.load_runs`).
        method: The method under test.
        baselines: Baseline methods; default: those of :data:`DEFAULT_BASELINES` present, or
            else every other non-dense method present.
        suite: Only this suite.

    Raises:
        CompareError: the method, a baseline or the suite is not in the results, or no cell
            has ok runs of both the method and a baseline.
    """
    if suite is not None:
        suites = sorted({r.suite for r in runs})
        if suite not in suites:
            raise _unknown("suite", suite, suites)
        runs = [r for r in runs if r.suite == suite]
    present = sorted({r.method for r in runs})
    if method not in present:
        raise _unknown("method", method, present)
    for b in baselines:
        if b not in present:
            raise _unknown("baseline", b, present)
    if not baselines:
        baselines = [b for b in DEFAULT_BASELINES if b in present and b != method] or \
                    [b for b in present if b not in (method, "dense")]
    baselines = tuple(b for b in dict.fromkeys(baselines) if b != method)
    if not baselines:
        raise CompareError(f"no baseline to compare '{method}' with: the results hold only "
                           f"{', '.join(present)}. Name one with --baseline.")
    # a cell's runs are averaged over seeds, never over variants (the same method, other params)
    variants: dict[str, str] = {}
    for name in {r.suite for r in runs}:  # the params that differ within each suite
        variants.update(variant_labels([r for r in runs if r.suite == name and r.method in (method, *baselines)]))
    cells: dict[tuple[str, str, str, str], dict[str, list[Run]]] = {}
    failed = 0
    for r in runs:
        if r.method in (method, *baselines):
            if not r.ok:
                failed += 1
                continue
            cells.setdefault((r.suite, r.model, r.target, r.method), {}).setdefault(
                variants.get(r.run_id, ""), []).append(r)
    deltas = []
    for (s, model, target, m), by_variant in cells.items():
        if m != method:
            continue
        for variant, mine in sorted(by_variant.items()):
            metrics = sorted({k for r in mine for k, mv in r.metrics.items() if mv.shown})
            for b in baselines:
                for b_variant, theirs in sorted(cells.get((s, model, target, b), {}).items()):
                    for metric in metrics:
                        a, c = _side(mine, metric), _side(theirs, metric)
                        if a is not None and c is not None:
                            deltas.append(Delta(s, model, target, metric, b, a, c, variant, b_variant))
    if not deltas:
        raise CompareError(f"'{method}' and {', '.join(baselines)} share no cell (suite, model, "
                           "target, metric) with ok runs of both: nothing to compare.")
    deltas.sort(key=lambda d: (d.suite, d.model, target_order(d.target), d.variant, d.metric,
                               baselines.index(d.baseline), d.base_variant))
    return Comparison(method, baselines, tuple(deltas), failed)


def compare_table(result: Comparison):
    """A rich Table of the deltas. Cells are ``Text``, so names are never read as markup, and their
    control characters are written as escapes."""
    from rich.table import Table
    from rich.text import Text

    def _text(value: str, style: str = "") -> Text:
        return Text(visible(value), style=style)

    suites = len({d.suite for d in result.deltas}) > 1
    t = Table(title=_text(f"{result.method} vs {', '.join(result.baselines)}"), header_style="bold",
              caption=_text(f"Δ = {result.method} − baseline; * |Δ| > {SIGMAS:g}·sqrt(se1²+se2²); "
                            "↓ lower is better, ↑ higher is better"
                            + (f"; failed runs not compared: {result.failed_runs}"
                               if result.failed_runs else "")))
    numeric = (result.method, "baseline value", "Δ", "Δ %")
    variants = any(d.variant for d in result.deltas)
    cols = (["suite"] if suites else []) + ["model", "target"] + ([f"{result.method} variant"] if variants else []) + [
        "metric", "baseline", *numeric, "", "verdict"]
    for c in cols:
        t.add_column(_text(c), justify="right" if c in numeric else "left",
                     no_wrap=c != "model")
    styles = {"better": "green", "worse": "red", "tie": ""}

    def side(info, s: Side) -> Text:
        se = info.format_stderr(s.stderr)
        return _text(info.format(s.value) + (f" ± {se}" if se else ""))

    for d in result.deltas:
        info = metric_info(d.metric)

        rel = d.relative
        if info.fmt == "percent" and max(abs(d.method.value), abs(d.base.value)) <= 1:
            shown = f"{100 * d.delta:+.1f} pp"  # the values show as %: Δ in points
        elif info.fmt == "fixed2":
            shown = f"{d.delta:+.2f}"
        else:
            shown = f"{d.delta:+.4g}"
        verdict = d.verdict if d.worse or d.verdict != "worse" else "worse (n.s.)"
        row = ([_text(d.suite)] if suites else []) + [_text(d.model), _text(d.target)] + (
            [_text(d.variant)] if variants else []) + [_text(f"{info.label} {info.arrow}"), _text(d.baseline_label),
            side(info, d.method), side(info, d.base), _text(shown),
            _text("–" if rel is None else f"{100 * rel:+.1f}%"),
            _text("*" if d.significant else ""), _text(verdict, style=styles[d.verdict]),
        ]
        t.add_row(*row)
    return t
