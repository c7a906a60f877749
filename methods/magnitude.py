"""``magnitude``: prune the smallest |w|, per matrix (the LLM papers' baseline) or globally.

Reference: SparseGPT ``opt.py --gmp`` and Wanda ``prune_magnitude``; global scope as in the
WoodFisher repository's "global magnitude".

Tie rule (the references'): unstructured prunes every |w| <= t, where t is the value at index
int(p * numel) of the sorted |W| (``sorted(|W|)[k]``), so one weight more than int(p * numel),
and every weight tied with t on top; t is found by a partition (``torch.kthvalue``), the same
float a sort gives, so the mask is the reference's. N:M prunes the N smallest |w| of each group
of M inputs (``torch.topk``, as the references call it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.core.lazy import torch

from harness.core.method import LayerMethod, LayerStats, PruneResult, register_method
from harness.core.sparsity import kth_smallest, nm_mask, threshold_mask
from harness.core.target import Target


def magnitude_mask(weight: torch.Tensor, target: Target, threshold: float | None = None) -> torch.Tensor:
    """Boolean mask of weights to prune, (rows, cols).

    Unstructured: ``|w| <= sorted(|W|)[int(p * numel)]`` (one extra weight, plus ties), or
    ``|w| <= threshold`` when a global threshold is given. N:M: the N smallest |w| per group.
    """
    scores = weight.detach().abs().float()
    if target.is_nm:
        return nm_mask(scores, target.n, target.m)
    if threshold is not None:
        return scores <= threshold
    return threshold_mask(scores, target.sparsity)


def global_threshold(weights: list[torch.Tensor], sparsity: float) -> float:
    """The |w| value below which a fraction ``sparsity`` of all weights fall (reference rule)."""
    flat = torch.cat([w.detach().abs().float().flatten().cpu() for w in weights])
    k = int(flat.numel() * sparsity)
    return float(kth_smallest(flat, min(k, flat.numel() - 1))) if k > 0 else -1.0


@register_method("magnitude")
class Magnitude(LayerMethod):
    """Magnitude pruning; no calibration data.

    Example:
        methods:
          - name: magnitude
            params: {scope: layer}
    """

    @dataclass(frozen=True)
    class Params:
        scope: Literal["layer", "global"] = "layer"  # one threshold per matrix, or one over all prunable layers

    stats = "none"

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self._threshold: float | None = None

    def target_scope(self):
        return "model" if self.params.scope == "global" else "layer"

    def prepare(self, weights: dict[str, torch.Tensor], target: Target) -> None:
        self._threshold = None
        if self.params.scope == "global" and not target.is_nm and target.sparsity > 0:
            self._threshold = global_threshold(list(weights.values()), target.sparsity)

    def prune(self, name: str, weight: torch.Tensor, stats: LayerStats | None, target: Target) -> PruneResult:
        mask = magnitude_mask(weight, target, self._threshold)
        info = {"threshold": self._threshold} if self._threshold is not None else {}
        return PruneResult(weight.masked_fill(mask, 0), info)
