"""``sparse_ft``: prune with another method, then masked fine-tuning towards the dense model.

A **fine-tuning** method, not one-shot pruning: the leaderboard labels it so
(``category = "fine-tuning"``), the baseline I-OBS is compared against (README, I-OBS and OWL):
prune with ``init`` (any registered method, default
SparseGPT), then train the pruned layers' weights with Adam on the KL divergence from the dense
model's predictions (or on cross-entropy), the gradient and the weights masked so the sparsity
pattern of ``init`` is kept exactly. The last ``val_samples`` calibration samples are held out
of the training; with ``select: val`` the step with the lowest held-out loss is kept (step 0,
the ``init`` result, included), so the result is never worse than ``init`` on those samples.

``init`` prunes with every calibration sample, exactly as it would alone, so step 0 is the
``init`` method's own result. Only the prunable layers' weights train; embeddings, norms,
biases and the head stay dense and unchanged. The curves are stored as series
(``sparse_ft/train_loss``, ``sparse_ft/val_loss``; step k = the model after k steps).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.core.lazy import torch
from harness.core.context import ModelContext
from harness.core.method import (
    METHODS,
    LayerReport,
    MethodBase,
    ModelMethod,
    build_params,
    params_dict,
    register_method,
)
from harness.core.registry import UnknownNameError
from harness.core.target import Target


MAX_TEACHER_BYTES = 4 << 30  # the dense model's log-probabilities are cached; above this, refuse


def resolve_init(name: str, params: dict[str, Any]) -> MethodBase:
    """The ``init`` method built from its params; ValueError (did-you-mean) for a bad name."""
    try:
        cls = METHODS.get(name)  # discovery ran before any suite or run built this method's params
    except UnknownNameError as exc:
        raise ValueError(f"init: {exc}") from None
    if cls.name == "sparse_ft" or not cls.modifies_weights:
        raise ValueError(f"init: '{name}' cannot initialise sparse_ft; give a pruning method such as sparsegpt")
    return cls(build_params(cls, params))


def _evaluate(ctx: ModelContext, idx: torch.Tensor, objective: str, teacher: torch.Tensor | None) -> float:
    total = 0.0
    with torch.no_grad():
        for part in ctx.chunks(idx):
            t = None if teacher is None else teacher[part].reshape(-1, teacher.shape[-1])
            total += float(ctx.loss(ctx.model, part, objective, t)) * len(part)
    return total / len(idx)


def dense_log_probs(ctx: ModelContext) -> torch.Tensor:
    """(n, rows per sample, classes) log-probabilities of the (still dense) model, on the CPU."""
    out = []
    with torch.no_grad():
        for part in ctx.chunks(torch.arange(len(ctx.data))):
            logits, _ = ctx.outputs(ctx.model, part)
            out.append(logits.log_softmax(-1).reshape(len(part), -1, logits.shape[-1]).cpu())
    return torch.cat(out)


@register_method("sparse_ft")
class SparseFT(ModelMethod):
    """Prune with ``init``, then masked Adam towards the dense model, validation-selected (fine-tuning).

    Example:
        methods:
          - name: sparse_ft
            params: {init: sparsegpt, steps: 60, lr: 1.0e-3, loss: kl_dense, select: val, val_samples: 32}
    """

    @dataclass(frozen=True)
    class Params:
        init: str = "sparsegpt"  # registered method that chooses the mask and the starting weights
        init_params: dict[str, Any] = field(default_factory=dict)  # its params (resolved, defaults filled in)
        steps: int = 60  # Adam steps
        lr: float = 1e-3  # Adam learning rate (betas 0.9, 0.999; no weight decay)
        loss: Literal["kl_dense", "ce"] = "kl_dense"  # KL(p_dense ‖ p_pruned) per position, or cross-entropy
        select: Literal["val", "last"] = "val"  # keep the step with the lowest held-out loss, or the last
        val_samples: int = 32  # calibration samples held out of the fine-tuning, for selection
        batch_samples: int = 0  # samples per step; 0 = every training sample (full batch)

        def __post_init__(self) -> None:
            init = resolve_init(self.init, self.init_params)  # resolved here so the run id holds every value
            object.__setattr__(self, "init_params", params_dict(init.params))

        def validate(self) -> None:
            if self.steps < 0 or self.val_samples < 0 or self.batch_samples < 0:
                raise ValueError("steps, val_samples and batch_samples must be >= 0")
            if not self.lr > 0:
                raise ValueError(f"lr must be positive, got {self.lr}")
            if self.select == "val" and self.val_samples == 0:
                raise ValueError("select: val needs val_samples >= 1 (or use select: last)")

    category = "fine-tuning"

    def target_scope(self) -> Literal["layer", "model"]:
        return resolve_init(self.params.init, self.params.init_params).target_scope()

    def prune_model(self, ctx: ModelContext, target: Target) -> list[LayerReport]:
        p = self.params
        n = len(ctx.data)
        if p.val_samples >= n:
            raise ValueError(f"sparse_ft: val_samples {p.val_samples} leaves no training samples of the "
                             f"{n} calibration samples; lower val_samples or raise calibration.n_samples")
        weights = [ctx.layers[name].weight for name in ctx.layers]
        if any(w.dtype != torch.float32 for w in weights):
            raise ValueError("sparse_ft trains float32 weights; load the model with dtype: float32")
        train, val = torch.arange(n - p.val_samples), torch.arange(n - p.val_samples, n)
        teacher = None
        if p.loss == "kl_dense":
            rows = int(ctx.data.inputs.shape[1]) if ctx.data.kind == "lm" else 1
            need = 4 * n * rows * ctx.outputs(ctx.model, torch.arange(1))[0].shape[-1]
            if need > MAX_TEACHER_BYTES:
                raise ValueError(f"sparse_ft: the dense log-probabilities of {n} samples need {need / 2**30:.1f} "
                                 "GiB; use loss: ce or fewer calibration samples")
            teacher = dense_log_probs(ctx)

        init = resolve_init(p.init, p.init_params)
        t0 = time.perf_counter()
        reports = ctx.run_method(init, target)
        init_time = time.perf_counter() - t0
        keep = [w.data != 0 for w in weights]  # init's pattern; training never changes it

        t0 = time.perf_counter()
        flags = {q: q.requires_grad for q in ctx.model.parameters()}
        for q in flags:
            q.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        opt = torch.optim.Adam(weights, lr=p.lr)
        order = torch.Generator().manual_seed(0)
        best_val = _evaluate(ctx, val, p.loss, teacher) if len(val) else float("nan")
        best_step, best, last_val = 0, [w.detach().clone() for w in weights], best_val
        ctx.series.append({"name": "sparse_ft/val_loss", "step": 0, "value": best_val})
        try:
            for step in range(1, p.steps + 1):
                batch = train
                if 0 < p.batch_samples < len(train):
                    batch = train[torch.randperm(len(train), generator=order)[: p.batch_samples]]
                opt.zero_grad(set_to_none=False)
                running = 0.0
                for part in ctx.chunks(batch):
                    t = None if teacher is None else teacher[part].reshape(-1, teacher.shape[-1])
                    loss = ctx.loss(ctx.model, part, p.loss, t) * (len(part) / len(batch))
                    loss.backward()
                    running += float(loss.detach())
                with torch.no_grad():
                    for w, k in zip(weights, keep):
                        if w.grad is not None:  # a layer the loss never reaches has no gradient
                            w.grad.mul_(k)
                    opt.step()
                    for w, k in zip(weights, keep):
                        w.mul_(k)
                ctx.series.append({"name": "sparse_ft/train_loss", "step": step - 1, "value": running})
                if len(val):
                    v = last_val = _evaluate(ctx, val, p.loss, teacher)
                    ctx.series.append({"name": "sparse_ft/val_loss", "step": step, "value": v})
                    if p.select == "val" and v < best_val:
                        best_val, best_step, best = v, step, [w.detach().clone() for w in weights]
                ctx.report("sparse_ft steps", step, p.steps)
        finally:
            for q, flag in flags.items():
                q.requires_grad_(flag)
            for w in weights:
                w.grad = None
        chosen = best_step if p.select == "val" else p.steps
        if p.select == "val":
            with torch.no_grad():
                for w, b in zip(weights, best):
                    w.copy_(b)
        ctx.info.update({"category": self.category, "init": p.init, "init_time_s": init_time,
                         "fine_tuning_time_s": time.perf_counter() - t0, "chosen_step": chosen,
                         "train_samples": len(train), "val_samples": len(val), "loss": p.loss,
                         "val_loss_init": ctx.series[0]["value"], "val_loss_chosen": best_val if p.select == "val" else last_val,
                         "labels": ctx.data.label_source})
        for rep in reports:
            rep.info = {**rep.info, "init": p.init, "fine_tuned_steps": chosen}
        return reports
