"""ExactOBS (obc): exact OBS per row, global selection, against brute force and SparseGPT."""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import make_correlated_layer
from harness import prune_weight
from harness.core.obs import obs_remove
from methods.obc import LayerTooLarge, greedy_rows


def rel_error(w, w_new, h):
    dw = (w - w_new).double()
    h = h.double()
    return float(torch.trace(dw @ h @ dw.T) / torch.trace(w.double() @ h @ w.double().T))


def test_each_row_is_the_joint_obs_solution_for_its_removed_set():
    w, h = make_correlated_layer(0)
    out = prune_weight("obc", w, hessian=h, target=0.5).double()
    hinv = torch.linalg.inv(h.double())
    for r in range(0, w.shape[0], 7):
        removed = [i for i in range(w.shape[1]) if out[r, i] == 0]
        ref, _ = obs_remove(w[r].double(), hinv, removed)
        assert torch.allclose(out[r], ref, atol=1e-5)


def test_greedy_steps_match_brute_force_single_removals():
    """Each greedy step removes the weight whose exact OBS removal (given the earlier ones) costs least."""
    g = torch.Generator().manual_seed(3)
    d = 7
    a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
    h = a @ a.T / (3 * d) + 0.05 * torch.eye(d, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    w = torch.randn(1, d, generator=g, dtype=torch.float64)
    _, losses = greedy_rows(w, hinv, torch.tensor([d - 1]))
    removed: list[int] = []
    prev = 0.0
    for step in range(d - 1):
        costs = {j: obs_remove(w[0], hinv, removed + [j])[1] for j in range(d) if j not in removed}
        best = min(costs, key=costs.get)
        assert float(losses[0, step]) == pytest.approx(costs[best] - prev, rel=1e-7, abs=1e-12)
        removed.append(best)
        prev = costs[best]
    # greedy is never better than the best subset of the same size (brute force)
    k = 3
    greedy_loss = float(losses[0, :k].sum())
    best_subset = min(obs_remove(w[0], hinv, list(s))[1] for s in itertools.combinations(range(d), k))
    assert greedy_loss >= best_subset - 1e-12


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_obc_beats_sparsegpt_unstructured(seed, sparsity):
    w, h = make_correlated_layer(seed)
    e_obc = rel_error(w, prune_weight("obc", w, hessian=h, target=sparsity), h)
    e_sgpt = rel_error(w, prune_weight("sparsegpt", w, hessian=h, target=sparsity), h)
    assert e_obc <= e_sgpt


def test_error_grows_with_sparsity():
    w, h = make_correlated_layer(0)
    errs = [rel_error(w, prune_weight("obc", w, hessian=h, target=s), h) for s in (0.2, 0.4, 0.6, 0.8)]
    assert errs == sorted(errs) and errs[0] > 0


def test_large_layer_is_refused_with_numbers():
    w = torch.randn(64, 256)
    with pytest.raises(LayerTooLarge, match="max_cost"):
        prune_weight("obc", w, hessian=torch.eye(256), target=0.5, max_cost=1e6)
