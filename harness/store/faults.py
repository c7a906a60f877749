"""Storage faults: what can go wrong with the results database, as one line with the fix.

Every error the store raises for a fault outside sparsebench is a :class:`StoreError` whose
message is one line that names the file and says what to do. :func:`store_fault` turns a DuckDB
or OS error into one. This module imports nothing heavy (duckdb is imported only to classify),
so the CLI can name these classes without loading the database engine. (A run directory that
cannot be written raises the ``OSError`` itself: the executors store that cell as an error.)

==================================  ================================================================
fault                               fix the message gives
==================================  ================================================================
busy (another process holds it)     wait for that process (:class:`StoreBusy`)
another schema version              ``harness reindex`` (:class:`StoreSchemaError`)
damaged / not a DuckDB file         ``harness reindex``: moves it aside, rebuilds (:class:`StoreCorrupt`)
read-only file, folder or mount     make it writable or give another ``--db`` (:class:`StoreUnwritable`)
disk full                           free space, rerun (:class:`StoreUnwritable`)
``--db`` empty or a directory       give a file path (:class:`StorePathError`)
==================================  ================================================================
"""
from __future__ import annotations

import errno
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(value: object, limit: int = 300) -> str:
    """``str(value)`` on one line: control characters escaped, cut to ``limit`` characters."""
    text = _CONTROL.sub(lambda m: ascii(m.group())[1:-1], str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StoreError(RuntimeError):
    """A fault of the results store the user fixes outside sparsebench; ``str()`` is one line."""


class StoreBusy(StoreError):
    """Another process held the results database for longer than ``wait_s``."""


class StoreSchemaError(StoreError):
    """The database was written by another schema version, or is not a results database."""

    older = False  # an earlier schema of ours: the store rebuilds it from the run directories


class StoreCorrupt(StoreError):
    """The database file is damaged or not a DuckDB database: ``harness reindex`` rebuilds it."""


class StoreUnwritable(StoreError):
    """The database cannot be written: read-only file, folder or mount, no permission, disk full."""


class StorePathError(StoreError):
    """The database path is empty or a directory."""


_CORRUPT = ("not a valid duckdb database", "corrupt", "checksum", "could not read enough bytes",
            "serialization error", "invalid database", "created with an older", "created with a newer",
            "storage version")
_FULL = ("no space left", "disk quota exceeded", "disk is full", "out of disk")
_READ_ONLY = ("read-only file system", "permission denied", "operation not permitted",
              "read-only mode", "readonly")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


def reindex_hint(db_path: Path) -> str:
    return f"run `harness reindex --db {db_path}` to rebuild it from the run directories"


def directory_fault(db_path: Path) -> StorePathError:
    return StorePathError(f"the results database {db_path} is a directory; give a file path "
                          f"(e.g. --db {db_path / 'sparsebench.duckdb'})")


def store_fault(exc: BaseException, db_path: Path, runs_dir: Path, *, opening: bool) -> StoreError | None:
    """The :class:`StoreError` for ``exc`` raised by DuckDB or the OS on ``db_path``, or None when
    ``exc`` is not a fault of the database (an SQL error is a bug; a query's output file that
    cannot be written is the caller's to report): raise it as is.

    Args:
        opening: ``exc`` came from opening the database: any I/O error there is the file's.
    """
    detail = one_line(exc, 200)
    message = str(exc)
    low = message.replace(str(db_path), "<db>").lower()  # match the words, never a path that holds them
    corrupt = any(s in low for s in _CORRUPT)
    fatal = type(exc).__name__ == "FatalException"  # DuckDB invalidated the database after an I/O failure
    if not (opening or corrupt or fatal or str(db_path) in message):
        return None  # e.g. COPY to an output file that cannot be written: not the database's fault
    kept = f"finished records are kept in {runs_dir}"
    if isinstance(exc, IsADirectoryError) or "is a directory" in low:
        return directory_fault(db_path)
    code = exc.errno if isinstance(exc, OSError) else None
    if code in _FULL_ERRNOS or any(s in low for s in _FULL):
        return StoreUnwritable(f"no space left on the device of {db_path} ({detail}); free some space, "
                               f"then run the same command again ({kept})")
    if code in _READ_ONLY_ERRNOS or any(s in low for s in _READ_ONLY):
        return StoreUnwritable(f"the results database {db_path} cannot be written ({detail}); make the file "
                               f"and its folder writable (chmod, chattr -i, remount read-write) or give "
                               f"another --db ({kept})")
    if corrupt:
        return StoreCorrupt(f"the results database {db_path} is damaged or not a DuckDB database ({detail}); "
                            f"{reindex_hint(db_path)} (it moves the bad file aside)")
    import duckdb

    if opening and isinstance(exc, (duckdb.IOException, OSError)):
        return StoreUnwritable(f"cannot open the results database {db_path} ({detail}); check the path and "
                               f"its file system ({kept})")
    if fatal:
        return StoreError(f"the results database {db_path} failed ({detail}); run the same command again, "
                          f"and if it fails the same way, {reindex_hint(db_path)}")
    return None


def move_aside(db_path: Path, runs_dir: Path) -> Path:
    """Rename a damaged database (and its WAL) to ``<db>.corrupt-<UTC time>``; never delete it.

    Raises:
        StoreUnwritable: it cannot be renamed.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest = db_path.with_name(f"{db_path.name}.corrupt-{stamp}")
    n = 0
    while dest.exists():
        n += 1
        dest = db_path.with_name(f"{db_path.name}.corrupt-{stamp}.{n}")
    wal = db_path.with_name(db_path.name + ".wal")
    try:
        os.rename(db_path, dest)
        if wal.exists():
            os.rename(wal, dest.with_name(dest.name + ".wal"))
    except OSError as e:
        raise StoreUnwritable(f"the results database {db_path} is damaged and cannot be moved aside "
                              f"({one_line(e, 200)}); move it away yourself, then run "
                              f"`harness reindex --db {db_path}` again") from e
    log.warning("the results database %s was damaged or not a DuckDB database: moved it aside to %s; "
                "rebuilding it from %s", one_line(db_path), one_line(dest), one_line(runs_dir))
    return dest
