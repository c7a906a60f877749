"""Helpers of the scale-out tests: a tiny zoo suite, the CLI as a subprocess, store checks.

Also the cell functions the executors' tests hand to worker processes and submitit jobs; they
are pickled by name, so they live in this importable module.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from harness.store.index import Store
from harness.suite.loader import expand, load_suite

REPO = Path(__file__).resolve().parents[1]

# magnitude and dense on the zoo Llama, a short perplexity window: each cell well under a second.
FAST_SUITE = """
name: {name}
models: [zoo:tiny-llama]
methods: [{methods}]
targets: [{targets}]
calibration: {{dataset: pydoc, n_samples: 2, seqlen: 32, seed: 0}}
evals:
  perplexity:
    - {{dataset: pydoc, seqlen: 64, max_windows: 2}}
"""


def write_suite(folder: Path, name: str = "fast", methods: str = "dense, magnitude",
                targets: str = "0.3, 0.5, 0.7", file: str | None = None) -> Path:
    path = folder / f"{file or name}.yaml"
    path.write_text(textwrap.dedent(FAST_SUITE.format(name=name, methods=methods, targets=targets)))
    return path


def run_ids(suite_path: Path) -> set[str]:
    return {c.run_id for c in expand(load_suite(suite_path))}


def harness_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200", **extra}


def start_harness(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``harness ...`` in its own process group (so the test can signal it and its workers)."""
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *args], cwd=REPO, env=env or harness_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def run_harness(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=REPO, env=env or harness_env(),
                          capture_output=True, text=True, timeout=timeout)


def stored_runs(db: Path) -> list[tuple[str, str]]:
    """``(run_id, status)`` of every row of the runs table."""
    return Store(db, wait_s=60).query("SELECT run_id, status FROM runs ORDER BY run_id")


def assert_all_ok_once(db: Path, expected: set[str]) -> None:
    """Every expected cell has exactly one row, status ok, and a valid ok record on disk."""
    rows = stored_runs(db)
    ids = [r for r, _ in rows]
    assert len(ids) == len(set(ids)), f"duplicate rows: {ids}"
    assert set(ids) == expected, f"missing {expected - set(ids)}, extra {set(ids) - expected}"
    assert all(s == "ok" for _, s in rows), rows
    assert Store(db).finished_on_disk() == dict.fromkeys(expected, "ok")


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------- cell functions for workers


def die_on_magnitude(spec, suite_text, store, device, env, caches, reporter) -> str:
    """A worker's cell function that SIGKILLs its own process on magnitude cells (an OOM kill)."""
    from harness.run.executors import run_and_write

    if spec.method == "magnitude":
        os.kill(os.getpid(), signal.SIGKILL)
    return run_and_write(spec, suite_text, store, device, env, caches, reporter)


def slurm_die_on_magnitude(spec, suite_text, db_path, device) -> str:
    """A submitit task that SIGKILLs itself on magnitude cells, before writing anything."""
    from harness.run.slurm import slurm_cell

    if spec.method == "magnitude":
        os.kill(os.getpid(), signal.SIGKILL)
    return slurm_cell(spec, suite_text, db_path, device)


def slurm_marker_or_die(spec, suite_text, db_path, device) -> str:
    """A submitit task that loads no model: dense cells write a record marked as written by the
    task (as failed, so it is never taken for a result), magnitude cells SIGKILL themselves."""
    from harness.run.cell import new_record

    if spec.method == "magnitude":
        os.kill(os.getpid(), signal.SIGKILL)
    record = new_record(spec, suite_text, device=device, env={"pid": os.getpid()})
    record.update(error="written by the task", finished_at=record["started_at"])
    Store(db_path).write_record(record)
    return record["status"]
