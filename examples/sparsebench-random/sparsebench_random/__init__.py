"""``random``: prune a uniformly random ``target`` fraction of every row (N of every M for N:M).

A baseline any method should beat. Deterministic: each layer draws from its own generator,
seeded by the param ``seed``, the cell's seed (``self.seed``: the suite's ``seeds``) and a stable
hash of the layer's name (never the global RNG), so every seed of a suite is its own draw.
"""
import zlib
from dataclasses import dataclass

from harness.core.lazy import torch
from harness.core.method import LayerMethod, PruneResult, register_method
from harness.core.sparsity import nm_mask, prune_smallest


@register_method("random")
class Random(LayerMethod):
    @dataclass(frozen=True)
    class Params:
        seed: int = 0  # with the layer name, seeds the draw: same seed, same masks

    stats = "none"  # needs no calibration statistics

    def prune(self, name, weight, stats, target):
        gen = torch.Generator().manual_seed(zlib.crc32(f"{self.params.seed}:{self.seed}:{name}".encode()))
        scores = torch.rand(weight.shape, generator=gen)  # the smallest scores are pruned
        if target.is_nm:
            mask = nm_mask(scores, target.n, target.m)
        else:
            mask = prune_smallest(scores, int(target.sparsity * weight.shape[1]))
        return PruneResult(weight.masked_fill(mask.to(weight.device), 0))
