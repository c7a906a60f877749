"""The store-side fault corpus: bad records and storage faults get one line each and never block the store.

Each storage fault is applied to a small store (a two-cell suite whose cells are stored as fake
ok records, plus one record on disk not yet indexed), then every command that opens the store
runs as a subprocess and must exit with its documented code and print exactly one line on
stderr (no traceback); afterwards no record is lost (run directories byte-identical, quarantined
ones moved, a damaged database moved aside, never deleted) and the next plain ``harness run`` of
the suite completes.

Exit codes (README "Results store"): a storage fault is exit 2 (``EXIT_BAD_INPUT``, via
``store_problem``) with one line naming the file and the fix; reading commands (``results``,
``compare``, ``export``) still work on a read-only database or a full disk; ``harness reindex``
moves a damaged database aside and exits 0. A quarantined record is one warning line; the
command goes on and exits as it would without that record.

Forged records live in ``tests/fixtures/faults/store/records`` (``forge.py`` writes them).
Hypothesis mutates valid records: each either ingests or is quarantined with one line; nothing raises.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scale_helpers import REPO, run_harness, write_suite

from harness.run.cell import new_record
from harness.store.faults import StoreCorrupt, StoreUnwritable
from harness.store.index import Store
from harness.store.records import QUARANTINE_NOTE, RecordError, check_record
from harness.suite.loader import expand, load_suite

FAULTS_DIR = REPO / "tests" / "fixtures" / "faults" / "store"
_spec = importlib.util.spec_from_file_location("forge", FAULTS_DIR / "forge.py")
forge = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forge)

DAMAGED = "is damaged or not a DuckDB database"
UNWRITABLE = "cannot be written"
FULL = "no space left on the device"
IS_DIR = "is a directory; give a file path"
EMPTY = "the results database path is empty"


# --------------------------------------------------------------------------- a small store


@dataclass
class Tiny:
    root: Path
    suite: Path
    db: Path
    pending: str  # run id of the record on disk that is not yet in the database

    @property
    def store(self) -> Store:
        return Store(self.db, wait_s=10)


def build_tiny(root: Path) -> Tiny:
    """A suite of two cells stored as fake ok records, and one more record not yet indexed."""
    root.mkdir(parents=True, exist_ok=True)
    suite_path = write_suite(root, methods="dense, magnitude", targets="0.5")
    suite = load_suite(suite_path)
    db = root / "store" / "sb.duckdb"
    store = Store(db, wait_s=10)
    for spec in expand(suite):
        record = new_record(spec, suite.text, device="cpu", env={"python": "3.11"})
        record.update(status="ok", finished_at=record["started_at"], wall_time_s=0.1,
                      metrics=[{"name": "pydoc/ppl@64x2", "value": 50.0, "stderr": None, "n": 128}])
        store.save(record)
    pending = forge.base("pending")
    store.write_record(pending)  # e.g. written by a Slurm task: the next run indexes it first
    return Tiny(root, suite_path, db, pending["run_id"])


@pytest.fixture
def tiny(tmp_path) -> Tiny:
    return build_tiny(tmp_path / "t")


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root/runs`` and ``root/quarantine``, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for d in ("runs", "quarantine")
            for p in sorted((root / d).rglob("*")) if p.is_file()}


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The only line a failing (or warning) command printed on stderr; never a traceback."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    return lines[0]


def expect(tiny: Tiny, args: list[str], rc: int, phrase: str | None, db: str | None = None) -> str:
    """Run ``harness ARGS --db DB``: exit ``rc``; with ``phrase``, one stderr line holding it."""
    proc = run_harness(*args, "--db", str(tiny.db) if db is None else db, timeout=120)
    assert proc.returncode == rc, f"harness {' '.join(args)}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    if phrase is None:
        assert "Traceback" not in proc.stderr and not proc.stderr.strip(), proc.stderr
        return ""
    line = one_line(proc)
    assert phrase in line, line
    return line


def next_run_completes(tiny: Tiny) -> None:
    proc = run_harness("run", str(tiny.suite), "--db", str(tiny.db), timeout=120)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    ids = {r for (r,) in tiny.store.query("SELECT run_id FROM runs")}
    assert {c.run_id for c in expand(load_suite(tiny.suite))} | {tiny.pending} <= ids


LEADERBOARD = ["leaderboard", "build", "--no-plots", "--out"]  # + a folder
READERS = (["results"], ["compare", "--method", "magnitude"])


# --------------------------------------------------------------------------- damaged database files


def corrupt(db: Path, kind: str) -> None:
    """Damage the database file the way a bad disk, a copy cut short or a wrong path would."""
    data = bytearray(db.read_bytes())
    rng = random.Random(kind)
    if kind == "random_bytes":
        data = bytearray(rng.randbytes(20_000))
    elif kind == "text_file":
        data = bytearray(b"model,method,ppl\nzoo:tiny-llama,dense,51.9\n")
    elif kind == "empty_file":
        data = bytearray()
    elif kind == "truncated":
        data = data[: len(data) // 3]
    elif kind == "header_smashed":
        data[:4096] = rng.randbytes(4096)
    elif kind == "blocks_smashed":  # every 4 KiB after the headers: checksums fail when read
        for offset in range(8192, len(data), 4096):
            data[offset + 100: offset + 600] = rng.randbytes(500)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["random_bytes", "text_file", "empty_file", "truncated", "header_smashed",
                                  "blocks_smashed"])
def test_damaged_database(tiny, kind):
    """Every command says to run `harness reindex` (exit 2); reindex moves the file aside and rebuilds."""
    before = files(tiny.root)
    corrupt(tiny.db, kind)
    damaged = tiny.db.read_bytes()
    line = expect(tiny, ["run", str(tiny.suite)], 2, DAMAGED)
    assert f"harness reindex --db {tiny.db}" in line
    expect(tiny, ["results"], 2, DAMAGED)
    if kind == "random_bytes":  # the other readers open the store the same way
        expect(tiny, ["compare", "--method", "magnitude"], 2, DAMAGED)
        expect(tiny, ["export", "--format", "csv", "--out", str(tiny.root / "x.csv")], 2, DAMAGED)
        expect(tiny, [*LEADERBOARD, str(tiny.root / "site")], 2, DAMAGED)
    proc = run_harness("reindex", "--db", str(tiny.db))
    assert proc.returncode == 0, proc.stderr
    assert "moved it aside to" in one_line(proc)
    (aside,) = tiny.db.parent.glob("sb.duckdb.corrupt-*")
    assert aside.read_bytes() == damaged  # moved, not deleted
    assert f"3 records from {tiny.root / 'store' / 'runs'} indexed into {tiny.db}; the damaged database was " \
           f"moved to {aside}" == proc.stdout.strip()
    assert files(tiny.root) == before
    next_run_completes(tiny)


def test_damaged_database_in_process(tmp_path):
    tiny = build_tiny(tmp_path / "t")
    corrupt(tiny.db, "random_bytes")
    with pytest.raises(StoreCorrupt, match="harness reindex"):
        tiny.store.query("SELECT 1")
    store = tiny.store
    assert store.reindex() == 3 and store.moved_aside is not None and store.moved_aside.exists()
    assert store.query("SELECT count(*) FROM runs") == [(3,)]


# --------------------------------------------------------------------------- paths


def test_db_is_a_directory(tiny):
    before = files(tiny.root)
    folder = str(tiny.db.parent)
    for args in (["run", str(tiny.suite)], ["reindex"], *READERS, ["export", "--format", "csv", "--out", "-"],
                 [*LEADERBOARD, str(tiny.root / "site")]):
        expect(tiny, args, 2, IS_DIR, db=folder)
    assert files(tiny.root) == before
    next_run_completes(tiny)


def test_db_is_empty(tiny):
    for args in (["run", str(tiny.suite)], ["reindex"], *READERS, ["export", "--format", "csv"],
                 [*LEADERBOARD, str(tiny.root / "site")]):
        expect(tiny, args, 2, EMPTY, db="")
    next_run_completes(tiny)


# --------------------------------------------------------------------------- read-only


@contextlib.contextmanager
def read_only(path: Path):
    """Make ``path`` unwritable, even for root: ``chattr +i`` (chmod does not stop root)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root, chmod does not stop root, and there is no chattr here")
    proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"running as root, chmod does not stop root, and chattr +i fails here: {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_database_file(tiny):
    """Writers stop with one line (exit 2); readers still work; nothing is lost."""
    before = files(tiny.root)
    with read_only(tiny.db):
        line = expect(tiny, ["run", str(tiny.suite)], 2, UNWRITABLE)
        assert "Operation not permitted" in line or "Permission denied" in line
        expect(tiny, ["reindex"], 2, UNWRITABLE)
        expect(tiny, ["results"], 0, None)
        expect(tiny, ["export", "--format", "csv", "--out", str(tiny.root / "x.csv")], 0, "rows of the results view")
    assert files(tiny.root) == before
    next_run_completes(tiny)


def test_read_only_store_folder(tiny):
    """The database's folder cannot be written (DuckDB's WAL goes there): the same line, exit 2."""
    before = files(tiny.root)
    with read_only(tiny.db.parent):
        expect(tiny, ["run", str(tiny.suite)], 2, UNWRITABLE)
        expect(tiny, ["reindex"], 2, UNWRITABLE)
        expect(tiny, ["results"], 0, None)
    assert files(tiny.root) == before
    next_run_completes(tiny)


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}); "
                    "test_full_disk_in_process simulates ENOSPC instead")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
    return filler


def test_full_disk(small_fs):
    """A real full file system: writers stop with one line (exit 2), readers work; freed, all runs."""
    tiny = build_tiny(small_fs / "t")
    before = files(tiny.root)
    filler = fill(small_fs)
    assert shutil.disk_usage(small_fs).free < 4096
    expect(tiny, ["run", str(tiny.suite)], 2, FULL)
    expect(tiny, ["reindex"], 2, FULL)
    expect(tiny, ["results"], 0, None)
    expect(tiny, ["export", "--format", "csv", "--out", str(small_fs / "x.csv")], 2, "cannot write")
    assert files(tiny.root) == before
    filler.unlink()
    next_run_completes(tiny)


def test_full_disk_in_process(tmp_path, monkeypatch):
    """ENOSPC simulated where the database writes (runs anywhere, no mount needed)."""
    import duckdb

    tiny = build_tiny(tmp_path / "t")
    real_connect = duckdb.connect

    class FullDisk:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *args):
            if sql.strip().upper() == "COMMIT":
                raise duckdb.IOException(f'Could not write file "{tiny.db}.wal": No space left on device')
            return self.con.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.con, name)

    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: FullDisk(real_connect(*a, **k)))
    with pytest.raises(StoreUnwritable, match="no space left on the device of .*; free some space"):
        tiny.store.ingest_pending()
    monkeypatch.setattr(duckdb, "connect", real_connect)
    assert tiny.store.ingest_pending() == 1


# --------------------------------------------------------------------------- forged records


def place(runs: Path, case: str) -> Path:
    """Put the forged record of ``case`` in its run directory: its run id, or the case's name."""
    text = (forge.RECORDS / f"{case}.json").read_bytes()
    try:
        run_id = json.loads(text).get("run_id")
    except (ValueError, AttributeError, RecursionError):
        run_id = None
    folder = run_id if isinstance(run_id, str) and len(run_id) == 64 and set(run_id) != {"f"} else case
    (runs / folder).mkdir(parents=True)
    (runs / folder / "record.json").write_bytes(text)
    return runs / folder


def test_the_corpus_is_complete():
    on_disk = {p.stem for p in forge.RECORDS.glob("*.json")}
    assert on_disk == set(forge.EXPECTED) | set(forge.VALID)


@pytest.mark.parametrize("case", sorted(forge.EXPECTED))
def test_forged_record_is_quarantined_with_one_line(tmp_path, caplog, case):
    store = Store(tmp_path / "sb.duckdb", wait_s=10)
    folder = place(store.runs_dir, case)
    text = (folder / "record.json").read_bytes()
    with caplog.at_level(logging.WARNING, logger="harness.store"):
        assert store.ingest_pending() == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "\n" not in warning and forge.EXPECTED[case] in warning and str(folder / "record.json") in warning
    moved = store.quarantine_dir / folder.name
    assert store.quarantined == [moved] and not folder.exists()
    assert (moved / "record.json").read_bytes() == text  # moved, not changed
    assert forge.EXPECTED[case] in (moved / QUARANTINE_NOTE).read_text()
    assert store.query("SELECT count(*) FROM runs") == [(0,)]


@pytest.mark.parametrize("case", forge.VALID)
def test_unusual_valid_records_are_ingested(tmp_path, caplog, case):
    store = Store(tmp_path / "sb.duckdb", wait_s=10)
    place(store.runs_dir, case)
    with caplog.at_level(logging.WARNING, logger="harness.store"):
        assert store.ingest_pending() == 1
    assert not caplog.records and not store.quarantine_dir.exists()


def test_forged_records_via_the_cli(tiny):
    """`harness run` and `harness reindex` on a store full of forged records: one line per record,
    exit as without them, every record kept (quarantined ones moved), the next run completes."""
    runs = tiny.root / "store" / "runs"
    for case in forge.EXPECTED:
        place(runs, case)
    for case in forge.VALID:
        place(runs, case)
    before = files(tiny.root)
    proc = run_harness("run", str(tiny.suite), "--db", str(tiny.db))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == len(forge.EXPECTED), proc.stderr
    for case, phrase in forge.EXPECTED.items():
        assert sum(phrase in line and "quarantined" in line for line in lines) >= 1, (case, proc.stderr)
    after = files(tiny.root)
    moved = {k.replace("runs/", "quarantine/", 1) if k.replace("runs/", "quarantine/", 1) in after else k: v
             for k, v in before.items()}
    assert {k: v for k, v in after.items() if not k.endswith(QUARANTINE_NOTE)} == moved  # nothing lost
    n = len(forge.EXPECTED)
    assert len(list((tiny.root / "store" / "quarantine").iterdir())) == n
    # a record put back unchanged is quarantined again by reindex, which counts it
    back = next((tiny.root / "store" / "quarantine").iterdir())
    shutil.copytree(back, runs / back.name, ignore=shutil.ignore_patterns(QUARANTINE_NOTE))
    proc = run_harness("reindex", "--db", str(tiny.db))
    assert proc.returncode == 0 and "quarantined" in one_line(proc)
    assert proc.stdout.strip().endswith(f"; 1 invalid records quarantined in {tiny.root / 'store' / 'quarantine'}")
    assert (tiny.root / "store" / "quarantine" / f"{back.name}.1" / "record.json").exists()
    next_run_completes(tiny)
    rerun = run_harness("run", str(tiny.suite), "--db", str(tiny.db))
    assert rerun.returncode == 0 and not rerun.stderr.strip()  # nothing left to quarantine


# --------------------------------------------------------------------------- properties


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**31 - 2, max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
    | st.sampled_from(["", "yesterday", "2026-01-02T03:04:05Z", "\ud800", "nan", "abc", "0.5", "ok", "error"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
DELETE = object()
BASE = forge.base("hypothesis")
PATHS = ([(k,) for k in BASE] + [("nonfinite",), ("unknown_key",)]
         + [("metrics", 0, k) for k in ("name", "value", "stderr", "n", "headline", "nonfinite")]
         + [("layers", 0, k) for k in BASE["layers"][0]] + [("series", 0, k) for k in ("name", "step", "value")]
         + [("sparsity", k) for k in ("global", "nm_compliant")] + [("model_info", "sha256")])


def mutated(mutations) -> dict:
    record = json.loads(json.dumps(BASE))
    record["series"] = [{"name": "loss", "step": 0, "value": 1.0}]
    for path, value in mutations:
        parent = record
        for key in path[:-1]:
            if isinstance(parent, dict) and key in parent:
                parent = parent[key]
            elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
                parent = parent[key]
            else:
                parent = None
                break
        if isinstance(parent, dict):
            if value is DELETE:
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
    return record


MUTATIONS = st.lists(st.tuples(st.sampled_from(PATHS), JSON | st.just(DELETE)), min_size=1, max_size=4)


def _ingest_or_quarantine(text: bytes) -> None:
    """Write ``text`` as a record.json, ingest: either it is stored and queryable, or it is
    quarantined (moved, unchanged) with exactly one warning line; nothing raises."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "sb.duckdb", wait_s=10)
        folder = store.runs_dir / BASE["run_id"]
        folder.mkdir(parents=True)
        (folder / "record.json").write_bytes(text)
        seen: list[logging.LogRecord] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = seen.append
        log = logging.getLogger("harness.store")
        log.addHandler(handler)
        try:
            n = store.ingest_pending()
        finally:
            log.removeHandler(handler)
        if n == 1:
            assert not seen and folder.exists()
            rows = store.query("SELECT run_id, metric, value FROM results")
            assert {r[0] for r in rows} == {BASE["run_id"]}
        else:
            assert n == 0 and len(seen) == 1 and "\n" not in seen[0].getMessage()
            assert "cannot be stored" not in seen[0].getMessage()  # the schema caught it, not DuckDB
            assert not folder.exists() and (store.quarantine_dir / folder.name / "record.json").read_bytes() == text
            assert store.query("SELECT count(*) FROM runs") == [(0,)]


PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(MUTATIONS)
def test_mutated_records_ingest_or_quarantine(mutations):
    record = mutated(mutations)
    try:  # as a hand edit would write it: Python's json, NaN tokens and all
        text = json.dumps(record, indent=1).encode("utf-8", "surrogatepass")
    except ValueError:  # an int too long to write as text
        return
    _ingest_or_quarantine(text)


@PROPERTY
@given(st.integers(min_value=0), st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=6))
def test_damaged_record_bytes_ingest_or_quarantine(cut, flips):
    text = bytearray(forge.dump(BASE).encode())
    for pos, byte in flips:
        text[pos % len(text)] = byte
    _ingest_or_quarantine(bytes(text[: len(text) - cut % 50]))


@settings(max_examples=300, deadline=None)
@given(MUTATIONS)
def test_check_record_raises_only_record_error(mutations):
    record = mutated(mutations)
    try:
        check_record(record)
    except RecordError as e:
        assert "\n" not in str(e) and len(str(e)) <= 1000
    else:
        assert 0 <= record["seed"] < 2**31 and record["status"] in ("ok", "failed", "error")
