"""The record schema: the type and range of every field the store keeps.

:func:`record_problems` checks a (decoded) record against it; :func:`harness.store.records.check_record`
raises on any problem, before a record is written and again when one is read for ingest, so
whatever is on disk fits the database (a ``seed`` in ``INTEGER``, counts in ``BIGINT``, text as
UTF-8) and a record edited or damaged by hand is quarantined instead of stopping the store.

Fields the store does not keep are not checked (a record may carry more, e.g. ``prune_info``).
``null`` is accepted wherever the column may be NULL. Numbers: ``true``/``false`` are not
numbers; values and errors may be non-finite (NaN, ±inf, see :mod:`harness.store.records`);
measurements (times, sparsities) must be finite and in range.
"""
from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any, Callable

from harness.core.spec import canonical_json

RECORD_VERSION = 2  # 2: a record per pruned model (no suite in the run id), evaluations by id
LEGACY_VERSION = 1  # migrated on first contact (harness.store.migrate)
STATUSES = ("ok", "failed", "error")  # "error": an infrastructure failure, not the method's
SEED_MAX = 2**31 - 1  # runs.seed is INTEGER; suites bound seeds the same way
INT32 = (-(2**31), 2**31 - 1)  # layers.block, series.step
COUNT = (0, 2**63 - 1)  # BIGINT counts: bytes, rows, numel, zeros, n
MAX_PROBLEMS = 4  # listed in one message; the rest are counted
_HEX = frozenset("0123456789abcdef")

Check = Callable[[Any], "str | None"]  # a problem with the value, or None


def clip(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message quotes values, which may be huge."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int of over 4300 digits, a structure nested too deeply
        text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_timestamp(value: str | None) -> datetime | None:
    """ISO-8601 text to a naive UTC datetime (naive input is taken to be UTC already).

    Raises:
        TypeError, ValueError, OverflowError: not an ISO-8601 timestamp (DuckDB's TIMESTAMP).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO-8601 timestamp, got {clip(value)}")
    dt = datetime.fromisoformat(value)
    return dt.astimezone(timezone.utc).replace(tzinfo=None) if dt.tzinfo else dt


# --------------------------------------------------------------------------- checks


def text(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {clip(value)}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{clip(value)} is not UTF-8 text (it holds a lone surrogate)"
    return None


def integer(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {clip(value)}"
        if not low <= value <= high:
            return f"{clip(value)} is out of range {low}..{high}"
        return None
    return check


def real(low: float = -math.inf, high: float = math.inf, finite: bool = False) -> Check:
    """A number (int or float, never bool); ``finite``: no NaN or ±inf, and within [low, high]."""
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {clip(value)}"
        try:
            x = float(value)
        except OverflowError:
            return f"{clip(value)} is too large for a double"
        if not math.isfinite(x):
            return f"{clip(value)} is not finite" if finite else None
        if not low <= x <= high:
            return f"{clip(value)} is out of range {low:g}..{high:g}"
        return None
    return check


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {clip(value)}"


def timestamp(value: Any) -> str | None:
    try:
        parse_timestamp(value)
    except (TypeError, ValueError, OverflowError):
        return f"{clip(value)} is not an ISO-8601 timestamp"
    return None


def one_of(*choices: Any) -> Check:
    return lambda value: None if value in choices and type(value) is type(choices[0]) else \
        f"{clip(value)} is not one of {', '.join(map(repr, choices))}"


def json_value(value: Any, depth: int = 0) -> str | None:
    """Plain JSON data (objects with string keys, lists, strings, numbers, booleans, null)."""
    if depth > 100:
        return "nested more than 100 levels deep"
    if value is None or isinstance(value, (str, bool, int, float)):
        return None
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "an object with a key that is not a string"
        return next((p for p in (json_value(v, depth + 1) for v in value.values()) if p), None)
    if isinstance(value, (list, tuple)):
        return next((p for p in (json_value(v, depth + 1) for v in value) if p), None)
    return f"expected JSON data, got a {type(value).__name__}"


def optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def obj(fields: dict[str, Check]) -> Check:
    """A JSON object whose listed fields (each optional unless its check refuses None) pass."""
    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"expected an object, got {clip(value)}"
        problems = [f"{k}: {p}" for k, c in fields.items() if (p := c(value.get(k))) is not None]
        return "; ".join(problems) or None
    return check


def items(fields: dict[str, Check], key: tuple[str, ...] = ("name",)) -> Check:
    """A list of objects, each with a ``name`` and ``fields``; ``key`` (the table's key) is unique."""
    item = obj({"name": text, **fields})

    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"expected a list of objects, got {clip(value)}"
        for i, entry in enumerate(value):
            if (problem := item(entry)) is not None:
                return f"[{i}] {problem}"
        seen: set[tuple] = set()
        for entry in value:
            k = tuple(entry.get(f) for f in key)
            if k in seen:
                return f"the name {clip(entry['name'])} appears more than once" + (
                    f" for {key[0]} {clip(k[0])}" if len(key) > 1 else "")
            seen.add(k)
        return None
    return check


def _series(value: Any) -> str | None:  # series rows have no key: names repeat, one row per step
    item = obj({"name": text, "step": optional(integer(*INT32)), "value": optional(real())})
    if not isinstance(value, list):
        return f"expected a list of objects, got {clip(value)}"
    return next((f"[{i}] {p}" for i, entry in enumerate(value) if (p := item(entry)) is not None), None)


FIELDS: dict[str, Check] = {  # record key -> check; a missing key is checked as None
    "suite": text, "model": text, "method": text, "target": text,
    "seed": integer(0, SEED_MAX),
    "status": one_of(*STATUSES),
    "error": optional(text), "traceback": optional(text), "suite_text": optional(text),
    "device": optional(text),
    "started_at": optional(timestamp), "finished_at": optional(timestamp),
    "wall_time_s": optional(real(0, finite=True)), "prune_time_s": optional(real(0, finite=True)),
    "peak_rss_bytes": optional(integer(*COUNT)), "peak_cuda_bytes": optional(integer(*COUNT)),
    "publishable": optional(boolean),
    "sparsity": optional(obj({"global": optional(real(0, 1, finite=True)), "nm_compliant": optional(boolean)})),
    "model_info": optional(obj({"sha256": optional(text)})),
    "environment": json_value, "eval_info": json_value,
    "metrics": optional(items({"eval_id": optional(text), "value": optional(real()), "stderr": optional(real()),
                               "n": optional(integer(*COUNT)), "headline": optional(boolean)},
                              key=("eval_id", "name"))),
    "layers": optional(items({"block": optional(integer(*INT32)),
                              **dict.fromkeys(("rows", "cols", "numel", "zeros"), optional(integer(*COUNT))),
                              "sparsity": optional(real(0, 1, finite=True)), "nm_ok": optional(boolean),
                              "rel_error": optional(real()), "time_s": optional(real(0, finite=True)),
                              "info": json_value})),
    "series": optional(_series),
    "suites": lambda v: _texts(v), "suite_path": optional(text), "variant": text, "label": optional(text),
    "pruned": optional(boolean),
    "evals": lambda v: _evals(v),
    "aliases": lambda v: _aliases(v),
    "artifact": optional(obj({"sha256": text, "path": text, "bytes": integer(*COUNT), "kept": boolean})),
    "saved": optional(lambda v: _saved_check(v)),
}
REQUIRED = ("record_version", "run_id", "spec_json", "suite", "suites", "model", "method", "variant", "target",
            "seed", "status", "evals")
SPEC_KEYS = ("method", "target", "seed")  # must agree with the spec the run id hashes


_SAVED = obj({"path": text, "format": one_of("dense", "compressed"), "bytes": optional(integer(*COUNT))})
_SAVE_FAILED = obj({"error": text, "dir": optional(text), "format": optional(one_of("dense", "compressed"))})


def _saved_check(value: Any) -> str | None:
    """The exported checkpoint, or why the export failed (``{"error": ...}``; the cell's results stand)."""
    return _SAVE_FAILED(value) if isinstance(value, dict) and "error" in value else _SAVED(value)


def _texts(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return f"expected a non-empty list of names, got {clip(value)}"
    return next((f"[{i}] {p}" for i, v in enumerate(value) if (p := text(v)) is not None), None)


def _aliases(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list):
        return f"expected a list of run ids, got {clip(value)}"
    bad = [v for v in value if not (isinstance(v, str) and len(v) == 64 and set(v) <= _HEX)]
    return f"not a run id: {clip(bad[0])}" if bad else None


_EVAL = obj({"kind": one_of("perplexity", "lm_eval", "images"), "status": one_of(*STATUSES),
             "error": optional(text), "publishable": optional(boolean), "spec": json_value})


def _evals(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"expected an object of evaluations by id, got {clip(value)}"
    for key, entry in value.items():
        if (problem := text(key)) is not None or (problem := _EVAL(entry)) is not None:
            return f"{clip(key, 20)}: {problem}"
    return None


def _identity_problems(record: dict[str, Any]) -> list[str]:
    """``run_id`` is the SHA-256 of ``spec_json`` (canonical JSON, as ``RunSpec.run_id`` computes
    it), ``spec`` (if present) is that JSON, and the record's suite/method/target/seed are the spec's."""
    run_id, spec_json = record.get("run_id"), record.get("spec_json")
    if not (isinstance(run_id, str) and len(run_id) == 64 and set(run_id) <= _HEX):
        return [f"run_id {clip(run_id)} is not a lowercase SHA-256 hex digest"]
    if (problem := text(spec_json)) is not None:
        return [f"spec_json: {problem}"]
    if hashlib.sha256(spec_json.encode()).hexdigest() != run_id:
        return ["run_id is not the SHA-256 of spec_json"]
    try:
        spec = json.loads(spec_json)
        canonical = isinstance(spec, dict) and canonical_json(spec) == spec_json
    except (ValueError, RecursionError):
        spec, canonical = None, False
    if not canonical:
        return ["spec_json is not a spec's canonical JSON (sorted keys, no spaces)"]
    problems = []
    if "spec" in record:
        try:
            same = canonical_json(record["spec"]) == spec_json
        except (TypeError, ValueError, RecursionError):
            same = False
        if not same:
            problems.append("spec does not match spec_json")
    for key in SPEC_KEYS:
        if key in spec and key in record and (record[key] != spec[key] or type(record[key]) is not type(spec[key])):
            problems.append(f"{key} {clip(record[key])} is not the spec's {clip(spec[key])}")
    return problems


def record_problems(record: Any) -> list[str]:
    """Every way ``record`` (decoded: non-finite floats restored) breaks the schema; [] if none."""
    if not isinstance(record, dict):
        return [f"expected a JSON object, got {type(record).__name__}"]
    problems = [f"missing '{k}'" for k in REQUIRED if k not in record]
    version = record.get("record_version", RECORD_VERSION)
    if type(version) is not int or version != RECORD_VERSION:
        problems.append(f"record_version {clip(version)}, expected {RECORD_VERSION}")
    problems += _identity_problems(record)
    for key, check in FIELDS.items():
        if key in record or key in REQUIRED:
            try:
                problem = check(record.get(key))
            except RecursionError:
                problem = "nested too deeply"
            if problem is not None and f"missing '{key}'" not in problems:
                problems.append(f"{key}: {problem}")
    return problems


def summary(problems: list[str]) -> str:
    """The problems on one line, at most :data:`MAX_PROBLEMS` of them."""
    more = len(problems) - MAX_PROBLEMS
    return "; ".join(problems[:MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
