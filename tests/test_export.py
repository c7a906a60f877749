"""Pruned checkpoints out (harness.run.export, harness.models.compressed): the on-disk sparse
formats, atomic folders, and a saved folder that reloads through ``path:`` to the same numbers."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

from harness.models import compressed
from harness.run.runner import run_suite
from harness.store.index import Store
from harness.suite.loader import load_suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the tensor formats ----------------------------------------------------------------------

def _sparse(rows, cols, keep, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    return w * (torch.rand(rows, cols, generator=g) < keep)


def test_bitmask_layout_is_compressed_tensors():
    """Bits least significant first, one row per mask row (numpy.packbits(bitorder="little"))."""
    w = torch.zeros(2, 10)
    w[0, 0], w[0, 9], w[1, 3] = 1.5, -2.0, 3.0
    parts = compressed.bitmask_encode(w)
    assert parts["bitmask"].dtype == torch.uint8 and parts["bitmask"].tolist() == [[1, 2], [8, 0]]
    assert parts["compressed"].tolist() == [1.5, -2.0, 3.0] and parts["row_offsets"].tolist() == [0, 2]
    assert parts["shape"].tolist() == [2, 10]
    assert torch.equal(compressed.decode(parts), w)


def test_bitmask_round_trip_with_empty_rows_and_negative_zero():
    w = _sparse(17, 45, 0.3)
    w[3] = 0.0
    w[5, 7] = -0.0
    assert torch.equal(compressed.decode(compressed.bitmask_encode(w)), w)


def test_sparse24_layout_round_trip_and_refusal():
    w = _sparse(8, 32, 1.0)
    groups = w.reshape(8, 8, 4)
    groups[..., 1:3] = 0.0  # 2:4: inputs 1 and 2 of every group pruned
    groups[0, 0] = 0.0  # a group with 4 zeros keeps two of them
    parts = compressed.sparse24_encode(w)
    assert parts["compressed"].shape == (8, 16) and parts["bitmask"].shape == (8, 4)
    assert parts["shape"].shape == (2, 1)
    assert torch.equal(compressed.decode(parts), w)
    w[2, 5] = 1.0  # a third nonzero in group 1 of row 2
    with pytest.raises(ValueError, match="row 2, inputs 4-7 hold more than 2 nonzeros"):
        compressed.sparse24_encode(w)


def test_state_dicts_compress_only_the_named_matrices():
    tensors = {"a.weight": _sparse(4, 8, 0.5), "a.bias": torch.ones(4), "b.weight": _sparse(4, 8, 0.5, 1)}
    out, done = compressed.compress_state(tensors, {"a"}, compressed.BITMASK)
    assert done == ["a"] and set(out) == {"a.shape", "a.compressed", "a.bitmask", "a.row_offsets", "a.bias",
                                          "b.weight"}
    back = compressed.decompress_state(out, compressed.BITMASK)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)


# ---- the folder --------------------------------------------------------------------------------

LM_SUITE = """
name: {name}
models: [{model}]
methods: [{method}]
targets: [0.5, "2:4"]
calibration: {{dataset: pydoc, n_samples: 4, seqlen: 64, seed: 0}}
evals:
  perplexity:
    - {{dataset: pydoc, seqlen: 128, max_windows: 4}}
{save}
"""


def _suite(tmp_path, name, model, method="magnitude", save=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(LM_SUITE.format(name=name, model=model, method=method, save=save)))
    return load_suite(path)


def _metrics(record):
    return {m["name"]: m["value"] for m in record["metrics"]}


def test_folder_name_and_a_crash_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    """The folder appears complete or not at all; a failed re-export keeps the previous one."""
    from harness.models.load import load_model
    from harness.run import export
    from harness.suite import expand

    out = tmp_path / "out"
    spec = expand(_suite(tmp_path, "crash", "zoo:tiny-llama", save=f"save: {out}"))[0]
    record = {"variant": "magnitude", "layers": [], "sparsity": {"global": 0.5}, "metrics": []}
    name = export.folder_name(spec, record)
    assert name == f"zoo-tiny-llama__magnitude__0.5__seed0__{spec.run_id[:12]}"
    loaded = load_model(spec.model)
    saved = export.save_cell(spec, record, loaded)
    assert saved["path"] == str(out / name) and saved["bytes"] == saved["dense_bytes"] > 0
    assert loaded.model.config.use_cache is False  # the scoring model is left as it was
    assert json.loads((out / name / "config.json").read_text())["use_cache"] is True
    before = {f.name: f.stat().st_mtime_ns for f in (out / name).iterdir()}
    monkeypatch.setattr(export, "_info", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        export.save_cell(spec, record, loaded)
    assert [p.name for p in out.iterdir()] == [name]  # no temporary folder left beside it
    assert {f.name: f.stat().st_mtime_ns for f in (out / name).iterdir()} == before


def test_saved_checkpoints_reload_to_the_same_numbers(tmp_path):
    """Dense, then the same cells compressed (only the export runs again), each folder reloaded
    through path: with method dense: the same perplexity and measured sparsity, exactly."""
    store = Store(tmp_path / "results" / "sb.duckdb")
    runs = {}
    for fmt in ("dense", "compressed"):
        out = tmp_path / fmt
        suite = _suite(tmp_path, f"save-{fmt}", "zoo:tiny-llama", save=f"save: {{dir: {out}, format: {fmt}}}")
        results = run_suite(suite, store=store, device="cpu")
        assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
        for r in results:
            record = store.read(r.spec.run_id)
            saved = record["saved"]
            folder = out / saved["folder"]
            assert saved["format"] == fmt and saved["path"] == str(folder) and folder.is_dir()
            info = json.loads((folder / "sparsebench.json").read_text())
            assert info["run_id"] == record["run_id"] and info["sparsity"] == record["sparsity"]
            assert info["artifact_sha256"] == record["artifact"]["sha256"] and info["suite_text"] == suite.text
            assert (folder / "tokenizer.json").is_file()
            if fmt == "compressed":
                qc = json.loads((folder / "config.json").read_text())["quantization_config"]
                want = "sparse-24-bitmask" if r.spec.target == "2:4" else "sparse-bitmask"
                assert qc["quant_method"] == "compressed-tensors" and qc["sparsity_config"]["format"] == want
                assert saved["compressed_layers"] == len(record["layers"]) and "dense_layers" not in saved
                assert saved["bytes"] < 0.75 * saved["dense_bytes"], saved
            runs[(fmt, r.spec.target)] = record
        if fmt == "compressed":  # the export only: the stored weights and evaluations are reused
            for target in ("0.5", "2:4"):
                a, b = runs[("dense", target)], runs[("compressed", target)]
                assert b["artifact"]["sha256"] == a["artifact"]["sha256"] and b["metrics"] == a["metrics"]
    for (fmt, target), record in runs.items():
        suite = _suite(tmp_path, f"reload-{fmt}-{target.replace(':', '-')}", f"path:{record['saved']['path']}",
                       method="dense")
        (back,) = run_suite(suite, store=store, device="cpu")
        again = store.read(back.spec.run_id)
        assert back.status == "ok", back.error
        assert _metrics(again) == _metrics(record), (fmt, target)
        assert again["sparsity"]["global"] == record["sparsity"]["global"], (fmt, target)


def test_vision_checkpoint_saves_dense_and_reloads(tmp_path):
    store = Store(tmp_path / "results" / "sb.duckdb")
    out = tmp_path / "vision"
    path = tmp_path / "v.yaml"
    path.write_text(textwrap.dedent(f"""
        name: v
        models: [zoo:tiny-resnet]
        methods: [magnitude]
        targets: [0.5]
        calibration: {{dataset: digits, n_samples: 64, seed: 0}}
        evals: {{digits: {{limit: 200}}}}
        save: {out}
    """))
    (res,) = run_suite(load_suite(path), store=store, device="cpu")
    assert res.status == "ok", res.error
    record = store.read(res.spec.run_id)
    folder = record["saved"]["path"]
    assert json.loads((out / record["saved"]["folder"] / "config.json").read_text())["architecture"]
    path.write_text(path.read_text().replace("zoo:tiny-resnet", f"path:{folder}").replace("[magnitude]", "[dense]")
                    .replace(f"save: {out}", ""))
    (back,) = run_suite(load_suite(path), store=store, device="cpu")
    assert back.status == "ok", back.error
    again = store.read(back.spec.run_id)
    assert _metrics(again) == _metrics(record)
    assert again["sparsity"]["global"] == record["sparsity"]["global"]


def test_cli_save_flags_reach_the_cells(tmp_path, capsys, monkeypatch):
    """``harness run --save DIR [--save-format compressed]`` sets the suite's save; compressed is
    refused for image classifiers, in the suite and on the command line, before anything loads."""
    from harness.cli.main import main
    from harness.suite.loader import SuiteError

    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "lm.yaml"
    suite.write_text(textwrap.dedent(LM_SUITE.format(name="cli", model="zoo:tiny-llama", method="dense", save="")))
    db = str(tmp_path / "results" / "sb.duckdb")
    assert main(["run", str(suite), "--db", db, "--save", "ckpt", "--offline"]) == 0
    (folder,) = (tmp_path / "ckpt").iterdir()
    assert folder.name.startswith("zoo-tiny-llama__dense__0__seed0__") and (folder / "sparsebench.json").is_file()
    assert main(["run", str(suite), "--db", db, "--save-format", "compressed"]) == 2
    assert "--save-format needs --save DIR" in capsys.readouterr().err

    vision = tmp_path / "v.yaml"
    vision.write_text(textwrap.dedent("""
        name: v
        models: [zoo:tiny-resnet]
        methods: [magnitude]
        targets: [0.5]
        calibration: {dataset: digits}
        evals: {digits: {}}
    """))
    assert main(["run", str(vision), "--db", db, "--save", "out", "--save-format", "compressed"]) == 2
    assert "image classifiers save with --save-format dense" in capsys.readouterr().err
    vision.write_text(vision.read_text() + "save: {dir: out, format: compressed}\n")
    with pytest.raises(SuiteError, match=r"v.yaml:8: save.format: 'compressed' \(compressed-tensors\) is for "):
        load_suite(vision)
