"""Seeds as statistics: a value over seeds (:class:`Stat`) and the test of a difference (:func:`significance`).

One rule everywhere (the leaderboard's best marks, ``harness compare``):

- both sides have at least 2 seeds (and the seeds vary on one side at least): Welch's t over the
  seeds (two-sided, p < :data:`ALPHA`);
- else, where each side has an uncertainty (seeds that vary: std / sqrt(n); else the metric's own
  stderr, e.g. a binomial stderr of an accuracy): |Δ| > :data:`SIGMAS`·sqrt(se1² + se2²);
- else (one run of a deterministic metric such as perplexity): not tested.

Pure Python (no scipy): Student's t distribution through the regularized incomplete beta function
(Numerical Recipes' continued fraction, 6.4), checked against scipy in the tests.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

ALPHA = 0.05  # Welch's t: a difference is significant when its two-sided p is below this
SIGMAS = 2.0  # stderr test: |Δ| > SIGMAS·sqrt(se1² + se2²) (about p < 0.05 for a normal Δ)


@dataclass(frozen=True)
class Stat:
    """One metric of one leaderboard row: its value over the row's seeds.

    Attributes:
        mean: The mean over seeds (NaN when a seed diverged).
        std: The sample standard deviation over seeds (n - 1 in the denominator); None for one seed.
        n: The number of seeds with a value.
        values: ``(seed, value)`` per seed, sorted by seed.
        stderr: The metric's own stderr (the mean over seeds) when every run reported one, else None.
    """

    mean: float
    std: float | None
    n: int
    values: tuple[tuple[int, float], ...]
    stderr: float | None = None

    @classmethod
    def of(cls, values: Iterable[tuple[int, float]], stderrs: Iterable[float | None] = ()) -> "Stat | None":
        """The statistic of ``(seed, value)`` pairs; None when there are none."""
        vals = tuple(sorted(values))
        if not vals:
            return None
        xs = [v for _, v in vals]
        n = len(xs)
        mean = math.fsum(xs) / n
        std = None
        if n >= 2:
            std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if math.isfinite(mean) else math.nan
        ses = list(stderrs)
        known = len(ses) == n and all(se is not None and math.isfinite(se) for se in ses)
        stderr = math.fsum(ses) / n if known else None  # type: ignore[arg-type]
        return cls(mean, std, n, vals, stderr)

    @property
    def spread(self) -> bool:
        """Do the seeds vary? (Without that, they say nothing about the uncertainty.)"""
        return self.std is not None and self.std > 0

    @property
    def se(self) -> float | None:
        """The standard error of the mean: std / sqrt(n) over seeds that vary, else the metric's stderr."""
        if self.spread:
            return self.std / math.sqrt(self.n)  # type: ignore[operator]
        return self.stderr


Kind = Literal["welch", "stderr", "none"]


@dataclass(frozen=True)
class Significance:
    """The test of ``a − b``.

    Attributes:
        kind: ``"welch"`` (seeds), ``"stderr"`` (the metrics' stderrs) or ``"none"`` (no uncertainty known).
        statistic: Welch's t, or z = Δ / sqrt(se1² + se2²); None for ``"none"``.
        p: Welch's two-sided p; None otherwise.
        df: Welch-Satterthwaite degrees of freedom; None otherwise.
        significant: None when not tested.
    """

    kind: Kind
    statistic: float | None = None
    p: float | None = None
    df: float | None = None
    significant: bool | None = None

    def describe(self) -> str:
        """``Welch t=3.1, df=2.0, p=0.041``, ``stderr z=2.4`` or ``untested (one seed, no stderr)``."""
        if self.kind == "welch":
            if self.statistic is None or not math.isfinite(self.statistic):
                return "Welch t over seeds (no spread)"
            return f"Welch t={self.statistic:.2f}, df={self.df:.1f}, p={self.p:.3g}"
        if self.kind == "stderr":
            return f"stderr z={self.statistic:.2f}" if self.statistic is not None and math.isfinite(
                self.statistic) else "stderr"
        return "untested (one seed, no stderr)"


def significance(a: Stat, b: Stat) -> Significance:
    """Is ``a.mean`` different from ``b.mean``? See the module doc for the rule.

    A NaN (diverged) mean differs significantly from any number; two zero-spread sides differ
    significantly exactly when their means differ.
    """
    delta = a.mean - b.mean
    if a.n >= 2 and b.n >= 2 and (a.spread or b.spread or math.isnan(delta)):
        if math.isnan(delta):
            return Significance("welch", significant=not (math.isnan(a.mean) and math.isnan(b.mean)))
        va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n  # type: ignore[operator]
        t = delta / math.sqrt(va + vb)
        df = (va + vb) ** 2 / ((va ** 2 / (a.n - 1) if va else 0.0) + (vb ** 2 / (b.n - 1) if vb else 0.0))
        p = t_two_sided_p(t, df)
        return Significance("welch", t, p, df, p < ALPHA)
    sa, sb = a.se, b.se
    if sa is None or sb is None:
        return Significance("none")
    if math.isnan(delta):
        return Significance("stderr", significant=not (math.isnan(a.mean) and math.isnan(b.mean)))
    se = math.hypot(sa, sb)
    if se == 0:
        return Significance("stderr", math.inf if delta else 0.0, significant=delta != 0)
    z = delta / se
    return Significance("stderr", z, significant=abs(z) > SIGMAS)


# --------------------------------------------------------------------------- Student's t


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: I_x(df/2, 1/2), x = df/(df+t²)."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast here
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) by the modified Lentz method."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h
