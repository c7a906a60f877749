"""``iht``: k-IHT (iterative hard thresholding) on ``synthetic:`` sparse-recovery problems.

θ_{t+1} = T_k(θ_t − (η/λ_max(C))·∇f(θ_t)), T_k keeping the k largest magnitudes
(Blumensath & Davies 2009; the baseline of Wu et al., "The Iterative Optimal Brain Surgeon",
NeurIPS 2024, https://arxiv.org/abs/2408.17163). C is XᵀX with ``step: as_coded`` (the authors'
code, step 1/λ_max(XᵀX)) and the Hessian (2/n)XᵀX with ``step: newton`` (step η/L).

Example:
    methods:
      - {name: iht, params: {step: newton, eta: 1.0}}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.core.lazy import torch
from harness.core.method import register_method
from harness.core.recovery import RecoveryMethod, RecoveryProblem
from methods._recovery import Step, check_step_params, curvature, hard_threshold, lambda_max


@register_method("iht")
class IHT(RecoveryMethod):
    """k-IHT with step η/λ_max(C)."""

    @dataclass(frozen=True)
    class Params:
        step: Step = "newton"  # "as_coded": C = XᵀX (authors' code); "newton": C = (2/n)XᵀX, the Hessian
        eta: float = 1.0  # step size in units of 1/λ_max(C); converges for eta < 2

        def validate(self) -> None:
            check_step_params(self.step, self.eta, 0.0)

    def setup(self, problem: RecoveryProblem, k: int) -> dict[str, Any]:
        return {"lr": self.params.eta / lambda_max(curvature(problem.x, self.params.step))}  # (T,)

    def update(self, theta: "torch.Tensor", grad: "torch.Tensor", state: dict[str, Any], k: int) -> "torch.Tensor":
        return hard_threshold(theta - state["lr"][:, None] * grad, k)
