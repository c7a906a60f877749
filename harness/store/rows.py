"""A checked record as DuckDB rows: one list per column of each table (:mod:`harness.store.index`).

Timestamps become naive UTC datetimes; numbers are coerced to one Python type per column so
DuckDB infers one list type; JSON columns (environment, eval_info, a layer's info) are strict
JSON text, non-finite floats noted as in ``record.json``.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from harness.store.records import encode_nonfinite
from harness.store.validate import parse_timestamp

TABLES = ("runs", "evals", "metrics", "layers", "series")  # each has run_id; `meta` is separate


def utc(value: str | None) -> datetime | None:
    """ISO-8601 text to a naive UTC datetime (naive input is taken to be UTC already)."""
    return parse_timestamp(value)


def _num(x: Any, kind: type) -> Any:
    """Coerce to one Python type so DuckDB infers one list type per column; None stays."""
    return None if x is None else kind(x)


def _json(obj: Any) -> str | None:
    return None if obj is None else json.dumps(encode_nonfinite(obj), sort_keys=True, allow_nan=False)


def _columns(items: list[dict], spec: dict[str, Callable[[dict], Any]]) -> dict[str, list]:
    """Column lists (one per table column) from a list of dicts."""
    return {col: [get(item) for item in items] for col, get in spec.items()}


def record_rows(record: dict[str, Any]) -> dict[str, Any]:
    """The DuckDB rows of one (decoded, checked) record, as one list per column of each table."""
    rid = record["run_id"]
    sparsity = record.get("sparsity") or {}
    run = {
        "run_id": rid, "suite": record["suite"], "model": record["model"],
        "method": record["method"], "target": str(record["target"]), "seed": int(record["seed"]),
        "status": record["status"], "error": record.get("error"),
        "traceback": record.get("traceback"), "spec_json": record["spec_json"],
        "suite_text": record.get("suite_text"),
        "started_at": utc(record.get("started_at")),
        "finished_at": utc(record.get("finished_at")),
        "wall_time_s": _num(record.get("wall_time_s"), float),
        "prune_time_s": _num(record.get("prune_time_s"), float),
        "peak_rss_bytes": _num(record.get("peak_rss_bytes"), int),
        "peak_cuda_bytes": _num(record.get("peak_cuda_bytes"), int),
        "device": record.get("device"),
        "sparsity_global": _num(sparsity.get("global"), float),
        "nm_compliant": _num(sparsity.get("nm_compliant"), bool),
        "model_sha256": (record.get("model_info") or {}).get("sha256"),
        "environment_json": _json(record.get("environment")),
        "ingested_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "publishable": _num(record.get("publishable", True), bool),
        "eval_info_json": _json(record.get("eval_info")),
        "variant": record.get("variant") or record["method"], "label": record.get("label"),
        "params_json": _json((record.get("spec") or {}).get("params")),
        "suites_json": _json(sorted(record.get("suites") or [record["suite"]])),
        "suite_path": record.get("suite_path"), "pruned": _num(record.get("pruned"), bool),
        "artifact_json": _json(record.get("artifact")), "aliases_json": _json(record.get("aliases") or []),
    }
    evals = [{"eval_id": k, **v} for k, v in sorted((record.get("evals") or {}).items())]
    eval_rows = _columns(evals, {
        "run_id": lambda e: rid, "eval_id": lambda e: e["eval_id"], "kind": lambda e: e["kind"],
        "status": lambda e: e["status"], "error": lambda e: e.get("error"),
        "publishable": lambda e: _num(e.get("publishable", True), bool),
        "spec_json": lambda e: _json(e.get("spec")), "suites_json": lambda e: _json(sorted(e.get("suites") or [])),
    })
    metrics = _columns(record.get("metrics") or [], {
        "run_id": lambda m: rid, "eval_id": lambda m: m.get("eval_id") or "", "metric": lambda m: m["name"],
        "value": lambda m: _num(m.get("value"), float),
        "stderr": lambda m: _num(m.get("stderr"), float), "n": lambda m: _num(m.get("n"), int),
        "headline": lambda m: _num(m.get("headline"), bool),
    })
    layers = _columns(record.get("layers") or [], {
        "run_id": lambda r: rid, "layer": lambda r: r["name"],
        **{c: (lambda r, c=c: _num(r.get(c), int))
           for c in ("block", "rows", "cols", "numel", "zeros")},
        **{c: (lambda r, c=c: _num(r.get(c), float)) for c in ("sparsity", "rel_error", "time_s")},
        "nm_ok": lambda r: _num(r.get("nm_ok"), bool), "info_json": lambda r: _json(r.get("info")),
    })
    series = _columns(record.get("series") or [], {
        "run_id": lambda s: rid, "name": lambda s: s["name"],
        "step": lambda s: _num(s.get("step"), int), "value": lambda s: _num(s.get("value"), float),
    })
    return {"runs": {k: [v] for k, v in run.items()}, "evals": eval_rows, "metrics": metrics, "layers": layers,
            "series": series}
