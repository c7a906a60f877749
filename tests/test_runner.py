"""End to end through the library: suite -> prune -> evaluate -> DuckDB, on the shipped zoo Llama."""
from __future__ import annotations

import json
import textwrap

import pytest

from harness.run.reporter import Reporter
from harness.run.runner import run_suite
from harness.store.index import Store
from harness.suite.loader import load_suite

SUITE = """
name: e2e
models: [zoo:tiny-llama]
methods: [dense, magnitude, sparsegpt]
targets: [0.5]
calibration: {dataset: pydoc, n_samples: 8, seqlen: 64, seed: 0}
evals:
  perplexity:
    - {dataset: pydoc, seqlen: 128, max_windows: 8}
"""


def write_suite(tmp_path, text=SUITE, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_suite(path)


class Recorder(Reporter):
    def __init__(self, stop_after=None):
        self.started, self.ended, self.stop_after = [], [], stop_after

    def cell_start(self, index, total, spec):
        self.started.append(spec.run_id)

    def cell_end(self, result):
        self.ended.append(result)
        if self.stop_after is not None and len(self.ended) >= self.stop_after:
            raise KeyboardInterrupt


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "results" / "sb.duckdb")


def test_suite_runs_records_and_skips_on_rerun(tmp_path, store):
    suite = write_suite(tmp_path)
    results = run_suite(suite, store=store, device="cpu")
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    ppl = {r.spec.method: r.metrics["pydoc/ppl@128x8"] for r in results}
    assert ppl["dense"] < ppl["sparsegpt"] < ppl["magnitude"]

    rows = store.query("SELECT method, target, metric, value, status FROM results ORDER BY method")
    assert [(m, t, s) for m, t, _, _, s in rows] == [("dense", "0", "ok"), ("magnitude", "0.5", "ok"), ("sparsegpt", "0.5", "ok")]
    assert {metric for _, _, metric, _, _ in rows} == {"pydoc/ppl@128x8"}

    # provenance and measured sparsity
    run = store.query("SELECT spec_json, model_sha256, environment_json, sparsity_global, run_id FROM runs WHERE method = 'sparsegpt'")[0]
    from harness.models import zoo
    assert run[1] == zoo.checkpoint_sha256(zoo.ensure_model("tiny-llama"))
    env = json.loads(run[2])
    assert env["packages"]["torch"] and "python" in env
    assert env["precision"] == {"tf32_matmul": False, "tf32_cudnn": False, "accumulation": "float32"}
    assert abs(run[3] - 0.5) < 0.002
    layers = store.query("SELECT layer, sparsity, rel_error FROM layers WHERE run_id = ?", [run[4]])
    assert len(layers) == 28  # 4 blocks x 7 Linear layers
    assert all(abs(s - 0.5) < 0.01 and 0 < e < 1 for _, s, e in layers)
    assert (store.run_dir(run[4]) / "record.json").exists()

    rec = Recorder()
    again = run_suite(suite, store=store, device="cpu", reporter=rec)
    assert rec.started == [] and [r.status for r in again] == ["skipped"] * 3
    assert again[0].metrics == results[0].metrics

    rec = Recorder()
    run_suite(suite, store=store, device="cpu", reporter=rec, force=True, only="zoo:tiny-llama/dense/*")
    assert len(rec.started) == 1


def test_failed_cell_is_recorded_and_suite_continues(tmp_path, store, monkeypatch):
    """An unreachable hub model is the machine's fault, not a result: stored as "error" with one line,
    the suite goes on, and the next plain run retries it (a method's own failure waits for --retry-failed)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    suite = write_suite(tmp_path, SUITE.replace("[zoo:tiny-llama]", "[hf:sparsebench-test/does-not-exist, zoo:tiny-llama]")
                        .replace("[dense, magnitude, sparsegpt]", "[magnitude]"))
    results = run_suite(suite, store=store, device="cpu")
    assert [r.status for r in results] == ["error", "ok"]
    err = results[0].error
    assert "hf:sparsebench-test/does-not-exist" in err and "path:" in err and "\n" not in err
    status, error, tb = store.query("SELECT status, error, traceback FROM runs WHERE model LIKE 'hf:%'")[0]
    assert status == "error" and error == err and "Traceback" in tb
    rec = Recorder()
    again = run_suite(suite, store=store, device="cpu", reporter=rec)
    assert rec.started == [results[0].spec.run_id]  # retried by a plain run; the ok cell stays stored
    assert [(r.status, r.stored) for r in again] == [("error", False), ("skipped", True)]


def test_a_methods_own_failure_waits_for_retry_failed(tmp_path, store, monkeypatch):
    from harness.run import families

    def boom(*args, **kwargs):
        raise RuntimeError("the method broke")

    from dataclasses import replace

    monkeypatch.setitem(families.FAMILIES, "lm", replace(families.FAMILIES["lm"], prune=boom))
    suite = write_suite(tmp_path, SUITE.replace("[dense, magnitude, sparsegpt]", "[magnitude]"))
    (first,) = run_suite(suite, store=store, device="cpu")
    assert first.status == "failed" and first.error == "RuntimeError: the method broke"
    rec = Recorder()
    (again,) = run_suite(suite, store=store, device="cpu", reporter=rec)
    assert rec.started == [] and (again.status, again.stored) == ("failed", True)
    rec = Recorder()
    run_suite(suite, store=store, device="cpu", reporter=rec, retry_failed=True)
    assert rec.started == [first.spec.run_id]


def test_interrupt_keeps_finished_cells_and_rerun_resumes(tmp_path, store):
    suite = write_suite(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, store=store, device="cpu", reporter=Recorder(stop_after=1))
    done = store.query("SELECT count(*) FROM runs WHERE status = 'ok'")[0][0]
    assert done == 1
    rec = Recorder()
    results = run_suite(suite, store=store, device="cpu", reporter=rec)
    assert len(rec.started) == 2 and [r.status for r in results].count("skipped") == 1
    assert store.query("SELECT count(*) FROM runs WHERE status = 'ok'")[0][0] == 3


def test_out_of_tolerance_sparsity_fails_the_cell(tmp_path, store):
    from dataclasses import dataclass

    from harness.core.method import METHODS, PruneResult, PruningMethod, register_method

    @register_method("test_underprune")
    class Underprune(PruningMethod):
        @dataclass(frozen=True)
        class Params:
            pass

        stats = "none"

        def prune(self, name, weight, stats, target):
            w = weight.clone()
            w[:, : int(w.shape[1] * 0.4)] = 0  # 40% instead of the target
            return PruneResult(w)

    try:
        suite = write_suite(tmp_path, SUITE.replace("[dense, magnitude, sparsegpt]", "[test_underprune]"))
        (res,) = run_suite(suite, store=store, device="cpu")
        assert res.status == "failed" and "out of tolerance" in res.error
        assert store.query("SELECT count(*) FROM layers")[0][0] == 28  # the evidence is kept
    finally:
        METHODS.unregister("test_underprune")


def test_tf32_is_off_unless_asked_for(monkeypatch):
    import torch

    from harness.run.env import TF32_ENV, apply_precision

    monkeypatch.setenv(TF32_ENV, "1")
    assert apply_precision()["tf32_matmul"] is True and torch.backends.cudnn.allow_tf32 is True
    monkeypatch.delenv(TF32_ENV)
    assert apply_precision() == {"tf32_matmul": False, "tf32_cudnn": False, "accumulation": "float32"}
    assert torch.backends.cuda.matmul.allow_tf32 is False
