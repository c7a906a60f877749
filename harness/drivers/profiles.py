"""Non-uniform per-layer sparsity profiles for layer-wise methods: OWL.

Yin et al., "Outlier Weighed Layerwise Sparsity (OWL)", ICML 2024 (luuyin/OWL,
``prune_wanda_outlier``). On the dense model, block by block, the Wanda scores |W_ij|·||X_j||
of all the block's prunable layers are pooled; the block's outlier ratio is the share of
scores above ``m`` × their mean. Ratios are scaled to [0, 2λ] and shifted so the mean density
is 1 - S; a block's layers are pruned at 1 - its density. Blocks with more outliers keep more.
"""
from __future__ import annotations

from typing import Any

import torch

from harness.core.method import LayerMethod, LayerStats, PruneResult
from harness.core.spec import LayerSelection, SparsityProfile
from harness.core.target import Target


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Percentage of the pooled scores above ``m`` × their mean (OWL's ``check_outlier_mean``)."""
    flat = torch.cat([s.flatten().float() for s in scores])
    return float((flat > m * flat.mean()).sum()) / flat.numel() * 100


def owl_sparsities(ratios: list[float], sparsity: float, lmbda: float) -> list[float]:
    """Per-block sparsities: ratios min-max scaled to [0, 2λ], mean density shifted to 1 - S."""
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = float(r.max() - r.min())
    scaled = (r - r.min()) / spread * 2 * lmbda if spread > 0 else torch.zeros_like(r)
    density = scaled - scaled.mean() + (1 - sparsity)
    return [float(1 - d) for d in density]


class _WandaScores(LayerMethod):
    """Driver passenger: records each layer's Wanda scores and leaves the weights dense."""

    name = "owl-scores"
    stats = "diag"

    def __init__(self) -> None:
        super().__init__()
        self.scores: dict[str, torch.Tensor] = {}

    def prune(self, name: str, weight: torch.Tensor, stats: LayerStats | None, target: Target) -> PruneResult:
        self.scores[name] = (weight.detach().float().abs() * stats.diag.sqrt().reshape(1, -1)).cpu()
        return PruneResult(weight)


def owl_profile(model: Any, batches: list, target: Target, profile: SparsityProfile, *, device: Any = "cpu",
                selection: LayerSelection = LayerSelection()) -> tuple[dict[str, Target], dict[str, Any]]:
    """Measure OWL's outlier ratios on the dense ``model`` (unchanged) and return the per-layer
    targets plus a record of the resolved map: {"blocks": [{block, outlier_ratio, sparsity}]}."""
    from harness.drivers.lm import prune_sequential

    if target.is_nm:
        raise ValueError("sparsity_profile owl gives unstructured per-layer sparsities; it has no N:M form")
    probe = _WandaScores()
    reports = prune_sequential(model, batches, probe, target, device=device, selection=selection, measure_error=False)
    blocks: dict[int, list[str]] = {}
    for rep in reports:
        blocks.setdefault(rep.block, []).append(rep.name)
    order = sorted(blocks)
    ratios = [outlier_ratio([probe.scores[n] for n in blocks[b]], profile.m) for b in order]
    sparsities = owl_sparsities(ratios, target.sparsity, profile.lmbda)
    targets = {n: Target(min(max(s, 0.0), 0.99)) for b, s in zip(order, sparsities) for n in blocks[b]}
    info = {"name": profile.name, "m": profile.m, "lmbda": profile.lmbda,
            "blocks": [{"block": b, "outlier_ratio": r, "sparsity": s} for b, r, s in zip(order, ratios, sparsities)]}
    return targets, info
