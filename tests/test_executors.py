"""Executors: the local worker pool (same numbers as inline, a dead worker fails only its cell,
one GPU per worker), the run flags, Ctrl-C, two concurrent runs on one store, `harness reindex`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from scale_helpers import (
    assert_all_ok_once,
    die_on_magnitude,
    kill_group,
    run_harness,
    run_ids,
    start_harness,
    stored_runs,
    write_suite,
)

from harness.run.executors import ExecutorError, LocalExecutor, _slots, describe_exit
from harness.run.cell import new_record
from harness.run.reporter import Reporter
from harness.run.runner import run_suite
from harness.store.index import Store
from harness.suite.loader import load_suite


class Events(Reporter):
    def __init__(self):
        self.events = []

    def cell_start(self, index, total, spec):
        self.events.append(("start", spec.method, spec.target))

    def cell_end(self, result):
        self.events.append(("end", result.spec.method, result.spec.target, result.status))


@pytest.mark.slow  # ~50 s on the shared 2-core machine; the pool also runs in the default tests below
def test_local_pool_gives_the_same_records_as_inline(tmp_path):
    suite = load_suite(write_suite(tmp_path, targets="0.5, 0.7"))
    inline = run_suite(suite, store=Store(tmp_path / "a" / "sb.duckdb"), device="cpu")
    rep = Events()
    pooled = run_suite(suite, store=Store(tmp_path / "b" / "sb.duckdb"), device="cpu", reporter=rep,
                       executor=LocalExecutor(jobs=2))
    assert [r.status for r in pooled] == ["ok"] * 3
    assert {r.spec.run_id: r.metrics for r in pooled} == {r.spec.run_id: r.metrics for r in inline}
    assert sorted(e[:3] for e in rep.events if e[0] == "end") == sorted(
        ("end", r.spec.method, r.spec.target) for r in pooled)
    assert len(stored_runs(tmp_path / "b" / "sb.duckdb")) == 3


def test_dead_worker_loses_only_its_cell_and_is_replaced(tmp_path):
    """SIGKILL is ambiguous (the OOM killer, or someone's kill -9): an error, which a plain rerun
    retries; killed again on that retry, the cell is failed and no longer retried."""
    suite = load_suite(write_suite(tmp_path, methods="magnitude, dense", targets="0.5"))
    store = Store(tmp_path / "sb.duckdb")
    rep = Events()
    results = run_suite(suite, store=store, device="cpu", reporter=rep,
                        executor=LocalExecutor(jobs=1, cell_fn=die_on_magnitude))
    assert [(r.spec.method, r.status) for r in results] == [("magnitude", "error"), ("dense", "ok")]
    msg = "worker died with signal 9 (killed; out of memory?) while running this cell"
    assert results[0].error == msg
    assert store.query("SELECT method, status, error FROM runs ORDER BY method") == [
        ("dense", "ok", None), ("magnitude", "error", msg)]
    assert store.finished_on_disk()[results[0].spec.run_id] == "error"
    assert rep.events[:2] == [("start", "magnitude", "0.5"), ("end", "magnitude", "0.5", "error")]
    again = run_suite(suite, store=store, device="cpu", executor=LocalExecutor(jobs=1, cell_fn=die_on_magnitude))
    assert [(r.spec.method, r.status, r.error) for r in again] == [
        ("magnitude", "failed", msg + ", as on its previous attempt"), ("dense", "skipped", None)]


def report_visible_gpu(spec, suite_text, store, device, env, caches, reporter) -> str:
    record = new_record(spec, suite_text, device=device, env=env)
    record.update(error=f"{device} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}",
                  finished_at=record["started_at"])
    store.write_record(record)
    return record["status"]


def test_each_worker_sees_one_gpu(tmp_path, monkeypatch):
    import harness.run.executors as ex

    monkeypatch.setattr(ex, "_gpu_ids", lambda: ["3", "5"])
    suite = load_suite(write_suite(tmp_path, methods="magnitude", targets="0.2, 0.4, 0.6, 0.8"))
    results = run_suite(suite, store=Store(tmp_path / "sb.duckdb"),
                        executor=LocalExecutor(jobs=2, cell_fn=report_visible_gpu))
    seen = {r.error for r in results}
    assert seen <= {"cuda CUDA_VISIBLE_DEVICES=3", "cuda CUDA_VISIBLE_DEVICES=5"} and len(results) == 4


def test_slots_and_exit_descriptions(monkeypatch):
    import harness.run.executors as ex

    monkeypatch.setattr(ex, "_gpu_ids", lambda: ["0", "1"])
    assert _slots(None, 3) == (["cuda#0", "cuda#1", "cuda#0"], None)
    assert _slots("cuda:1", 2) == (["cuda:1", "cuda:1"], None)
    devices, threads = _slots("cpu", 2)
    assert devices == ["cpu", "cpu"] and threads == max(1, (os.cpu_count() or 1) // 2)
    monkeypatch.setattr(ex, "_gpu_ids", lambda: [])
    assert _slots(None, 1) == (["cpu"], None)
    with pytest.raises(ExecutorError, match="no CUDA GPU"):
        _slots("cuda", 1)
    assert describe_exit(-9) == "worker died with signal 9 (killed; out of memory?)"
    assert describe_exit(-11) == "worker died with signal 11 (segmentation fault)"
    assert describe_exit(3) == "worker exited with code 3"
    with pytest.raises(ValueError):
        LocalExecutor(jobs=0)


@pytest.mark.parametrize("args, message", [
    (["--executor", "inline", "--jobs", "2"], "runs one cell at a time"),
    (["--partition", "debug"], "--partition is for --executor slurm"),
    (["--jobs", "0"], "--jobs must be at least 1"),
])
def test_bad_executor_flags_are_one_line(tmp_path, args, message):
    out = run_harness("run", str(write_suite(tmp_path)), "--db", str(tmp_path / "sb.duckdb"), *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "sb.duckdb").exists()


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 240) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} not seen in:\n{''.join(lines)}")


@pytest.mark.parametrize("presses", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_ctrl_c_stops_cleanly_and_the_rerun_completes(tmp_path, presses):
    suite = write_suite(tmp_path, targets="0.2, 0.4, 0.5, 0.6, 0.8")  # 6 cells
    db = tmp_path / "sb.duckdb"
    proc = start_harness("run", str(suite), "--db", str(db), "--device", "cpu")
    _wait_for_line(proc, "[1/6]")
    for _ in range(presses):
        kill_group(proc, signal.SIGINT)  # as a terminal does: the whole process group
        time.sleep(0.05)
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 130, out
    assert "Ctrl-C: finishing the cell(s) in progress" in out and "Traceback" not in out
    assert ("Stopped:" in out and "not run" in out) if presses == 1 else "Interrupted." in out
    rows = stored_runs(db)
    assert 1 <= len(rows) < 6 and all(s == "ok" for _, s in rows)  # nothing half-done counts
    assert Store(db).finished_on_disk() == dict(rows)
    again = run_harness("run", str(suite), "--db", str(db), "--device", "cpu")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{6 - len(rows)} to run, {len(rows)} already stored" in again.stdout
    assert_all_ok_once(db, run_ids(suite))


def test_two_concurrent_runs_on_one_store_lose_nothing(tmp_path):
    a = write_suite(tmp_path, name="shared", file="a", targets="0.3, 0.5")
    b = write_suite(tmp_path, name="shared", file="b", methods="magnitude", targets="0.5, 0.7")
    db = tmp_path / "sb.duckdb"
    Store(db).query("SELECT 1")  # create it, then hold its lock while both runs start
    code = f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('held', flush=True); time.sleep(3)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    procs = [start_harness("run", str(s), "--db", str(db), "--device", "cpu") for s in (a, b)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    holder.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "waiting for the results database" in out  # told, not failed
    assert_all_ok_once(db, run_ids(a) | run_ids(b))  # the shared cell once, 4 cells in all


def test_reindex_command(tmp_path):
    from test_store import make_record

    db = tmp_path / "sb.duckdb"
    store = Store(db)
    for method, status in (("wanda", "ok"), ("magnitude", "ok"), ("sparsegpt", "failed")):
        store.save(make_record(method, status=status))
    before = store.query("SELECT * FROM results ORDER BY run_id, metric")
    db.unlink()
    out = run_harness("reindex", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"3 records from {tmp_path / 'runs'} indexed into {db}"
    assert store.query("SELECT * FROM results ORDER BY run_id, metric") == before
    empty = run_harness("reindex", "--store", str(tmp_path / "none" / "sb.duckdb"))
    assert empty.returncode == 2 and "no run directories" in empty.stderr


def test_record_waits_on_disk_while_the_database_is_busy(tmp_path):
    from harness.store.index import StoreBusy

    class BusyOnce(Store):
        calls = 0

        def ingest(self, record):
            BusyOnce.calls += 1
            if BusyOnce.calls == 1:
                raise StoreBusy("the results database is held by another process")
            super().ingest(record)

    class Notes(Reporter):
        notes: list[str] = []

        def note(self, message):
            self.notes.append(message)

    suite = load_suite(write_suite(tmp_path, methods="dense"))
    store = BusyOnce(tmp_path / "sb.duckdb")
    (res,) = run_suite(suite, store=store, device="cpu", reporter=Notes())
    assert res.status == "ok" and "indexing is retried at the end" in Notes.notes[0]
    assert stored_runs(store.db_path) == [(res.spec.run_id, "ok")]  # ingest_pending indexed it
