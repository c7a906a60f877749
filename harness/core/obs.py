"""Closed-form Optimal Brain Surgeon for one row: the formulas every second-order method uses.

For a row w with loss L(w + δ) - L(w) = ½ δᵀ H δ, removing the set P of weights optimally gives
δ = -H⁻¹ E_Pᵀ ([H⁻¹]_PP)⁻¹ w_P with loss ½ w_Pᵀ ([H⁻¹]_PP)⁻¹ w_P (Hassibi & Stork, 1993; Frantar & Alistarh, 2022).
"""
from __future__ import annotations

from harness.core.lazy import torch


def obs_remove(w: "torch.Tensor", hinv: "torch.Tensor", pruned: list[int]) -> tuple["torch.Tensor", float]:
    """Remove ``pruned`` from row ``w`` (d,) given H⁻¹ (d, d); return (new row, loss increase)."""
    if not pruned:
        return w.clone(), 0.0
    p = torch.tensor(pruned, dtype=torch.long)
    block = hinv[p][:, p]  # [H⁻¹]_PP, (|P|, |P|)
    coef = torch.linalg.solve(block, w[p])  # ([H⁻¹]_PP)⁻¹ w_P
    new = w - hinv[:, p] @ coef
    new[p] = 0.0  # exact zeros (the update makes them zero up to rounding)
    return new, float(0.5 * w[p] @ coef)


def obs_saliency(w: "torch.Tensor", hinv: "torch.Tensor") -> "torch.Tensor":
    """Single-weight saliency ρ_q = w_q² / (2 [H⁻¹]_qq), (d,)."""
    return w**2 / (2 * torch.diagonal(hinv))
