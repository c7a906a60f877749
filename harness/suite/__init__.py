"""Suites: a YAML file naming models, methods, targets, calibration and evals, checked in one
pass (every problem on one ``file:line: path: message`` line) and expanded into ``RunSpec`` cells.

Modules: :mod:`~harness.suite.lines` reads YAML with line numbers, :mod:`~harness.suite.checker`
collects problems, :mod:`~harness.suite.schema` checks the fields (with the kind-specific rules
of :mod:`~harness.suite.vision` and :mod:`~harness.suite.synthetic`), :mod:`~harness.suite.loader`
gives ``load_suite`` and ``expand``. The names below load on first use, so importing this
package costs nothing (and never torch).
"""
from __future__ import annotations

from harness.core.lazy import lazy_exports

# name -> defining module
_EXPORTS = {
    "Suite": "harness.suite.loader",
    "expand": "harness.suite.loader",
    "load_suite": "harness.suite.loader",
    "SuiteError": "harness.suite.checker",
    "SuiteProblem": "harness.suite.checker",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
