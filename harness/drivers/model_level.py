"""The model-level path: methods that need the whole model and a loss (WoodFisher, I-OBS, sparse_ft).

The one prune loop (:mod:`harness.drivers.loop`) hands a layer method one layer and its
input statistics at a time. Some methods need gradients of a loss through the whole model
instead (WoodFisher's empirical Fisher) or train it (``sparse_ft``). Such a method is a
:class:`~harness.core.method.ModelMethod` and implements ``prune_model(ctx, target)``; this
module builds the :class:`~harness.core.context.ModelContext` and shares everything else with
the layer path:

- the same layer selection: ``prunable_layers`` per decoder block for LMs, the vision
  driver's ``select_layers`` (stem and classifier dense by default) for classifiers;
- the same hooks: :class:`harness.drivers.hooks.StatsCollector` gathers every layer's H = XᵀX/n
  on the dense model before pruning, and each report's ``rel_error`` is ‖(W−Ŵ)X‖²/‖WX‖² on
  those dense inputs (the layer path measures on the inputs of the partly pruned model);
- the same ``LayerReport``, sparsity measurement and tolerance (in the runner) and, for
  vision, the same BatchNorm re-estimation after pruning.

The loss is the model's own training loss on the calibration data: next-token cross-entropy
(mean over predicted tokens) for LMs, cross-entropy on the images' labels for classifiers
(the dense model's predictions stand in when a stream has no labels).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.core.context import CalibrationSet, ModelContext, Progress
from harness.core.method import LayerReport, MethodBase, ModelMethod
from harness.core.spec import LayerSelection
from harness.core.target import Target
from harness.drivers import vision
from harness.drivers.hooks import NumericalError, StatsCollector, relative_error
from harness.drivers.lm import find_blocks, prunable_layers, prune_sequential

log = logging.getLogger(__name__)

MAX_HESSIAN_BYTES = 2 << 30  # dense-input Hessians for rel_error above this are skipped (rel_error None)
STRATEGY = "model-level: the method sees the whole model and its calibration loss"


@dataclass
class ModelPruneResult:
    """What the model-level driver returns to the runner."""

    reports: list[LayerReport]
    series: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)  # vision: layers left out, with reasons
    bn_recalibration: dict[str, Any] = field(default_factory=dict)  # vision
    calibration_images: int = 0  # vision
    strategy: str = STRATEGY


def _dense_hessians(ctx: ModelContext, row_fns: dict[str, Callable] | None) -> StatsCollector | None:
    """Every layer's H = XᵀX/n on the dense model (one forward pass over the calibration data)."""
    need = sum(ctx.weight(n).shape[1] ** 2 * 4 for n in ctx.layers)
    if need > MAX_HESSIAN_BYTES:
        log.info("dense-input Hessians need %.1f GiB: rel_error not measured", need / 2**30)
        ctx.info["rel_error"] = f"not measured: dense-input Hessians would need {need / 2**30:.1f} GiB"
        return None
    collector = StatsCollector(ctx.layers, "hessian", row_fns)
    try:
        with torch.no_grad():
            for idx in ctx.chunks(torch.arange(len(ctx.data))):
                ctx.outputs(ctx.model, idx)
                collector.end_forward()
    finally:
        collector.remove()
    ctx.info["rel_error"] = "‖(W−Ŵ)X‖²/‖WX‖² with X the dense model's inputs to the layer"
    return collector


def _run(ctx: ModelContext, method: ModelMethod, target: Target, measure_error: bool,
         row_fns: dict[str, Callable] | None = None) -> ModelPruneResult:
    """Gather dense statistics, call ``method.prune_model``, check and complete its reports."""
    ctx.model.to(ctx.device).eval()
    collector = _dense_hessians(ctx, row_fns) if measure_error else None
    silent = [n for n in ctx.layers if collector is not None and n not in collector.group_of]
    if silent:
        raise ValueError(f"prunable layer {silent[0]} never ran in a forward pass; leave it out with layers.ignore")
    dense = {n: ctx.weight(n).detach().clone() for n in ctx.layers} if collector is not None else {}
    t0 = time.perf_counter()
    reports = method.prune_model(ctx, target)
    ctx.info.setdefault("time_s", time.perf_counter() - t0)
    missing = [n for n in ctx.layers if n not in {r.name for r in reports}]
    if missing:
        raise RuntimeError(f"{method.name} returned no report for {missing[0]} ({len(missing)} layers)")
    for rep in reports:
        w = ctx.weight(rep.name)
        if not torch.isfinite(w).all():
            raise NumericalError(f"{method.name} produced non-finite weights in {rep.name}")
        if collector is not None:
            stats = collector.stats(rep.name)
            rep.rel_error = relative_error(dense[rep.name], w, stats.hessian, rows=stats.rows)
    return ModelPruneResult(reports, ctx.series, ctx.info)


def _refreshing(run: Callable[..., list[LayerReport]], model: nn.Module,
                device: torch.device) -> Callable[..., list[LayerReport]]:
    def wrapped(other: MethodBase, target: Target, progress: Callable[[int, int], None] | None = None
                ) -> list[LayerReport]:
        reports = run(other, target, progress)
        model.to(device).eval()  # the layer drivers leave blocks on the CPU when offloading
        return reports

    return wrapped


def lm_context(model: nn.Module, tokens: torch.Tensor, *, device: torch.device | str = "cpu",
               selection: LayerSelection = LayerSelection(), batch_size: int = 8, progress: Progress | None = None,
               validation: torch.Tensor | None = None) -> ModelContext:
    """The :class:`ModelContext` of a decoder-only LM: its prunable Linear layers per block, and
    ``run_method`` through the one prune loop (:func:`harness.drivers.lm.prune_sequential`).

    Args:
        tokens: (n, seqlen) calibration token ids.
        batch_size: windows per forward.
        validation: (v, seqlen) held-out token ids for the method's own model selection.
    """
    device = torch.device(device)
    path, blocks = find_blocks(model)
    layers: dict[str, nn.Module] = {}
    block_of: dict[str, int] = {}
    for i, block in enumerate(blocks):
        for name, mod in prunable_layers(block, f"{path}.{i}", selection).items():
            layers[name], block_of[name] = mod, i
    if not layers:
        raise ValueError("no prunable layers matched (check the suite's layers: targets/ignore)")

    def layerwise(other: MethodBase, tgt: Target, on_layer: Callable | None) -> list[LayerReport]:
        if isinstance(other, ModelMethod):
            ctx = lm_context(model, tokens, device=device, selection=selection, batch_size=batch_size,
                             progress=progress, validation=validation)
            return _run(ctx, other, tgt, measure_error=False).reports
        return prune_sequential(model, list(tokens.split(batch_size)), other, tgt, device=device,
                                selection=selection, measure_error=False, progress=on_layer)

    data = CalibrationSet(tokens, None, "lm", "next token")
    val = CalibrationSet(validation, None, "lm", "next token") if validation is not None else None
    return ModelContext(model, layers, block_of, data, device, batch_size, _refreshing(layerwise, model, device),
                        progress, validation=val)


def prune_model_lm(model: nn.Module, tokens: torch.Tensor, method: ModelMethod, target: Target, *,
                   device: torch.device | str = "cpu", selection: LayerSelection = LayerSelection(),
                   batch_size: int = 8, measure_error: bool = True, progress: Progress | None = None,
                   validation: torch.Tensor | None = None) -> ModelPruneResult:
    """Prune a decoder-only LM in place with a model-level method (see :func:`lm_context`).

    Inside :func:`~harness.drivers.layouts.prunable_view`: GPT-2's ``Conv1D`` and fused expert
    parameters stand in as Linear layers over the same storage, so the method sees every matrix."""
    from harness.drivers.layouts import prunable_view
    from harness.drivers.lm import find_blocks

    use_cache = getattr(model.config, "use_cache", None)
    try:
        with prunable_view(*find_blocks(model)):
            ctx = lm_context(model, tokens, device=device, selection=selection, batch_size=batch_size,
                             progress=progress, validation=validation)
            return _run(ctx, method, target, measure_error)
    finally:
        if use_cache is not None:
            model.config.use_cache = use_cache


def prune_model_vision(model: nn.Module, stream: Any, method: ModelMethod, target: Target, *,
                       device: torch.device | str = "cpu", selection: LayerSelection = LayerSelection(),
                       batch_size: int = 32, bn_recalibration: bool | None = None, measure_error: bool = True,
                       progress: Progress | None = None) -> ModelPruneResult:
    """Prune an image classifier in place with a model-level method, then re-estimate BatchNorm.

    Args:
        stream: a :class:`harness.data.images.ImageStream` (its ``labels``, when given, are the targets).
    """
    device = torch.device(device)
    layers, skipped = vision.select_layers(model, selection)
    if not layers:
        raise ValueError("no prunable Conv2d/Linear layers matched (check the suite's layers: targets/ignore)")
    inputs = torch.cat(list(stream.batches(batch_size)))  # (n, C, H, W)
    n_items = len(stream.items)
    if stream.labels:
        labels = torch.tensor([stream.labels[i % n_items] for i in range(inputs.shape[0])])
        source = "dataset labels"
    else:  # no labels: the dense model's own predictions
        model.to(device).eval()
        with torch.no_grad():
            dtype = next(model.parameters()).dtype
            labels = torch.cat([model(x.to(device, dtype)).argmax(-1).cpu() for x in inputs.split(batch_size)])
        source = "dense model's predictions"
    data = CalibrationSet(inputs, labels, "vision", source)
    row_fns = vision.row_functions(layers)

    def layerwise(other: MethodBase, tgt: Target, progress: Callable | None) -> list[LayerReport]:
        if isinstance(other, ModelMethod):
            return _run(_context(), other, tgt, measure_error=False).reports
        res = vision.prune_vision(model, stream.batches, other, tgt, device=device, selection=selection,
                                  batch_size=batch_size, bn_recalibration=bn_recalibration, measure_error=False,
                                  progress=progress)
        return [r for r in res.reports if r.name in layers]

    def _context() -> ModelContext:
        return ModelContext(model, layers, vision.block_index(layers), data, device, batch_size,
                            _refreshing(layerwise, model, device), progress)

    result = _run(_context(), method, target, measure_error, row_fns)
    result.skipped, result.calibration_images = skipped, int(inputs.shape[0])
    result.info["labels"] = source
    result.bn_recalibration = vision.finish_batchnorm(model, method, stream.batches, bn_recalibration, device)
    return result
