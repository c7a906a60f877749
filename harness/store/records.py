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

Every record is checked against the record schema (:mod:`harness.store.validate`) when it is
written and when it is read. A run directory whose record fails (edited or damaged by hand,
torn by a bad disk, from another version) is quarantined when the store scans the run
directories: moved, never deleted, to ``<root>/quarantine/<folder name>/`` with a
``QUARANTINED.txt`` saying when and why, and named in one warning line; the scan goes on.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.store.faults import one_line
from harness.store.validate import RECORD_VERSION, clip, record_problems, summary  # noqa: F401  (RECORD_VERSION re-exported)

log = logging.getLogger(__name__)

RECORD_FILE = "record.json"
QUARANTINE_NOTE = "QUARANTINED.txt"  # in a quarantined run directory: when and why
MAX_RECORD_BYTES = 1 << 30  # a record.json larger than this is not read (it is quarantined)
_RUN_ID = re.compile(r"[0-9a-f]{64}")


class RecordError(ValueError):
    """A record (dict or ``record.json``) is not valid JSON or breaks the record schema."""


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
    """Checked, strict JSON text of a record, non-finite floats noted (see the module doc).

    The record is checked as it will be read back (numpy scalars as Python numbers), so what is
    written always passes :func:`read_record`.
    """
    encoded = encode_nonfinite(record)
    check_record(decode_nonfinite(encoded))
    return json.dumps(encoded, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def read_record(path: Path) -> dict[str, Any]:
    """Read and check one ``record.json``; non-finite floats come back as floats.

    Raises:
        RecordError: the file cannot be read, is not valid JSON (e.g. torn) or not a valid record.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise RecordError(f"{path}: not a regular file")
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise RecordError(f"{path}: larger than {MAX_RECORD_BYTES} bytes")
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RecordError(f"{path}: cannot be read ({one_line(e, 120)})") from e
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge int literals
        raise RecordError(f"{path}: not valid JSON ({one_line(e, 120)})") from e
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(record).__name__}")
    try:
        return check_record(decode_nonfinite(record))
    except RecursionError as e:
        raise RecordError(f"{path}: nested too deeply") from e
    except RecordError as e:
        raise RecordError(f"{path}: {e}") from e


def check_record(record: dict[str, Any]) -> dict[str, Any]:
    """Check a record against the record schema (:mod:`harness.store.validate`): version,
    required fields, the run id (the SHA-256 of ``spec_json``), and the type and range of every
    field the store keeps.

    Returns:
        The record itself, for chaining.

    Raises:
        RecordError: naming the problems found (on one line).
    """
    problems = record_problems(record)
    if problems:
        run_id = record.get("run_id") if isinstance(record, dict) else None
        name = run_id[:12] if isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) else clip(run_id, 20)
        raise RecordError(one_line(f"invalid record {name}: {summary(problems)}", 1000))
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


def scan_records(runs_dir: Path, quarantine_dir: Path | None = None,
                 on_quarantine: Callable[[Path], None] | None = None) -> Iterator[dict[str, Any]]:
    """Valid records under ``runs_dir`` (``<folder>/record.json``, sorted).

    An invalid record (unreadable, not JSON, breaking the schema, or whose run id is not its
    folder's name) is skipped with one warning line; with ``quarantine_dir`` its run directory is
    also moved there (:func:`quarantine_run_dir`) and ``on_quarantine`` is called with the new path.
    """
    if not runs_dir.is_dir():
        return
    for path in sorted(runs_dir.glob(f"*/{RECORD_FILE}")):
        try:
            record = read_record(path)
            if record["run_id"] != path.parent.name:
                raise RecordError(f"{path}: run_id {record['run_id'][:12]}... does not match its folder")
        except RecordError as e:
            reject(path.parent, str(e), quarantine_dir, on_quarantine)
            continue
        yield record


def reject(run_dir: Path, why: str, quarantine_dir: Path | None,
           on_quarantine: Callable[[Path], None] | None = None) -> None:
    """Skip a bad run directory with one warning line; quarantine it when ``quarantine_dir`` is set.

    ``why`` is a :class:`RecordError` message (``<path>: <reason>``) or any reason.
    """
    path = run_dir / RECORD_FILE
    why = why.removeprefix(f"{path}: ")
    if quarantine_dir is None:
        log.warning("skipping %s: %s", one_line(path), one_line(why, 1000))
        return
    try:
        moved = quarantine_run_dir(run_dir, quarantine_dir, why)
    except FileNotFoundError:  # another process moved it first
        return
    except OSError as e:
        log.warning("skipping %s (could not move it to %s: %s): %s", one_line(path), one_line(quarantine_dir),
                    one_line(e, 120), one_line(why, 1000))
        return
    log.warning("quarantined %s (moved to %s): %s", one_line(path), one_line(moved), one_line(why, 1000))
    if on_quarantine is not None:
        on_quarantine(moved)


def quarantine_run_dir(run_dir: Path, quarantine_dir: Path, why: str) -> Path:
    """Move ``run_dir`` into ``quarantine_dir`` (never delete it) and note why beside its record.

    The destination is ``quarantine_dir/<folder name>``, or ``<folder name>.N`` when a run
    directory of that name was quarantined before. Returns the new path.

    Raises:
        OSError: it could not be moved (e.g. a read-only file system).
    """
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    dest = quarantine_dir / run_dir.name
    n = 0
    while dest.exists():
        n += 1
        dest = quarantine_dir / f"{run_dir.name}.{n}"
    os.rename(run_dir, dest)  # same file system as runs/: atomic, nothing copied
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        (dest / QUARANTINE_NOTE).write_text(
            f"quarantined {stamp} from {run_dir}\n{one_line(why, 10_000)}\nFix the record, move this folder back to "
            f"{run_dir} (without this file) and run `harness reindex`.\n", encoding="utf-8")
    except OSError:  # the note is a courtesy; the move is what matters
        pass
    return dest
