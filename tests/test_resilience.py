"""SIGKILL `harness run` at random moments; one rerun must leave every cell ok exactly once.

Each trial starts `harness run` on a fresh store (a small zoo suite, magnitude and dense, cells
well under a second each), kills its whole process group (parent and workers) with SIGKILL at a
random moment, checks that nothing on disk or in the database claims a cell that is not really
done, reruns the same command once and checks the store. Kill moments: a random time during
start-up, or a random delay after the k-th finished cell (k random), so kills land in start-up,
inside cells, while records are written and while DuckDB ingests. Executors vary too, and in a
quarter of the trials only the parent is killed: its workers must finish their cell, write an ok
record (not a failed one) and exit.

The acceptance version (20 trials) is `slow`; three trials run by default.
"""
from __future__ import annotations

import random
import time

import psutil
import pytest
from scale_helpers import assert_all_ok_once, kill_group, run_harness, run_ids, start_harness, write_suite

from harness.store.index import Store

EXECUTORS = (["--executor", "local"], ["--executor", "local", "--jobs", "2"], ["--executor", "inline"])


def _kill_at_random(args: list[str], n_cells: int, rng: random.Random) -> str:
    """Start ``harness`` with ``args``, SIGKILL its process group at a random moment; say when."""
    proc = start_harness(*args)
    try:
        k = rng.randrange(n_cells + 1)  # 0: during start-up
        seen = 0
        if k == 0:
            delay = rng.uniform(0.0, 3.0)
            time.sleep(delay)
            when = f"{delay:.2f}s after start"
        else:
            while seen < k:
                line = proc.stdout.readline()
                if not line:
                    break
                seen += " ok " in line and line.startswith("[")
            delay = rng.uniform(0.0, 0.6)
            time.sleep(delay)
            when = f"{delay:.2f}s after cell {seen} of {n_cells} finished"
        done_before = proc.poll() is not None
        if rng.random() < 0.25 and not done_before:  # only the parent (the OOM killer's choice)
            orphans = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
            proc.wait(timeout=60)
            psutil.wait_procs(orphans, timeout=240)  # workers finish their cell, then exit
            assert not [p for p in orphans if p.is_running()], "a worker outlived its parent by 240 s"
            return when + f", the parent only ({len(orphans)} workers left to finish)"
        kill_group(proc)
        proc.wait(timeout=60)
        return when + (" (the run had already ended)" if done_before else "")
    finally:
        proc.stdout.close()


def _check_partial(db) -> str:
    """After the kill: every record on disk and every database row is a finished, ok cell."""
    store = Store(db, wait_s=30)
    on_disk = store.finished_on_disk()  # torn or temporary files are not records
    assert set(on_disk.values()) <= {"ok"}, on_disk
    rows = []
    if db.exists():
        rows = store.query("SELECT run_id, status FROM runs")
        assert all(s == "ok" for _, s in rows) and {r for r, _ in rows} <= set(on_disk), rows
    return f"{len(on_disk)} records on disk, {len(rows)} indexed"


def _trials(tmp_path, n: int, seed: int) -> list[str]:
    suite = write_suite(tmp_path, targets="0.3, 0.5, 0.7")  # 4 cells
    expected = run_ids(suite)
    rng = random.Random(seed)
    log = []
    for i in range(n):
        db = tmp_path / f"trial{i}" / "sb.duckdb"
        args = ["run", str(suite), "--db", str(db), "--device", "cpu", *EXECUTORS[i % len(EXECUTORS)]]
        when = _kill_at_random(args, len(expected), rng)
        kept = _check_partial(db)
        out = run_harness(*args)
        assert out.returncode == 0, f"trial {i} (killed {when}): rerun failed\n{out.stdout}\n{out.stderr}"
        assert_all_ok_once(db, expected)
        log.append(f"trial {i:2d} {' '.join(args[6:]):30s} killed {when}; {kept}; rerun ok")
    return log


def test_sigkill_then_one_rerun_completes_every_cell_once(tmp_path):
    for line in _trials(tmp_path, 3, seed=1):
        print(line)


@pytest.mark.slow
def test_sigkill_20_trials(tmp_path):
    for line in _trials(tmp_path, 20, seed=2026):
        print(line)
