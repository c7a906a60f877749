"""``iobs_obc``: I-OBS with a greedy ExactOBS (OBC) projection, on ``synthetic:`` problems.

Wu et al., "The Iterative Optimal Brain Surgeon", NeurIPS 2024, https://arxiv.org/abs/2408.17163,
variant 2. Each step takes the Newton point
θ̃ = θ_t − η·C⁻¹∇f(θ_t) and removes d − k weights by greedy OBS under C⁻¹ (least θ_j²/[C⁻¹]_jj
first, remaining weights compensated, j dropped from C⁻¹), which approximates the I-OBS step
argmin_{‖θ‖₀≤k} (θ − θ̃)ᵀC(θ − θ̃). ``mask_from: current, compensate: false`` is the authors'
exploratory "OBC" variant instead: the greedy mask is chosen on θ_t and applied to θ̃.

Example:
    methods:
      - {name: iobs_obc, params: {step: newton, eta: 1.0}}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from harness.core.lazy import torch
from harness.core.method import register_method
from harness.core.recovery import RecoveryMethod, RecoveryProblem
from methods._recovery import (Step, check_step_params, curvature, curvature_inverse,
                               greedy_obs_project, obs_refit)


@register_method("iobs_obc")
class IOBSOBC(RecoveryMethod):
    """I-OBS whose projection is greedy ExactOBS."""

    @dataclass(frozen=True)
    class Params:
        step: Step = "newton"  # "as_coded": C = XᵀX (a hidden 2/n damping); "newton": C = (2/n)XᵀX
        eta: float = 1.0  # Newton step size (converges for eta < 2)
        ridge: float = 0.0  # C + ridge·mean(diag C)·I; must be > 0 when n < d (OBS needs an invertible C)
        mask_from: Literal["newton_point", "current"] = "newton_point"  # where the greedy OBS mask is chosen
        compensate: bool = True  # OBS-compensate the kept weights of θ̃; false: mask ⊙ θ̃ (the authors' variant)

        def validate(self) -> None:
            check_step_params(self.step, self.eta, self.ridge)

    def setup(self, problem: RecoveryProblem, k: int) -> dict[str, Any]:
        _, n, d = problem.x.shape
        if n < d and self.params.ridge == 0:
            raise ValueError(f"iobs_obc needs an invertible curvature, but n={n} < d={d} makes XᵀX singular; "
                             "set the method's params.ridge > 0 (e.g. 0.01)")
        return {"cinv": curvature_inverse(curvature(problem.x, self.params.step), self.params.ridge)}

    def update(self, theta: "torch.Tensor", grad: "torch.Tensor", state: dict[str, Any], k: int) -> "torch.Tensor":
        cinv = state["cinv"]
        newton = theta - self.params.eta * torch.einsum("tij,tj->ti", cinv, grad)
        source = newton if self.params.mask_from == "newton_point" else theta
        projected, keep = greedy_obs_project(source, cinv, k)
        if not self.params.compensate:
            return newton * keep
        return projected if source is newton else obs_refit(newton, cinv, keep)
