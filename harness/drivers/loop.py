"""The one prune loop: every layer method, every model family.

A model family is an :class:`Adapter` (decoder LMs: :class:`harness.drivers.lm.LMAdapter`;
timm classifiers: :class:`harness.drivers.vision.VisionAdapter`). It cuts the model into
*units* pruned in order (an LM's decoder blocks; a classifier's layers, or all of them at
once), replays the calibration data through a unit with statistics hooks on, and propagates
the pruned unit's outputs to the next. The loop itself never looks at a model:

    begin -> method.prepare(weights) -> for each unit: enter, [gather, prune]*, leave -> finish

``method.sequential_groups`` prunes the layers of a unit one shared-input group at a time,
each group's statistics gathered after the groups before it were pruned.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from harness.core.method import LayerMethod, LayerReport, Stats
from harness.core.target import Target
from harness.drivers.hooks import StatsCollector, prune_layer

Progress = Callable[[int, int], None]  # (layers pruned, layers in all)


@dataclass
class Unit:
    """A piece of the model pruned in one step: its index (for reports) and its prunable layers."""

    index: int
    layers: dict[str, nn.Module]
    block_of: dict[str, int] | None = None  # per-layer report block when it differs from ``index``


class Adapter:
    """What the loop needs from a model family. Subclasses implement every method."""

    def begin(self, mode: str) -> None:
        """Set up calibration (e.g. capture block 0's inputs) for statistics of kind ``mode``
        (``"none"``, ``"diag"``, ``"hessian"`` or ``"cross"``)."""
        raise NotImplementedError

    def weights(self) -> dict[str, nn.Module]:
        """Every prunable layer (name -> module), in pruning order, after :meth:`begin`."""
        raise NotImplementedError

    def units(self) -> Iterator[Unit]:
        raise NotImplementedError

    def enter(self, unit: Unit) -> None:
        """Before a unit's statistics: e.g. move its block to the compute device."""

    def gather(self, unit: Unit, hooked: dict[str, nn.Module]) -> StatsCollector:
        """Replay the calibration data through ``unit`` with statistics hooks on ``hooked``."""
        raise NotImplementedError

    def leave(self, unit: Unit) -> None:
        """After a unit is pruned: e.g. propagate its outputs to the next unit."""

    def finish(self) -> None:
        """After every unit: e.g. restore settings the loop changed."""


def stats_mode(method: LayerMethod, measure_error: bool) -> Stats:
    """The statistics to gather: the method's, or full Hessians to report reconstruction errors."""
    if not method.modifies_weights:
        return "none"
    if method.stats == "cross":
        return "cross"
    return "hessian" if (method.stats == "hessian" or measure_error) else method.stats


def run_loop(adapter: Adapter, method: LayerMethod, target: Target, *, measure_error: bool = True,
             layer_targets: dict[str, Target] | None = None, progress: Progress | None = None) -> list[LayerReport]:
    """Prune every unit of ``adapter``'s model in place; return one report per pruned layer.

    Args:
        measure_error: gather full Hessians so every layer's reconstruction error is reported,
            even for methods that need less.
        layer_targets: a target per layer name (a sparsity profile such as OWL); others get ``target``.
        progress: called with (layers pruned, layers in all).
    """
    mode = stats_mode(method, measure_error)
    adapter.begin(mode)
    weights = adapter.weights()
    method.prepare({n: m.weight.reshape(m.weight.shape[0], -1) for n, m in weights.items()}, target)
    targets = layer_targets or {}
    reports: list[LayerReport] = []
    with torch.no_grad():
        _units(adapter, method, target, targets, mode, reports, len(weights), progress)
    adapter.finish()
    return reports


def _units(adapter: Adapter, method: LayerMethod, target: Target, targets: dict[str, Target], mode: str,
           reports: list[LayerReport], total: int, progress: Progress | None) -> None:
    """The loop body: each unit's statistics, its layers pruned (by group), then propagation."""
    for unit in adapter.units():
        adapter.enter(unit)
        block_of = unit.block_of or {}
        if mode != "none" and unit.layers:
            collector = adapter.gather(unit, unit.layers)
            groups = collector.groups() if method.sequential_groups else [list(unit.layers)]
            for g, names in enumerate(groups):
                if g > 0:  # statistics of this group after the earlier groups were pruned
                    collector = adapter.gather(unit, {n: unit.layers[n] for n in names})
                for name in names:
                    reports.append(prune_layer(method, name, unit.layers[name], collector.stats(name),
                                               targets.get(name, target), block_of.get(name, unit.index)))
                    _tick(progress, len(reports), total)
            del collector
        else:
            for name, mod in unit.layers.items():
                reports.append(prune_layer(method, name, mod, None, targets.get(name, target),
                                           block_of.get(name, unit.index)))
                _tick(progress, len(reports), total)
        adapter.leave(unit)


def _tick(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
