"""The vision driver: prune the Conv2d and Linear layers of a timm classifier, then re-estimate BatchNorm.

Design: **all statistics come from the dense model in one pass** (OBC's protocol,
Frantar & Alistarh, NeurIPS 2022), then every layer is pruned from its own statistics.

- It is the reference protocol for the vision results we compare against (OBC collects every
  Hessian with hooks on the dense model), so one-shot vision numbers stay comparable.
- It is generic: one forward of the whole model per calibration batch, with no assumption
  about where stages begin and end. timm's ``forward_features`` holds arbitrary glue between
  stages (class tokens, position embeddings, pooling), so a stage-sequential driver would
  need per-family code, the thing the one loop exists to avoid.
- It is the cheap one: calibration images pass through the model once (OBC uses 10 augmented
  rounds of 1,024 images; a stage-sequential driver would pay one pass per stage), and the
  error that one-pass pruning leaves in the activation statistics is largely what BatchNorm
  re-estimation repairs afterwards.
- Cost: every Hessian is held at once, sum of d_in^2 float32 (ResNet-50: about 0.8 GB,
  ViT-B/16: about 0.5 GB), on the compute device.

Statistics use the one loop's :class:`harness.drivers.hooks.StatsCollector`: a Conv2d's input is unfolded into
the patch rows its (C_out, C_in*k_h*k_w) weight multiplies (``torch.nn.functional.unfold``
with the conv's kernel, stride, padding and dilation), so H = X^T X / n over patches and
every method sees an ordinary matrix; N:M groups run along that flattened input dimension
(C_in major, then k_h, k_w). Grouped and depthwise convolutions, and convolutions whose
forward changes the weight (weight standardization), are skipped with a logged note.

By default the stem (``pretrained_cfg["first_conv"]``) and the classifier
(``pretrained_cfg["classifier"]``) stay dense; the suite's ``layers.targets`` regexes, when
given, choose the layers instead (stem and head included if they match), and
``layers.ignore`` removes layers from either set.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.method import LayerMethod, LayerReport, MethodBase
from harness.drivers.hooks import StatsCollector
from harness.drivers.loop import Adapter, Progress, Unit, run_loop
from harness.core.spec import LayerSelection
from harness.core.target import Target

log = logging.getLogger(__name__)

BN_BATCH = 64  # images per BatchNorm re-estimation batch: part of the protocol, not an execution detail
STRATEGY = "one pass: every layer's statistics from the dense model (OBC protocol), then prune each layer"
SEQUENTIAL_STRATEGY = "sequential: each layer's statistics from the model with the earlier layers pruned"
Batches = Callable[[int], Iterable[torch.Tensor]]  # batch size -> calibration batches (b, C, H, W)


@dataclass
class VisionPruneResult:
    reports: list[LayerReport]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"} per left-out layer
    bn_recalibration: dict[str, Any] = field(default_factory=dict)  # what re-estimation did, for the record
    calibration_images: int = 0


def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def stem_and_head(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Module names of the stem conv(s) and classifier(s), from timm's ``pretrained_cfg``.

    Falls back to the first Conv2d and to ``model.get_classifier()`` when the config lacks them.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    modules = dict(model.named_modules())
    stem = tuple(n for n in _names(cfg.get("first_conv")) if n in modules)
    head = tuple(n for n in _names(cfg.get("classifier")) if n in modules)
    if not stem:
        stem = next(((n,) for n, m in modules.items() if isinstance(m, nn.Conv2d)), ())
    if not head and hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        head = tuple(n for n, m in modules.items() if m is clf and n)
    # a classifier given as a container (e.g. "head" holding "head.fc"): everything inside it
    head = tuple(n for n in modules if any(n == h or n.startswith(h + ".") for h in head))
    stem = tuple(n for n in modules if any(n == s or n.startswith(s + ".") for s in stem))
    return stem, head


def _plain_conv(conv: nn.Conv2d) -> bool:
    """A conv whose forward is F.conv2d of its own weight (so patch rows x weight reproduce it)."""
    from timm.layers import Conv2dSame

    return type(conv).forward is nn.Conv2d.forward or isinstance(conv, Conv2dSame)


def select_layers(model: nn.Module, selection: LayerSelection = LayerSelection()
                  ) -> tuple[dict[str, nn.Module], list[dict[str, str]]]:
    """The prunable layers (name -> Conv2d or Linear, in module order) and the skipped ones with reasons."""
    stem, head = stem_and_head(model)
    layers: dict[str, nn.Module] = {}
    skipped: list[dict[str, str]] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        if selection.targets:
            if not any(re.search(p, name) for p in selection.targets):
                continue
        elif name in stem or name in head:
            skipped.append({"name": name, "reason": ("stem" if name in stem else "classifier") + " (dense by default)"})
            continue
        if any(re.search(p, name) for p in selection.ignore):
            continue
        if isinstance(mod, nn.Conv2d) and mod.groups != 1:
            skipped.append({"name": name, "reason": f"grouped or depthwise conv (groups={mod.groups})"})
            continue
        if isinstance(mod, nn.Conv2d) and not _plain_conv(mod):
            skipped.append({"name": name, "reason": f"{type(mod).__name__} transforms its weight in forward"})
            continue
        layers[name] = mod
    for s in skipped:
        if not s["reason"].endswith("(dense by default)"):
            log.info("not pruning %s: %s", s["name"], s["reason"])
    return layers, skipped


def conv_rows(conv: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """im2col for ``conv``: x (N, C_in, H, W) -> (N*L, C_in*k_h*k_w), one row per output position.

    Rows are in the order of ``conv.weight.reshape(C_out, -1)``, so that
    ``conv(x) == rows @ W_flat.T + b`` (reshaped). Handles zero, reflect/replicate/circular
    and string ('same', 'valid') padding, and timm's ``Conv2dSame`` (padding computed per input).
    """
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same

    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    pad: tuple[int, ...] | None = None  # explicit (left, right, top, bottom) applied before unfold
    unfold_padding: tuple[int, int] | int = 0
    if isinstance(conv.padding, str):
        if conv.padding == "same":  # torch puts the odd pixel on the right/bottom
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            pad = (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
    elif conv.padding_mode != "zeros":
        ph, pw = conv.padding
        pad = (pw, pw, ph, ph)
    else:
        unfold_padding = tuple(conv.padding)
    same = isinstance(conv, Conv2dSame)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode

    def rows(x: torch.Tensor) -> torch.Tensor:
        if same:
            x = pad_same(x, kernel, stride, dilation)
        elif pad is not None:
            x = F.pad(x, pad, mode=mode)
        cols = F.unfold(x, kernel, dilation=dilation, padding=unfold_padding, stride=stride)  # (N, d_in, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    return rows


def row_functions(layers: dict[str, nn.Module]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """One im2col function per conv geometry, shared so that equal convs on one input share a Hessian."""
    by_geometry: dict[tuple, Callable] = {}
    out = {}
    for name, mod in layers.items():
        if isinstance(mod, nn.Conv2d):
            key = (type(mod), mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.padding_mode)
            out[name] = by_geometry.setdefault(key, conv_rows(mod))
    return out


def block_index(names: Iterable[str]) -> dict[str, int]:
    """Group layers into blocks for reports: the name up to its first numeric part (``layer2.1``, ``blocks.3``)."""
    units: dict[str, int] = {}
    out = {}
    for name in names:
        parts = name.split(".")
        cut = next((i for i, p in enumerate(parts) if p.isdigit()), 0)
        out[name] = units.setdefault(".".join(parts[: cut + 1]), len(units))
    return out


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu"
                          ) -> dict[str, Any]:
    """Re-estimate every BatchNorm's running mean and variance on ``batches``.

    Running stats are reset and ``momentum=None`` makes them the plain average over the
    batches; only the BatchNorm layers are in train mode (dropout and drop-path stay off).
    The model is left in eval mode with the original momenta.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return {"applied": False, "reason": "the model has no BatchNorm layers"}
    momenta = [bn.momentum for bn in bns]
    param = next(model.parameters())
    images = n_batches = 0
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            for x in batches:
                model(x.to(device, param.dtype))
                images, n_batches = images + x.shape[0], n_batches + 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    if n_batches == 0:
        raise ValueError("BatchNorm re-estimation needs calibration images")
    return {"applied": True, "layers": len(bns), "images": images, "batches": n_batches}


def no_singletons(batches: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    """Merge a last batch of one image into the one before: train-mode BN on 1x1 maps needs two."""
    held = None
    for b in batches:
        if held is not None and b.shape[0] == 1:
            b = torch.cat([held, b])
        elif held is not None:
            yield held
        held = b
    if held is not None:
        yield held


class VisionAdapter(Adapter):
    """A timm classifier's Conv2d/Linear layers as units of the one loop.

    One pass (default): one unit holding every layer, all statistics from the dense model.
    Sequential: one unit per layer, each layer's statistics gathered from the model with every
    earlier layer pruned (BatchNorm re-estimated before each such pass when it will be after).

    Args:
        batches: ``batch_size -> iterable of (b, C, H, W)`` calibration images (e.g.
            ``ImageStream.batches``); every call must yield the same images. None only for
            methods that change no weight.
    """

    def __init__(self, model: nn.Module, batches: Batches | None, method: LayerMethod, *,
                 device: torch.device | str = "cpu", selection: LayerSelection = LayerSelection(),
                 batch_size: int = 32, bn_recalibration: bool | None = None, sequential: bool = False) -> None:
        self.model, self.batches, self.method = model, batches, method
        self.device, self.batch_size, self.sequential = torch.device(device), batch_size, sequential
        self.bn_recalibration = bn_recalibration
        self.layers, self.skipped = select_layers(model, selection)
        if not self.layers:
            raise ValueError("no prunable Conv2d/Linear layers matched (check the suite's layers: targets/ignore)")
        self.mode, self.first, self.n_images, self.bn_passes = "none", None, 0, 0
        self.bn: dict[str, Any] = {}

    def _pass(self, hooked: dict[str, nn.Module]) -> StatsCollector:
        """One pass over the calibration images with statistics hooks on ``hooked``."""
        collector, seen = StatsCollector(hooked, self.mode, self.row_fns), 0
        try:
            with torch.no_grad():
                for x in self.batches(self.batch_size):
                    self.model(x.to(self.device, self.dtype))
                    collector.end_forward()
                    seen += x.shape[0]
        finally:
            collector.remove()
        self.n_images = self.n_images or seen
        return collector

    def begin(self, mode: str) -> None:
        self.mode = mode
        if self.method.modifies_weights and self.batches is None:
            raise ValueError(f"method '{self.method.name}' needs calibration images")
        self.model.to(self.device).eval()
        self.dtype = next(self.model.parameters()).dtype
        self.row_fns = row_functions(self.layers)
        if mode != "none":
            self.first = self._pass(self.layers)
            for name in [n for n in self.layers if n not in self.first.group_of]:  # e.g. MultiheadAttention.out_proj,
                del self.layers[name]  # whose weight the parent uses directly: no inputs seen, nothing to prune from
                self.skipped.append({"name": name, "reason": "its forward never ran, so it has no calibration statistics"})
                log.info("not pruning %s: %s", name, self.skipped[-1]["reason"])
            if not self.layers:
                raise ValueError("no prunable layer ran during the calibration forward passes")
        self.recal = (self.bn_recalibration is not False and self.method.modifies_weights
                      and has_batchnorm(self.model))

    def weights(self) -> dict[str, nn.Module]:
        return self.layers

    def units(self) -> Iterator[Unit]:
        blocks = block_index(self.layers)
        if not self.sequential:
            yield Unit(0, self.layers, blocks)
            return
        for i, (name, mod) in enumerate(self.layers.items()):
            yield Unit(i, {name: mod}, blocks)

    def gather(self, unit: Unit, hooked: dict[str, nn.Module]) -> StatsCollector:
        if unit.index == 0 and self.first is not None:
            collector, self.first = self.first, None  # the dense model's statistics, from begin()
            return collector
        if self.recal:  # BatchNorm's dense running stats would distort the pruned model's activations
            recalibrate_batchnorm(self.model, no_singletons(self.batches(BN_BATCH)), self.device)
            self.bn_passes += 1
        return self._pass(hooked)

    def finish(self) -> None:
        self.bn = finish_batchnorm(self.model, self.method, self.batches, self.bn_recalibration, self.device,
                                   self.bn_passes)


def finish_batchnorm(model: nn.Module, method: MethodBase, batches: Batches | None, requested: bool | None,
                     device: torch.device | str, passes: int = 0) -> dict[str, Any]:
    """BatchNorm re-estimation after pruning, unless the method changed no weight or the suite said
    ``bn_recalibration: false``; returns what was done, for the record. ``passes``: re-estimations
    the sequential strategy already ran before each later layer's statistics."""
    if not method.modifies_weights:
        bn = {"applied": False, "reason": f"{method.name} changes no weight"}
    elif requested is False:
        bn = {"applied": False, "reason": "bn_recalibration: false"}
    else:
        bn = recalibrate_batchnorm(model, no_singletons(batches(BN_BATCH)), device)
        if passes:
            bn["before_each_layer"] = passes
    bn["requested"] = "auto" if requested is None else requested
    return bn


def prune_vision(
    model: nn.Module,
    batches: Batches | None,
    method: LayerMethod,
    target: Target,
    *,
    device: torch.device | str = "cpu",
    selection: LayerSelection = LayerSelection(),
    batch_size: int = 32,
    bn_recalibration: bool | None = None,
    measure_error: bool = True,
    progress: Progress | None = None,
    sequential: bool = False,
) -> VisionPruneResult:
    """Prune a classifier in place through the one loop and return one report per pruned layer.

    Args:
        batch_size: images per forward in the statistics pass (changes no number).
        bn_recalibration: re-estimate BatchNorm statistics after pruning; None = when the
            model has BatchNorm. Never for methods that change no weight (dense stays exact).
        measure_error: gather full Hessians so every layer's reconstruction error is reported.
        sequential: see :class:`VisionAdapter`. Costs one pass per layer. Meant for the
            compounding error of high sparsity, though on the zoo ResNet it measured worse than
            one pass (README, Vision).
    """
    adapter = VisionAdapter(model, batches, method, device=device, selection=selection, batch_size=batch_size,
                            bn_recalibration=bn_recalibration, sequential=sequential)
    reports = run_loop(adapter, method, target, measure_error=measure_error, progress=progress)
    return VisionPruneResult(reports, adapter.skipped, adapter.bn, adapter.n_images)
