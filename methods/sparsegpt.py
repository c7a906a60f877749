"""``sparsegpt``: OBS-style pruning with a shared inverse Hessian and lazy batched updates.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
ICML 2023, https://arxiv.org/abs/2301.00774. Semantics follow the reference ``fasterprune``
(IST-DASLab/sparsegpt): relative damping, dead inputs zeroed, the upper Cholesky factor of
H^-1, a mask chosen jointly over all rows per block of columns, N:M chosen lazily from the
already-updated weights, fp32 math whatever the model dtype.

Two sweeps compute it:

- the exact sweep (N:M targets, and layers narrower than ``WIDE_COLS`` inputs) repeats the
  reference's float operations in the reference's order: the same inverse (Cholesky, inverse,
  upper Cholesky of H^-1), the same rank-1 updates, so its output is bit-identical. N:M must take
  it: its lazy choice of N in every group of M compares four freshly updated weights, and a
  change in the last bit of H^-1 flips near-ties (measured: 8 to 200 of 590k mask entries).
- the wide sweep (unstructured targets, d_in >= ``WIDE_COLS``): the inverse comes from one
  Cholesky factorisation instead of three O(d^3) passes. With V V^T = H + λI and V upper (the
  Cholesky factor of the row- and column-reversed matrix, reversed back), U = V^-1 is the upper
  Cholesky factor of (H + λI)^-1, since U^T U = V^-T V^-1 = (V V^T)^-1; each block of rows of U
  is one triangular solve against V's trailing part, so the inverse costs about d^3/3 + d^3/3
  flops instead of 4d^3/3 and is never stored whole. Within a block the mask is fixed before the
  sweep (unstructured), so the column updates run in sub-blocks of ``SUB_BLOCK`` with the rest
  of the block updated by one GEMM. Same mathematics, other rounding, and more accurate: H^-1
  is never formed and factored again. Values agree with the reference to about 1e-6 relative
  and the masks are identical on the benchmarks' layers at 50 % (``tests/test_methods.py``).
  Where two block scores tie to ~1e-7, the two roundings can pick different weights, and the
  later blocks then differ too: on one 768x3072 layer at 60 % and 70 %, 2,342 and 334 of 2.4 M
  mask entries, while against a float64 run of the reference the wide sweep missed 46 and 0 and
  the float32 reference itself 2,328 and 334. ``exact=True`` (or ``WIDE_COLS``) restores the
  reference's bits.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from harness.core.lazy import torch

from harness.core.method import LayerMethod, LayerStats, PruneResult, register_method
from harness.core.target import Target

MAX_DAMPING_RETRIES = 4  # each retry multiplies the damping by 10
WIDE_COLS = 2048  # unstructured layers with at least this many inputs take the wide sweep
SUB_BLOCK = 16  # columns per rank-1 sub-block of the wide sweep (the rest of a block: one GEMM)


class NotPositiveDefinite(RuntimeError):
    """The damped Hessian stayed singular after every damping escalation."""


def inverse_cholesky_upper(hessian: torch.Tensor, dampening_frac: float) -> tuple[torch.Tensor, float, int]:
    """Return (U, damping used, retries) where U is the upper Cholesky factor of (H + λI)^-1.

    λ = dampening_frac * mean(diag H). On failure λ grows 10x, up to MAX_DAMPING_RETRIES times.
    """
    h = hessian
    cols = h.shape[0]
    idx = torch.arange(cols, device=h.device)
    mean_diag = torch.mean(torch.diag(h))
    frac = dampening_frac
    for retry in range(MAX_DAMPING_RETRIES + 1):
        damped = h.clone()
        damped[idx, idx] += frac * mean_diag
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            # info == 0 leaves every entry finite once the diagonal is (an inf or NaN above the
            # diagonal makes a later pivot non-positive or NaN, which potrf reports): O(d) check
            if int(info) == 0 and torch.isfinite(torch.diagonal(upper)).all():
                return upper, frac, retry
        frac *= 10
    raise NotPositiveDefinite(
        f"Hessian is not positive definite even with damping {frac / 10:g} x mean(diag); "
        "the calibration activations may contain NaN/inf or too few tokens"
    )


def ul_cholesky(hessian: torch.Tensor, dampening_frac: float) -> tuple[torch.Tensor, float, int]:
    """Return (V, damping used, retries) with V upper triangular and V V^T = H + λI.

    V is the lower Cholesky factor of H with rows and columns reversed, reversed back; V^-1 is
    then the upper Cholesky factor of (H + λI)^-1 (module docstring). Damping as
    :func:`inverse_cholesky_upper`.
    """
    h = hessian
    mean_diag = torch.mean(torch.diag(h))
    frac = dampening_frac
    for retry in range(MAX_DAMPING_RETRIES + 1):
        damped = h.flip(0, 1)  # a reversed copy, (cols, cols)
        damped.diagonal().add_(frac * mean_diag)
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0 and torch.isfinite(torch.diagonal(lower)).all():
            return lower.flip(0, 1), frac, retry
        frac *= 10
    raise NotPositiveDefinite(
        f"Hessian is not positive definite even with damping {frac / 10:g} x mean(diag); "
        "the calibration activations may contain NaN/inf or too few tokens"
    )


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    target: Target,
    blocksize: int = 128,
    dampening_frac: float = 0.01,
    *,
    exact: bool | None = None,
) -> tuple[torch.Tensor, dict]:
    """Prune one weight matrix (rows, cols) given H = X X^T / n (cols, cols).

    Args:
        exact: take the exact sweep (True) or the wide one (False, unstructured targets only);
            default: the wide sweep for unstructured layers with at least ``WIDE_COLS`` inputs.

    Returns the pruned weight in fp32 and {"damping", "damping_retries", "obs_loss", "dead_inputs"}.
    """
    W = weight.detach().float().clone()  # (rows, cols)
    H = hessian.detach().to(W.device, torch.float32).clone()  # (cols, cols)
    rows, cols = W.shape
    dead = torch.diag(H) == 0  # inputs that never fire: force them to zero
    H[dead, dead] = 1
    W[:, dead] = 0
    if exact is None:
        exact = target.is_nm or cols < WIDE_COLS
    if not exact and target.is_nm:
        raise ValueError("the wide sweep chooses masks per block: N:M targets need exact=True")
    if exact:
        Hinv, damping, retries = inverse_cholesky_upper(H, dampening_frac)
        del H
        losses = _exact_sweep(W, Hinv, target, blocksize)
    else:
        V, damping, retries = ul_cholesky(H, dampening_frac)
        del H
        losses = _wide_sweep(W, V, target.sparsity, blocksize)
    info = {"damping": damping, "damping_retries": retries, "obs_loss": losses,
            "dead_inputs": int(dead.sum())}  # zeroed whatever the target: they can push a layer past it
    return W, info


@contextmanager
def _one_thread():
    """Run the column loop's small elementwise ops on one thread (restored after).

    Each op touches at most rows x blocksize floats; split over two threads it waits for both,
    and on a shared CPU the second is often descheduled (measured: the loop 1.7x faster on one
    thread under load). Results do not change: elementwise ops are the same per element
    whatever the split, and the GEMMs outside the loop keep the default threads.
    """
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _block_mask(W1: torch.Tensor, d1: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference's unstructured block mask: w^2 / d^2 <= its sorted(...)[int(p * numel)]."""
    tmp = W1**2 / d1.reshape(1, -1) ** 2  # (rows, count)
    # the reference's sort(tmp)[k] is the (k+1)-th smallest value: kthvalue finds it in O(n)
    # instead of O(n log n), the same float, so the same mask (6x faster here)
    k = min(int(tmp.numel() * sparsity), tmp.numel() - 1)
    return tmp <= torch.kthvalue(tmp.flatten(), k + 1).values


def _exact_sweep(W: torch.Tensor, Hinv: torch.Tensor, target: Target, blocksize: int) -> float:
    """The reference's sweep, in place on W (rows, cols) with U = Hinv; returns the OBS loss."""
    import torch as t  # the real module: the lazy proxy costs an import lookup per attribute, per column
    rows, cols = W.shape
    n, m = target.n, target.m
    zero = t.zeros((), device=W.device)
    losses = t.zeros((), device=W.device)
    where, outer, topk = t.where, t.outer, t.topk
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = t.diagonal(Hinv1)  # (count,)
        W1 = W[:, i1:i2].clone()  # (rows, count), contiguous like the reference's
        # one mask per block, jointly over rows and columns; N:M is chosen lazily below
        mask1 = t.zeros_like(W1, dtype=t.bool) if target.is_nm else _block_mask(W1, d1, target.sparsity)

        # The sweep works on the block transposed, (count, rows): each rank-1 update then runs
        # over contiguous rows instead of thousands of short strided segments. The float
        # operations are the reference's, element by element and in the same order (products
        # commute exactly), so the result is bit-identical; boolean indexing and per-column
        # loss bookkeeping are gone.
        W1t = W1.t().contiguous()  # (count, rows)
        Err1t = t.zeros_like(W1t)
        mask1t = mask1.t().contiguous()
        w_rows, m_rows, h_rows, e_rows = W1t.unbind(0), mask1t.unbind(0), Hinv1.unbind(0), Err1t.unbind(0)
        d_list = d1.tolist()  # python floats: dividing by one is the same float32 division
        with _one_thread():
            for i in range(count):
                if target.is_nm and i % m == 0:  # lazy N:M: pick from the already-updated weights
                    tmp = (W1t[i : i + m].t() ** 2 / d1[i : i + m].reshape(1, -1) ** 2).contiguous()  # (rows, m)
                    mask1.scatter_(1, i + topk(tmp, n, dim=1, largest=False)[1], True)
                    mask1t[i : i + m] = mask1[:, i : i + m].t()
                err1 = where(m_rows[i], w_rows[i], zero) / d_list[i]  # (w - q) / d, q = w with pruned zeroed
                W1t[i:] -= outer(h_rows[i][i:], err1)  # OBS compensation inside the block
                e_rows[i].copy_(err1)

        W[:, i1:i2] = W1t.t().masked_fill(mask1, 0)  # kept weights: w - 0 * d = w, the reference's q
        Err1 = Err1t.t().contiguous()  # same layout as the reference's, for the same GEMM
        losses += (Err1**2).sum() / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])  # lazy batched update of later columns
    return float(losses)


def _wide_sweep(W: torch.Tensor, V: torch.Tensor, sparsity: float, blocksize: int) -> float:
    """The unstructured sweep from V (V V^T = H + λI, upper), in place on W (rows, cols).

    Per block of columns [i1, i2): its rows of U = V^-1 by one triangular solve against V's
    trailing part, the block mask, the in-block updates by sub-blocks, one GEMM for the later
    columns. Returns the OBS loss.
    """
    import torch as t
    rows, cols = W.shape
    losses = 0.0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        # U[i1:i2, i1:] (count, cols - i1): U V = I and U is upper, so X V[i1:, i1:] = [I 0]
        eye = t.eye(count, cols - i1, device=W.device, dtype=W.dtype)
        u_rows = t.linalg.solve_triangular(V[i1:, i1:], eye, upper=True, left=False)
        U1 = u_rows[:, :count]  # (count, count), upper
        d1 = t.diagonal(U1)
        W1 = W[:, i1:i2]
        mask1 = _block_mask(W1, d1, sparsity)  # (rows, count)
        W1t = W1.t().contiguous()  # (count, rows)
        coef = (mask1.t() / d1.reshape(-1, 1)).contiguous()  # (count, rows): 1/d where pruned, else 0
        E1t = t.empty_like(W1t)  # (count, rows): err = (w - q) / d
        w_rows, c_rows, e_rows = W1t.unbind(0), coef.unbind(0), E1t.unbind(0)
        with _one_thread():
            for j1 in range(0, count, SUB_BLOCK):
                j2 = min(j1 + SUB_BLOCK, count)
                for i in range(j1, j2):
                    t.mul(w_rows[i], c_rows[i], out=e_rows[i])
                    if i + 1 < j2:  # rank-1 update of the rest of the sub-block
                        W1t[i + 1 : j2].addr_(U1[i, i + 1 : j2], e_rows[i], alpha=-1)
                if j2 < count:  # the rest of the block: one small GEMM
                    W1t[j2:].addmm_(U1[j1:j2, j2:].t(), E1t[j1:j2], alpha=-1)
        W[:, i1:i2] = W1t.t().masked_fill(mask1, 0)
        losses += float((E1t**2).sum()) / 2
        if i2 < cols:  # lazy batched update of later columns
            W[:, i2:].addmm_(E1t.t(), u_rows[:, count:], alpha=-1)
    return losses


@register_method("sparsegpt")
class SparseGPT(LayerMethod):
    """SparseGPT one-shot pruning (unstructured and N:M).

    Example:
        methods:
          - name: sparsegpt
            params: {blocksize: 128, dampening_frac: 0.01}
    """

    @dataclass(frozen=True)
    class Params:
        blocksize: int = 128  # columns per lazy-update block; the mask is chosen per block
        dampening_frac: float = 0.01  # damping as a fraction of mean(diag H) (reference percdamp)

        def validate(self) -> None:
            if self.blocksize <= 0:
                raise ValueError(f"blocksize must be positive, got {self.blocksize}")
            if not 0 <= self.dampening_frac < 10:
                raise ValueError(f"dampening_frac must be in [0, 10), got {self.dampening_frac}")

    stats = "hessian"

    def prune(self, name: str, weight: torch.Tensor, stats: LayerStats | None, target: Target) -> PruneResult:
        if stats is None or stats.hessian is None:
            raise ValueError("sparsegpt needs the layer's Hessian X X^T / n")
        if target.is_nm and weight.shape[1] % target.m:
            raise ValueError(f"{name}: input dim {weight.shape[1]} is not a multiple of {target.m}")
        if target.is_nm and self.params.blocksize % target.m:
            raise ValueError(f"blocksize {self.params.blocksize} must be a multiple of M={target.m}")
        W, info = sparsegpt_prune(
            weight, stats.hessian, target, self.params.blocksize, self.params.dampening_frac
        )
        return PruneResult(W.to(weight.dtype), info)
