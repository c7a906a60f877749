"""I-OBS(T): the Newton points' math, the driver's dense cross-statistics and sequential groups,
the SparseGPT identity at T=1, η=0, and the measured gain on the zoo Llama."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from harness.drivers.lm import prune_sequential
from harness.core.method import PruneResult, PruningMethod, build_params
from harness.plugins import get_method
from harness.core.target import Target
from harness.drivers.model_level import lm_context
from methods.iobs import IOBSRound, mean_token_loss, newton_dense_output, newton_global, prune_iterative


def iterate(model, cal, val, iobs, target):
    """I-OBS(T)'s rounds on ``model`` through a model context over the windows of ``cal``."""
    ctx = lm_context(model, torch.cat(cal), batch_size=cal[0].shape[0])
    return prune_iterative(ctx, iobs.params, target, cal, val)


def method(name, **params):
    cls = get_method(name)
    return cls(build_params(cls, params))


def batches(seed=0, n=3, seqlen=16, vocab=128):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (2, seqlen), generator=g) for _ in range(n)]


def layer_problem(seed=0, d_in=12, d_out=5, n=200):
    g = torch.Generator().manual_seed(seed)
    x_d = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    x_s = x_d + 0.3 * torch.randn(n, d_in, generator=g, dtype=torch.float64)  # inputs after earlier pruning
    w_d = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    w_t = w_d * (torch.rand(d_out, d_in, generator=g, dtype=torch.float64) > 0.5)  # a sparse iterate
    return x_d, x_s, w_d, w_t


def test_dense_output_newton_point_is_the_ridge_map_at_step_one():
    x_d, x_s, w_d, w_t = layer_problem()
    n, d = x_s.shape
    h, c = x_s.T @ x_s / n, x_d.T @ x_s / n
    damp = 0.01
    lam = damp * float(h.diagonal().mean())
    got = newton_dense_output(w_t, w_d, h, c, eta=1.0, damp=damp).double()
    # min_W (1/n)||X_s W^T - X_d W_d^T||^2 + lam ||W - W_d||^2, as one stacked least-squares problem
    a = torch.cat([x_s / n**0.5, lam**0.5 * torch.eye(d, dtype=torch.float64)])
    b = torch.cat([x_d @ w_d.T / n**0.5, lam**0.5 * w_d.T])
    ref = torch.linalg.lstsq(a, b).solution.T
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_dense_output_newton_point_contracts_by_one_minus_eta():
    x_d, x_s, w_d, w_t = layer_problem(1)
    n = x_s.shape[0]
    h, c = x_s.T @ x_s / n, x_d.T @ x_s / n
    star = newton_dense_output(w_t, w_d, h, c, eta=1.0).double()
    for eta in (0.25, 0.5, 1.5):
        got = newton_dense_output(w_t, w_d, h, c, eta=eta).double()
        assert torch.allclose(got - star, (1 - eta) * (w_t - star), atol=1e-4)
    # with the dense inputs themselves (X_s = X_d) the minimiser is the dense weight
    hd = x_d.T @ x_d / n
    assert torch.allclose(newton_dense_output(w_t, w_d, hd, hd, eta=1.0).double(), w_d, atol=1e-4)
    assert torch.equal(newton_dense_output(w_t.float(), w_d, h, c, eta=0.0), w_t.float())


def test_global_newton_point_preconditions_the_gradient():
    x_d, x_s, w_d, w_t = layer_problem(2)
    n, d = x_s.shape
    h = x_s.T @ x_s / n
    g = torch.randn_like(w_t)
    lam = 0.01 * float((2 * h).diagonal().mean())
    ref = w_t - 0.1 * g @ torch.linalg.inv(2 * h + lam * torch.eye(d, dtype=torch.float64))
    assert torch.allclose(newton_global(w_t, g, h, 0.1).double(), ref, atol=1e-5)


class _Recorder(PruningMethod):
    """Keeps every layer's statistics; optionally zeroes the weights it is given."""

    name = "recorder"
    stats = "cross"

    def __init__(self, zero=False, grouped=False):
        super().__init__()
        self.zero, self.sequential_groups, self.seen, self.order, self._dense = zero, grouped, {}, [], {}

    def prepare(self, weights, target):
        self._dense = {n: w.detach().clone() for n, w in weights.items()}

    def dense_weights(self):
        return self._dense

    def prune(self, name, weight, stats, target):
        self.seen[name], _ = stats, self.order.append(name)
        return PruneResult(torch.zeros_like(weight) if self.zero else weight)


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_cross_moment_equals_hessian_until_something_is_pruned(family):
    keep = _Recorder()
    prune_sequential(tiny_model(family), batches(), keep, Target(0.5))
    assert all(torch.equal(s.cross, s.hessian) for s in keep.seen.values())

    zero = _Recorder(zero=True)  # zeroing every layer: block 1 sees constant sparse inputs
    model = tiny_model(family)
    prune_sequential(model, batches(), zero, Target(0.5))
    later = [s for n, s in zero.seen.items() if ".1." in n]
    assert later and all(not torch.allclose(s.cross, s.hessian) for s in later)
    # X_d^T X_d of the same layer in an untouched model is the dense part of the cross-moment
    ref = _Recorder()
    prune_sequential(tiny_model(family), batches(), ref, Target(0.5))
    first = [n for n in zero.seen if ".0." in n]
    assert all(torch.equal(zero.seen[n].hessian, ref.seen[n].hessian) for n in first[:3])


def test_sequential_groups_prune_in_forward_order_with_fresh_statistics():
    block = _Recorder(zero=True, grouped=False)
    prune_sequential(tiny_model("llama"), batches(), block, Target(0.5))
    grouped = _Recorder(zero=True, grouped=True)
    prune_sequential(tiny_model("llama"), batches(), grouped, Target(0.5))
    short = [n.rsplit(".", 1)[-1] for n in grouped.order[:7]]
    assert short == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    o = "model.layers.0.self_attn.o_proj"
    # after q,k,v were zeroed, o_proj's input (attention of zero values) is zero in grouped mode only
    assert float(grouped.seen[o].hessian.abs().max()) == 0.0
    assert float(block.seen[o].hessian.abs().max()) > 0.0


@pytest.mark.parametrize("target", ["0.5", "2:4"])
def test_one_round_with_zero_step_is_sparsegpt_bit_for_bit(target):
    cal = batches(n=4)
    ref = tiny_model("llama")
    prune_sequential(ref, cal, method("sparsegpt", blocksize=16), Target.parse(target))
    model = tiny_model("llama")
    iobs = method("iobs", iterations=1, step_size=0.0, blocksize=16)
    iterate(model, cal, [], iobs, Target.parse(target))
    for (name, a), (_, b) in zip(ref.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), name


def test_validation_selection_keeps_the_best_round():
    cal, val = batches(n=4), batches(seed=9, n=2)
    model = tiny_model("llama")
    iobs = method("iobs", iterations=3, step_size=1.5, blocksize=16)
    _, log = iterate(model, cal, val, iobs, Target(0.6))
    assert 1 <= log.chosen <= len(log.val_loss) == len(log.round_time_s)
    assert mean_token_loss(model, val, "cpu") == pytest.approx(min(log.val_loss), rel=1e-6)
    if log.stopped_early:
        assert log.val_loss[-1] > log.val_loss[0]


def test_global_grad_objective_moves_weights_and_meets_the_target():
    model = tiny_model("opt")
    iobs = method("iobs", objective="global_grad", loss="ce", iterations=2, blocksize=16)
    assert iobs.params.step_size == 0.1 and IOBSRound(iobs.params, {}).stats == "hessian"
    reports, _ = iterate(model, batches(n=4), batches(seed=5, n=2), iobs, Target(0.5))
    assert all(r.info["newton_rel_step"] > 0 for r in reports)
    for r in reports:
        w = model.get_submodule(r.name).weight
        assert abs(float((w == 0).float().mean()) - 0.5) <= 1 / w.shape[1] + 1e-3


@pytest.mark.parametrize("params, message", [
    ({"step_size": 3.0}, "step_size"), ({"iterations": 0}, "iterations"), ({"objective": "dense"}, "objective"),
])
def test_bad_params_are_refused(params, message):
    from harness.core.method import ParamsError

    with pytest.raises(ParamsError, match=message):
        build_params(get_method("iobs"), params)


def test_iobs_beats_one_shot_sparsegpt_on_the_zoo_llama():
    """The default (dense-output objective, η 0.5, validation-selected) on real trained weights."""
    from harness.data import text as data
    from harness.models.load import load_model
    from harness.core.spec import ModelSpec

    spec = ModelSpec("zoo:tiny-llama")
    tok = load_model(spec, device="cpu").tokenizer
    cal = list(data.calibration_tokens("pydoc", tok, 32, 128, 0).split(16))
    val = list(data.validation_tokens("pydoc", tok, 32, 16, 128, 0).split(16))
    test = data.test_tokens("pydoc", tok, 128)[:, : 128 * 24]
    target = Target(0.7)
    ref = load_model(spec, device="cpu").model
    prune_sequential(ref, cal, method("sparsegpt"), target)
    model = load_model(spec, device="cpu").model
    _, log = iterate(model, cal, val, method("iobs", iterations=3), target)
    one_shot, iterative = data.perplexity(ref, test, 128).value, data.perplexity(model, test, 128).value
    assert iterative < 0.97 * one_shot, (one_shot, iterative, log)


def test_iobs_cell_records_rounds_and_validation_curve(tmp_path):
    from harness.run.runner import run_suite
    from harness.store.index import Store
    from harness.suite.loader import load_suite

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: iobs-cell\nmodels: [zoo:tiny-llama]\n"
        "methods:\n  - {name: iobs, params: {iterations: 2, val_samples: 4}}\ntargets: [0.6]\n"
        "calibration: {dataset: pydoc, n_samples: 8, seqlen: 64}\n"
        "evals:\n  perplexity:\n    - {dataset: pydoc, seqlen: 128, max_windows: 4}\n")
    store = Store(tmp_path / "results" / "sb.duckdb")
    [result] = run_suite(load_suite(path), store=store, device="cpu")
    assert result.status == "ok", result.error
    rows = store.query("SELECT name, step, value FROM series WHERE run_id = ? ORDER BY step", [result.spec.run_id])
    assert [(n, s) for n, s, _ in rows] == [("iobs/val_loss", 1), ("iobs/val_loss", 2)]
    import json

    record = json.loads((store.run_dir(result.spec.run_id) / "record.json").read_text())
    info = record["prune_info"]
    assert info["level"] == "model" and info["validation_windows"] == 4 and info["iterations_run"] == 2
    assert info["iterations_chosen"] == 1 + [v for _, _, v in rows].index(min(v for _, _, v in rows))


FISHER = {"objective": "global_grad", "curvature": "fisher", "fisher_grads": 8, "fisher_grad_batch": 2,
          "fisher_block_size": 32}


def test_fisher_curvature_with_zero_step_is_one_shot_woodfisher_bit_for_bit():
    from harness.drivers.model_level import prune_model_lm

    tokens = torch.randint(0, 128, (16, 16), generator=torch.Generator().manual_seed(0))
    ref = tiny_model("llama")
    prune_model_lm(ref, tokens, method("woodfisher", num_grads=8, grad_batch=2, block_size=32), Target(0.6))
    model = tiny_model("llama")
    res = prune_model_lm(model, tokens, method("iobs", iterations=1, step_size=0.0, **FISHER), Target(0.6))
    assert res.info["curvature"] == "fisher" and res.info["fisher"]["num_grads"] == 8
    for (name, a), (_, b) in zip(ref.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("loss", ["kl_dense", "ce"])
def test_fisher_rounds_take_newton_steps_and_keep_the_best_round(loss):
    from harness.drivers.model_level import prune_model_lm

    g = torch.Generator().manual_seed(1)
    tokens, val = torch.randint(0, 128, (16, 16), generator=g), torch.randint(0, 128, (4, 16), generator=g)
    model = tiny_model("opt")
    res = prune_model_lm(model, tokens, method("iobs", iterations=3, step_size=0.5, loss=loss, **FISHER),
                         Target(0.5), validation=val)
    curve = [r["value"] for r in res.series if r["name"] == "iobs/val_loss"]
    assert len(curve) == res.info["iterations_run"] and 1 <= res.info["iterations_chosen"] <= len(curve)
    assert mean_token_loss(model, [val], "cpu") == pytest.approx(min(curve), rel=1e-5)
    steps = [r.info["newton_rel_step"] for r in res.reports]
    # KL to the dense model has a zero gradient at the dense weights: round 1 is (almost) plain woodfisher
    moved = loss == "ce" or res.info["iterations_chosen"] > 1
    assert (max(steps) > 1e-3) == moved, (steps, res.info)
    for r in res.reports:
        w = model.get_submodule(r.name).weight
        assert abs(float((w == 0).float().mean()) - 0.5) <= 1 / w.numel() + 1e-6


@pytest.mark.parametrize("params, message", [
    ({"curvature": "fisher"}, "objective: global_grad"),
    ({"curvature": "fisher", "objective": "global_grad", "projection": "obc"}, "projection"),
    ({"curvature": "fisher", "objective": "global_grad", "fisher_damp": 0.0}, "fisher_damp"),
])
def test_fisher_curvature_params_are_checked(params, message):
    from harness.core.method import ParamsError

    with pytest.raises(ParamsError, match=message):
        build_params(get_method("iobs"), params)
