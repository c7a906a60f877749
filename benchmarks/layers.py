"""Per-layer benchmarks: each method against a plain reference, and the SparseGPT stages
(Hessian accumulation, damped inverse Cholesky, column sweep) against their floors."""
from __future__ import annotations

from typing import Any

import torch

from benchmarks import reference
from benchmarks._timing import best_of
from harness.target import Target

SHAPES_QUICK = [(768, 768), (3072, 768), (768, 3072)]
SHAPES_FULL = SHAPES_QUICK + [(4096, 4096), (11008, 4096)]
TARGETS = [Target(0.5), Target(0.5, 2, 4)]


def correlated_inputs(tokens: int, d: int, seed: int = 0) -> torch.Tensor:
    """(tokens, d) inputs with correlated features and a few outliers, like LLM activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    x = torch.randn(tokens, d, generator=g) @ mix
    x[:, :8] *= 6.0
    return x


def hessian_of(x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """What the driver does: accumulate XᵀX over chunks of tokens, then divide by n."""
    h = torch.zeros(x.shape[1], x.shape[1])
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk]
        h.addmm_(part.T, part)
    return h / x.shape[0]


def _ours(method: str, w: torch.Tensor, h: torch.Tensor, t: Target) -> torch.Tensor:
    from harness import prune_weight

    return prune_weight(method, w, hessian=h, target=str(t))


def _reference(method: str, w: torch.Tensor, h: torch.Tensor, t: Target) -> torch.Tensor:
    if method == "magnitude":
        return reference.magnitude_ref(w, t.sparsity, t.n, t.m)
    if method == "wanda":
        return reference.wanda_ref(w, h, t.sparsity, t.n, t.m)
    return reference.sparsegpt_ref(w, h, t.sparsity, t.n, t.m)


def method_rows(shapes: list[tuple[int, int]], tokens: int, repeat: int) -> list[dict[str, Any]]:
    """Time each method and its reference on every shape and target; check the masks agree."""
    rows = []
    for d_out, d_in in shapes:
        x = correlated_inputs(tokens, d_in)
        h = hessian_of(x)
        w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(1))
        for method in ("magnitude", "wanda", "sparsegpt"):
            for t in TARGETS:
                if method == "magnitude" and t.is_nm and d_out * d_in > 3072 * 768:
                    continue  # the plain per-group reference loop would take minutes
                t_ref, ref = best_of(lambda: _reference(method, w, h, t), repeat)
                t_new, new = best_of(lambda: _ours(method, w, h, t), repeat)
                rows.append({
                    "shape": f"{d_out}x{d_in}", "method": method, "target": str(t),
                    "reference_s": t_ref, "ours_s": t_new, "speedup": t_ref / t_new,
                    "same_mask": bool(torch.equal(ref == 0, new == 0)),
                    "max_rel_diff": float((ref - new).norm() / ref.norm()),
                })
    return rows


def stage_rows(shapes: list[tuple[int, int]], tokens: int, repeat: int) -> list[dict[str, Any]]:
    """SparseGPT's stages against their floors: one XᵀX matmul, one Cholesky, one GEMM of the sweep's size."""
    from methods.sparsegpt import inverse_cholesky_upper, sparsegpt_prune

    rows = []
    for d_out, d_in in shapes:
        x = correlated_inputs(tokens, d_in)
        t_acc, h = best_of(lambda: hessian_of(x), repeat)
        t_floor_acc, _ = best_of(lambda: x.T @ x, repeat)
        t_inv, _ = best_of(lambda: inverse_cholesky_upper(h, 0.01), repeat)
        t_chol, _ = best_of(lambda: torch.linalg.cholesky(h + 0.01 * h.diagonal().mean() * torch.eye(d_in)), repeat)
        w = torch.randn(d_out, d_in)
        t_all, _ = best_of(lambda: sparsegpt_prune(w, h, Target(0.5)), repeat)
        t_sweep = max(t_all - t_inv, 1e-9)
        a, b = torch.randn(d_out, d_in), torch.randn(d_in, d_in)
        t_gemm, _ = best_of(lambda: a @ b, repeat)  # (rows x d_in) @ (d_in x d_in): the sweep's total flops
        rows.append({
            "shape": f"{d_out}x{d_in}", "tokens": tokens,
            "hessian_s": t_acc, "hessian_floor_s": t_floor_acc, "hessian_x_floor": t_acc / t_floor_acc,
            "inverse_s": t_inv, "cholesky_floor_s": t_chol, "inverse_x_floor": t_inv / t_chol,
            "sweep_s": t_sweep, "sweep_gemm_floor_s": t_gemm, "sweep_x_floor": t_sweep / t_gemm,
        })
    return rows
