"""What a model-level method gets: the model, its prunable layers, calibration data and a loss.

The driver (:mod:`harness.drivers.model_level`) builds the context; a
:class:`harness.core.method.ModelMethod` uses only what is here, so it never imports a driver.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from harness.core.lazy import torch

if TYPE_CHECKING:
    from torch import nn

Progress = Callable[[str, int, int], None]  # (task, done, total)
RunMethod = Callable[..., list]  # (method, target, progress=None) -> list[LayerReport]


@contextmanager
def swap_weights(layers: dict[str, Any], weights: dict[str, Any]) -> Iterator[None]:
    """Inside the block, each of ``layers`` (name -> module) holds ``weights[name]`` instead of its
    own weight (e.g. the dense weights, to replay what the dense model computes); restored after."""
    saved = {}
    try:
        for name, mod in layers.items():
            saved[name] = mod.weight.data
            mod.weight.data = weights[name].to(mod.weight.device, mod.weight.dtype)
        yield
    finally:
        for name, mod in layers.items():
            if name in saved:
                mod.weight.data = saved[name]


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
        run_method: ``run_method(method, target, progress=None)`` prunes ``layers`` in place with
            another method through its own driver (a LayerMethod through the one prune loop, in
            the driver's order with propagation); returns its reports. ``progress`` is
            ``(done, total)`` over the loop's units.
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
    run_method: RunMethod
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

    def swap(self, weights: dict[str, Any]):
        """Context manager: ``self.layers`` hold ``weights`` (name -> tensor) inside the block."""
        return swap_weights(self.layers, weights)

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
            return torch.nn.functional.cross_entropy(logits, tgt, ignore_index=-100)
        if teacher is None:
            raise ValueError("the kl_dense loss needs the dense model's log-probabilities")
        return torch.nn.functional.kl_div(logits.log_softmax(-1), teacher.to(logits.device), log_target=True, reduction="batchmean")

    def chunks(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """``idx`` cut into forward-sized pieces."""
        return list(idx.split(max(self.batch_size, 1)))

    def report(self, task: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(task, done, total)
