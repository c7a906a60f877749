"""The model-level driver: methods that need the whole model and a loss (WoodFisher, sparse_ft).

The layer-sequential driver (:mod:`harness.calibration`) hands a method one layer and its
input statistics at a time. Some methods need gradients of a loss through the whole model
instead (WoodFisher's empirical Fisher) or train it (``sparse_ft``). Such a method sets
``level = "model"`` and implements ``prune_model(ctx, target)``; this module builds the
:class:`ModelContext` and shares everything else with the layer path:

- the same layer selection: ``prunable_layers`` per decoder block for LMs, the vision
  driver's ``select_layers`` (stem and classifier dense by default) for classifiers;
- the same hooks: :class:`harness.calibration._Collector` gathers every layer's H = XᵀX/n
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
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.calibration import (
    LayerReport,
    NumericalError,
    _Collector,
    find_blocks,
    prunable_layers,
    prune_sequential,
    relative_error,
)
from harness.method import PruningMethod
from harness.spec import LayerSelection
from harness.target import Target

log = logging.getLogger(__name__)

MAX_HESSIAN_BYTES = 2 << 30  # dense-input Hessians for rel_error above this are skipped (rel_error None)
STRATEGY = "model-level: the method sees the whole model and its calibration loss"
Progress = Callable[[str, int, int], None]  # (task, done, total)


@dataclass
class CalibrationSet:
    """Calibration samples for a model-level method, indexed by sample.

    Attributes:
        inputs: LM: (n, seqlen) token ids; vision: (n, C, H, W) preprocessed images (CPU).
        labels: vision: (n,) class indices; None for LMs (the targets are the next tokens).
        kind: ``"lm"`` or ``"vision"``.
        label_source: where the targets come from, for the record.
    """

    inputs: torch.Tensor
    labels: torch.Tensor | None
    kind: Literal["lm", "vision"]
    label_source: str

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class ModelContext:
    """What a model-level method gets: the model, its prunable layers, data and a loss.

    Attributes:
        model: the whole model, on ``device``, in eval mode.
        layers: prunable layers (name -> Linear or Conv2d), in model order.
        blocks: layer name -> block index (for reports).
        data: the calibration samples.
        device: where forwards and backwards run.
        batch_size: samples per forward (changes no number; the suite's batch_size).
        run_method: prune in place with another (registered) method through its own path,
            e.g. the layer-sequential driver; returns its reports.
        progress: optional ``(task, done, total)`` callback.
        series: rows ``{"name", "step", "value"}`` the method wants stored (curves).
        info: method-level notes, stored in the record's ``prune_info``.
        validation: held-out samples drawn apart from ``data`` (LM: windows of the calibration
            text that overlap none of the calibration windows), when the method asks for them.
    """

    model: nn.Module
    layers: dict[str, nn.Module]
    blocks: dict[str, int]
    data: CalibrationSet
    device: torch.device
    batch_size: int
    run_method: Callable[[PruningMethod, Target], list[LayerReport]]
    progress: Progress | None = None
    series: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    validation: CalibrationSet | None = None  # held-out samples, for methods that set wants_validation

    def weight(self, name: str) -> torch.Tensor:
        """The layer's weight as (d_out, d_in), a view (conv kernels flattened C_in-major)."""
        w = self.layers[name].weight.data
        return w.reshape(w.shape[0], -1)

    def set_weight(self, name: str, new: torch.Tensor) -> None:
        w = self.layers[name].weight.data
        w.copy_(new.reshape(w.shape).to(w.dtype))

    def outputs(self, model: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, classes) float32, targets (N,) with -100 where there is none) for samples ``idx``.

        LM: one row per token position (the last position of each window has no target).
        """
        x = self.data.inputs[idx].to(self.device)
        if self.data.kind == "lm":
            logits = model(input_ids=x, use_cache=False).logits.float()  # (b, seqlen, vocab)
            tgt = torch.full_like(x, -100)
            tgt[:, :-1] = x[:, 1:]
            return logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1)
        logits = model(x.to(next(model.parameters()).dtype)).float()  # (b, classes)
        return logits, self.data.labels[idx].to(self.device)

    def loss(self, model: nn.Module, idx: torch.Tensor, objective: str = "ce",
             teacher: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss over the samples ``idx``: ``"ce"`` (cross-entropy on the targets) or
        ``"kl_dense"`` (KL(p_teacher ‖ p_model) per position, with ``teacher`` the dense
        model's log-probabilities of the same rows, (N, classes))."""
        logits, tgt = self.outputs(model, idx)
        if objective == "ce":
            return F.cross_entropy(logits, tgt, ignore_index=-100)
        if teacher is None:
            raise ValueError("the kl_dense loss needs the dense model's log-probabilities")
        return F.kl_div(logits.log_softmax(-1), teacher.to(logits.device), log_target=True, reduction="batchmean")

    def chunks(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """``idx`` cut into forward-sized pieces."""
        return list(idx.split(max(self.batch_size, 1)))

    def report(self, task: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(task, done, total)


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


def _dense_hessians(ctx: ModelContext, row_fns: dict[str, Callable] | None) -> _Collector | None:
    """Every layer's H = XᵀX/n on the dense model (one forward pass over the calibration data)."""
    need = sum(ctx.weight(n).shape[1] ** 2 * 4 for n in ctx.layers)
    if need > MAX_HESSIAN_BYTES:
        log.info("dense-input Hessians need %.1f GiB: rel_error not measured", need / 2**30)
        ctx.info["rel_error"] = f"not measured: dense-input Hessians would need {need / 2**30:.1f} GiB"
        return None
    collector = _Collector(ctx.layers, "hessian", row_fns)
    try:
        with torch.no_grad():
            for idx in ctx.chunks(torch.arange(len(ctx.data))):
                ctx.outputs(ctx.model, idx)
                collector.end_forward()
    finally:
        collector.remove()
    ctx.info["rel_error"] = "‖(W−Ŵ)X‖²/‖WX‖² with X the dense model's inputs to the layer"
    return collector


def _run(ctx: ModelContext, method: PruningMethod, target: Target, measure_error: bool,
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
            rep.rel_error = relative_error(dense[rep.name], w, collector.stats(rep.name).hessian)
    return ModelPruneResult(reports, ctx.series, ctx.info)


def _refreshing(run: Callable[[PruningMethod, Target], list[LayerReport]], model: nn.Module,
                device: torch.device) -> Callable[[PruningMethod, Target], list[LayerReport]]:
    def wrapped(other: PruningMethod, target: Target) -> list[LayerReport]:
        reports = run(other, target)
        model.to(device).eval()  # the layer drivers leave blocks on the CPU when offloading
        return reports

    return wrapped


def prune_model_lm(model: nn.Module, tokens: torch.Tensor, method: PruningMethod, target: Target, *,
                   device: torch.device | str = "cpu", selection: LayerSelection = LayerSelection(),
                   batch_size: int = 8, measure_error: bool = True, progress: Progress | None = None,
                   validation: torch.Tensor | None = None) -> ModelPruneResult:
    """Prune a decoder-only LM in place with a model-level method.

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

    def layerwise(other: PruningMethod, tgt: Target) -> list[LayerReport]:
        if other.level == "model":
            return _run(_context(), other, tgt, measure_error=False).reports
        return prune_sequential(model, list(tokens.split(batch_size)), other, tgt, device=device,
                                selection=selection, measure_error=False)

    def _context() -> ModelContext:
        data = CalibrationSet(tokens, None, "lm", "next token")
        val = CalibrationSet(validation, None, "lm", "next token") if validation is not None else None
        return ModelContext(model, layers, block_of, data, device, batch_size,
                            _refreshing(layerwise, model, device), progress, validation=val)

    use_cache = getattr(model.config, "use_cache", None)
    try:
        return _run(_context(), method, target, measure_error)
    finally:
        if use_cache is not None:
            model.config.use_cache = use_cache


def prune_model_vision(model: nn.Module, stream: Any, method: PruningMethod, target: Target, *,
                       device: torch.device | str = "cpu", selection: LayerSelection = LayerSelection(),
                       batch_size: int = 32, bn_recalibration: bool | None = None, measure_error: bool = True,
                       progress: Progress | None = None) -> ModelPruneResult:
    """Prune an image classifier in place with a model-level method, then re-estimate BatchNorm.

    Args:
        stream: a :class:`harness.images.ImageStream` (its ``labels``, when given, are the targets).
    """
    from harness import vision

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
    row_fns = vision._row_functions(layers)

    def layerwise(other: PruningMethod, tgt: Target) -> list[LayerReport]:
        if other.level == "model":
            return _run(_context(), other, tgt, measure_error=False).reports
        res = vision.prune_vision(model, stream.batches, other, tgt, device=device, selection=selection,
                                  batch_size=batch_size, bn_recalibration=bn_recalibration, measure_error=False)
        return [r for r in res.reports if r.name in layers]

    def _context() -> ModelContext:
        return ModelContext(model, layers, vision.block_index(layers), data, device, batch_size,
                            _refreshing(layerwise, model, device), progress)

    result = _run(_context(), method, target, measure_error, row_fns)
    result.skipped, result.calibration_images = skipped, int(inputs.shape[0])
    result.info["labels"] = source
    if not method.modifies_weights:
        bn = {"applied": False, "reason": f"{method.name} changes no weight"}
    elif bn_recalibration is False:
        bn = {"applied": False, "reason": "bn_recalibration: false"}
    else:
        bn = vision.recalibrate_batchnorm(model, vision._no_singletons(stream.batches(vision.BN_BATCH)), device)
    bn["requested"] = "auto" if bn_recalibration is None else bn_recalibration
    result.bn_recalibration = bn
    return result
