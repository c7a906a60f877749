"""The round machinery of I-OBS(T) (``methods.iobs``): T rounds, each scored on held-out windows,
the best round's weights kept; plus the losses and gradients the rounds need.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.core.context import ModelContext, swap_weights
from harness.core.lazy import torch


@dataclass
class IterationLog:
    """What the rounds did: validation loss per round (index 0 = round 1), the round kept."""

    val_loss: list[float] = field(default_factory=list)
    round_time_s: list[float] = field(default_factory=list)
    chosen: int = 0  # 1-based round whose weights the model keeps
    stopped_early: bool = False


def mean_token_loss(model: Any, batches: list, device: Any) -> float:
    """Mean next-token cross-entropy over every prediction in ``batches`` (validation score)."""
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for ids in batches:
            ids = ids.to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            total, count = total + float(loss), count + ids[:, 1:].numel()
    return total / max(count, 1)


def global_gradients(model: Any, batches: list, layers: dict[str, Any], dense: dict[str, "torch.Tensor"], loss: str,
                     device: Any) -> dict[str, "torch.Tensor"]:
    """Gradient of the mean-token calibration loss w.r.t. each prunable weight (name -> CPU tensor).

    ``kl_dense`` is KL(p_dense || p_θ) per position (the dense logits come from the same model
    with the dense weights swapped in); ``ce`` is next-token cross-entropy.
    """
    import torch.nn.functional as F

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for mod in layers.values():
        mod.weight.requires_grad_(True)
        mod.weight.grad = None
    positions = sum(ids.numel() if loss == "kl_dense" else ids[:, 1:].numel() for ids in batches)
    try:
        for ids in batches:
            ids = ids.to(device)
            if loss == "kl_dense":
                with torch.no_grad(), swap_weights(layers, dense):
                    ref = F.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)
                logp = F.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)
                value = (ref.exp() * (ref - logp)).sum() / positions
            else:
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
                value = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                        reduction="sum") / positions
            value.backward()
        return {n: mod.weight.grad.detach().cpu().clone() for n, mod in layers.items()}
    finally:
        for n, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(flags[n])


def dense_copy(ctx: ModelContext) -> dict[str, "torch.Tensor"]:
    """Every prunable layer's current weight, copied to the CPU (the dense model, before round 1)."""
    return {n: m.weight.detach().to("cpu", copy=True) for n, m in ctx.layers.items()}


def run_rounds(p: Any, run_round: Callable[[int], list], score: Callable[[], float], layers: dict[str, Any],
               have_val: bool) -> tuple[list, IterationLog]:
    """Run up to T rounds; with ``select: val`` score each, keep the best weights, stop once worse than round 1."""
    scored = p.select == "val" and p.iterations > 1
    if scored and not have_val:
        raise ValueError("iobs select: val needs validation windows")
    log = IterationLog()
    best: tuple[float, dict, list] | None = None
    reports: list = []
    for t in range(1, p.iterations + 1):
        t0 = time.perf_counter()
        reports = run_round(t)
        if scored:
            val = score()
            if not math.isfinite(val):
                val = float("inf")
            log.val_loss.append(val)
            if best is None or val < best[0]:
                best = (val, {n: m.weight.detach().to("cpu", copy=True) for n, m in layers.items()}, reports)
        log.round_time_s.append(time.perf_counter() - t0)
        if scored and t > 1 and log.val_loss[-1] > log.val_loss[0]:
            log.stopped_early = True  # worse than round 1: later rounds only drift further
            break
    log.chosen = len(log.round_time_s)
    if best is not None:
        log.chosen = log.val_loss.index(best[0]) + 1
        for n, m in layers.items():
            m.weight.data.copy_(best[1][n].to(m.weight.device, m.weight.dtype))
        reports = best[2]
    return reports, log
