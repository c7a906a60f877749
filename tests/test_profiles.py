"""OWL non-uniform layer sparsity: the formula, the dense measurement, the suite keys, the record."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_model
from harness.drivers.profiles import outlier_ratio, owl_profile, owl_sparsities
from harness.core.spec import SparsityProfile
from harness.suite.loader import SuiteError, expand, load_suite
from harness.core.target import Target


def test_owl_sparsities_keep_the_mean_and_stay_within_lambda():
    ratios = [3.0, 1.0, 7.5, 2.0, 4.0]
    out = owl_sparsities(ratios, 0.7, 0.08)
    assert sum(out) / len(out) == pytest.approx(0.7)
    assert max(out) - min(out) == pytest.approx(0.16)
    # more outliers, lower sparsity: the order is reversed exactly
    assert sorted(range(5), key=lambda i: ratios[i]) == sorted(range(5), key=lambda i: -out[i])
    assert owl_sparsities([2.0, 2.0, 2.0], 0.5, 0.08) == pytest.approx([0.5, 0.5, 0.5])


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    scores = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, 41.0])]  # mean 6
    assert outlier_ratio(scores, 5.0) == pytest.approx(100 / 8)
    assert outlier_ratio(scores, 7.0) == 0.0


def test_owl_profile_is_measured_on_the_dense_model_per_block():
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    cal = [torch.randint(0, 128, (2, 16), generator=g) for _ in range(3)]
    targets, info = owl_profile(model, cal, Target(0.6), SparsityProfile("owl", 2.0, 0.1))
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # nothing pruned
    assert [b["block"] for b in info["blocks"]] == [0, 1]
    per_block = {}
    for name, t in targets.items():
        per_block.setdefault(int(name.split(".")[2]), set()).add(t.sparsity)
    assert all(len(s) == 1 for s in per_block.values()) and len(targets) == 14
    assert sum(b["sparsity"] for b in info["blocks"]) / 2 == pytest.approx(0.6)
    with pytest.raises(ValueError, match="N:M"):
        owl_profile(model, cal, Target.parse("2:4"), SparsityProfile())


def write(tmp_path, methods, models="[zoo:tiny-llama]", targets='[0.5, "2:4"]'):
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: owl\nmodels: {models}\nmethods:\n{methods}\ntargets: {targets}\n"
        "calibration: {dataset: pydoc, n_samples: 8, seqlen: 64}\n"
        "evals:\n  perplexity:\n    - {dataset: pydoc, seqlen: 128, max_windows: 4}\n")
    return path


def test_suite_profile_keys_and_cells(tmp_path):
    suite = load_suite(write(tmp_path, "  - wanda\n  - {name: wanda, sparsity_profile: owl, owl_lmbda: 0.05}"))
    cells = expand(suite)
    labels = [(c.method, c.target, c.profile) for c in cells]
    assert labels == [("wanda", "0.5", None), ("wanda", "2:4", None),
                      ("wanda", "0.5", SparsityProfile("owl", 5.0, 0.05))]  # OWL has no N:M form: skipped
    assert cells[0].run_id != cells[2].run_id and "profile" not in cells[0].to_dict()


@pytest.mark.parametrize("methods, models, line, message", [
    ("  - {name: wanda, sparsity_profile: owls}", "[zoo:tiny-llama]", 4, "unknown sparsity profile 'owls'"),
    ("  - {name: wanda, owl_m: 3}", "[zoo:tiny-llama]", 4, "only with sparsity_profile: owl"),
    ("  - {name: wanda, sparsity_profile: owl, owl_lmbda: 0.7}", "[zoo:tiny-llama]", 4, "[0, 0.5)"),
    ("  - {name: dense, sparsity_profile: owl}", "[zoo:tiny-llama]", 4, "layer-wise pruning methods"),
    ("  - {name: wanda, sparsity_profile: owl}", "[zoo:tiny-resnet]", 4, "image classifier"),
])
def test_bad_profiles_name_the_line(tmp_path, methods, models, line, message):
    path = write(tmp_path, methods, models)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert f"s.yaml:{line}:" in text and message in text, text


def test_owl_cell_records_the_resolved_map(tmp_path):
    from harness.run.runner import run_suite
    from harness.store.index import Store

    suite = load_suite(write(tmp_path, "  - {name: wanda, sparsity_profile: owl, owl_m: 3}", targets="[0.6]"))
    store = Store(tmp_path / "results" / "sb.duckdb")
    [result] = run_suite(suite, store=store, device="cpu")
    assert result.status == "ok", result.error
    record = json.loads((store.run_dir(result.spec.run_id) / "record.json").read_text())
    rows = store.query("SELECT layer, sparsity, info_json FROM layers WHERE run_id = ?", [result.spec.run_id])
    per_layer = {layer: (sparsity, json.loads(info)["target"]) for layer, sparsity, info in rows}
    targets = {t for _, t in per_layer.values()}
    assert len(targets) > 1, "OWL gave every block the same sparsity"
    for sparsity, target in per_layer.values():
        assert abs(sparsity - target) < 0.02
    assert abs(result.sparsity - 0.6) < 0.01
    assert record["profile"]["name"] == "owl" and len(record["profile"]["blocks"]) == 4
