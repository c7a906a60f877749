"""Run directories, the source of truth: one self-contained JSON record per finished cell.

Each finished cell (ok or failed) writes one record, atomically, to
``<root>/runs/<run_id>/record.json``; :mod:`harness.store.index` indexes the records in DuckDB
and can always be rebuilt from them.

Non-finite floats: JSON cannot carry NaN or infinity, so in ``record.json`` a non-finite float
in any object is written as ``null``, and the object gains a note naming the field, e.g.
``{"name": "pydoc/ppl@128", "value": null, "nonfinite": {"value": "nan"}}``. :func:`read_record`
restores the float, and DuckDB stores it as is (``DOUBLE`` holds NaN and ±inf), so a diverged
perplexity reads as NaN, never as a missing value (NULL). A non-finite float directly inside
a list (not under an object key) has nowhere to keep its note and becomes ``null``.

Timestamps are ISO-8601 in records.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.core.spec import canonical_json

log = logging.getLogger(__name__)

RECORD_VERSION = 1
RECORD_FILE = "record.json"
_REQUIRED = ("record_version", "run_id", "spec_json", "suite", "model", "method", "target",
             "seed", "status")
_RUN_ID = re.compile(r"[0-9a-f]{64}")


class RecordError(ValueError):
    """A record (dict or ``record.json``) is not valid JSON or lacks required fields."""


def is_run_id(value: Any) -> bool:
    """Whether ``value`` is a run id: a lowercase SHA-256 hex digest (safe as a folder name)."""
    return isinstance(value, str) and _RUN_ID.fullmatch(value) is not None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a torn one.

    Writes a temporary file in the same folder, flushes and fsyncs it, ``os.replace``-s it
    over ``path`` and fsyncs the folder, so the rename itself survives a crash.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, unlike mkstemp
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # a directory cannot be opened for fsync on Windows
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def dump_record(record: dict[str, Any]) -> str:
    """Checked, strict JSON text of a record, non-finite floats noted (see the module doc)."""
    check_record(record)
    return json.dumps(encode_nonfinite(record), indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def read_record(path: Path) -> dict[str, Any]:
    """Read and check one ``record.json``; non-finite floats come back as floats.

    Raises:
        RecordError: the file is not valid JSON (e.g. torn) or not a valid record.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(record).__name__}")
    try:
        return check_record(decode_nonfinite(record))
    except RecordError as e:
        raise RecordError(f"{path}: {e}") from e


def check_record(record: dict[str, Any]) -> dict[str, Any]:
    """Check a record's version, required fields and that ``run_id`` hashes ``spec_json``.

    Returns:
        The record itself, for chaining.

    Raises:
        RecordError: naming every problem found.
    """
    problems = [f"missing '{k}'" for k in _REQUIRED if k not in record]
    if record.get("record_version", RECORD_VERSION) != RECORD_VERSION:
        problems.append(f"record_version {record['record_version']!r}, expected {RECORD_VERSION}")
    run_id = record.get("run_id")
    if not is_run_id(run_id):
        problems.append(f"run_id {run_id!r} is not a lowercase SHA-256 hex digest")
    elif isinstance(spec_json := record.get("spec_json"), str):
        if hashlib.sha256(spec_json.encode()).hexdigest() != run_id:
            problems.append("run_id is not the SHA-256 of spec_json")
        elif "spec" in record and canonical_json(record["spec"]) != spec_json:
            problems.append("spec does not match spec_json")
    if "status" in record and record["status"] not in ("ok", "failed"):
        problems.append(f"status {record['status']!r}, expected 'ok' or 'failed'")
    for key in ("metrics", "layers", "series"):
        items = record.get(key) or []
        if not isinstance(items, list) or any(not isinstance(i, dict) or "name" not in i
                                              for i in items):
            problems.append(f"'{key}' must be a list of objects, each with a 'name'")
    if problems:
        raise RecordError(f"invalid record {str(run_id)[:12]}: " + "; ".join(problems))
    return record


def encode_nonfinite(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to null plus a note."""
    if isinstance(obj, numbers.Number) and not isinstance(obj, (int, float)):
        obj = obj.item() if hasattr(obj, "item") else obj  # numpy scalars: np.int64 is no int
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        prior = obj.get("nonfinite")  # already encoded: keep its notes
        notes = dict(prior) if isinstance(prior, dict) else {}
        for k, v in obj.items():
            if k == "nonfinite" and isinstance(prior, dict):
                continue
            v = encode_nonfinite(v)
            if isinstance(v, float) and not math.isfinite(v):
                notes[k], v = str(v), None  # "nan", "inf" or "-inf"
            out[k] = v
        if notes:
            out["nonfinite"] = notes
        return out
    if isinstance(obj, (list, tuple)):
        items = (encode_nonfinite(v) for v in obj)
        return [None if isinstance(v, float) and not math.isfinite(v) else v for v in items]
    return obj


def decode_nonfinite(obj: Any) -> Any:
    """Inverse of :func:`encode_nonfinite`: restore noted non-finite floats. Idempotent."""
    if isinstance(obj, dict):
        notes = obj.get("nonfinite")
        out = {k: decode_nonfinite(v) for k, v in obj.items() if k != "nonfinite"}
        if not isinstance(notes, dict):  # not one of our notes: leave it alone
            return out if notes is None else {**out, "nonfinite": notes}
        for k, name in notes.items():
            if name not in ("nan", "inf", "-inf"):
                raise RecordError(f"nonfinite note {k}={name!r}, expected 'nan', 'inf' or '-inf'")
            out[k] = float(name)
        return out
    if isinstance(obj, list):
        return [decode_nonfinite(v) for v in obj]
    return obj


def scan_records(runs_dir: Path) -> Iterator[dict[str, Any]]:
    """Valid records under ``runs_dir`` (``<run_id>/record.json``, sorted); invalid ones are
    skipped with a warning, as is a record whose run id does not match its folder."""
    if not runs_dir.is_dir():
        return
    for path in sorted(runs_dir.glob(f"*/{RECORD_FILE}")):
        try:
            record = read_record(path)
        except RecordError as e:
            log.warning("skipping %s", e)
            continue
        if record["run_id"] != path.parent.name:
            log.warning("skipping %s: run_id %s... does not match its folder", path,
                        record["run_id"][:12])
            continue
        yield record
