"""``harness compare``: one method against baselines, cell by cell, direction-aware.

A compared cell is (protocol, model, target, metric): the rows of :mod:`leaderboard.rows`, across
suites, one per method *variant* (never averaged across variants; seeds aggregated). The test of
a difference is :func:`leaderboard.stats.significance`; the verdict rule is :data:`WORSE_RULE`,
shown verbatim in ``harness compare --help``. ``--reported`` prints the published numbers beside
this store's reproductions instead (:mod:`leaderboard.reported`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from harness.core.registry import did_you_mean
from harness.core.visible import visible
from leaderboard.data import Run, target_label, target_order
from leaderboard.metrics import better, metric_info
from leaderboard.rows import Entry, entries, normalize_variant
from leaderboard.stats import ALPHA, SIGMAS, Significance, Stat, significance

DEFAULT_BASELINES = ("magnitude", "wanda", "sparsegpt")

WORSE_RULE = (
    "Cells are (protocol, model, target, metric) rows across suites, one per method variant; seeds "
    "are aggregated (mean ± sample std), variants never. A difference is tested with Welch's t over "
    f"seeds when both sides have >= 2 seeds that vary (significant at p < {ALPHA:g}), else with the metrics' own "
    f"stderrs (|Δ| > {SIGMAS:g}·sqrt(se1² + se2²)), else it is untested; each verdict says which. "
    "Wins and losses are labelled alike: better / worse when significant, '(n.s.)' when not, "
    "'(untested)' when no uncertainty is known. The method is worse on a cell when it is worse in the "
    "metric's direction (higher perplexity, lower accuracy; a diverged NaN is worse than any number) "
    "and the difference is significant or untested, or when any of its runs of the cell failed where "
    "the baseline's ran. --fail-if-worse exits 1 when the method is worse on any compared cell, else 0."
)


class CompareError(ValueError):
    """Nothing to compare: an unknown method or baseline, or no common cells."""


@dataclass(frozen=True)
class Delta:
    """The method versus one baseline on one cell (``metric`` "" for a failed cell)."""

    protocol: str  # the protocol's label
    model: str
    target: str
    metric: str
    variant: str  # the method's variant
    baseline: str  # the baseline's variant
    method: Stat | None  # None: the method's cell failed
    base: Stat | None
    failed: str = ""  # the method's status on a failed cell ("failed", "1 of 2 failed", "error")

    @property
    def delta(self) -> float:
        """method − baseline, in the metric's units (NaN if either side diverged or is missing)."""
        if self.method is None or self.base is None:
            return math.nan
        return self.method.mean - self.base.mean

    @property
    def relative(self) -> float | None:
        """Δ as a fraction of the baseline's value."""
        b = None if self.base is None else self.base.mean
        return None if b is None or b == 0 or not math.isfinite(b) or self.method is None else self.delta / abs(b)

    @property
    def test(self) -> Significance:
        if self.method is None or self.base is None:
            return Significance("none")
        return significance(self.method, self.base)

    @property
    def significant(self) -> bool | None:
        return self.test.significant

    @property
    def verdict(self) -> str:
        """``"better"``, ``"worse"``, ``"tie"`` by direction, or ``"failed"`` (the method's runs)."""
        if self.failed or self.method is None or self.base is None:
            return "failed"
        higher = metric_info(self.metric).higher_is_better
        if better(self.method.mean, self.base.mean, higher):
            return "better"
        if better(self.base.mean, self.method.mean, higher):
            return "worse"
        return "tie"

    @property
    def label(self) -> str:
        """The verdict with its significance, alike for wins and losses."""
        v = self.verdict
        if v == "failed":
            return f"{self.failed or 'failed'} (baseline ok)"
        if v == "tie":
            return "tie"
        sig = self.significant
        return v if sig else f"{v} (n.s.)" if sig is False else f"{v} (untested)"

    @property
    def worse(self) -> bool:
        """The :data:`WORSE_RULE`."""
        return self.verdict == "failed" or (self.verdict == "worse" and self.significant is not False)


@dataclass(frozen=True)
class Comparison:
    method: str
    baselines: tuple[str, ...]
    deltas: tuple[Delta, ...]
    failed_runs: int  # failed runs of the baselines, not compared

    @property
    def worse(self) -> tuple[Delta, ...]:
        return tuple(d for d in self.deltas if d.worse)


def _unknown(kind: str, name: str, present: Sequence[str]) -> CompareError:
    hint = did_you_mean(name, list(present))
    return CompareError(f"Unknown {kind} '{name}' in the results.{hint} Available: {', '.join(present) or 'none'}.")


def select(pool: Sequence[Entry], name: str, kind: str) -> list[Entry]:
    """The rows of ``name``: a method (every variant of it) or one variant."""
    rows = [e for e in pool if e.method == name] or \
        [e for e in pool if normalize_variant(e.variant) == normalize_variant(name)]
    if not rows:
        raise _unknown(kind, name, sorted({e.method for e in pool} | {e.variant for e in pool}))
    return rows


def compare(runs: Sequence[Run], method: str, baselines: Sequence[str] = (), suite: str | None = None) -> Comparison:
    """Compare ``method`` (a method or a variant) with each baseline on every common cell.

    Args:
        runs: Stored runs (:func:`leaderboard.data.load_runs`).
        method: The method under test: every variant of it, each compared on its own.
        baselines: Baseline methods or variants; default: those of :data:`DEFAULT_BASELINES` present, or
            else every other non-dense method present.
        suite: Only the cells this suite asked for.

    Raises:
        CompareError: the method, a baseline or the suite is not in the results, or no cell has
            the method and an ok baseline.
    """
    if suite is not None:
        suites = sorted({s for r in runs for s in r.all_suites})
        if suite not in suites:
            raise _unknown("suite", suite, suites)
        runs = [r for r in runs if suite in r.all_suites]
    pool = entries(runs)
    mine = select(pool, method, "method")
    present = sorted({e.method for e in pool})
    if not baselines:
        baselines = [b for b in DEFAULT_BASELINES if b in present and b != method] or \
                    [b for b in present if b not in (method, "dense")]
    baselines = tuple(b for b in dict.fromkeys(baselines) if b != method)
    theirs: list[Entry] = []
    taken = {id(e) for e in mine}
    for b in baselines:
        for e in select(pool, b, "baseline"):
            if id(e) not in taken:
                taken.add(id(e))
                theirs.append(e)
    if not theirs:
        raise CompareError(f"no baseline to compare '{method}' with: the results hold only "
                           f"{', '.join(present)}. Name one with --baseline.")
    deltas = []
    for m in mine:
        for b in theirs:
            if (b.protocol.key, b.model, b.target) != (m.protocol.key, m.model, m.target) or not b.ok_runs:
                continue
            if m.failed_runs:  # a cell that failed (for any seed) where the baseline ran is a loss
                deltas.append(Delta(m.protocol.label, m.model, m.target, "", m.variant, b.variant, None,
                                    None, m.status))
            names = sorted({k for r in m.ok_runs for k, mv in r.metrics.items() if mv.shown})
            for metric in names:
                a, c = m.stat(metric), b.stat(metric)
                if a is not None and c is not None:
                    deltas.append(Delta(m.protocol.label, m.model, m.target, metric, m.variant, b.variant, a, c))
    if not deltas:
        raise CompareError(f"'{method}' and {', '.join(baselines)} share no cell (protocol, model, target, "
                           "metric) with ok runs of the baseline: nothing to compare.")
    order = {v: i for i, v in enumerate(dict.fromkeys(e.variant for b in baselines for e in theirs
                                                       if e.method == b or e.variant == b))}
    deltas.sort(key=lambda d: (d.protocol, d.model, target_order(d.target), d.variant, d.metric,
                               order.get(d.baseline, 0), d.baseline))
    failed = sum(len(e.failed_runs) for e in theirs)
    return Comparison(method, baselines, tuple(deltas), failed)


# ---------------------------------------------------------------------------- tables


def _text(value: str, style: str = ""):
    from rich.text import Text

    return Text(visible(value), style=style)


def side_text(metric: str, s: Stat | None) -> str:
    """``24.00 ± 0.31 (n=3)`` over seeds, ``66.0 ± 1.0`` with the metric's stderr, ``–`` when missing."""
    if s is None:
        return "–"
    info = metric_info(metric)
    if s.n >= 2:
        spread = info.format_stderr(s.std)
        return f"{info.format(s.mean)}" + (f" ± {spread}" if spread else "") + f" (n={s.n})"
    se = info.format_stderr(s.stderr)
    return info.format(s.mean) + (f" ± {se}" if se else "")


def compare_table(result: Comparison):
    """A rich Table of the deltas (cells are ``Text``: names are never read as markup, control
    characters are written as escapes)."""
    from rich.table import Table

    protocols = len({d.protocol for d in result.deltas}) > 1
    variants = any(d.variant != result.method for d in result.deltas)
    t = Table(title=_text(f"{result.method} vs {', '.join(result.baselines)}"), header_style="bold",
              caption=_text(f"Δ = {result.method} − baseline; ± sample std over n seeds, else the metric's "
                            "stderr; ↓ lower is better, ↑ higher is better"
                            + (f"; failed baseline runs not compared: {result.failed_runs}"
                               if result.failed_runs else "")))
    numeric = (result.method, "baseline value", "Δ", "Δ %")
    cols = (["protocol"] if protocols else []) + ["model", "target"] + (["variant"] if variants else []) + [
        "metric", "baseline", *numeric, "test", "verdict"]
    for c in cols:
        t.add_column(_text(c), justify="right" if c in numeric else "left", no_wrap=c not in ("model", "test"))
    styles = {"better": "green", "worse": "red", "tie": "", "failed": "red"}
    for d in result.deltas:
        if d.verdict == "failed":
            cells = [_text("–") for _ in range(5)]
            metric = "(cell)"
        else:
            info = metric_info(d.metric)
            rel = d.relative
            if info.fmt == "percent" and max(abs(d.method.mean), abs(d.base.mean)) <= 1:  # type: ignore[union-attr]
                shown = f"{100 * d.delta:+.1f} pp"  # the values show as %: Δ in points
            elif info.fmt == "fixed2":
                shown = f"{d.delta:+.2f}"
            else:
                shown = f"{d.delta:+.4g}"
            metric = f"{info.label} {info.arrow}"
            cells = [_text(side_text(d.metric, d.method)), _text(side_text(d.metric, d.base)), _text(shown),
                     _text("–" if rel is None else f"{100 * rel:+.1f}%"), _text(d.test.describe())]
        row = ([_text(d.protocol)] if protocols else []) + [_text(d.model), _text(target_label(d.target))] + (
            [_text(d.variant)] if variants else []) + [_text(metric), _text(d.baseline), *cells[:5],
                                                       _text(d.label, styles[d.verdict])]
        t.add_row(*row)
    return t


def reported_gaps(runs: Sequence[Run], reported: Sequence, method: str | None = None) -> list:
    """The published numbers (of ``method``, a method or variant name, if given) beside this store's
    reproductions: :class:`leaderboard.reported.Gap` values, reproduced ones first."""
    from leaderboard.reported import gaps

    rows = list(reported)
    if method is not None:
        want = normalize_variant(method)
        rows = [r for r in rows if normalize_variant(r.method) == want or
                normalize_variant(r.method).split("+")[0].split("(")[0] == want]
        if not rows:
            raise _unknown("method", method, sorted({r.method for r in reported}))
    out = gaps(rows, entries(runs))
    return sorted(out, key=lambda g: (g.stat is None and not g.others, g.reported.model,
                                      target_order(g.reported.target), g.reported.method))


def reported_table(found: Sequence, *, all_rows: bool = False):
    """A rich Table of published numbers and their gaps (only those reproduced in any protocol unless
    ``all_rows``)."""
    from rich.table import Table
    from rich.text import Text

    rows = [g for g in found if all_rows or g.entry is not None or g.others]
    t = Table(title=_text("published numbers vs this store"), header_style="bold",
              caption=_text("Δ % = (reproduced − reported) / reported, same protocol only (model, variant, target, "
                            "metric and eval seqlen, calibration); another protocol is shown, not compared"))
    for c, right in (("model", False), ("method", False), ("target", False), ("metric", False),
                     ("reported", True), ("reproduced", True), ("Δ %", True), ("protocol", False),
                     ("source", False)):
        t.add_column(_text(c), justify="right" if right else "left", no_wrap=c in ("target", "Δ %"))
    for g in rows:
        r = g.reported
        if g.stat is not None:
            repro = side_text(r.metric_name, g.stat)
        elif g.entry is not None:
            repro = g.entry.status
        else:
            repro = "not run" + "".join(f"; {o.stat.mean:.4g} under another protocol" for o in g.others)
        note = Text("\n").join(_text(x) for x in [r.protocol_label] + [f"other protocol: {o.differences}"
                                                                          for o in g.others])
        authors = r.citation.split(".")[0]
        authors = authors.split(",")[0] + " et al." if "," in authors else authors
        source = f"{authors}, {r.table}" + ("" if r.verified else " [unverified]")
        t.add_row(_text(r.model), _text(r.method), _text(target_label(r.target)),
                  _text(metric_info(r.metric_name).label), _text(f"{r.value:g}"), _text(repro),
                  _text("–" if g.delta_pct is None else f"{g.delta_pct:+.1f}%",
                        "" if g.delta_pct is None else "yellow" if abs(g.delta_pct) > 5 else "green"),
                  note, _text(source))
    return t, len(rows)
