"""``obc``: ExactOBS, per-row greedy Optimal Brain Surgeon with its own inverse Hessian per row.

Frantar, Singh, Alistarh, "Optimal Brain Compression", NeurIPS 2022,
https://arxiv.org/abs/2208.11580 (reference: IST-DASLab/OBC ``trueobs.py``). Each row removes
weights one at a time, always the one with the least OBS loss w_j²/(2[H⁻¹]_jj), updates the
remaining weights optimally, and drops j from its H⁻¹ by one Gaussian-elimination step. The
(row, step) losses of the whole layer are then sorted together, which gives each row its own
number of removed weights (global selection inside the layer). Cost O(d_out·d_in³) in float64:
meant for small layers and vision models; larger layers are refused, with the numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.core.lazy import torch
from harness.core.method import LayerMethod, LayerStats, PruneResult, register_method
from harness.core.target import Target

MAX_DAMPING_RETRIES = 6


class LayerTooLarge(ValueError):
    """The layer's ExactOBS cost exceeds the configured budget."""


def damped_inverse(hessian: "torch.Tensor", dampening_frac: float) -> tuple["torch.Tensor", float]:
    """H⁻¹ in float64 with dead inputs handled; damping escalates 10x while H is singular."""
    h = hessian.detach().double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    mean_diag = float(torch.diagonal(h).mean())
    frac = dampening_frac
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for _ in range(MAX_DAMPING_RETRIES + 1):
        lower, info = torch.linalg.cholesky_ex(h + frac * mean_diag * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(lower), frac
        frac = max(frac * 10, 1e-6)
    raise ValueError(f"Hessian is not positive definite even with damping {frac:g} x mean(diag)")


def greedy_rows(w: "torch.Tensor", hinv: "torch.Tensor", steps: "torch.Tensor", nm: tuple[int, int] | None = None,
                ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Run the per-row greedy OBS for a batch of rows.

    Args:
        w: (B, d) float64 rows (modified copy returned).
        hinv: (d, d) float64 H⁻¹ shared at the start; each row gets its own copy.
        steps: (B,) number of removals for each row.
        nm: (n, m): never remove from a group of m inputs that already has n removed.

    Returns:
        (rows after their removals (B, d), per-step losses (B, max_steps) with inf past each row's count).
    """
    b, d = w.shape
    w = w.clone()
    hi = hinv.expand(b, d, d).clone()  # (B, d, d): one inverse per row
    removed = torch.zeros(b, d, dtype=torch.bool, device=w.device)
    max_steps = int(steps.max()) if b else 0
    losses = torch.full((b, max_steps), float("inf"), dtype=w.dtype, device=w.device)
    rows = torch.arange(b, device=w.device)
    for step in range(max_steps):
        active = steps > step  # (B,)
        diag = torch.diagonal(hi, dim1=1, dim2=2)  # (B, d)
        scores = w**2 / diag
        blocked = removed.clone()
        if nm is not None:  # groups that already hold n removed weights are closed
            n, m = nm
            full = removed.reshape(b, d // m, m).sum(-1, keepdim=True) >= n
            blocked |= full.expand(b, d // m, m).reshape(b, d)
        scores = scores.masked_fill(blocked, float("inf"))
        j = scores.argmin(dim=1)  # (B,)
        hjj = diag[rows, j]  # (B,)
        losses[:, step] = torch.where(active, scores[rows, j] / 2, losses[:, step])
        row_j = hi[rows, j, :]  # (B, d) = H⁻¹ e_j
        coef = torch.where(active, w[rows, j] / hjj, torch.zeros_like(hjj))
        w -= coef[:, None] * row_j  # optimal compensation of the remaining weights
        removed[rows[active], j[active]] = True
        w = w.masked_fill(removed, 0.0)
        upd = torch.where(active, -1.0 / hjj, torch.zeros_like(hjj))
        col_j = hi[rows, :, j]  # (B, d) = H⁻¹[:, j] (a copy: hi changes below)
        # drop j from H⁻¹ in place: hi -= H⁻¹e_j e_jᵀH⁻¹ / [H⁻¹]_jj, one batched rank-1 update
        hi.baddbmm_(col_j[:, :, None], (upd[:, None] * row_j)[:, None, :])
    return w, losses


def obc_prune(weight: "torch.Tensor", hessian: "torch.Tensor", target: Target, *, dampening_frac: float = 0.0,
              rows_per_batch: int = 32) -> tuple["torch.Tensor", dict]:
    """ExactOBS on one (d_out, d_in) layer; returns the pruned weight (float64) and info."""
    w_all = weight.detach().double()
    d_out, d_in = w_all.shape
    hinv, damping = damped_inverse(hessian.to(w_all.device), dampening_frac)
    dead = torch.diagonal(hessian) == 0
    w_all = w_all.masked_fill(dead.reshape(1, -1).to(w_all.device), 0.0)
    if target.is_nm:
        counts = torch.full((d_out,), d_in // target.m * target.n, dtype=torch.long, device=w_all.device)
        nm = (target.n, target.m)
    else:
        # pass 1: every row's full greedy loss curve; one global sort gives per-row counts
        curves = []
        for r0 in range(0, d_out, rows_per_batch):
            rows = w_all[r0 : r0 + rows_per_batch]
            full = torch.full((rows.shape[0],), d_in, dtype=torch.long, device=w_all.device)
            curves.append(greedy_rows(rows, hinv, full)[1])
        losses = torch.cat(curves)  # (d_out, d_in)
        k = int(round(target.sparsity * d_out * d_in))
        chosen = torch.zeros(losses.numel(), dtype=torch.bool, device=w_all.device)
        chosen[torch.argsort(losses.flatten(), stable=True)[:k]] = True
        counts = chosen.reshape(d_out, d_in).sum(1)
        nm = None
    out = torch.empty_like(w_all)
    total_loss = 0.0
    for r0 in range(0, d_out, rows_per_batch):  # pass 2: each row stops at its own count
        rows, losses = greedy_rows(w_all[r0 : r0 + rows_per_batch], hinv, counts[r0 : r0 + rows_per_batch], nm)
        out[r0 : r0 + rows_per_batch] = rows
        total_loss += float(losses[torch.isfinite(losses)].sum())
    return out, {"damping": damping, "obs_loss": total_loss, "dead_inputs": int(dead.sum())}


@register_method("obc")
class ExactOBS(LayerMethod):
    """ExactOBS (OBC): exact greedy OBS per row, global selection inside each layer; N:M supported.

    Example:
        methods:
          - name: obc
            params: {dampening_frac: 0.0, rows_per_batch: 32, max_cost: 2.0e11}
    """

    @dataclass(frozen=True)
    class Params:
        dampening_frac: float = 0.0  # relative damping of H (OBC's --rel-damp default); escalates if singular
        rows_per_batch: int = 32  # rows pruned together; memory is rows_per_batch * d_in² float64
        max_cost: float = 2.0e11  # refuse layers with d_out * d_in³ above this (about a minute per 1e11 on 2 cores)

        def validate(self) -> None:
            if self.rows_per_batch <= 0:
                raise ValueError("rows_per_batch must be positive")
            if self.dampening_frac < 0:
                raise ValueError("dampening_frac must be >= 0")

    stats = "hessian"

    def prune(self, name: str, weight: "torch.Tensor", stats: LayerStats | None, target: Target) -> PruneResult:
        if stats is None or stats.hessian is None:
            raise ValueError("obc needs the layer's Hessian X X^T / n")
        d_out, d_in = weight.shape
        cost = float(d_out) * float(d_in) ** 3
        if cost > self.params.max_cost:
            raise LayerTooLarge(
                f"{name}: ExactOBS cost d_out*d_in^3 = {cost:.2e} exceeds max_cost {self.params.max_cost:.2e}; "
                "use sparsegpt for layers this size, or raise obc's max_cost"
            )
        if target.is_nm and d_in % target.m:
            raise ValueError(f"{name}: input dim {d_in} is not a multiple of {target.m}")
        w, info = obc_prune(weight, stats.hessian, target, dampening_frac=self.params.dampening_frac,
                            rows_per_batch=self.params.rows_per_batch)
        return PruneResult(w.to(weight.dtype), info)
