"""The sparsebench leaderboard: a static site, ``harness compare`` and ``harness export``.

Two stages (house style rule 15): :mod:`leaderboard.build` and :mod:`leaderboard.pages` turn
stored runs into frozen view models (:mod:`leaderboard.view`): rows keyed by (model, variant,
target) per protocol (:mod:`leaderboard.rows`), seeds as statistics (:mod:`leaderboard.stats`),
best marks and standings (:mod:`leaderboard.standing`), published numbers beside them
(:mod:`leaderboard.reported`); :mod:`leaderboard.render` writes them with Jinja2.
Metric directions and formats are declared once, in :mod:`harness.core.metrics`
(:mod:`leaderboard.metrics` presents them).
"""
from __future__ import annotations

from harness.core.lazy import lazy_exports

# name -> defining module. Loaded on first use, so `harness --help` (which reads the compare
# rule from leaderboard.compare) does not pay for jinja2, duckdb and matplotlib.
_EXPORTS = {
    "Cell": "leaderboard.build",
    "Column": "leaderboard.build",
    "Row": "leaderboard.build",
    "Table": "leaderboard.build",
    "build_tables": "leaderboard.build",
    "Run": "leaderboard.data",
    "export_results": "leaderboard.data",
    "load_runs": "leaderboard.data",
    "MetricInfo": "leaderboard.metrics",
    "metric_info": "leaderboard.metrics",
    "SiteSummary": "leaderboard.render",
    "build_site": "leaderboard.render",
    "Comparison": "leaderboard.compare",
    "compare": "leaderboard.compare",
    "reported_gaps": "leaderboard.compare",
    "Entry": "leaderboard.rows",
    "entries": "leaderboard.rows",
    "Stat": "leaderboard.stats",
    "significance": "leaderboard.stats",
    "ReportedRow": "leaderboard.reported",
    "load_reported": "leaderboard.reported",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
