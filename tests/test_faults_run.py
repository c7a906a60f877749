"""The run side's fault corpus: a hung method, a worker killed from outside, a full disk, Ctrl-C on a
hung cell, Slurm off a cluster. Each ends in one line, with its documented exit code, no
traceback, no record lost, and the next plain ``harness run`` completes the suite.

The CLI runs through ``tests/fixtures/faults/run/harness_faults.py``, ``harness`` with the test
method ``fault_hang`` registered (in the workers too) and the fault named by ``SPARSEBENCH_FAULT``
armed. Statuses: ``failed`` is the method's own doing (its time limit included), ``error`` the
machine's, always rerun (``harness.run.faults``).
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from scale_helpers import REPO, harness_env, kill_group, run_ids, stored_runs

from harness.core.spec import DEFAULT_TIMEOUT_MIN
from harness.run.cell import new_record
from harness.run.executors import Batch, ExecutorError, InlineExecutor, LocalExecutor
from harness.run.faults import death_status, settle
from harness.run.reporter import Reporter
from harness.run.runner import run_suite
from harness.store.index import Store
from harness.suite import SuiteError, expand, load_suite

DRIVER = REPO / "tests" / "fixtures" / "faults" / "run" / "harness_faults.py"
SUITE = """
name: faults
models: [zoo:tiny-llama]
methods: [{methods}]
targets: [0.5]
{extra}
calibration: {{dataset: pydoc, n_samples: 2, seqlen: 32, seed: 0}}
evals:
  perplexity:
    - {{dataset: pydoc, seqlen: 64, max_windows: 2}}
"""


@pytest.fixture(autouse=True, scope="module")
def fault_method():
    """``fault_hang`` registered in this process too (the suites name it); nothing is armed here."""
    import importlib.util

    if "harness_faults" not in sys.modules:
        spec = importlib.util.spec_from_file_location("harness_faults", DRIVER)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["harness_faults"] = module


def suite_file(tmp_path: Path, methods: str = "fault_hang", extra: str = "") -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(textwrap.dedent(SUITE.format(methods=methods, extra=extra)))
    return path


def _env(fault: str | None, **extra: str) -> dict[str, str]:
    env = harness_env(**extra)
    env.pop("SPARSEBENCH_FAULT", None)
    if fault:
        env["SPARSEBENCH_FAULT"] = fault
    return env


def harness(*args: str, fault: str | None = None, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """``harness ARGS`` (through the driver) with ``fault`` armed; waits for it."""
    return subprocess.run([sys.executable, str(DRIVER), *args], cwd=REPO, env=_env(fault, **env),
                          capture_output=True, text=True, timeout=timeout)


def start_hung(tmp_path: Path, *args: str) -> subprocess.Popen:
    """``harness ARGS`` with ``fault_hang`` hanging, in its own process group (stdout and stderr
    merged); returns once the hung cell is in flight."""
    mark = tmp_path / "hung"
    proc = subprocess.Popen([sys.executable, str(DRIVER), *args], cwd=REPO,
                            env=_env("hang", SPARSEBENCH_FAULT_MARK=str(mark)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not mark.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc)
            raise AssertionError(f"the hung cell never started:\n{proc.communicate()[0]}")
        time.sleep(0.05)
    return proc


def cell_lines(out: str) -> list[str]:
    """The lines the run printed for its cells, ``[i/n] model/method/target status ...``."""
    return [ln.strip() for ln in out.splitlines() if ln.startswith("[")]


def assert_clean(out: subprocess.CompletedProcess | str) -> None:
    text = out if isinstance(out, str) else out.stdout + out.stderr
    assert "Traceback" not in text, text


def assert_no_record_lost(db: Path, suite: Path) -> dict[str, str]:
    """Every cell has one row, and the rows are the records on disk: nothing lost, nothing extra."""
    rows = dict(stored_runs(db))
    assert set(rows) == run_ids(suite), rows
    assert Store(db).finished_on_disk() == rows
    return rows


# ------------------------------------------------------------------------- a hung method


def test_hung_method_times_out_as_failed_and_the_rerun_does_not_hang(tmp_path):
    suite = suite_file(tmp_path, extra="timeout_min: 0.05")  # 3 s
    db = tmp_path / "sb.duckdb"
    t0 = time.monotonic()
    out = harness("run", str(suite), "--db", str(db), "--device", "cpu", fault="hang")
    assert out.returncode == 1, out.stdout + out.stderr
    assert_clean(out)
    (line,) = cell_lines(out.stdout)
    assert line.startswith("[1/1] zoo:tiny-llama/fault_hang/0.5 failed") and line.endswith("timed out after 0.05 min")
    assert assert_no_record_lost(db, suite) == dict.fromkeys(run_ids(suite), "failed")
    (error,) = Store(db).query("SELECT error FROM runs")
    assert error == ("timed out after 0.05 min",)
    first = time.monotonic() - t0
    # The plain rerun skips the failed cell (the method's own slowness): it cannot hang.
    again = harness("run", str(suite), "--db", str(db), "--device", "cpu", fault="hang", timeout=60)
    assert again.returncode == 1 and "0 to run" in again.stdout and "--retry-failed" in again.stdout
    assert_clean(again)
    print(f"timed-out run {first:.1f} s; rerun {time.monotonic() - t0 - first:.1f} s")


def sleep_on_magnitude(spec, suite_text, store, device, env, caches, reporter) -> str:
    """A worker's cell function: magnitude cells never end, others write an ok record at once."""
    while spec.method == "magnitude":
        time.sleep(0.2)
    record = new_record(spec, suite_text, device=device, env=env)
    record.update(status="ok", finished_at=record["started_at"], wall_time_s=0.0)
    store.write_record(record)
    return record["status"]


def test_the_suite_goes_on_after_a_timeout_in_a_fresh_worker(tmp_path):
    from scale_helpers import write_suite

    suite = load_suite(write_suite(tmp_path, methods="magnitude, dense", targets="0.5"))
    store = Store(tmp_path / "sb.duckdb")
    results = run_suite(suite, store=store, device="cpu", timeout_min=0.02,  # the flag's value wins
                        executor=LocalExecutor(jobs=1, cell_fn=sleep_on_magnitude))
    assert [(r.spec.method, r.status, r.error) for r in results] == [
        ("magnitude", "failed", "timed out after 0.02 min"), ("dense", "ok", None)]
    assert store.finished_on_disk() == {r.spec.run_id: r.status for r in results}


# ------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_never_waits_on_a_hung_cell(tmp_path, presses):
    """Once: the cell in flight may finish, within its time limit (here 3 s); twice: stop now."""
    suite = suite_file(tmp_path, methods="fault_hang, dense", extra="timeout_min: 0.05" if presses == 1 else "")
    db = tmp_path / "sb.duckdb"
    proc = start_hung(tmp_path, "run", str(suite), "--db", str(db), "--device", "cpu")
    try:
        t0 = time.monotonic()
        for _ in range(presses):
            kill_group(proc, signal.SIGINT)  # as a terminal does: the whole process group
            time.sleep(0.3)
        out = proc.communicate(timeout=60)[0]
    finally:
        kill_group(proc)
    waited = time.monotonic() - t0
    assert proc.returncode == 130, out
    assert_clean(out)
    if presses == 1:
        assert "Ctrl-C: finishing the cell(s) in progress (at most 0.05 min each, their time limit)" in out
        assert "timed out after 0.05 min" in out and "Stopped: 1 cells not run" in out
        assert dict(stored_runs(db)) == {expand(load_suite(suite))[0].run_id: "failed"}
    else:
        assert f"at most {DEFAULT_TIMEOUT_MIN} min each" in out and "Interrupted." in out
        assert not Store(db).finished_on_disk()  # the hung cell is lost, never stored half-done
    assert waited < 30, f"stopping took {waited:.1f} s"


# ------------------------------------------------------------------- a worker killed from outside


def test_worker_killed_from_outside_is_an_error_and_a_plain_rerun_completes(tmp_path):
    suite = suite_file(tmp_path)
    db = tmp_path / "sb.duckdb"
    proc = start_hung(tmp_path, "run", str(suite), "--db", str(db), "--device", "cpu")
    try:
        workers = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 1, workers
        workers[0].send_signal(signal.SIGKILL)  # an admin's kill -9, or the OOM killer
        out = proc.communicate(timeout=60)[0]
    finally:
        kill_group(proc)
    assert proc.returncode == 1, out
    assert_clean(out)
    (line,) = cell_lines(out)
    assert line.startswith("[1/1] zoo:tiny-llama/fault_hang/0.5 error")
    assert line.endswith("worker died with signal 9 (killed; out of memory?) while running this cell")
    assert "run again when you rerun the same command" in out
    assert assert_no_record_lost(db, suite) == dict.fromkeys(run_ids(suite), "error")
    again = harness("run", str(suite), "--db", str(db), "--device", "cpu")  # no fault: no --retry-failed needed
    assert again.returncode == 0, again.stdout + again.stderr
    assert "rerunning 1 cells stored as error" in again.stdout
    assert assert_no_record_lost(db, suite) == dict.fromkeys(run_ids(suite), "ok")


def test_death_statuses_and_the_second_ambiguous_death():
    assert death_status(-signal.SIGSEGV) == death_status(-signal.SIGABRT) == death_status(3) == "failed"
    assert death_status(-signal.SIGTERM) == death_status(-signal.SIGHUP) == "error"
    assert death_status(-signal.SIGKILL) == "ambiguous"
    why = "worker died with signal 9 (killed; out of memory?) while running this cell"
    assert settle("ambiguous", why, None) == ("error", why)
    assert settle("ambiguous", why, {"status": "ok", "error": None}) == ("error", why)
    assert settle("ambiguous", why, {"status": "error", "error": why}) == ("failed", f"{why}, as on its previous attempt")
    assert settle("failed", "timed out after 1 min", {"status": "error", "error": why}) == (
        "failed", "timed out after 1 min")
    slurm = "slurm job 7_1 ended without a result (FAILED): UncompletedJobError: ..."
    assert settle("ambiguous", slurm, {"status": "error", "error": slurm.replace("7_1", "6_0")},
                  "ended without a result (FAILED)")[0] == "failed"


# --------------------------------------------------------------------------- a full disk


def test_full_disk_in_the_worker_is_an_error_and_a_plain_rerun_completes(tmp_path):
    suite = suite_file(tmp_path, methods="dense")
    db = tmp_path / "sb.duckdb"
    out = harness("run", str(suite), "--db", str(db), "--device", "cpu", fault="enospc")
    assert out.returncode == 1, out.stdout + out.stderr
    assert_clean(out)
    (line,) = cell_lines(out.stdout)
    assert line.startswith("[1/1] zoo:tiny-llama/dense/0 error")
    assert line.endswith("the cell's record could not be written: OSError: [Errno 28] No space left on device")
    assert assert_no_record_lost(db, suite) == dict.fromkeys(run_ids(suite), "error")  # the harness wrote it
    again = harness("run", str(suite), "--db", str(db), "--device", "cpu")
    assert again.returncode == 0, again.stdout + again.stderr
    assert assert_no_record_lost(db, suite) == dict.fromkeys(run_ids(suite), "ok")


class FullDisk(Store):
    """A store on a full disk: no record can be written; the database is elsewhere."""

    def write_record(self, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.run_dir(record["run_id"])))


def test_full_disk_everywhere_reports_an_unstored_error_and_goes_on(tmp_path):
    from scale_helpers import write_suite

    suite = load_suite(write_suite(tmp_path, methods="dense"))
    (res,) = run_suite(suite, store=FullDisk(tmp_path / "sb.duckdb"), device="cpu", executor=InlineExecutor())
    assert res.status == "error" and res.error == (
        "the cell's record could not be written: OSError: [Errno 28] No space left on device; "
        "its record could not be written either (OSError: [Errno 28] No space left on device)")
    assert stored_runs(tmp_path / "sb.duckdb") == []  # nothing claims a result that is not on disk
    (again,) = run_suite(suite, store=Store(tmp_path / "sb.duckdb"), device="cpu", executor=InlineExecutor())
    assert again.status == "ok"


# ---------------------------------------------------------------------- Slurm off a cluster


def test_slurm_off_a_cluster_is_one_line(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    suite = suite_file(tmp_path, methods="dense")
    db = tmp_path / "sb.duckdb"
    out = harness("run", str(suite), "--db", str(db), "--executor", "slurm", PATH=str(empty), timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == ("--executor slurm: Slurm was not found on this machine (no srun or sbatch on PATH); run on "
                          "the cluster's login node, or run here with --executor local (the default; --jobs N runs "
                          "N cells at once)\n")
    assert not db.exists()


def test_slurm_executor_off_a_cluster_raises_one_line(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from harness.run.slurm import SlurmExecutor

    monkeypatch.setenv("PATH", str(tmp_path))
    spec = expand(load_suite(suite_file(tmp_path, methods="dense")))[0]
    batch = Batch([spec], "", "cpu", Store(tmp_path / "sb.duckdb"), Reporter(), threading.Event(), print)
    with pytest.raises(ExecutorError, match="^--executor slurm: Slurm was not found on this machine"):
        SlurmExecutor().run(batch)


# --------------------------------------------------------------------------- the limit itself


def test_timeout_key_bounds_and_run_ids(tmp_path):
    base = expand(load_suite(suite_file(tmp_path, methods="dense")))
    timed = load_suite(suite_file(tmp_path, methods="dense", extra="timeout_min: 0.05"))
    assert timed.timeout_min == 0.05 and [c.run_id for c in expand(timed)] == [c.run_id for c in base]
    assert load_suite(suite_file(tmp_path, methods="dense", extra="timeout_min: 90")).timeout_min == 90.0
    for bad in ("0", "-1", "10081", "true", "'1h'"):
        with pytest.raises(SuiteError, match=r"timeout_min: expected a time limit per cell in minutes, more than 0 "
                                             r"and at most 10080 \(7 days; default 1440\)"):
            load_suite(suite_file(tmp_path, methods="dense", extra=f"timeout_min: {bad}"))


@pytest.mark.parametrize("args, message", [
    (["--executor", "inline", "--timeout-min", "5"], "--timeout-min needs worker processes"),
    (["--timeout-min", "0"], "argument --timeout-min: expected more than 0 and at most 10080 minutes"),
    (["--timeout-min", "soon"], "argument --timeout-min: expected minutes, e.g. 90 or 0.5; got 'soon'"),
])
def test_bad_timeout_flags_are_one_line(tmp_path, args, message):
    out = harness("run", str(suite_file(tmp_path, methods="dense")), "--db", str(tmp_path / "sb.duckdb"), *args,
                  timeout=60)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "sb.duckdb").exists()


class Limit:
    """An executor that records the time limit it was given and runs nothing."""

    def run(self, batch):
        self.limit = batch.timeout_min


def test_the_limit_is_the_flag_else_the_suite_else_the_default(tmp_path):
    plain = load_suite(suite_file(tmp_path, methods="dense"))
    timed = load_suite(suite_file(tmp_path, methods="dense", extra="timeout_min: 30"))
    for suite, flag, expected in ((plain, None, DEFAULT_TIMEOUT_MIN), (timed, None, 30.0), (timed, 2.5, 2.5)):
        ex = Limit()
        run_suite(suite, store=Store(tmp_path / "sb.duckdb"), executor=ex, timeout_min=flag)
        assert ex.limit == expected
