"""Plots as data: frozen descriptions that :mod:`leaderboard.plots` draws with matplotlib.

Every number a plot shows is decided by the view model (:mod:`leaderboard.pages`,
:mod:`leaderboard.build`); drawing only lays them out. Paths are relative to the site root.
"""
from __future__ import annotations

from dataclasses import dataclass

from leaderboard.metrics import MetricInfo


@dataclass(frozen=True)
class Point:
    method: str  # the variant, as the legend shows it
    target: str
    x: float  # measured sparsity (target sparsity when not measured), 0..1
    y: float  # mean over seeds
    nm: bool  # N:M target: drawn with its own marker, not joined to the line
    std: float | None = None  # sample std over seeds (an error bar), None for one seed


@dataclass(frozen=True)
class ParetoPlot:
    file: str
    title: str
    metric: MetricInfo
    points: tuple[Point, ...]
    dense: float | None  # the dense run's value: a horizontal reference line
    targets: tuple[float, ...] = ()  # the target sparsities, for the x ticks when there are few


@dataclass(frozen=True)
class OverviewPanel:
    model: str
    points: tuple[Point, ...]  # y = recovery %


@dataclass(frozen=True)
class OverviewPlot:
    """Recovery % of one metric versus sparsity: one small panel per model, a line per variant."""

    file: str
    title: str
    metric_label: str
    panels: tuple[OverviewPanel, ...]
    targets: tuple[float, ...] = ()


@dataclass(frozen=True)
class LayerPlot:
    file: str
    title: str
    layers: tuple  # tuple[leaderboard.data.LayerRow, ...]


@dataclass(frozen=True)
class SeriesPlot:
    file: str
    title: str
    points: tuple[tuple[int, float], ...]  # (step, value)


Plot = ParetoPlot | OverviewPlot | LayerPlot | SeriesPlot
