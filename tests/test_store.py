"""Tests for harness.store (records, DuckDB index, locking) and harness.run.env."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from harness.run.env import environment, peak_rss_bytes
from harness.core.spec import CalibrationSpec, ModelSpec, RunSpec
from harness.store.index import SCHEMA_VERSION, Store, StoreBusy, StoreSchemaError
from harness.store.records import RecordError, atomic_write_text, read_record


def make_record(method: str = "wanda", status: str = "ok", ppl: float = 47.6) -> dict:
    spec = RunSpec(suite="quickstart", model=ModelSpec("zoo:tiny-llama"), method=method,
                   params={"damping": 0.01}, target="0.5", calibration=CalibrationSpec())
    ok = status == "ok"
    return {
        "record_version": 2, "run_id": spec.run_id, "spec": spec.to_dict(),
        "spec_json": spec.canonical_json(), "suite": "quickstart", "suites": ["quickstart"],
        "variant": method, "pruned": ok,
        "evals": {"e1": {"kind": "perplexity", "spec": {"dataset": "pydoc", "seqlen": 128}, "status": status,
                         "suites": ["quickstart"]},
                  "e2": {"kind": "lm_eval", "spec": {"tasks": ["tiny_swap"]}, "status": status, "suites": ["quickstart"]}},
        "suite_text": "name: quickstart\n",
        "model": "zoo:tiny-llama", "method": method, "target": "0.5", "seed": 0,
        "status": status, "error": None if ok else "RuntimeError: boom",
        "traceback": None if ok else "Traceback ...\nRuntimeError: boom",
        "started_at": "2025-01-02T03:04:05.123456+00:00", "finished_at": "2025-01-02T03:04:06Z",
        "wall_time_s": 1.2, "prune_time_s": 0.8, "peak_rss_bytes": 123, "peak_cuda_bytes": None,
        "device": "cpu",
        "sparsity": {"global": 0.5001, "target": 0.5, "nm_compliant": None} if ok else None,
        "metrics": [{"name": "pydoc/ppl@128", "value": ppl, "stderr": None, "n": 80, "eval_id": "e1"},
                    {"name": "tiny_swap/acc", "value": 0.81, "stderr": 0.03, "n": 200, "eval_id": "e2"}]
        if ok else [],
        "layers": [{"name": "model.layers.0.self_attn.q_proj", "block": 0, "rows": 128, "cols": 128,
                    "numel": 16384, "zeros": 8193, "sparsity": 0.50006, "nm_ok": None,
                    "rel_error": 0.0123, "time_s": 0.01, "info": {"damping": 0.01}}] if ok else [],
        "series": [{"name": "val_loss", "step": 0, "value": 3.1}] if ok else [],
        "model_info": {"sha256": "ab" * 32, "num_params": 1070000, "source": "zoo"},
        "environment": {"python": "3.11.7"},
    }


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "sparsebench.duckdb", wait_s=10)


RESULTS = "SELECT method, metric, value, status FROM results ORDER BY method, metric"


def test_record_round_trip(store):
    rec = make_record()
    path = store.write_record(rec)
    assert path == store.runs_dir / rec["run_id"] / "record.json"
    assert read_record(path) == json.loads(json.dumps(rec))  # the spec's tuples become lists
    assert not list(path.parent.glob("*.tmp"))  # the temp file was renamed away


def test_nonfinite_values_are_noted_in_json_and_stored_as_is(store):
    rec = make_record(ppl=float("nan"))
    rec["layers"][0]["rel_error"] = float("inf")
    path = store.write_record(rec)
    raw = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert raw["metrics"][0]["value"] is None
    assert raw["metrics"][0]["nonfinite"] == {"value": "nan"}
    assert raw["layers"][0]["nonfinite"] == {"rel_error": "inf"}
    back = read_record(path)
    assert math.isnan(back["metrics"][0]["value"]) and back["layers"][0]["rel_error"] == math.inf
    store.ingest(back)
    (value,) = store.query("SELECT value FROM metrics WHERE metric = 'pydoc/ppl@128'")[0]
    assert math.isnan(value)  # NaN, not NULL
    assert store.query("SELECT rel_error FROM layers") == [(math.inf,)]


def test_ingest_then_results_view_shows_failed_run(store):
    store.save(make_record("wanda"))
    store.save(make_record("sparsegpt", status="failed"))
    assert store.query(RESULTS) == [
        ("sparsegpt", None, None, "failed"),
        ("wanda", "pydoc/ppl@128", 47.6, "ok"),
        ("wanda", "tiny_swap/acc", 0.81, "ok"),
    ]
    run = store.query("SELECT error, started_at, nm_compliant, model_sha256, environment_json "
                      "FROM runs WHERE method = 'sparsegpt'")[0]
    assert run[0] == "RuntimeError: boom"
    assert str(run[1]) == "2025-01-02 03:04:05.123456"  # naive UTC
    assert run[2] is None and run[3] == "ab" * 32 and json.loads(run[4]) == {"python": "3.11.7"}
    layer = store.query("SELECT layer, zeros, info_json FROM layers")
    assert layer == [("model.layers.0.self_attn.q_proj", 8193, '{"damping": 0.01}')]
    assert store.query("SELECT name, step, value FROM series") == [("val_loss", 0, 3.1)]
    df = store.query_df("SELECT * FROM results")
    assert list(df.columns) == ["run_id", "suite", "model", "method", "target", "metric", "value", "status",
                                "variant", "seed", "params", "stderr", "n", "suites", "eval_id"]


def test_upsert_replaces_without_duplicates(store):
    store.ingest(make_record(ppl=50.0))
    store.ingest(make_record(ppl=40.0))
    assert store.query("SELECT count(*) FROM runs") == [(1,)]
    assert store.query("SELECT value FROM results WHERE metric LIKE 'pydoc%'") == [(40.0,)]
    for table, n in (("metrics", 2), ("layers", 1), ("series", 1)):
        assert store.query(f"SELECT count(*) FROM {table}") == [(n,)]


def test_statuses(store):
    ok, failed = make_record("wanda"), make_record("magnitude", status="failed")
    assert store.statuses([ok["run_id"]]) == {}  # no database yet
    store.ingest(ok)
    store.ingest(failed)
    assert store.statuses([ok["run_id"], failed["run_id"], "0" * 64]) == {
        ok["run_id"]: "ok", failed["run_id"]: "failed"}
    assert store.statuses([]) == {}


def test_reindex_rebuilds_from_disk(store):
    for method in ("wanda", "magnitude"):
        store.save(make_record(method))
    store.save(make_record("sparsegpt", status="failed"))
    before = store.query(RESULTS)
    store.db_path.unlink()
    assert store.reindex() == 3
    assert store.query(RESULTS) == before
    assert store.query("SELECT value FROM meta") == [(str(SCHEMA_VERSION),)]


def test_ingest_pending_and_finished_on_disk(store):
    a, b = make_record("wanda"), make_record("magnitude", status="failed")
    store.save(a)
    store.write_record(b)  # e.g. written by a cluster node
    assert store.finished_on_disk() == {a["run_id"]: "ok", b["run_id"]: "failed"}
    assert store.ingest_pending() == 1
    assert store.ingest_pending() == 0
    b2 = make_record("magnitude", status="ok") | {"finished_at": "2025-02-01T00:00:00+00:00"}
    store.write_record(b2)  # a --force rerun
    assert store.ingest_pending() == 1
    assert store.statuses([b["run_id"]]) == {b["run_id"]: "ok"}


def test_invalid_record_files_are_skipped(store, caplog):
    good = make_record()
    store.write_record(good)
    torn = store.runs_dir / ("1" * 64) / "record.json"
    torn.parent.mkdir()
    torn.write_text('{"record_version": 1, "run_id": "11')
    moved = make_record("magnitude")  # valid, but in another run's folder
    (store.runs_dir / ("2" * 64)).mkdir()
    (store.runs_dir / ("2" * 64) / "record.json").write_text(json.dumps(moved))
    with pytest.raises(RecordError, match="not valid JSON"):
        read_record(torn)
    assert store.finished_on_disk() == {good["run_id"]: "ok"}
    assert store.reindex() == 1
    assert store.ingest_pending() == 0
    assert "not valid JSON" in caplog.text and "does not match its folder" in caplog.text


def test_bad_records_are_rejected_before_writing(store):
    rec = make_record()
    with pytest.raises(RecordError, match="run_id is not the SHA-256 of spec_json"):
        store.write_record(rec | {"run_id": "f" * 64})
    with pytest.raises(RecordError, match="missing 'status'"):
        bad = dict(rec)
        del bad["status"]
        store.ingest(bad)
    with pytest.raises(ValueError, match="not a lowercase SHA-256"):
        store.run_dir("../../etc")
    assert not store.runs_dir.exists()


def test_schema_version_mismatch_asks_for_reindex(store):
    store.ingest(make_record())
    import duckdb

    con = duckdb.connect(str(store.db_path))
    con.execute("UPDATE meta SET value = '99'")  # a later sparsebench wrote it: never rebuilt behind its back
    con.close()
    with pytest.raises(StoreSchemaError, match="reindex"):
        store.query("SELECT 1")
    store.write_record(make_record())
    assert store.reindex() == 1
    assert store.query("SELECT count(*) FROM runs") == [(1,)]


def test_earlier_schema_is_rebuilt_from_the_run_dirs(store):
    store.save(make_record())
    import duckdb

    con = duckdb.connect(str(store.db_path))
    con.execute("UPDATE meta SET value = '2'")
    con.execute("DELETE FROM runs")
    con.close()
    assert store.query("SELECT count(*) FROM runs") == [(1,)]  # rebuilt on first contact
    assert store.query("SELECT value FROM meta") == [(str(SCHEMA_VERSION),)]


def test_atomic_write_text_replaces(tmp_path):
    path = tmp_path / "x.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def hold_db(path, seconds: float) -> subprocess.Popen:
    """A second process that opens the database (taking its lock) and sleeps."""
    code = (f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('held', flush=True); "
            f"time.sleep({seconds})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_waits_for_another_process(tmp_path):
    messages: list[str] = []
    store = Store(tmp_path / "sparsebench.duckdb", wait_s=10, on_wait=messages.append)
    store.ingest(make_record())  # create the file
    proc = hold_db(store.db_path, 2)
    try:
        t0 = time.monotonic()
        store.ingest(make_record("magnitude"))
        assert time.monotonic() - t0 > 0.5
    finally:
        proc.wait()
    assert len(messages) == 1 and "held by another process" in messages[0]
    assert store.query("SELECT count(*) FROM runs") == [(2,)]


def test_busy_after_wait_s(tmp_path):
    store = Store(tmp_path / "sparsebench.duckdb", wait_s=0.5)
    proc = hold_db(store.db_path, 3)
    try:
        with pytest.raises(StoreBusy, match=r"held by another process \(PID \d+.*within 0.5 s"):
            store.ingest(make_record())
    finally:
        proc.kill()
        proc.wait()


def test_environment():
    env = environment("cpu")
    assert {"python", "platform", "hostname", "cpu_count", "packages", "device", "cuda",
            "git_commit", "git_dirty", "env_vars"} <= set(env)
    assert env["packages"]["duckdb"] is not None and "torch" in env["packages"]
    assert set(env["env_vars"]) >= {"CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"}
    json.dumps(env)
    assert peak_rss_bytes() > 1_000_000


def test_environment_does_not_import_torch():
    code = ("import sys, json; from harness.run.env import environment; "
            "json.dumps(environment()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_environment_reads_cuda_from_an_imported_torch(monkeypatch):
    from types import SimpleNamespace

    cuda = SimpleNamespace(is_available=lambda: True, current_device=lambda: 0,
                           device_count=lambda: 2, get_device_name=lambda i: f"GPU {i}",
                           get_device_capability=lambda i: (9, 0))
    fake = SimpleNamespace(cuda=cuda, version=SimpleNamespace(cuda="13.0"),
                           device=lambda d: SimpleNamespace(index=int(d.split(":")[1])))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert environment("cuda:1")["cuda"] == {"device_name": "GPU 1", "capability": "9.0",
                                             "cuda_version": "13.0", "device_count": 2}
