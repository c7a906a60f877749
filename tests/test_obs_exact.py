"""OBS formulas and ExactOBS against brute force over every subset, for d_in <= 12.

The reference here never calls :mod:`harness.core.obs`: removing the set P from a row w under the
quadratic ½δᵀHδ is the constrained least squares min ½δᵀHδ s.t. (w + δ)_P = 0, solved directly
on the free coordinates F: δ_P = −w_P, δ_F = −H_FF⁻¹ H_FP δ_P.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from harness import prune_weight
from harness.core.obs import obs_remove, obs_saliency
from methods._recovery import greedy_obs_project
from methods.obc import greedy_rows


def spd(d: int, seed: int, cond: float = 1.0) -> torch.Tensor:
    """A random SPD H (d, d) float64 from correlated samples (cond scales the correlation)."""
    g = torch.Generator().manual_seed(seed)
    mix = cond * torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(d, dtype=torch.float64)
    x = torch.randn(4 * d, d, generator=g, dtype=torch.float64) @ mix
    return x.T @ x / (4 * d) + 1e-3 * torch.eye(d, dtype=torch.float64)


def constrained_lsq(w: torch.Tensor, h: torch.Tensor, pruned: tuple[int, ...]) -> tuple[torch.Tensor, float]:
    """The exact optimum: (new row with w_P = 0, loss ½δᵀHδ), solved on the free coordinates."""
    d = w.shape[0]
    p = list(pruned)
    f = [i for i in range(d) if i not in pruned]
    delta = torch.zeros_like(w)
    delta[p] = -w[p]
    if f:
        delta[f] = -torch.linalg.solve(h[f][:, f], h[f][:, p] @ delta[p])
    return w + delta, float(0.5 * delta @ h @ delta)


def all_subsets(d: int, size: int):
    return itertools.combinations(range(d), size)


@pytest.mark.parametrize("d,seed", [(5, 0), (8, 1), (12, 2)])
def test_single_weight_removal_is_the_brute_force_optimum(d, seed):
    h = spd(d, seed, cond=3.0)
    hinv = torch.linalg.inv(h)
    w = torch.randn(d, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    sal = obs_saliency(w, hinv)
    for q in range(d):
        new, loss = obs_remove(w, hinv, [q])
        ref, ref_loss = constrained_lsq(w, h, (q,))
        assert new[q] == 0
        assert torch.allclose(new, ref, atol=1e-10, rtol=1e-9)
        assert loss == pytest.approx(ref_loss, rel=1e-9, abs=1e-12)
        assert float(sal[q]) == pytest.approx(ref_loss, rel=1e-9, abs=1e-12)  # ρ_q is the exact loss
    best = min(range(d), key=lambda q: constrained_lsq(w, h, (q,))[1])
    assert int(sal.argmin()) == best


@pytest.mark.parametrize("d,seed", [(6, 3), (9, 4), (12, 5)])
def test_multi_weight_removal_equals_constrained_least_squares_for_every_subset(d, seed):
    h = spd(d, seed, cond=3.0)
    hinv = torch.linalg.inv(h)
    w = torch.randn(d, generator=torch.Generator().manual_seed(200 + seed), dtype=torch.float64)
    sizes = range(1, d) if d <= 9 else (1, 2, 3, d - 2, d - 1)  # every subset up to d=9; 12: ~800 of them
    for size in sizes:
        for pruned in all_subsets(d, size):
            new, loss = obs_remove(w, hinv, list(pruned))
            ref, ref_loss = constrained_lsq(w, h, pruned)
            assert torch.all(new[list(pruned)] == 0)
            assert torch.allclose(new, ref, atol=1e-9, rtol=1e-8), pruned
            assert loss == pytest.approx(ref_loss, rel=1e-8, abs=1e-11), pruned


@pytest.mark.parametrize("d,seed", [(7, 6), (10, 7), (12, 8)])
def test_exactobs_greedy_trace_is_exact_obs_on_its_mask(d, seed):
    """For every removal count c: the ExactOBS row equals the constrained least squares on the
    greedily chosen mask, its summed step losses equal that optimum's loss, c = 1 is the brute-force
    best single removal, and no c beats the brute-force best subset of size c (greedy is not
    globally optimal, so only >= holds there)."""
    h = spd(d, seed, cond=3.0)
    hinv = torch.linalg.inv(h)
    w = torch.randn(1, d, generator=torch.Generator().manual_seed(300 + seed), dtype=torch.float64)
    greedy_worse = 0
    for c in range(1, d + 1):
        row, losses = greedy_rows(w, hinv, torch.tensor([c]))
        pruned = tuple(int(i) for i in (row[0] == 0).nonzero().flatten())
        assert len(pruned) == c
        ref, ref_loss = constrained_lsq(w[0], h, pruned)
        assert torch.allclose(row[0], ref, atol=1e-9, rtol=1e-8)
        assert float(losses[0].sum()) == pytest.approx(ref_loss, rel=1e-8, abs=1e-11)
        best = min(constrained_lsq(w[0], h, s)[1] for s in all_subsets(d, c))
        assert ref_loss >= best - 1e-10
        if c == 1:
            assert ref_loss == pytest.approx(best, rel=1e-10, abs=1e-12)
        greedy_worse += ref_loss > best * (1 + 1e-9) + 1e-12
    assert greedy_worse < d  # c = 1 and c = d are always optimal


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_greedy_projection_matches_exactobs_rows(seed):
    """``methods._recovery.greedy_obs_project`` (one H⁻¹ per trial) = ``greedy_rows`` (shared H⁻¹)."""
    d, k = 10, 4
    h = spd(d, seed, cond=3.0)
    hinv = torch.linalg.inv(h)
    w = torch.randn(5, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mine, keep = greedy_obs_project(w, hinv.expand(5, d, d).clone(), k)
    ref, _ = greedy_rows(w, hinv, torch.full((5,), d - k))
    assert torch.allclose(mine, ref, atol=1e-10)
    assert torch.equal(keep, ref != 0)


def small_layer(seed: int, d_out: int = 8, d_in: int = 12):
    g = torch.Generator().manual_seed(seed)
    mix = 2.0 * torch.randn(d_in, d_in, generator=g) / d_in**0.5 + torch.eye(d_in)
    x = torch.randn(256, d_in, generator=g) @ mix
    x[:, 0] *= 5.0  # one loud feature, as in LLM activations
    return torch.randn(d_out, d_in, generator=g), x.T @ x / 256


def layer_error(w: torch.Tensor, w_new: torch.Tensor, h: torch.Tensor) -> float:
    dw = (w - w_new).double()
    return float(torch.trace(dw @ h.double() @ dw.T))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [0.25, 0.5, 0.75, "2:4"])
def test_exactobs_reconstruction_error_at_most_sparsegpt_on_small_layers(seed, target):
    w, h = small_layer(seed)
    e_obc = layer_error(w, prune_weight("obc", w, hessian=h, target=target), h)
    e_sgpt = layer_error(w, prune_weight("sparsegpt", w, hessian=h, target=target), h)
    assert e_obc <= e_sgpt * (1 + 1e-5) + 1e-9, (e_obc, e_sgpt)
