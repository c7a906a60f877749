"""Per-layer benchmarks: each method against a plain reference, and the SparseGPT stages
(Hessian accumulation, damped inverse Cholesky, column sweep) against their floors."""
from __future__ import annotations

# ruff: noqa: B023  (the closures are timed at once by best_of, inside the iteration that binds them)
from typing import Any

import torch

from benchmarks import reference
from benchmarks._timing import best_of
from harness.core.target import Target

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
    h = torch.zeros(x.shape[1], x.shape[1], device=x.device)
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk]
        h.addmm_(part.T, part)
    return h / x.shape[0]


def _ours(method: str, w: torch.Tensor, h: torch.Tensor, t: Target, device: str = "cpu") -> torch.Tensor:
    from harness import prune_weight

    return _sync(prune_weight(method, w.to(device), hessian=h.to(device), target=str(t)), device)


def _reference(method: str, w: torch.Tensor, h: torch.Tensor, t: Target) -> torch.Tensor:
    if method == "magnitude":
        return reference.magnitude_ref(w, t.sparsity, t.n, t.m)
    if method == "wanda":
        return reference.wanda_ref(w, h, t.sparsity, t.n, t.m)
    return reference.sparsegpt_ref(w, h, t.sparsity, t.n, t.m)


def method_rows(shapes: list[tuple[int, int]], tokens: int, repeat: int, device: str = "cpu") -> list[dict[str, Any]]:
    """Time each method (on ``device``, inputs moved there inside the timing) and its reference
    (CPU) on every shape and target; check the masks agree."""
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
                t_new, new = best_of(lambda: _ours(method, w, h, t, device), repeat)
                rows.append(_row((d_out, d_in), method, str(t), t_ref, ref, t_new, new))
    return rows


def stage_rows(shapes: list[tuple[int, int]], tokens: int, repeat: int, device: str = "cpu") -> list[dict[str, Any]]:
    """SparseGPT's stages against their floors: one XᵀX matmul, one Cholesky, one GEMM of the sweep's size."""
    from methods.sparsegpt import WIDE_COLS, inverse_cholesky_upper, reversed_cholesky, sparsegpt_prune

    def wide_factor(h, frac):
        return reversed_cholesky(h, h.diagonal() == 0, frac)

    rows = []
    for d_out, d_in in shapes:
        x = correlated_inputs(tokens, d_in).to(device)
        eye = torch.eye(d_in, device=device)
        t_acc, h = best_of(lambda: _sync(hessian_of(x), device), repeat)
        t_floor_acc, _ = best_of(lambda: _sync(x.T @ x, device), repeat)
        # the factorization the unstructured path takes (the wide sweep's row solves count as sweep)
        factor = wide_factor if d_in >= WIDE_COLS else inverse_cholesky_upper
        t_inv, _ = best_of(lambda: _sync(factor(h, 0.01)[0], device), repeat)
        t_chol, _ = best_of(lambda: _sync(torch.linalg.cholesky(h + 0.01 * h.diagonal().mean() * eye), device), repeat)
        w = torch.randn(d_out, d_in, device=device)
        t_all, _ = best_of(lambda: _sync(sparsegpt_prune(w, h, Target(0.5))[0], device), repeat)
        t_sweep = max(t_all - t_inv, 1e-9)
        a, b = torch.randn(d_out, d_in, device=device), torch.randn(d_in, d_in, device=device)
        t_gemm, _ = best_of(lambda: _sync(a @ b, device), repeat)  # (rows x d_in) @ (d_in x d_in): the sweep's total flops
        rows.append({
            "shape": f"{d_out}x{d_in}", "tokens": tokens, "path": "wide" if d_in >= WIDE_COLS else "exact",
            "hessian_s": t_acc, "hessian_floor_s": t_floor_acc, "hessian_x_floor": t_acc / t_floor_acc,
            "inverse_s": t_inv, "cholesky_floor_s": t_chol, "inverse_x_floor": t_inv / t_chol,
            "sweep_s": t_sweep, "sweep_gemm_floor_s": t_gemm, "sweep_x_floor": t_sweep / t_gemm,
        })
    return rows


OBC_SHAPES = [(32, 64), (64, 128), (128, 288)]  # the plain reference is O(d_out·d_in³) in Python loops
WOODFISHER_SHAPES = [(768, 768), (3072, 768)]  # the reference inverts one explicit B×B block at a time


def _row(shape, method, target, t_ref, ref, t_new, new) -> dict[str, Any]:
    ref, new = ref.float().cpu(), new.float().cpu()
    return {
        "shape": f"{shape[0]}x{shape[1]}", "method": method, "target": target,
        "reference_s": t_ref, "ours_s": t_new, "speedup": t_ref / t_new,
        "same_mask": bool(torch.equal(ref == 0, new == 0)),
        "mask_mismatch": int(((ref == 0) != (new == 0)).sum()),  # entries kept by one and pruned by the other
        "max_rel_diff": float((ref - new).norm() / ref.norm()),
    }


def obc_rows(shapes: list[tuple[int, int]], repeat: int, sparsity: float = 0.5) -> list[dict[str, Any]]:
    """ExactOBS (methods/obc.py, batched rows) against the literal per-row loop of §5."""
    from methods.obc import obc_prune

    rows = []
    for d_out, d_in in shapes:
        h = hessian_of(correlated_inputs(max(4 * d_in, 512), d_in))
        w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(1))
        t_ref, ref = best_of(lambda: reference.obc_ref(w, h, sparsity), 1)
        t_new, new = best_of(lambda: obc_prune(w, h, Target(sparsity))[0], repeat)
        rows.append(_row((d_out, d_in), "obc", str(Target(sparsity)), t_ref, ref, t_new, new))
    return rows


def iobs_rows(shapes: list[tuple[int, int]], tokens: int, repeat: int, device: str = "cpu",
              eta: float = 0.5) -> list[dict[str, Any]]:
    """One I-OBS step (dense-output Newton point by Cholesky solve, then the SparseGPT projection)
    against an explicit ``torch.linalg.inv`` Newton point and the plain SparseGPT reference."""
    from methods.iobs import newton_dense_output, project

    rows = []
    for d_out, d_in in shapes:
        x_d = correlated_inputs(tokens, d_in)
        x_s = x_d + 0.1 * correlated_inputs(tokens, d_in, seed=2)  # inputs of the already-sparse model
        h = hessian_of(x_s)
        cross = (x_d.T @ x_s) / tokens
        w_d = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(1))
        w_t = reference.magnitude_ref(w_d, 0.5)
        for t in TARGETS:
            def ours():
                wt, hd = w_t.to(device), h.to(device)
                newton = newton_dense_output(wt, w_d.to(device), hd, cross.to(device), eta)
                out = project(newton, hd, t, "sparsegpt", 128, 0.01)[0]
                return _sync(out, device)

            def ref():
                newton = reference.newton_dense_output_ref(w_t, w_d, h, cross, eta)
                return reference.sparsegpt_ref(newton, h, t.sparsity, t.n, t.m)

            t_ref, r = best_of(ref, repeat)
            t_new, n = best_of(ours, repeat)
            rows.append(_row((d_out, d_in), "iobs-projection", str(t), t_ref, r, t_new, n))
    return rows


def woodfisher_rows(shapes: list[tuple[int, int]], repeat: int, num_grads: int = 64, block: int = 128,
                    damp: float = 1e-5, sparsity: float = 0.5) -> list[dict[str, Any]]:
    """One WoodFisher layer step (scope layer): the factored Woodbury F⁻¹ of methods/woodfisher.py
    against explicit per-block Fisher matrices inverted by ``torch.linalg.inv``."""
    from methods.woodfisher import layer_pass, select, woodfisher_stats

    rows = []
    for d_out, d_in in shapes:
        g = torch.Generator().manual_seed(3)
        w = torch.randn(d_out, d_in, generator=g)
        grads = torch.randn(num_grads, d_out * d_in, generator=g) * 0.01

        def ours():
            flat = w.flatten()
            diag, _ = layer_pass(flat, grads, block, damp)
            stats = {"l": woodfisher_stats(flat, diag)}
            mask = select(stats, {"l": torch.zeros_like(flat, dtype=torch.bool)}, {"l": (d_out, d_in)},
                          Target(sparsity), sparsity, "layer")["l"]
            return layer_pass(flat, grads, block, damp, mask)[1].reshape(d_out, d_in)

        t_ref, r = best_of(lambda: reference.woodfisher_layer_ref(w, grads, sparsity, block, damp), 1)
        t_new, n = best_of(ours, repeat)
        rows.append(_row((d_out, d_in), "woodfisher", str(Target(sparsity)), t_ref, r, t_new, n))
    return rows


def _sync(out: torch.Tensor, device: str) -> torch.Tensor:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)
    return out
