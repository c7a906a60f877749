"""The recovery kind: methods that solve ``synthetic:`` sparse linear regression, not prune a model.

The bench (:mod:`harness.synthetic`) draws a batch of problems and iterates
θ ← ``update(θ, ∇f(θ), state, k)`` from θ₀, with ``state = setup(problem, k)``; it records the
loss, the distance to θ* and the support recall per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from harness.core.lazy import torch
from harness.core.method import Kind, MethodBase


@dataclass
class RecoveryProblem:
    """One batch of sparse-recovery trials, as the methods see it (no θ*: that is the bench's)."""

    x: Any  # (T, n, d) float64 design matrices
    y: Any  # (T, n) observations


class RecoveryMethod(MethodBase):
    """Iterates θ ← update(θ, ∇f(θ)) on a :class:`RecoveryProblem` of T independent trials.

    Subclasses implement :meth:`setup` (per-problem precomputation, e.g. C⁻¹) and :meth:`update`;
    neither may change ``problem``. They apply only to ``synthetic:`` models (``model_kinds``).
    """

    kind: ClassVar[Kind] = "recovery"
    model_kinds: ClassVar[tuple[str, ...]] = ("synthetic",)

    def setup(self, problem: RecoveryProblem, k: int) -> dict[str, Any]:
        """Per-problem state handed to every :meth:`update` (e.g. the curvature's inverse)."""
        raise NotImplementedError

    def update(self, theta: Any, grad: Any, state: dict[str, Any], k: int) -> Any:
        """The next iterate (T, d), at most ``k`` nonzeros per trial, from θ (T, d) and ∇f(θ) (T, d)."""
        raise NotImplementedError


def mse_loss_grad(x: "torch.Tensor", y: "torch.Tensor", theta: "torch.Tensor"
                  ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Loss (1/n)‖Xθ − y‖² (T,) and its gradient (2/n)Xᵀ(Xθ − y) (T, d)."""
    n = x.shape[1]
    resid = torch.einsum("tnd,td->tn", x, theta) - y  # (T, n)
    return (resid**2).mean(1), (2.0 / n) * torch.einsum("tnd,tn->td", x, resid)
