"""WoodFisher: the Woodbury inverse, the OBS update, selection scopes, recomputation, end to end."""
from __future__ import annotations

import pytest
import torch

from harness.drivers.model_level import prune_model_lm
from harness.core.method import ParamsError, build_params
from harness.plugins import get_method
from harness.core.target import Target
from methods.woodfisher import (
    apply_inverse,
    layer_pass,
    obs_update,
    select,
    woodbury_inverse,
    woodbury_parts,
    woodfisher_stats,
)


def method(name="woodfisher", **params):
    cls = get_method(name)
    return cls(build_params(cls, params))


def explicit_inverse(g: torch.Tensor, damp: float) -> torch.Tensor:
    """(λI + (1/m) Σ g gᵀ)⁻¹ per block, g (blocks, m, B) float64."""
    m, b = g.shape[1], g.shape[2]
    f = damp * torch.eye(b, dtype=g.dtype) + g.transpose(1, 2) @ g / m
    return torch.linalg.inv(f)


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("m,b,damp", [(10, 16, 1e-3), (40, 16, 1e-5), (64, 32, 1e-4)])
def test_woodbury_recursion_and_factored_form_equal_the_explicit_inverse(m, b, damp):
    gen = torch.Generator().manual_seed(m)
    g = 0.1 * torch.randn(3, m, b, generator=gen, dtype=torch.float64)
    g[:, :, :3] *= 20  # a few loud coordinates, as in real gradients
    ref = explicit_inverse(g, damp)
    assert rel(woodbury_inverse(g, damp), ref) < 1e-5
    diag, z = woodbury_parts(g, damp)
    assert rel(diag, torch.diagonal(ref, dim1=1, dim2=2)) < 1e-5
    v = torch.randn(3, b, generator=gen, dtype=torch.float64)
    assert rel(apply_inverse(g, z, v, damp), (ref @ v.unsqueeze(-1)).squeeze(-1)) < 1e-5


def test_obs_update_is_the_sum_of_single_weight_obs_updates():
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(1, 12, 8, generator=gen, dtype=torch.float64)
    finv = woodbury_inverse(g, 1e-2)
    w = torch.randn(1, 8, generator=gen, dtype=torch.float64)
    newly = torch.zeros(1, 8, dtype=torch.bool)
    newly[0, [2, 5]] = True
    out = obs_update(w, finv, newly)
    d = torch.diagonal(finv[0])
    expect = w[0] - w[0, 2] / d[2] * finv[0, :, 2] - w[0, 5] / d[5] * finv[0, :, 5]
    expect[[2, 5]] = 0
    assert torch.allclose(out[0], expect, atol=1e-12)


def test_single_weight_update_is_the_optimal_compensation():
    """Removing one weight: w + δ minimises δᵀFδ subject to (w + δ)_q = 0, by brute force."""
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(1, 20, 6, generator=gen, dtype=torch.float64)
    f = 1e-2 * torch.eye(6, dtype=torch.float64) + g[0].T @ g[0] / 20
    w = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    newly = torch.zeros(1, 6, dtype=torch.bool)
    newly[0, 3] = True
    out = obs_update(w, woodbury_inverse(g, 1e-2), newly)[0]
    free = [0, 1, 2, 4, 5]
    u = torch.zeros(6, dtype=torch.float64)  # F_ff u_f = F_f: w, u_q = 0
    u[free] = torch.linalg.solve(f[free][:, free], f[free] @ w[0])
    assert torch.allclose(out, u, atol=1e-10)
    delta = out - w[0]
    loss = 0.5 * delta @ f @ delta  # the statistic is that loss increase
    stat = woodfisher_stats(w[0], torch.diagonal(torch.linalg.inv(f)))[3]
    assert float(stat) == pytest.approx(float(loss), rel=1e-9)


def test_layer_pass_recursion_and_woodbury_agree_with_padding():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(50, generator=gen)  # 50 = 3 blocks of 16 + a padded block of 2
    grads = torch.randn(9, 50, generator=gen)
    newly = torch.rand(50, generator=gen) < 0.3
    d1, w1 = layer_pass(w, grads, 16, 1e-3, newly, inverse="recursion")
    d2, w2 = layer_pass(w, grads, 16, 1e-3, newly, inverse="woodbury")
    assert d1.shape == (50,) and w1.shape == (50,)
    assert rel(d1.double(), d2) < 1e-4 and rel(w1.double(), w2.double()) < 1e-4
    assert bool((w2[newly] == 0).all()) and not torch.equal(w2[~newly], w[~newly])


def test_global_scope_is_one_threshold_and_layer_scope_is_exact_per_layer():
    gen = torch.Generator().manual_seed(4)
    stats = {"quiet": 0.1 * torch.rand(64, generator=gen), "loud": 1 + torch.rand(192, generator=gen)}
    pruned = {n: torch.zeros_like(s, dtype=torch.bool) for n, s in stats.items()}
    shapes = {"quiet": (8, 8), "loud": (16, 12)}
    t = Target(0.5)
    glob = select(stats, pruned, shapes, t, 0.5, "global")
    assert int(glob["quiet"].sum()) + int(glob["loud"].sum()) == 128  # int(0.5 * 256)
    assert bool(glob["quiet"].all())  # every quiet weight is below the single threshold
    layer = select(stats, pruned, shapes, t, 0.5, "layer")
    assert (int(layer["quiet"].sum()), int(layer["loud"].sum())) == (32, 96)
    # already-pruned weights stay pruned whatever their statistic
    pruned["loud"][:5] = True
    again = select({"quiet": stats["quiet"], "loud": stats["loud"] + 10}, pruned, shapes, t, 0.5, "layer")
    assert bool(again["loud"][:5].all())


def test_nm_selection_prunes_n_per_group_by_stage():
    stats = {"a": torch.rand(4 * 16, generator=torch.Generator().manual_seed(5))}
    pruned = {"a": torch.zeros(64, dtype=torch.bool)}
    t = Target.parse("2:4")
    half = select(stats, pruned, {"a": (4, 16)}, t, 0.25, "global")  # stage 1 of 2: 1 per group
    assert torch.equal(half["a"].reshape(4, 4, 4).sum(-1), torch.ones(4, 4, dtype=torch.long))
    full = select(stats, half, {"a": (4, 16)}, t, 0.5, "global")
    assert torch.equal(full["a"].reshape(4, 4, 4).sum(-1), torch.full((4, 4), 2)) and bool(full["a"][half["a"]].all())


@pytest.fixture
def llama_and_tokens():
    from conftest import tiny_model

    model = tiny_model("llama")
    tokens = torch.randint(0, 128, (16, 16), generator=torch.Generator().manual_seed(0))
    return model, tokens


def _layer_sparsities(model):
    return {n: float((m.weight == 0).float().mean()) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in n}


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("recompute", [1, 3])
def test_method_hits_the_target_with_and_without_recomputation(llama_and_tokens, scope, recompute):
    model, tokens = llama_and_tokens
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    res = prune_model_lm(model, tokens, method(num_grads=8, grad_batch=2, block_size=32, scope=scope,
                                               recompute=recompute), Target(0.6))
    sp = _layer_sparsities(model)
    numel = {n: before[n].numel() for n in sp}
    total = sum(sp[n] * numel[n] for n in sp) / sum(numel.values())
    if scope == "layer":  # int(0.6 * numel) in each layer
        assert all(abs(s - 0.6) <= 1 / numel[n] for n, s in sp.items())
    else:
        assert abs(total - 0.6) <= 1 / sum(numel.values()) + 1e-9
        assert max(sp.values()) - min(sp.values()) > 0.02  # one threshold: non-uniform layers
    losses = [r["value"] for r in res.series]
    assert len(losses) == recompute + 1 and all(torch.isfinite(torch.tensor(losses)))
    # the OBS update moved kept weights (not just a mask)
    name = res.reports[0].name
    w = model.get_submodule(name).weight
    assert not torch.equal(w[w != 0], before[name][w != 0])
    assert all(r.rel_error is not None and 0 < r.rel_error < 1.5 for r in res.reports)


def test_nm_target_and_its_checks(llama_and_tokens):
    model, tokens = llama_and_tokens
    prune_model_lm(model, tokens, method(num_grads=4, block_size=16), Target.parse("2:4"))
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and ".layers." in n:
            zeros = (m.weight == 0).reshape(m.weight.shape[0], -1, 4).sum(-1)
            assert bool((zeros == 2).all()), n
    with pytest.raises(ValueError, match="not a multiple of 3"):
        prune_model_lm(model, tokens, method(num_grads=4), Target.parse("1:3"))


def test_bad_configurations_fail_with_one_line(llama_and_tokens):
    model, tokens = llama_and_tokens
    with pytest.raises(ValueError, match=r"needs num_grads × grad_batch = 64 calibration samples, the suite gives 16"):
        prune_model_lm(model, tokens, method(num_grads=32, grad_batch=2), Target(0.5))
    with pytest.raises(ValueError, match="above max_gib"):
        prune_model_lm(model, tokens, method(num_grads=8, max_gib=1e-6), Target(0.5))
    for bad in ({"damp": 0.0}, {"block_size": 0}, {"recompute": 0}, {"scope": "row"}):
        with pytest.raises(ParamsError):
            method(**bad)
    from harness import prune_weight

    with pytest.raises(ValueError, match="whole model"):
        prune_weight("woodfisher", torch.randn(4, 8), target=0.5)


def test_woodfisher_through_the_runner_on_the_zoo_llama(tmp_path):
    import json

    from test_runner import write_suite

    from harness.run.runner import run_suite
    from harness.store.index import Store

    suite = write_suite(tmp_path, """
        name: wf
        models: [zoo:tiny-llama]
        methods:
          - {name: woodfisher, params: {num_grads: 8, block_size: 64, scope: global}}
          - {name: magnitude, params: {scope: global}}
        targets: [0.5]
        calibration: {dataset: pydoc, n_samples: 8, seqlen: 64, seed: 0}
        evals:
          perplexity:
            - {dataset: pydoc, seqlen: 128, max_windows: 4}
    """)
    store = Store(tmp_path / "sb.duckdb")
    results = run_suite(suite, store=store, device="cpu")
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    wf = results[0]
    assert abs(wf.sparsity - 0.5) < 0.002 and wf.metrics["pydoc/ppl@128x4"] < 1000
    record = json.loads((store.run_dir(wf.spec.run_id) / "record.json").read_text())
    assert record["prune_info"]["level"] == "model" and record["prune_info"]["scope"] == "global"
    assert record["environment"]["method_category"] == "one-shot"
    assert [s["step"] for s in record["series"]] == [0, 1]
    layers = store.query("SELECT sparsity, rel_error FROM layers WHERE run_id = ?", [wf.spec.run_id])
    assert len(layers) == 28 and all(e is not None and e > 0 for _, e in layers)
    assert len({round(s, 3) for s, _ in layers}) > 1  # global: layers differ, only the total is checked


def test_woodfisher_on_the_zoo_resnet(tmp_path):
    from test_runner import write_suite

    from harness.run.runner import run_suite
    from harness.store.index import Store

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster on a busy machine
    try:
        suite = write_suite(tmp_path, """
            name: wf-vision
            models: [zoo:tiny-resnet]
            methods: [{name: woodfisher, params: {num_grads: 16, grad_batch: 2, block_size: 64, scope: layer}}]
            targets: [0.5]
            calibration: {dataset: digits, n_samples: 32, seed: 0}
            evals: {digits: {limit: 100}}
        """)
        (res,) = run_suite(suite, store=Store(tmp_path / "sb.duckdb"), device="cpu")
    finally:
        torch.set_num_threads(before)
    assert res.status == "ok", res.error
    assert res.metrics["digits/top1"] > 0.5  # dense 0.98; a broken update lands near chance (0.1)
