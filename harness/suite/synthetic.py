"""Suite checks for ``synthetic:`` models, used by :mod:`harness.suite.schema`.

- a model's ``problem:`` mapping (``harness.core.problems.resolve``): only for ``synthetic:`` ids;
- every method must apply to every model kind of the suite (``PruningMethod.model_kinds``):
  ``iht``, ``topk_iobs`` and ``iobs_obc`` solve synthetic problems, the layer-wise methods
  (dense, magnitude, wanda, sparsegpt, obc) prune language models and image classifiers;
- a synthetic suite has no ``targets`` (the problem's k sets the sparsity, 1 − k/d), and no
  ``calibration``, ``evals`` or ``layers`` (the problem is the data and the metrics are its own).

Every function takes the file's :class:`~harness.suite.checker.Checker` as ``ck``.
"""
from __future__ import annotations

from typing import Any

from harness.suite.checker import Checker
from harness.suite.lines import LineDict
from harness.suite.vision import model_kinds

NOT_FOR_SYNTHETIC = ("targets", "calibration", "evals", "layers", "save", "keep")
_WHY = {
    "targets": "a synthetic problem sets its sparsity with problem.k (the target is 1 - k/d)",
    "calibration": "a synthetic problem draws its own data",
    "evals": "synthetic cells report final_dist, steps_to_tol, dist_at_10 and support_recall themselves",
    "layers": "a synthetic problem has no layers",
    "save": "a synthetic problem has no model to save",
    "keep": "a synthetic problem stores no pruned weights",
}
_KIND_WORDS = {"lm": "language models", "vision": "image classifiers", "synthetic": "synthetic: sparse-recovery problems"}


def model_problem(ck: Checker, item: Any, raw: dict[str, Any], model_id: str, path: str) -> tuple | None:
    """The resolved ``problem`` of a model entry as sorted (key, value) pairs; () for other sources.

    Returns None (after reporting) when the mapping is wrong.
    """
    given = raw.get("problem")
    line = item.key_lines["problem"] if isinstance(item, LineDict) and "problem" in item else None
    if not model_id.startswith("synthetic:"):
        if "problem" in raw:
            ck.err(line, f"{path}.problem", "'problem' is for synthetic: models (sparse-recovery settings)")
            return None
        return ()
    from harness.core.problems import resolve

    if given is None:
        given = {}
    elif not isinstance(given, LineDict):
        ck.err(line, f"{path}.problem", f"expected a mapping of problem settings, e.g. {{n: 96, noise: 0.01}}; "
                                        f"got {type(given).__name__}")
        return None
    resolved, problems = resolve(model_id.split(":", 1)[1], dict(given))
    for key, message in problems:
        where = next((ln for k, ln in given.key_lines.items() if str(k) == key), line) if given else line
        ck.err(where, f"{path}.problem.{key}" if key in given else f"{path}.problem", message)
    return None if problems else tuple(sorted(resolved.items()))


def kind_rules(ck: Checker, data: LineDict) -> bool:
    """Methods against model kinds, and the keys a synthetic suite must not have.

    Returns:
        True when the suite holds synthetic models (then ``targets`` is not required).
    """
    from harness.plugins import get_method
    from harness.core.registry import UnknownNameError

    kinds: dict[str, str] = {}  # kind -> first model id of that kind
    for _, raw, kind in model_kinds(data):
        kinds.setdefault(kind, str(raw))
    methods = data.get("methods") if isinstance(data.get("methods"), list) else []
    for i, item in enumerate(methods):
        name = item.get("name") if isinstance(item, dict) else item
        try:
            cls = get_method(name) if isinstance(name, str) else None
        except UnknownNameError:
            continue  # reported by the method check
        if cls is None:
            continue
        for kind, first in kinds.items():
            if kind not in cls.model_kinds:
                fits = [m for m in _methods_for(kind)]
                ck.err(methods.item_lines[i], f"methods[{i}]",
                       f"'{name}' is for {' and '.join(_KIND_WORDS[k] for k in cls.model_kinds)}; it does not "
                       f"apply to {first} ({_KIND_WORDS[kind]}); methods for it: {', '.join(fits) or 'none'}")
    if "synthetic" not in kinds:
        return False
    for key in NOT_FOR_SYNTHETIC:
        if key in data:
            ck.err(data.key_lines[key], key, f"not used with {kinds['synthetic']}: {_WHY[key]}")
    return True


def _methods_for(kind: str) -> list[str]:
    from harness.core.method import METHODS
    from harness.plugins import list_methods

    list_methods()
    return [e.name for e in METHODS if kind in e.obj.model_kinds]
