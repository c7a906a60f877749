"""Record version 1 to 2: from a record per (suite, cell, evaluations) to a record per pruned model.

A version 1 run id hashed the suite name and the evaluations with the pruned model, so two
suites that asked for the same pruned model stored it twice. :func:`migrate_runs` rewrites
every version 1 run directory as a version 2 record whose run id covers only what was run
(:meth:`harness.core.spec.RunSpec.to_dict`); records that turn out to be the same pruned model
are merged (their evaluations, metrics and suites united), and each keeps its old ids in
``aliases``, so old run ids still resolve (``--only``, run pages). The old directories are moved,
never deleted, to ``<root>/migrated/<old run id>/``.

Metric rows are given the eval id of the evaluation that produced them: perplexity rows by
their name (``<dataset>/ppl@<seqlen>``), image rows by their dataset, the rest by the lm-eval
task list. A record the migration cannot read is left where it is, and the scan that follows
quarantines it with the reason.

Runs at the start of every scan of the run directories; a marker file (``runs/.version``) makes
it free once done.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.core.spec import RunSpec
from harness.core.variants import variant_name
from harness.store.records import RECORD_FILE, atomic_write_text, decode_nonfinite, dump_record, read_record
from harness.store.validate import LEGACY_VERSION, RECORD_VERSION

log = logging.getLogger(__name__)

MIGRATED_DIR = "migrated"  # <root>/migrated/<old run id>/: version 1 run directories, moved
MARKER = ".version"  # runs/.version: the record version every run directory has

Defaults = Callable[[str], "dict[str, Any] | None"]  # method name -> its default params (None: unknown)
_DEFAULTS: list[Defaults] = []  # set by the layers that know the methods (harness.run, harness.cli)


def set_method_defaults(fn: Defaults) -> None:
    """Say how to find a method's default params, so migrated records name their variants the
    way new ones do (``harness.plugins`` knows; the store does not import it)."""
    _DEFAULTS[:] = [fn]


def _eval_of(spec: RunSpec, name: str) -> str | None:
    """The eval id of the evaluation that produced the metric ``name`` in a version 1 record."""
    refs = spec.evals()
    for ref in refs:
        if ref.kind == "perplexity" and ref.spec.metric_name() == name:
            return ref.eval_id
        if ref.kind == "images" and name.startswith(f"{ref.spec.dataset}/"):
            return ref.eval_id
    return next((ref.eval_id for ref in refs if ref.kind == "lm_eval"), None)


def upgrade(old: dict[str, Any], defaults: Defaults | None = None) -> dict[str, Any]:
    """The version 2 record of one (decoded) version 1 record."""
    spec = RunSpec.from_dict(old["spec"], suite=old["suite"])
    ok = old["status"] == "ok"
    evals = {}
    for e in spec.evals_dict():
        evals[e["eval_id"]] = {"kind": e["kind"], "spec": e["spec"], "suites": [old["suite"]],
                               "status": old["status"] if not ok else "ok",
                               "error": None if ok else old.get("error"),
                               "publishable": next(r.publishable for r in spec.evals() if r.eval_id == e["eval_id"]),
                               "finished_at": old.get("finished_at")}
    metrics = []
    for row in old.get("metrics") or []:
        eval_id = _eval_of(spec, row["name"])
        if eval_id is not None:
            metrics.append({**row, "eval_id": eval_id})
    new = {**old, "record_version": RECORD_VERSION, "run_id": spec.run_id, "spec": spec.to_dict(),
           "spec_json": spec.canonical_json(), "suites": [old["suite"]], "suite_path": None,
           "variant": variant_name(spec.method, spec.params, defaults(spec.method) if defaults else None,
                                   spec.profile),
           "label": None, "pruned": ok, "evals": evals, "metrics": metrics, "artifact": None,
           "aliases": [old["run_id"]]}
    return new


def merge(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One record of several of the same pruned model: the latest ok one's pruning, every
    evaluation (an ok entry wins), suites and aliases united."""
    ranked = sorted(records, key=lambda r: (r["status"] == "ok", r.get("finished_at") or ""))
    base = dict(ranked[-1])
    evals, metrics = {}, {}
    for r in ranked:  # later and ok records win
        for eid, entry in r["evals"].items():
            if eid not in evals or entry["status"] == "ok" or evals[eid]["status"] != "ok":
                suites = sorted({*evals.get(eid, {}).get("suites", []), *entry.get("suites", [])})
                evals[eid] = {**entry, "suites": suites}
                metrics[eid] = [m for m in r["metrics"] if m.get("eval_id") == eid]
    base["evals"] = evals
    base["metrics"] = [m for eid in evals for m in metrics.get(eid, [])]
    base["suites"] = sorted({s for r in records for s in r["suites"]})
    base["aliases"] = sorted({a for r in records for a in r.get("aliases") or []})
    base["suite"] = min(records, key=lambda r: r.get("started_at") or "")["suite"]
    bad = [e for e in evals.values() if e["status"] != "ok"]
    if base["pruned"] and not bad:
        base["status"], base["error"] = "ok", None
    return base


def migrate_runs(runs_dir: Path, defaults: Defaults | None = None) -> int:
    """Rewrite every version 1 run directory under ``runs_dir`` as version 2 (see the module doc).

    Returns:
        The number of version 1 records migrated.
    """
    defaults = defaults or (_DEFAULTS[0] if _DEFAULTS else None)
    marker = runs_dir / MARKER
    if not runs_dir.is_dir() or (marker.is_file() and marker.read_text().strip() == str(RECORD_VERSION)):
        return 0
    groups: dict[str, list[tuple[dict[str, Any], Path]]] = {}
    for path in sorted(runs_dir.glob(f"*/{RECORD_FILE}")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # not readable JSON: the scan quarantines it
            continue
        if not isinstance(raw, dict) or raw.get("record_version") != LEGACY_VERSION:
            continue
        try:
            new = upgrade(decode_nonfinite(raw), defaults)
            dump_record(new)  # checked before anything moves
        except Exception as e:  # noqa: BLE001 - left in place; the scan quarantines it with the reason
            log.warning("cannot migrate %s (version 1 record): %s", path, str(e).splitlines()[0][:200] if str(e) else e)
            continue
        groups.setdefault(new["run_id"], []).append((new, path.parent))
    moved = 0
    for run_id, items in groups.items():
        records = [r for r, _ in items]
        current = runs_dir / run_id / RECORD_FILE
        if current.is_file():  # already version 2 (a mixed store)
            try:
                records.append(read_record(current))
            except Exception:  # noqa: BLE001 - an invalid current record is replaced by the migrated one
                pass
        merged = merge(records)
        (runs_dir / run_id).mkdir(parents=True, exist_ok=True)
        atomic_write_text(current, dump_record(merged))
        for _, old_dir in items:
            dest, n = runs_dir.parent / MIGRATED_DIR / old_dir.name, 0
            while dest.exists():
                n += 1
                dest = dest.with_name(f"{old_dir.name}.{n}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old_dir, dest)
            moved += 1
    if moved:
        log.warning("migrated %d version 1 records to %d pruned models (old run directories kept in %s)",
                    moved, len(groups), runs_dir.parent / MIGRATED_DIR)
    try:
        atomic_write_text(marker, f"{RECORD_VERSION}\n")
    except OSError:  # a full or read-only disk: the next scan looks again (nothing was migrated then)
        pass
    return moved
