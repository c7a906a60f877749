"""``woodfisher``: OBS pruning with a block-diagonal empirical Fisher inverted by Woodbury.

Singh & Alistarh, "WoodFisher: Efficient Second-Order Approximation for Neural Network
Compression", NeurIPS 2020, https://arxiv.org/abs/2004.14340 (reference: IST-DASLab/WoodFisher
``pruners/woodfisherblock.py``). A model-level method: it needs
gradients of the model's loss, not one layer's inputs.

- m = ``num_grads`` gradients g_i of the calibration loss, each averaged over ``grad_batch``
  samples (sequences or images), with already-pruned weights masked out;
- every prunable layer is flattened (row-major) and cut into blocks of ``block_size``
  consecutive weights; per block F = λI + (1/m) Σ g_i g_iᵀ, inverted by the Sherman–Morrison
  recursion F_0⁻¹ = I/λ, F_i⁻¹ = F_{i−1}⁻¹ − (F_{i−1}⁻¹g_i)(F_{i−1}⁻¹g_i)ᵀ / (m + g_iᵀF_{i−1}⁻¹g_i);
- statistic ρ_q = w_q² / (2[F⁻¹]_qq); the lowest ρ are pruned per layer (``scope: layer``, the
  reference's default) or over all prunable layers (``scope: global``, its
  ``--woodburry-joint-sparsify``), or per group of M inputs for N:M targets (the N lowest per
  group; ``scope`` does not apply). On the zoo Llama per-layer selection is the better one
  (README, "Model-level methods");
- update per block: δw = F⁻¹ · Σ_{q newly pruned} (−w_q/[F⁻¹]_qq) e_q (the sum of the
  single-weight OBS updates, as the reference), then the pruned weights are set to zero;
- ``recompute: k`` prunes in k stages to k/k, 1/k... of the target (the reference's linear
  schedule), rebuilding the gradients and F⁻¹ at the current model in between.

F⁻¹ is the same matrix either way, but by default it is kept factored through the Woodbury
identity F⁻¹ = λ⁻¹(I − Gᵀ(mλI + GGᵀ)⁻¹G) (an m×m Cholesky per block, float64), which gives
diag(F⁻¹) and F⁻¹v without forming B×B blocks; ``inverse: recursion`` runs the reference's
Sherman–Morrison loop on explicit blocks instead (tests check all three against an explicit
inverse). Blocks are processed a chunk at a time (at most ``CHUNK_BYTES``), twice per stage
(statistics, then update), so memory holds the gradients, m × (prunable weights) float32.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from harness.core.lazy import torch
from harness.core.context import ModelContext
from harness.core.method import LayerReport, ModelMethod, register_method
from harness.core.target import Target


CHUNK_BYTES = 256 << 20  # F⁻¹ blocks built at once


def woodbury_inverse(grads: torch.Tensor, damp: float) -> torch.Tensor:
    """F⁻¹ for F = damp·I + (1/m) Σ_i g_i g_iᵀ, per block, by the Sherman–Morrison recursion.

    Args:
        grads: (blocks, m, B) the m gradients restricted to each block.
        damp: λ > 0.

    Returns:
        (blocks, B, B) inverses, in the dtype of ``grads``.
    """
    nb, m, b = grads.shape
    finv = torch.eye(b, dtype=grads.dtype, device=grads.device).expand(nb, b, b) / damp
    finv = finv.contiguous()
    for i in range(m):
        g = grads[:, i, :]  # (blocks, B)
        u = torch.bmm(finv, g.unsqueeze(-1))  # (blocks, B, 1) = F⁻¹ g (F⁻¹ is symmetric)
        denom = m + (g.unsqueeze(1) @ u).reshape(nb, 1, 1)  # (blocks, 1, 1) = m + gᵀF⁻¹g
        finv.baddbmm_(u / denom, u.transpose(1, 2), alpha=-1.0)  # F⁻¹ -= u uᵀ / denom
    return finv


def woodfisher_stats(w: torch.Tensor, finv_diag: torch.Tensor) -> torch.Tensor:
    """ρ_q = w_q² / (2 [F⁻¹]_qq), any shape (w and the diagonal aligned)."""
    return w**2 / (2 * finv_diag)


def obs_update(w: torch.Tensor, finv: torch.Tensor, newly: torch.Tensor) -> torch.Tensor:
    """w + F⁻¹ Σ_{q in newly} (−w_q/[F⁻¹]_qq) e_q per block, then the newly pruned set to zero.

    Args:
        w: (blocks, B) weights; finv: (blocks, B, B); newly: (blocks, B) bool.
    """
    diag = torch.diagonal(finv, dim1=1, dim2=2)  # (blocks, B)
    v = torch.where(newly, -w / diag, torch.zeros_like(w))  # scaled basis vectors, summed
    out = w + torch.bmm(finv, v.unsqueeze(-1)).squeeze(-1)
    return out.masked_fill(newly, 0.0)


def woodbury_parts(grads: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same F⁻¹ by the Woodbury identity, kept factored: F⁻¹ = λ⁻¹(I − Gᵀ(mλI + GGᵀ)⁻¹G).

    The recursion above evaluates this identity one gradient at a time; factored, it costs
    O(m²B) per block instead of O(mB²) and never forms a B×B matrix.

    Args:
        grads: (blocks, m, B) gradients G per block; computed in float64.

    Returns:
        (diag (blocks, B) of F⁻¹, Z = (mλI + GGᵀ)⁻¹G (blocks, m, B)); apply with :func:`apply_inverse`.
    """
    g = grads.double()
    m = g.shape[1]  # (blocks, m, B)
    k = g @ g.transpose(1, 2)  # (blocks, m, m)
    k.diagonal(dim1=1, dim2=2).add_(m * damp)
    z = torch.cholesky_solve(g, torch.linalg.cholesky(k))  # (blocks, m, B)
    diag = (1.0 - (g * z).sum(1)) / damp
    return diag, z


def apply_inverse(grads: torch.Tensor, z: torch.Tensor, v: torch.Tensor, damp: float) -> torch.Tensor:
    """F⁻¹v = λ⁻¹(v − Gᵀ(Zv)) per block, for v (blocks, B)."""
    zv = (z @ v.double().unsqueeze(-1))  # (blocks, m, 1)
    return (v.double() - (grads.double().transpose(1, 2) @ zv).squeeze(-1)) / damp


def _blocks(flat: torch.Tensor, b: int) -> torch.Tensor:
    """(..., numel) -> (..., blocks, B), zero-padded at the end."""
    pad = (-flat.shape[-1]) % b
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.reshape(*flat.shape[:-1], -1, b)


def layer_pass(w: torch.Tensor, grads: torch.Tensor, b: int, damp: float,
               newly: torch.Tensor | None = None, inverse: str = "woodbury",
               newton: tuple[torch.Tensor, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer: diag(F⁻¹) and, given ``newly`` (numel,) bool, the OBS-updated weights.

    Args:
        w: (numel,) flattened weight; grads: (m, numel) its gradients.
        inverse: ``"woodbury"`` (factored identity, float64) or ``"recursion"`` (the reference's
            Sherman–Morrison loop on explicit B×B blocks, in the gradients' dtype).
        newton: ``(g, η)`` with g (numel,) a loss gradient: return the Newton point
            w − η F⁻¹g per block instead (``newly`` must be None; I-OBS with Fisher curvature).

    Returns:
        (diag (numel,), new w (numel,) float32: the OBS update, the Newton point, or ``w``).
    """
    if newton is not None and newly is not None:
        raise ValueError("layer_pass takes either a Newton step or an OBS update, not both")
    numel = w.numel()
    wb, gb = _blocks(w, b), _blocks(grads, b).transpose(0, 1)  # (blocks, B), (blocks, m, B)
    nb_b = _blocks(newly, b) if newly is not None else None
    step_b = _blocks(newton[0].to(w.dtype), b) if newton is not None and newton[1] != 0 else None
    diag, out = torch.empty_like(wb, dtype=torch.float64), wb.clone()
    per_block = b * b * 4 if inverse == "recursion" else 2 * gb.shape[1] * b * 8
    step = max(1, CHUNK_BYTES // per_block)
    for c in range(0, wb.shape[0], step):
        g, sl = gb[c : c + step], slice(c, c + step)
        if inverse == "recursion":
            finv = woodbury_inverse(g, damp)
            diag[sl] = torch.diagonal(finv, dim1=1, dim2=2)
            if nb_b is not None:
                out[sl] = obs_update(wb[sl], finv, nb_b[sl])
            elif step_b is not None:
                out[sl] = wb[sl] - newton[1] * torch.bmm(finv, step_b[sl].unsqueeze(-1)).squeeze(-1)
            continue
        d, z = woodbury_parts(g, damp)
        diag[sl] = d
        if step_b is not None:
            out[sl] = (wb[sl].double() - newton[1] * apply_inverse(g, z, step_b[sl], damp)).to(out.dtype)
        if nb_b is not None:
            v = torch.where(nb_b[sl], -wb[sl].double() / d, torch.zeros_like(d))
            out[sl] = (wb[sl].double() + apply_inverse(g, z, v, damp)).masked_fill(nb_b[sl], 0.0).to(out.dtype)
    return diag.reshape(-1)[:numel], out.reshape(-1)[:numel]


def select(stats: dict[str, torch.Tensor], pruned: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]],
           target: Target, fraction: float, scope: str) -> dict[str, torch.Tensor]:
    """The new cumulative masks (numel,) bool: the lowest statistics, already-pruned weights always in.

    Unstructured: int(fraction·numel) per layer (``scope: layer``) or int(fraction·total) over
    all layers (``global``), ties broken by position. N:M: round(N·fraction/sparsity) per group
    of M inputs, where ``fraction`` is this stage's share of the target sparsity.
    """
    ranked = {n: s.masked_fill(pruned[n], float("-inf")) for n, s in stats.items()}
    out = {}
    if target.is_nm:
        n_stage = round(target.n * fraction / target.sparsity)
        for name, s in ranked.items():
            rows, cols = shapes[name]
            groups = s.reshape(rows, cols // target.m, target.m)
            idx = torch.topk(groups, n_stage, dim=-1, largest=False).indices
            out[name] = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).reshape(-1)
        return out
    if scope == "layer":
        for name, s in ranked.items():
            mask = torch.zeros_like(s, dtype=torch.bool)
            mask[torch.argsort(s, stable=True)[: int(fraction * s.numel())]] = True
            out[name] = mask
        return out
    flat = torch.cat([s.to(torch.float32).cpu() for s in ranked.values()])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, stable=True)[: int(fraction * flat.numel())]] = True
    start = 0
    for name, s in ranked.items():
        out[name] = chosen[start : start + s.numel()].to(s.device)
        start += s.numel()
    return out


def sample_gradients(ctx: ModelContext, masks: dict[str, torch.Tensor], num_grads: int, grad_batch: int
                     ) -> tuple[dict[str, torch.Tensor], float]:
    """m gradients of the calibration loss w.r.t. each prunable weight, (m, numel) float32, masked.

    Gradient i averages the loss of samples [i·grad_batch, (i+1)·grad_batch). Returns the
    gradients and the mean loss over those samples (the current model's calibration loss).
    """
    names = list(ctx.layers)
    params = [ctx.layers[n].weight for n in names]
    flags = {p: p.requires_grad for p in ctx.model.parameters()}
    for p in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    grads = {n: torch.empty(num_grads, ctx.weight(n).numel(), device=ctx.device) for n in names}
    total = 0.0
    try:
        for i in range(num_grads):
            acc = None
            idx = torch.arange(i * grad_batch, (i + 1) * grad_batch)
            for part in ctx.chunks(idx):
                loss = ctx.loss(ctx.model, part) * (len(part) / grad_batch)
                total += float(loss.detach()) / num_grads
                g = torch.autograd.grad(loss, params)
                acc = g if acc is None else [a + b for a, b in zip(acc, g)]
            for n, g in zip(names, acc):
                grads[n][i] = g.reshape(-1).float() * ~masks[n]
            ctx.report("woodfisher gradients", i + 1, num_grads)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return grads, total


def check_fisher_budget(ctx: ModelContext, target: Target, num_grads: int, grad_batch: int, max_gib: float,
                        who: str = "woodfisher", keys: tuple[str, str] = ("num_grads", "grad_batch")
                        ) -> dict[str, tuple[int, int]]:
    """Refuse, in one line, a Fisher the data or memory cannot hold; return each layer's (rows, cols)."""
    shapes = {n: tuple(ctx.weight(n).shape) for n in ctx.layers}
    total = sum(r * c for r, c in shapes.values())
    need = num_grads * grad_batch
    if need > len(ctx.data):
        raise ValueError(f"{who} needs {keys[0]} × {keys[1]} = {need} calibration samples, the suite "
                         f"gives {len(ctx.data)}: lower {keys[0]}/{keys[1]} or raise calibration.n_samples")
    gib = 4 * num_grads * total / 2**30
    if gib > max_gib:
        raise ValueError(f"{who}: {num_grads} gradients of {total:,} prunable weights need {gib:.1f} GiB, "
                         f"above max_gib {max_gib:g}; lower {keys[0]} or raise max_gib")
    if target.is_nm:
        bad = [n for n, (_, c) in shapes.items() if c % target.m]
        if bad:
            raise ValueError(f"{bad[0]}: input dim {shapes[bad[0]][1]} is not a multiple of {target.m}")
    return shapes


@register_method("woodfisher")
class WoodFisher(ModelMethod):
    """WoodFisher: block-diagonal empirical-Fisher OBS, global or per-layer, with recomputation.

    Example:
        methods:
          - name: woodfisher
            params: {block_size: 128, num_grads: 64, grad_batch: 1, damp: 1.0e-5, scope: layer, recompute: 1}
    """

    @dataclass(frozen=True)
    class Params:
        block_size: int = 128  # B: consecutive weights (row-major) per Fisher block; F⁻¹ is B×B per block
        num_grads: int = 64  # m: gradients in the empirical Fisher (needs m·grad_batch calibration samples)
        grad_batch: int = 1  # calibration samples (sequences or images) averaged into each gradient
        damp: float = 1e-5  # λ in F = λI + (1/m)Σggᵀ (the reference's --fisher-damp)
        scope: Literal["layer", "global"] = "layer"  # one threshold per layer (reference default) or over all layers
        recompute: int = 1  # k: prune in k stages (k/k of the target at the end), F⁻¹ rebuilt in between
        inverse: Literal["woodbury", "recursion"] = "woodbury"  # same F⁻¹: factored identity (fast, float64) or the reference's loop
        max_gib: float = 8.0  # refuse when the stored gradients (m × prunable weights, float32) exceed this

        def validate(self) -> None:
            for key in ("block_size", "num_grads", "grad_batch", "recompute"):
                if getattr(self, key) < 1:
                    raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
            if not self.damp > 0:
                raise ValueError(f"damp must be positive (F0⁻¹ = I/damp), got {self.damp}")
            if not self.max_gib > 0:
                raise ValueError(f"max_gib must be positive, got {self.max_gib}")

    stats = "none"
    def target_scope(self) -> Literal["layer", "model"]:
        return "model" if self.params.scope == "global" else "layer"

    def prune_model(self, ctx: ModelContext, target: Target) -> list[LayerReport]:

        p = self.params
        shapes = check_fisher_budget(ctx, target, p.num_grads, p.grad_batch, p.max_gib)
        need = p.num_grads * p.grad_batch
        pruned = {n: torch.zeros(r * c, dtype=torch.bool, device=ctx.device) for n, (r, c) in shapes.items()}
        times = dict.fromkeys(ctx.layers, 0.0)
        obs_loss = dict.fromkeys(ctx.layers, 0.0)
        for stage in range(1, p.recompute + 1):
            fraction = target.sparsity * stage / p.recompute
            grads, loss = sample_gradients(ctx, pruned, p.num_grads, p.grad_batch)
            ctx.series.append({"name": "woodfisher/calibration_loss", "step": stage - 1, "value": loss})
            stats = {}
            for name in ctx.layers:  # pass 1: statistics
                t0 = time.perf_counter()
                w = ctx.weight(name).reshape(-1).float()
                diag, _ = layer_pass(w, grads[name], p.block_size, p.damp, inverse=p.inverse)
                stats[name] = woodfisher_stats(w, diag)
                times[name] += time.perf_counter() - t0
            masks = select(stats, pruned, shapes, target, fraction, p.scope)
            for name in ctx.layers:  # pass 2: the OBS update of the newly pruned weights
                t0 = time.perf_counter()
                newly = masks[name] & ~pruned[name]
                obs_loss[name] += float(stats[name][newly].sum())
                w = ctx.weight(name).reshape(-1).float()
                _, new = layer_pass(w, grads[name], p.block_size, p.damp, newly, p.inverse)
                ctx.set_weight(name, new.masked_fill(masks[name], 0.0))
                times[name] += time.perf_counter() - t0
            pruned = masks
            del grads, stats
            ctx.report("woodfisher stages", stage, p.recompute)
        with torch.no_grad():
            final = sum(float(ctx.loss(ctx.model, part)) * len(part) for part in ctx.chunks(torch.arange(need))) / need
        ctx.series.append({"name": "woodfisher/calibration_loss", "step": p.recompute, "value": final})
        ctx.info.update({"scope": "N:M groups" if target.is_nm else p.scope, "stages": p.recompute,
                         "gradient_samples": need, "labels": ctx.data.label_source})
        reports = []
        for name in ctx.layers:
            rows, cols = shapes[name]
            info = {"sparsity_chosen": float(pruned[name].float().mean()), "obs_loss": obs_loss[name]}
            reports.append(LayerReport(name, ctx.blocks[name], rows, cols, None, times[name], info))
        return reports
