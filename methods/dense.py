"""``dense``: the unpruned baseline row every leaderboard compares against."""
from __future__ import annotations

from dataclasses import dataclass

from harness.core.method import LayerMethod, LayerStats, PruneResult, register_method
from harness.core.target import Target


@register_method("dense")
class Dense(LayerMethod):
    """No-op baseline: the driver still runs (same code path, same evaluation), weights untouched.

    Example:
        methods: [dense]
    """

    @dataclass(frozen=True)
    class Params:
        pass

    stats = "none"
    modifies_weights = False

    def prune(self, name: str, weight, stats: LayerStats | None, target: Target) -> PruneResult:
        return PruneResult(weight)
