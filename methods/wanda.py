"""``wanda``: prune by |W_ij| * ||X_j||_2, compared within each output row; no weight update.

Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models",
ICLR 2024, https://arxiv.org/abs/2306.11695 (reference: locuslab/wanda ``lib/prune.py``).

Tie rule (the reference's): unstructured prunes exactly int(p * d_in) weights in every row, the
lowest scores, and among scores tied at the row's cut the lowest column indices first, which is
the order of the reference's stable sort. The cut is found by a partition instead of a sort
(``torch.kthvalue`` per row, then the ties resolved left to right in the rows that have them),
so the mask is the reference's. N:M prunes the N lowest scores of each group of M inputs
(``torch.topk``, as the reference calls it).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.core.lazy import torch

from harness.core.method import LayerMethod, LayerStats, PruneResult, register_method
from harness.core.sparsity import nm_mask, prune_smallest
from harness.core.target import Target


def wanda_scores(weight: torch.Tensor, act_sq_mean: torch.Tensor) -> torch.Tensor:
    """S = |W| * sqrt(mean_t x_j^2), (rows, cols). The norm's scale does not change the ranking."""
    scores = weight.detach().abs().float()  # abs() makes a new tensor: scaled in place
    return scores.mul_(act_sq_mean.float().sqrt().reshape(1, -1))


def wanda_mask(scores: torch.Tensor, target: Target) -> torch.Tensor:
    """Per row, prune exactly int(p * d_in) lowest scores (ties: lowest column first); N:M per group of M inputs."""
    if target.is_nm:
        return nm_mask(scores, target.n, target.m)
    return prune_smallest(scores, int(scores.shape[1] * target.sparsity))


@register_method("wanda")
class Wanda(LayerMethod):
    """Wanda: weights and activations. Needs only the diagonal of X^T X.

    Example:
        methods: [wanda]
    """

    @dataclass(frozen=True)
    class Params:
        pass

    stats = "diag"

    def prune(self, name: str, weight: torch.Tensor, stats: LayerStats | None, target: Target) -> PruneResult:
        if stats is None:
            raise ValueError("wanda needs calibration statistics (the input's mean square per feature)")
        mask = wanda_mask(wanda_scores(weight, stats.diag.to(weight.device)), target)
        return PruneResult(weight.masked_fill(mask, 0))
