"""The model-level path: driver (loss, shared hooks and reports), sparse_ft, the fine-tuning label."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from harness.drivers.lm import prune_sequential
from harness.drivers.model_level import CalibrationSet, ModelContext, prune_model_lm
from harness.core.method import (
    METHODS,
    ModelMethod,
    ParamsError,
    PruningMethod,
    build_params,
    register_method,
)
from harness.plugins import get_method
from harness.core.target import Target


def method(name, **params):
    cls = get_method(name)
    return cls(build_params(cls, params))


@pytest.fixture
def llama_and_tokens():
    from conftest import tiny_model

    model = tiny_model("llama")
    tokens = torch.randint(0, 128, (12, 16), generator=torch.Generator().manual_seed(0))
    return model, tokens


def test_lm_loss_is_the_models_own_next_token_loss(llama_and_tokens):
    model, tokens = llama_and_tokens
    ctx = ModelContext(model, {}, {}, CalibrationSet(tokens, None, "lm", "next token"), torch.device("cpu"), 4,
                       lambda m, t: [])
    idx = torch.arange(5)
    with torch.no_grad():
        ref = model(input_ids=tokens[:5], labels=tokens[:5]).loss
        assert float(ctx.loss(model, idx)) == pytest.approx(float(ref), rel=1e-5)
        logits, _ = ctx.outputs(model, idx)
        teacher = logits.log_softmax(-1)
        assert float(ctx.loss(model, idx, "kl_dense", teacher)) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture
def model_level_magnitude():
    """Magnitude pruning written as a model-level method: the driver's own behaviour, isolated."""

    @register_method("test_model_magnitude")
    class ModelMagnitude(ModelMethod):
        @dataclass(frozen=True)
        class Params:
            pass

        def prune_model(self, ctx, target):
            from harness.core.method import LayerReport
            from methods.magnitude import magnitude_mask

            reports = []
            for name in ctx.layers:
                w = ctx.weight(name)
                ctx.set_weight(name, w.masked_fill(magnitude_mask(w, target), 0))
                reports.append(LayerReport(name, ctx.blocks[name], *w.shape, None, 0.0))
            return reports

    yield
    METHODS.unregister("test_model_magnitude")


def test_reports_share_the_layer_paths_error_measure(llama_and_tokens, model_level_magnitude):
    """Block 0 sees the same (dense) inputs on both paths, so its errors must agree."""
    from conftest import tiny_model

    model, tokens = llama_and_tokens
    res = prune_model_lm(model, tokens, method("test_model_magnitude"), Target(0.5), batch_size=4)
    ref_model = tiny_model("llama")
    ref = prune_sequential(ref_model, list(tokens.split(4)), method("magnitude"), Target(0.5))
    by = {r.name: r.rel_error for r in ref}
    block0 = [r for r in res.reports if r.block == 0]
    assert len(block0) == 7 and [r.name for r in res.reports] == [r.name for r in ref]
    for r in block0:
        assert r.rel_error == pytest.approx(by[r.name], rel=1e-4), r.name
    assert res.info["rel_error"].startswith("‖(W−Ŵ)X‖²/‖WX‖² with X the dense model's inputs")


def test_model_level_method_must_implement_prune_model():
    class Broken(ModelMethod):
        @dataclass(frozen=True)
        class Params:
            pass

    with pytest.raises(TypeError, match="does not implement prune_model"):
        register_method("test_broken_model_level")(Broken)
    assert "test_broken_model_level" not in METHODS


# --- sparse_ft -------------------------------------------------------------------------------


def test_sparse_ft_validates_init_with_did_you_mean(tmp_path):
    with pytest.raises(ParamsError, match=r"init: Unknown method 'sparsegtp'. Did you mean: sparsegpt"):
        method("sparse_ft", init="sparsegtp")
    for bad in ("dense", "sparse_ft"):
        with pytest.raises(ParamsError, match="cannot initialise sparse_ft"):
            method("sparse_ft", init=bad)
    with pytest.raises(ParamsError, match="blocksiz"):
        method("sparse_ft", init="sparsegpt", init_params={"blocksiz": 64})
    p = method("sparse_ft", init="wanda").params
    assert p.init_params == {}  # resolved: wanda has no params
    assert method("sparse_ft").params.init_params == {"blocksize": 128, "dampening_frac": 0.01}

    from harness.suite.loader import SuiteError, load_suite

    path = tmp_path / "s.yaml"
    path.write_text("name: x\nmodels: [zoo:tiny-llama]\nmethods:\n  - name: sparse_ft\n"
                    "    params: {init: sparsegtp}\ntargets: [0.5]\n")
    with pytest.raises(SuiteError) as exc:
        load_suite(path)
    assert ":5: methods[0].params" in str(exc.value) and "Did you mean: sparsegpt" in str(exc.value)


def test_sparse_ft_keeps_the_init_mask_and_improves_validation(llama_and_tokens):
    from conftest import tiny_model

    model, tokens = llama_and_tokens
    ref = tiny_model("llama")
    prune_sequential(ref, list(tokens.split(4)), method("sparsegpt"), Target(0.5), measure_error=False)
    res = prune_model_lm(model, tokens, method("sparse_ft", steps=6, val_samples=4), Target(0.5),
                         batch_size=4)
    pruned = dict(ref.named_modules())
    changed = 0
    for r in res.reports:
        w, w0 = model.get_submodule(r.name).weight, pruned[r.name].weight
        assert torch.equal(w == 0, w0 == 0), r.name  # the init's pattern, exactly
        changed += int(not torch.equal(w, w0))
    info = res.info
    assert info["category"] == "fine-tuning" and info["train_samples"] == 8 and info["val_samples"] == 4
    val = {s["step"]: s["value"] for s in res.series if s["name"] == "sparse_ft/val_loss"}
    assert sorted(val) == list(range(7))
    assert info["chosen_step"] > 0 and changed  # fine-tuning helped and was kept
    assert info["val_loss_chosen"] == min(val.values()) < val[0]
    assert len([s for s in res.series if s["name"] == "sparse_ft/train_loss"]) == 6


def test_sparse_ft_select_val_never_returns_worse_than_init(llama_and_tokens):
    model, tokens = llama_and_tokens
    res = prune_model_lm(model, tokens, method("sparse_ft", steps=2, lr=10.0, val_samples=4), Target(0.5))
    val = [s["value"] for s in res.series if s["name"] == "sparse_ft/val_loss"]
    assert res.info["val_loss_chosen"] == min(val)  # lr 10 blows up: step 0 (the init) is kept
    assert res.info["chosen_step"] == 0


def test_sparse_ft_needs_training_samples(llama_and_tokens):
    model, tokens = llama_and_tokens
    with pytest.raises(ValueError, match="leaves no training samples"):
        prune_model_lm(model, tokens, method("sparse_ft", val_samples=12), Target(0.5))


def test_sparse_ft_through_the_runner(tmp_path):
    from test_runner import write_suite

    from harness.run.runner import run_suite
    from harness.store.index import Store

    suite = write_suite(tmp_path, """
        name: ft
        models: [zoo:tiny-llama]
        methods: [{name: sparse_ft, params: {steps: 2, val_samples: 4}}]
        targets: [0.5]
        calibration: {dataset: pydoc, n_samples: 12, seqlen: 64, seed: 0}
        evals:
          perplexity:
            - {dataset: pydoc, seqlen: 128, max_windows: 4}
    """)
    store = Store(tmp_path / "sb.duckdb")
    (ft,) = run_suite(suite, store=store, device="cpu")
    assert ft.status == "ok", ft.error
    record = json.loads((store.run_dir(ft.spec.run_id) / "record.json").read_text())
    assert record["environment"]["method_category"] == "fine-tuning"
    assert record["prune_info"]["init"] == "sparsegpt" and record["prune_info"]["level"] == "model"
    assert {s["name"] for s in record["series"]} == {"sparse_ft/train_loss", "sparse_ft/val_loss"}
    assert store.query("SELECT count(*) FROM series WHERE run_id = ?", [ft.spec.run_id])[0][0] == 5
    assert abs(ft.sparsity - 0.5) < 0.002


def test_leaderboard_labels_fine_tuning_and_keeps_it_out_of_best(tmp_path):
    from test_leaderboard import make_record

    from harness.store.index import Store
    from leaderboard.build import build_tables
    from leaderboard.data import load_runs

    store = Store(tmp_path / "sb.duckdb")
    for method_name, ppl in (("dense", 20.0), ("magnitude", 30.0), ("sparsegpt", 24.0), ("sparse_ft", 22.0)):
        rec = make_record("zoo:tiny-llama", method_name, "0" if method_name == "dense" else "0.5", ppl, None, None)
        if method_name == "sparse_ft":
            rec["environment"]["method_category"] = "fine-tuning"
        store.save(rec)
    (table,) = build_tables(load_runs(store))
    rows = {r.method: r for r in table.rows}
    col, ppl_col = table.column("method"), table.column("m:pydoc/ppl@128")
    cell = rows["sparse_ft"].cells[col]
    assert cell.display == "sparse_ft · fine-tuned" and cell.css == "finetune" and "not one-shot" in cell.title
    assert rows["sparsegpt"].cells[col].display == "sparsegpt"  # one-shot rows unchanged
    assert rows["sparse_ft"].cells[ppl_col].css == ""  # lower ppl, but fine-tuning takes no best mark
    assert rows["sparsegpt"].cells[ppl_col].css == "lead"  # one seed, no stderr: a lead that cannot be tested


class _Stream:
    """The parts of harness.data.images.ImageStream the vision driver uses."""

    def __init__(self, x, labels=()):
        self.x, self.items, self.labels = x, list(range(x.shape[0])), tuple(labels)

    def batches(self, size):
        return iter(self.x.split(size))


def test_vision_path_fine_tunes_and_re_estimates_batchnorm():
    """Without labels (dataset labels are covered by the zoo resnet test in test_woodfisher.py)."""
    from test_vision import random_images, tiny_resnet

    from harness.drivers.model_level import prune_model_vision

    model = tiny_resnet()
    x = random_images(16)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = prune_model_vision(model, _Stream(x), method("sparse_ft", steps=2, val_samples=4),
                                 Target(0.5), batch_size=8)
    finally:
        torch.set_num_threads(before)
    assert res.info["labels"] == "dense model's predictions"
    assert res.bn_recalibration["applied"] is True and res.calibration_images == 16
    assert "conv1.0" not in {r.name for r in res.reports}  # the stem stays dense, as on the layer path
    from harness.drivers.vision import prune_vision

    ref = tiny_resnet()  # the init alone: sparse_ft must keep its zero pattern exactly
    prune_vision(ref, lambda bs: x.split(bs), method("sparsegpt"), Target(0.5), batch_size=8)
    for r in res.reports:
        assert torch.equal(model.get_submodule(r.name).weight == 0, ref.get_submodule(r.name).weight == 0), r.name
        assert r.rel_error is not None
