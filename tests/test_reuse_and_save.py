"""A kept artifact is reused without reading it again unless its files changed (harness.run.artifacts
verify_artifact), and a failed ``save:`` export keeps the cell's results (harness.run.export)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.run import artifacts
from harness.run.reporter import Reporter
from harness.run.runner import run_suite
from harness.store.index import Store
from harness.suite.loader import load_suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def hashes(monkeypatch):
    """Counts the files hashed in full."""
    seen: list[str] = []
    real = artifacts.file_sha256

    def counting(path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(artifacts, "file_sha256", counting)
    return seen


def _rewrite(path: Path, offset: int) -> None:
    """Flip one byte in place, same size, and put the old mtime back (what an edit that hides
    itself from a size + mtime check does). The sleep: on kernels older than 6.13 file timestamps
    tick every few milliseconds, so the change must not share the tick of the noted state."""
    time.sleep(0.02)
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_a_file_artifact_is_trusted_until_touched(tmp_path, hashes):
    torch.manual_seed(0)
    art = artifacts.write_artifact(nn.Linear(64, 32), tmp_path, "run-a")
    path, sha = artifacts.artifact_path(tmp_path, art), art["sha256"]
    hashes.clear()
    assert artifacts.verify_artifact(path, sha) and hashes == []  # noted at write time: no byte read
    original = path.read_bytes()
    _rewrite(path, len(original) - 10)  # inside the weights
    assert not artifacts.verify_artifact(path, sha) and hashes == [path.name]
    time.sleep(0.02)
    path.write_bytes(original)  # the right bytes again: a full hash says so, and notes it
    assert artifacts.verify_artifact(path, sha) and len(hashes) == 2
    assert artifacts.verify_artifact(path, sha) and len(hashes) == 2
    copy = tmp_path / "copy"
    copy.write_bytes(original)
    os.replace(copy, path)  # the same bytes in another file (a copied store): hashed once
    assert artifacts.verify_artifact(path, sha) and len(hashes) == 3
    assert not artifacts.verify_artifact(path, "0" * 64)  # another artifact's hash: never trusted
    artifacts.drop_artifact(tmp_path, art, "run-a")
    assert not path.exists() and not list((tmp_path / "artifacts").glob("*.stat.json"))


def test_a_shard_folder_is_trusted_until_a_shard_or_its_index_changes(tmp_path, hashes):
    g = torch.Generator().manual_seed(0)
    writer = artifacts.ShardWriter(tmp_path, "run-s")
    writer.write("rest", {"emb": torch.randn(16, 8, generator=g)})
    writer.write("block-00000", {"b.0.w": torch.randn(8, 8, generator=g)})
    art = writer.finish()
    path, sha = artifacts.artifact_path(tmp_path, art), art["sha256"]
    hashes.clear()
    assert artifacts.verify_artifact(path, sha) and hashes == []
    shard = path / "block-00000.safetensors"
    _rewrite(shard, shard.stat().st_size - 4)
    assert not artifacts.verify_artifact(path, sha) and "block-00000.safetensors" in hashes
    shard.unlink()
    assert not artifacts.verify_artifact(path, sha)  # a shard gone: prune again, no exception
    index = path / artifacts.INDEX
    index.write_text(index.read_text().replace("block-00000", "block-00001"))
    assert not artifacts.verify_artifact(path, sha)


def test_a_reused_cell_reads_its_artifact_only_when_it_changed(tmp_path, hashes):
    """The second suite adds an evaluation: the kept artifact loads without a full hash; after an
    edit the same size and mtime the cell is pruned again and the artifact restored."""
    store = Store(tmp_path / "db" / "s.duckdb")

    def suite(name: str, windows: str) -> object:
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\nmodels: [zoo:tiny-llama]\nmethods: [magnitude]\ntargets: [0.5]\n"
                        "calibration: {dataset: pydoc, n_samples: 4, seqlen: 64}\nevals:\n  perplexity:\n"
                        "    - {dataset: pydoc, seqlen: 128, max_windows: 4}\n"
                        f"    - {{dataset: pydoc, seqlen: 64, max_windows: {windows}}}\n")
        return load_suite(path)

    (first,) = run_suite(suite("one", "2"), store=store, device="cpu")
    record = store.read(first.spec.run_id)
    path = artifacts.artifact_path(store.root, record["artifact"])
    hashes.clear()
    (second,) = run_suite(suite("two", "3"), store=store, device="cpu")
    again = store.read(first.spec.run_id)
    assert second.status == "ok" and hashes == [] and again["prune_time_s"] == record["prune_time_s"]
    _rewrite(path, path.stat().st_size - 10)
    (third,) = run_suite(suite("three", "5"), store=store, device="cpu")
    pruned = store.read(first.spec.run_id)
    assert third.status == "ok" and pruned["prune_time_s"] != record["prune_time_s"]
    assert pruned["artifact"]["reproduced"] is True and artifacts.file_sha256(path) == record["artifact"]["sha256"]


class Notes(Reporter):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def test_a_failed_export_keeps_the_cells_results_and_a_rerun_saves(tmp_path):
    """``save:`` into a path that is a file: the cell stays ok with its metrics, the record says why
    no checkpoint was written, the run warns in one line; once the path is free a rerun exports
    (the stored weights and evaluations reused, nothing pruned again)."""
    store = Store(tmp_path / "db" / "s.duckdb")
    out = tmp_path / "ckpt"
    out.write_text("not a folder")
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nmodels: [zoo:tiny-llama]\nmethods: [magnitude]\ntargets: [0.5]\n"
                    "calibration: {dataset: pydoc, n_samples: 4, seqlen: 64}\nevals:\n  perplexity:\n"
                    f"    - {{dataset: pydoc, seqlen: 128, max_windows: 4}}\nsave: {out}\n")
    reporter = Notes()
    (res,) = run_suite(load_suite(path), store=store, device="cpu", reporter=reporter)
    record = store.read(res.spec.run_id)
    assert res.status == "ok" and record["status"] == "ok" and record["error"] is None
    assert record["metrics"] and res.metrics == {m["name"]: m["value"] for m in record["metrics"]}
    assert record["saved"]["error"].startswith("FileExistsError: ") and str(out) in record["saved"]["error"]
    (note,) = [n for n in reporter.notes if "not saved" in n]
    assert "\n" not in note and "zoo:tiny-llama/magnitude/0.5: the checkpoint was not saved" in note
    out.unlink()
    (again,) = run_suite(load_suite(path), store=store, device="cpu")
    saved = store.read(res.spec.run_id)
    assert again.status == "ok" and saved["prune_time_s"] == record["prune_time_s"]
    assert Path(saved["saved"]["path"]).parent == out and (Path(saved["saved"]["path"]) / "config.json").is_file()
    assert saved["metrics"] == record["metrics"]
