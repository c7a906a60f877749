"""The Slurm executor: submitit's local executor (no Slurm needed), then a real one-node Slurm.

The real-cluster tests need `sinfo` to show an idle node; `.ci/run` starts one with
`.ci/slurm-up.sh` (Debian's slurm-wlm and munge on localhost). Elsewhere they skip, saying why.
This cluster has no accounting database, so `tests/slurm/sacct` (an `scontrol`-based stand-in)
goes first on PATH: without it submitit cannot see a killed job end.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from scale_helpers import (
    assert_all_ok_once,
    harness_env,
    run_harness,
    run_ids,
    slurm_die_on_magnitude,
    slurm_marker_or_die,
    write_suite,
)

from harness.run.runner import run_suite
from harness.store.index import Store
from harness.suite.loader import load_suite

submitit = pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[slurm]')")
from harness.run.slurm import SlurmExecutor  # noqa: E402

SACCT_DIR = Path(__file__).resolve().parent / "slurm"


def _why_no_cluster() -> str | None:
    if shutil.which("sinfo") is None:
        return "Slurm is not installed here (.ci/slurm-up.sh installs and starts a one-node cluster as root)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 10 s: slurmctld is not running (start it with .ci/slurm-up.sh)"
    states = out.stdout.split()
    if not {"idle", "mix", "alloc"} & set(states):
        return f"no usable Slurm node (sinfo: {(out.stdout + out.stderr).strip() or 'nothing'}); run .ci/slurm-up.sh"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    why = _why_no_cluster()
    if why:
        pytest.skip(why)


@pytest.fixture(autouse=True)
def tests_importable_in_jobs(monkeypatch):
    """Jobs unpickle cell functions from scale_helpers (in tests/); submitted jobs inherit the env."""
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


@pytest.fixture
def sacct_on_path(monkeypatch):
    monkeypatch.setenv("PATH", f"{SACCT_DIR}{os.pathsep}{os.environ['PATH']}")


def test_submitit_local_executor_collects_records_and_a_killed_task(tmp_path):
    suite = load_suite(write_suite(tmp_path, methods="dense, magnitude", targets="0.5"))
    store = Store(tmp_path / "sb.duckdb")
    ex = SlurmExecutor(cluster="local", timeout_min=5, poll_s=0.2, cell_fn=slurm_marker_or_die)
    results = run_suite(suite, store=store, device="cpu", executor=ex)
    assert [(r.spec.method, r.error) for r in results][0] == ("dense", "written by the task")
    assert results[1].error.startswith("local job ") and "ended without a result" in results[1].error
    # the dense task's own record (marked failed), and the killed task's: an error (ambiguous, first time)
    assert store.finished_on_disk() == {results[0].spec.run_id: "failed", results[1].spec.run_id: "error"}
    envs = store.query("SELECT method, environment_json FROM runs ORDER BY method")
    assert envs[0][0] == "dense" and json.loads(envs[0][1])["pid"] != os.getpid()  # another process
    assert list((tmp_path / "slurm").iterdir())  # submitit's logs, next to the store


def test_real_slurm_runs_each_cell_as_an_array_task(tmp_path, slurm_cluster, sacct_on_path):
    suite = write_suite(tmp_path, methods="dense, magnitude", targets="0.5")
    db = tmp_path / "sb.duckdb"
    args = ("run", str(suite), "--db", str(db), "--executor", "slurm", "--partition", "debug",
            "--timeout-min", "5", "--array-parallelism", "2")
    out = run_harness(*args, env=harness_env(PATH=os.environ["PATH"]))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted 2 cells as slurm job array" in out.stdout
    assert_all_ok_once(db, run_ids(suite))
    envs = [json.loads(e) for (e,) in Store(db).query("SELECT environment_json FROM runs")]
    jobs = {e["env_vars"]["SLURM_JOB_ID"] for e in envs}
    assert None not in jobs and len(jobs) == 2  # each cell ran in its own Slurm job (array task)
    again = run_harness(*args, env=harness_env(PATH=os.environ["PATH"]))
    assert again.returncode == 0 and "0 to run" in again.stdout and "submitted" not in again.stdout


def test_real_slurm_task_killed_is_stored_as_an_error(tmp_path, slurm_cluster, sacct_on_path):
    suite = load_suite(write_suite(tmp_path, methods="magnitude", targets="0.5"))
    store = Store(tmp_path / "sb.duckdb")
    ex = SlurmExecutor(partition="debug", timeout_min=5, poll_s=0.5, cell_fn=slurm_die_on_magnitude)
    (res,) = run_suite(suite, store=store, device="cpu", executor=ex)
    assert res.status == "error" and res.error.startswith("slurm job ") and "ended without a result" in res.error
    assert store.query("SELECT status FROM runs") == [("error",)]


def test_real_slurm_refusal_is_one_line(tmp_path, slurm_cluster, sacct_on_path):
    out = run_harness("run", str(write_suite(tmp_path)), "--db", str(tmp_path / "sb.duckdb"),
                      "--executor", "slurm", "--partition", "no-such-partition",
                      env=harness_env(PATH=os.environ["PATH"]))
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    assert "could not submit the job array" in out.stderr and "--partition" in out.stderr
