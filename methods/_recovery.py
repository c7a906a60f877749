"""Sparse recovery math shared by ``iht``, ``topk_iobs`` and ``iobs_obc`` (``synthetic:`` models).

The problem is sparse linear regression, min f(θ) = (1/n)‖Xθ − y‖² subject to ‖θ‖₀ ≤ k, with
∇f = (2/n)Xᵀ(Xθ − y) and Hessian (2/n)XᵀX (Wu et al., NeurIPS 2024, §7.2-7.4). Every
function here is batched over independent trials: X is (T, n, d), θ and y are (T, d) and (T, n).

Two step conventions (§7.4 item 1):

- ``as_coded``: the authors' code (DiyuanWu/woodtaylor_simulation). The curvature is C = XᵀX,
  IHT steps by η/λ_max(C) and I-OBS preconditions with η·C⁻¹. Both carry a hidden 2/n damping.
- ``newton``: C = (2/n)XᵀX, the true Hessian; IHT steps by η/L with L = λ_max(C) and I-OBS
  takes the damped Newton step η·C⁻¹ (η = 1: the full Newton step).

C⁻¹ is the Moore-Penrose pseudo-inverse of C + ridge·mean(diag C)·I, so an underdetermined
problem (n < d, C singular) still has a defined step: with ridge 0 the I-OBS Newton point is the
projection of θ_t onto the solutions of Xθ = y (the minimum-norm correction).
"""
from __future__ import annotations

from typing import Literal

from harness.core.lazy import torch
from harness.core.obs import obs_remove

Step = Literal["as_coded", "newton"]


def curvature(x: "torch.Tensor", step: Step) -> "torch.Tensor":
    """C (T, d, d): XᵀX for ``as_coded``, the Hessian (2/n)XᵀX for ``newton``."""
    c = x.transpose(1, 2) @ x
    return c if step == "as_coded" else c * (2.0 / x.shape[1])


def curvature_inverse(c: "torch.Tensor", ridge: float) -> "torch.Tensor":
    """pinv(C + ridge·mean(diag C)·I) (T, d, d); the plain inverse when C is invertible and ridge 0."""
    if ridge > 0:
        mean_diag = torch.diagonal(c, dim1=1, dim2=2).mean(1)  # (T,)
        c = c + ridge * mean_diag[:, None, None] * torch.eye(c.shape[1], dtype=c.dtype, device=c.device)
    return torch.linalg.pinv(c, hermitian=True)


def lambda_max(c: "torch.Tensor") -> "torch.Tensor":
    """Largest eigenvalue of each C (T,)."""
    return torch.linalg.eigvalsh(c)[:, -1]


def hard_threshold(theta: "torch.Tensor", k: int) -> "torch.Tensor":
    """T_k: keep the k entries of largest magnitude in each row of θ (T, d), zero the rest."""
    keep = theta.abs().topk(k, dim=1).indices
    return torch.zeros_like(theta).scatter(1, keep, theta.gather(1, keep))


def greedy_obs_project(theta: "torch.Tensor", hinv: "torch.Tensor", k: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Greedy ExactOBS down to k nonzeros per row, each trial with its own H⁻¹.

    Removes d − k weights one at a time, always the least saliency θ_j²/[H⁻¹]_jj, updating the
    rest optimally and dropping j from H⁻¹ (OBC's loop; ``methods.obc.greedy_rows`` for a shared
    H⁻¹). The result is the H-norm projection of θ onto its greedily chosen support.

    Returns:
        (projected θ (T, d), kept mask (T, d) bool).
    """
    t, d = theta.shape
    w = theta.clone()
    hi = hinv.clone()  # (T, d, d)
    removed = torch.zeros(t, d, dtype=torch.bool, device=theta.device)
    rows = torch.arange(t, device=theta.device)
    for _ in range(d - k):
        diag = torch.diagonal(hi, dim1=1, dim2=2)  # (T, d)
        scores = (w**2 / diag).masked_fill(removed, float("inf"))
        j = scores.argmin(dim=1)  # (T,)
        hjj = diag[rows, j]
        row_j = hi[rows, j, :]  # (T, d) = H⁻¹ e_j
        w -= (w[rows, j] / hjj)[:, None] * row_j
        removed[rows, j] = True
        w = w.masked_fill(removed, 0.0)
        col_j = hi[rows, :, j]  # (T, d), a copy: hi changes below
        hi.baddbmm_(col_j[:, :, None], (-row_j / hjj[:, None])[:, None, :])
    return w, ~removed


def obs_refit(theta: "torch.Tensor", hinv: "torch.Tensor", keep: "torch.Tensor") -> "torch.Tensor":
    """Remove the complement P of ``keep`` (T, d) from θ (T, d) jointly and optimally under H⁻¹
    (T, d, d): θ − H⁻¹E_Pᵀ([H⁻¹]_PP)⁻¹θ_P, the H-norm projection onto the kept support."""
    return torch.stack([obs_remove(theta[t], hinv[t], (~keep[t]).nonzero().flatten().tolist())[0]
                        for t in range(theta.shape[0])])


def check_step_params(step: str, eta: float, ridge: float) -> None:
    """Shared ``Params.validate`` rules of the recovery methods."""
    if step not in ("as_coded", "newton"):
        raise ValueError(f"step must be 'as_coded' or 'newton', got {step!r}")
    if not eta > 0:
        raise ValueError(f"eta must be > 0 (the step size), got {eta}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
