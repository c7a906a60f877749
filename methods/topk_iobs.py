"""``topk_iobs``: Topk-I-OBS on ``synthetic:`` sparse-recovery problems.

Wu, Modoranu, Safaryan, Kuznedelev, Alistarh, "The Iterative Optimal Brain Surgeon", NeurIPS 2024,
https://arxiv.org/abs/2408.17163 (synthetic code: DiyuanWu/woodtaylor_simulation, "topkwt").
Each step takes the Newton point θ̃ = θ_t − η·C⁻¹∇f(θ_t) and keeps its k largest magnitudes.
With ``refit: true`` the kept weights are then re-fitted by the multi-weight OBS update on the
pruned set P, θ̃ − C⁻¹E_Pᵀ([C⁻¹]_PP)⁻¹θ̃_P (the H-norm projection onto the top-k support,
Wu et al., NeurIPS 2024, variant 1). C and η follow ``step`` (see ``methods._recovery``).

Example:
    methods:
      - {name: topk_iobs, params: {step: newton, eta: 1.0}}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.core.lazy import torch
from harness.core.method import register_method
from harness.core.recovery import RecoveryMethod, RecoveryProblem
from methods._recovery import (Step, check_step_params, curvature, curvature_inverse,
                               hard_threshold, obs_refit)


@register_method("topk_iobs")
class TopkIOBS(RecoveryMethod):
    """Topk-I-OBS: Newton point, then top-k (optionally with the OBS re-fit)."""

    @dataclass(frozen=True)
    class Params:
        step: Step = "newton"  # "as_coded": C = XᵀX (a hidden 2/n damping); "newton": C = (2/n)XᵀX
        eta: float = 1.0  # Newton step size; the error contracts by |1 - eta| per step (converges for eta < 2)
        ridge: float = 0.0  # C + ridge·mean(diag C)·I before the (pseudo-)inverse; 0 = exact (pinv if singular)
        refit: bool = False  # re-fit the kept weights with the multi-weight OBS update (the authors do not)

        def validate(self) -> None:
            check_step_params(self.step, self.eta, self.ridge)

    def setup(self, problem: RecoveryProblem, k: int) -> dict[str, Any]:
        return {"cinv": curvature_inverse(curvature(problem.x, self.params.step), self.params.ridge)}

    def update(self, theta: "torch.Tensor", grad: "torch.Tensor", state: dict[str, Any], k: int) -> "torch.Tensor":
        newton = theta - self.params.eta * torch.einsum("tij,tj->ti", state["cinv"], grad)
        kept = hard_threshold(newton, k)
        if not self.params.refit:
            return kept
        return obs_refit(newton, state["cinv"], kept != 0)
