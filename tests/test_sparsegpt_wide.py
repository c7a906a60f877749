"""SparseGPT's wide path: the in-place reversed factor, its row solves, and N:M on the wide sweep."""
from __future__ import annotations

import pytest
import torch

from harness.core.target import Target


def _layer(d_out: int, d_in: int, seed: int, tokens: int = 1024):
    from benchmarks.layers import correlated_inputs, hessian_of

    w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed + 1))
    return w, hessian_of(correlated_inputs(tokens, d_in, seed))


def test_cholesky_ex_factors_its_out_argument_in_place():
    """reversed_cholesky's memory rests on this: with out= the (column-major) input itself,
    cholesky_ex returns that very tensor, the factor written over the matrix."""
    x = torch.randn(64, 32)
    a = (x.T @ x).contiguous().mT  # column-major
    expected = torch.linalg.cholesky(a)
    factor, info = torch.linalg.cholesky_ex(a, out=(a, torch.empty((), dtype=torch.int32)))
    assert factor.data_ptr() == a.data_ptr() and int(info) == 0
    assert torch.equal(factor, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_reversed_cholesky_is_the_reversed_factor_and_leaves_h_alone(dtype):
    from methods.sparsegpt import reversed_cholesky

    _, h = _layer(4, 300, seed=0)
    h[7, :] = h[:, 7] = 0  # a dead input
    h = h.to(dtype)
    before = h.clone()
    dead = torch.diagonal(h).float() == 0
    L, damping, retries = reversed_cholesky(h, dead, 0.01)
    assert torch.equal(h, before) and retries == 0 and damping == 0.01
    ref = h.float().clone()
    ref[dead, dead] = 1
    ref.diagonal().add_(0.01 * torch.mean(torch.diag(ref)))
    assert torch.equal(L, torch.linalg.cholesky(ref.flip(0, 1)))


def test_reversed_cholesky_retries_from_the_callers_hessian():
    from methods.sparsegpt import reversed_cholesky

    h = torch.eye(8)
    h[1, 1] = -1.0  # indefinite: H_11 + λ > 0 needs λ > 1 = 1.33 x mean(diag), the 4th try (frac 10)
    L, damping, retries = reversed_cholesky(h, torch.zeros(8, dtype=torch.bool), 0.01)
    assert retries == 3 and torch.isfinite(L).all() and h[1, 1] == -1.0
    ref = h.clone()
    ref.diagonal().add_(damping * torch.mean(torch.diag(h)))
    assert torch.allclose(L @ L.T, ref.flip(0, 1), atol=1e-5)


@pytest.mark.parametrize("k,count", [(300, 128), (257, 1), (256, 44), (128, 128)])
def test_last_rows_of_inverse_match_an_explicit_inverse(k, count):
    from methods.sparsegpt import _last_rows_of_inverse, reversed_cholesky

    _, h = _layer(4, 300, seed=1)
    L = reversed_cholesky(h, torch.zeros(300, dtype=torch.bool), 0.01)[0]
    expected = torch.linalg.inv(L[:k, :k].double())[k - count : k]
    got = _last_rows_of_inverse(L, k, count).double()
    assert float((got - expected).norm() / expected.norm()) < 1e-5


@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
def test_wide_nm_sweep_gives_valid_masks_close_to_the_exact_sweep(nm):
    """Forced on small seeded layers, the wide sweep's lazy N:M masks are valid, agree with the
    exact sweep's except in a row where a near-tie flipped (then that row's later groups differ
    too), and reconstruct as well: tr(dW H dW^T) within 1e-4 relative."""
    from methods.sparsegpt import sparsegpt_prune

    n, m = nm
    for seed in range(3):
        w, h = _layer(64, 256, seed)
        exact = sparsegpt_prune(w, h, Target(n / m, n, m), exact=True)[0]
        wide = sparsegpt_prune(w, h, Target(n / m, n, m), exact=False)[0]
        assert ((wide == 0).reshape(64, -1, m).sum(-1) == n).all()
        assert int(((wide == 0) != (exact == 0)).any(1).sum()) <= 1, "more than one row differs"

        def err(p):
            dw = (w - p).double()
            return float(((dw @ h.double()) * dw).sum())

        assert err(wide) <= err(exact) * (1 + 1e-4)


def test_nm_keeps_the_references_bits_unless_wide_nm_and_the_param_keeps_run_ids():
    """N:M at a wide layer: the exact sweep by default (the reference's bits, as stored results
    were computed), the wide one with ``wide_nm``; the param is left out of the params (and so of
    the run id) at its default, and names the variant when set."""
    from benchmarks import reference
    from harness.core.method import build_params, params_dict
    from harness.plugins import get_method
    from methods.sparsegpt import WIDE_COLS, sparsegpt_prune

    w, h = _layer(8, WIDE_COLS, seed=0, tokens=2 * WIDE_COLS)
    ref = reference.sparsegpt_ref(w, h, 0.5, 2, 4)
    assert torch.equal(sparsegpt_prune(w, h, Target(0.5, 2, 4))[0], ref)
    assert torch.equal(sparsegpt_prune(w, h, Target(0.5, 2, 4), exact=True)[0], ref)
    assert torch.equal(sparsegpt_prune(w, h, Target(0.5, 2, 4), wide_nm=True)[0],
                       sparsegpt_prune(w, h, Target(0.5, 2, 4), exact=False)[0])
    cls = get_method("sparsegpt")
    assert params_dict(build_params(cls, {})) == {"blocksize": 128, "dampening_frac": 0.01}
    assert params_dict(build_params(cls, {"wide_nm": True}))["wide_nm"] is True
