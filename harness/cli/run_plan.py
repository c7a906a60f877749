"""What ``harness run`` says before and after it runs: the ``--only`` selection, the ``--dry-run``
plan against the store, failures grouped by their error, and what the suite needs from the hub.

Messages only (strings and counts); :mod:`harness.cli.commands_run` prints them. Selection is the
runner's own (:func:`harness.run.runner.select`, :func:`~harness.run.runner.cell_label`), read here.
"""
from __future__ import annotations

import fnmatch
import itertools
from typing import Any

from harness.core.registry import suggest
from harness.core.spec import RunSpec
from harness.run.reporter import CellResult, group_failures
from harness.run.runner import cell_label, select

EXAMPLES = 4  # cell labels quoted when --only matches nothing


PARTS = ("model", "method", "target")


def _close_patterns(only: str, labels: list[str]) -> tuple[list[str], str]:
    """Patterns near ``only`` that match some cell, and a note on a part that matches nothing.

    Each ``model/method/target`` part that matches nothing is replaced by its closest values
    (``zoo:tiny-lama/*/*`` -> ``zoo:tiny-llama/*/*``); a single word is tried as each part
    (``wanda`` -> ``*/wanda/*``); a part with no close value is named with the suite's values.
    """
    split = [label.rsplit("/", 2) for label in labels]  # a model id may hold "/", method and target never
    values = [sorted({parts[i] for parts in split}) for i in range(3)]
    if "/" not in only:
        found = []
        for i, known in enumerate(values):
            if any(fnmatch.fnmatch(v, only) for v in known) or (close := suggest(only, known, n=1)):
                pattern = ["*", "*", "*"]
                pattern[i] = only if any(fnmatch.fnmatch(v, only) for v in known) else close[0]
                found.append("/".join(pattern))
        return found[:3], ""
    parts = only.rsplit("/", 2)
    parts = ["*"] * (3 - len(parts)) + parts
    options: list[list[str]] = []
    for kind, part, known in zip(PARTS, parts, values):
        if any(fnmatch.fnmatch(v, part) for v in known):
            options.append([part])
        elif close := suggest(part, known, n=2):
            options.append(close)
        else:
            shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            return [], f" No {kind} of this suite matches {part!r}; its {kind}s: {shown}."
    found = ["/".join(p) for p in itertools.product(*options)]
    return [f for f in found if f != only and any(fnmatch.fnmatch(lb, f) for lb in labels)][:3], ""


def only_problem(cells: list[RunSpec], only: str | None, suite_name: str) -> str | None:
    """The one-line message for an ``--only`` that selects none of ``cells``, or None."""
    if not only or select(cells, only) or not cells:
        return None
    labels = [cell_label(c) for c in cells]
    close, note = _close_patterns(only, labels)
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else note
    examples = ", ".join(labels[:EXAMPLES]) + (", ..." if len(labels) > EXAMPLES else "")
    return (f"--only {only!r} matches none of the {len(cells)} cells of suite {suite_name} (it takes a run id "
            f"prefix or a glob over model/method/target).{hint} Cells: {examples} (--dry-run lists them all)")


def rerun_statuses(force: bool, retry_failed: bool) -> set[str]:
    """Stored statuses that ``harness run`` runs again (as :func:`harness.run.runner.run_suite`)."""
    return {"ok", "failed", "error"} if force else {"failed", "error"} if retry_failed else {"error"}


def dry_run_line(cells: list[RunSpec], stored: dict[str, str], force: bool, retry_failed: bool) -> str:
    """``20 cells: 12 stored as ok, 2 as failed, 6 not stored; without --dry-run this runs 6 ...``"""
    rerun = rerun_statuses(force, retry_failed)
    counts: dict[str, int] = {}
    for c in cells:
        status = stored.get(c.run_id)
        counts[status or ""] = counts.get(status or "", 0) + 1
    todo = sum(1 for c in cells if c.run_id not in stored or stored[c.run_id] in rerun)
    stored_counts = [(s, counts[s]) for s in ("ok", "failed", "error") if s in counts]
    parts = [f"{n} {'stored as' if i == 0 else 'as'} {s}" for i, (s, n) in enumerate(stored_counts)]
    if "" in counts:
        parts.append(f"{counts['']} not stored")
    line = f"{len(cells)} cells: {', '.join(parts)}; without --dry-run this command runs {todo}"
    if counts.get("error"):
        line += " (cells in error always run again)"
    if counts.get("failed") and "failed" not in rerun:
        line += f"; --retry-failed also reruns the {counts['failed']} stored as failed"
    return line


def failure_lines(results: list[CellResult]) -> list[tuple[str, str]]:
    """(status, line) per distinct error: a cell alone as ``SHORT_ID MODEL METHOD TARGET: ERROR``;
    cells sharing an error (a model that cannot be loaded fails every cell of it the same way) as
    ``N cells of MODEL (METHOD TARGET, ...): ERROR``, so the error is printed once, not per cell."""
    out = []
    for group in group_failures(results):
        cells = group.results
        earlier = sum(r.stored for r in cells)
        first = cells[0].spec
        if len(cells) == 1:
            note = " (stored earlier)" if earlier else ""
            out.append((group.status, f"{note} {first.short_id} {first.model.id} {first.method} {first.target}: "
                                      f"{group.error}"))
            continue
        models = list(dict.fromkeys(r.spec.model.id for r in cells))
        names = [f"{r.spec.method} {r.spec.target}" if len(models) == 1 else cell_label(r.spec) for r in cells]
        which = ", ".join(names[:3]) + (f", +{len(names) - 3} more" if len(names) > 3 else "")
        of = models[0] if len(models) == 1 else f"{len(models)} models"
        note = "" if not earlier else " (stored earlier)" if earlier == len(cells) else f" ({earlier} stored earlier)"
        out.append((group.status, f"{note} {len(cells)} cells of {of} ({which}): {group.error}"))
    return out


def hub_needs(suite: Any) -> dict[str, list[str]]:
    """What ``suite`` fetches from the Hugging Face hub (or finds in its local cache): models,
    datasets and lm-eval tasks, each a list of names (empty when none)."""
    from harness.data.text import LOCAL_DATASETS

    models = [m.id for m in suite.models if m.id.startswith("hf:") or (m.id.startswith("timm:") and m.weights is None)]
    names = [suite.calibration.dataset, *(p.dataset for p in suite.perplexity)]
    datasets = sorted({d for d in names if d not in LOCAL_DATASETS})
    tasks: list[str] = []
    if suite.lm_eval is not None:
        from harness.evaluate.lm_eval_adapter import KNOWN_TASKS

        tasks = [t for t in suite.lm_eval.tasks if not (t in KNOWN_TASKS and KNOWN_TASKS[t].offline)]
    return {"models": models, "datasets": datasets, "lm-eval tasks": tasks}


def offline_line(suite: Any, results: list[CellResult]) -> str | None:
    """One line when cells failed for want of the hub: everything the suite needs from it (the
    datasets and tasks too, which fail next once a model is found), and how to bring it here."""
    unreachable = [r for r in results if r.status in ("failed", "error") and r.error
                   and ("unreachable" in r.error or r.error.startswith("DatasetUnavailable"))]
    if not unreachable:
        return None
    needs = [f"{kind} {', '.join(names)}" for kind, names in hub_needs(suite).items() if names]
    what = f": {'; '.join(needs)}" if needs else ""
    return (f"Offline: the Hugging Face hub is unreachable, and this suite needs from it{what}. Fetch them "
            "once where the hub is reachable and copy that Hugging Face cache here (set HF_HOME), or point "
            "the suite at local copies (models as path:DIR; the offline dataset pydoc).")
