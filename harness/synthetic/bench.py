"""``synthetic:`` models: sparse linear regression problems solved by ``iht``, ``topk_iobs``, ``iobs_obc``.

The authors' synthetic experiment of I-OBS (Wu et al., NeurIPS 2024, §7.2, with the authors' step convention):
y = Xθ* + σε with X = randn(n, d)/√n, θ* k*-sparse, and min (1/n)‖Xθ − y‖² s.t. ‖θ‖₀ ≤ k.

- ``synthetic:gaussian``: θ* has k* standard-normal entries on a random support
  (defaults n=256, d=128, k*=16, k=4k*=64).
- ``synthetic:digit``: θ* is a digit glyph rendered from the built-in 5x7 bitmap font, scaled 3x
  and centred in 28x28 (d=784, k* = the glyph's pixels; defaults n=2d, k=2k*), as the
  authors' MNIST prior but without a download.

A cell runs ``trials`` (default 20) independent problems drawn from one generator seeded with
the cell's seed, batched, for ``steps`` steps from θ₀ ~ U(−1/√d, 1/√d) (``nn.Linear``'s default,
the authors' initialisation) or θ₀ = 0. Its metrics are medians over the trials:
``final_dist`` ‖θ_T − θ*‖₂, ``steps_to_tol`` (first t with ‖θ_t − θ*‖ < tol; steps+1 when never),
``dist_at_10``, ``support_recall`` (|supp θ_T ∩ supp θ*| / k*), plus ``reached_tol`` (fraction of
trials that reached tol), ``final_loss`` and ``oracle_dist`` (least squares on the true support:
the noise floor). Series (one value per step t = 0..steps): the median ``loss``, ``dist`` and
``support_recall`` over trials and the worst trial's ``dist_max``. Per-trial numbers go to
``eval_info["synthetic"]["trials"]``. The cell's target is 1 − k/d, set by the problem.
This module imports no torch at import time: the suite validator uses it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from harness.core.problems import glyph

SMALL_D = 256  # up to this d a cell solves on one thread
FIXED_POINT_RTOL = 1e-14  # an update moving no entry by more than this (relative) is a fixed point


@dataclass
class Trajectory:
    """What a method did on a batch of trials; (steps + 1, T) arrays hold t = 0..steps."""

    loss: Any
    dist: Any
    recall: Any
    theta: Any  # (T, d) final iterate
    solve_time_s: float
    fixed_point_at: int | None = None  # first t with θ_{t+1} = θ_t (to rounding) in every trial; later t copy it


def generate(name: str, problem: dict[str, Any], seed: int) -> tuple[Any, Any, Any, Any]:
    """(X (T, n, d), y (T, n), θ* (T, d), θ₀ (T, d)) in float64, drawn from one seeded generator."""
    import torch

    g = torch.Generator().manual_seed(seed)
    t, n, d = problem["trials"], problem["n"], problem["d"]
    if name == "gaussian":
        star = torch.zeros(t, d, dtype=torch.float64)
        for i in range(t):
            support = torch.randperm(d, generator=g)[: problem["k_star"]]
            star[i, support] = torch.randn(problem["k_star"], generator=g, dtype=torch.float64)
    else:
        star = torch.tensor(glyph(problem["digit"]), dtype=torch.float64).expand(t, d).clone()
    x = torch.randn(t, n, d, generator=g, dtype=torch.float64) / math.sqrt(n)
    y = torch.einsum("tnd,td->tn", x, star) + problem["noise"] * torch.randn(t, n, generator=g, dtype=torch.float64)
    if problem["init"] == "uniform":
        theta0 = (torch.rand(t, d, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(d)
    else:
        theta0 = torch.zeros(t, d, dtype=torch.float64)
    return x, y, star, theta0


def solve(method: Any, x: Any, y: Any, star: Any, theta0: Any, k: int, steps: int,
          progress: Callable[[int, int], None] | None = None) -> Trajectory:
    """Iterate ``method`` (a ``RecoveryMethod``) from θ₀; record loss, distance and support recall.

    The update is a fixed map of θ (the problem and the method's state do not change), so once
    every trial's iterate maps to itself to rounding (no entry moving by more than
    ``FIXED_POINT_RTOL`` relative to max|θ|; entries at rounding level may swap in and out of the
    support) all later steps repeat it: the loop stops and the remaining steps copy the last
    values. This keeps greedy-OBS cells cheap after convergence.
    """
    import torch

    from harness.core.recovery import RecoveryProblem, mse_loss_grad

    true_support = star != 0  # (T, d)
    k_star = true_support.sum(1).clamp(min=1)
    loss, dist, recall = [], [], []
    t0 = time.perf_counter()
    state = method.setup(RecoveryProblem(x, y), k)
    theta, fixed = theta0.clone(), None
    for step in range(steps + 1):
        f, grad = mse_loss_grad(x, y, theta)
        loss.append(f)
        dist.append(torch.linalg.vector_norm(theta - star, dim=1))
        recall.append(((theta != 0) & true_support).sum(1) / k_star)
        if step == steps:
            break
        new = method.update(theta, grad, state, k)
        if not torch.isfinite(new).all():
            raise ValueError(f"{method.name} diverged at step {step + 1} (non-finite iterate); lower eta")
        scale = theta.abs().amax(1, keepdim=True).clamp(min=1e-300)
        if bool(((new - theta).abs() <= FIXED_POINT_RTOL * scale).all()):
            fixed = step
            rest = steps - step
            loss, dist, recall = (v + [v[-1]] * rest for v in (loss, dist, recall))
            break
        theta = new
        if progress and (step + 1) % 50 == 0:
            progress(step + 1, steps)
    return Trajectory(torch.stack(loss), torch.stack(dist), torch.stack(recall), theta, time.perf_counter() - t0,
                      fixed)


def oracle_dist(x: Any, y: Any, star: Any) -> Any:
    """‖θ_LS − θ*‖ (T,) with θ_LS least squares on the true support: the best any k ≥ k* method can do."""
    import torch

    out = []
    for t in range(x.shape[0]):
        s = (star[t] != 0).nonzero().flatten()
        sol = torch.linalg.lstsq(x[t][:, s], y[t][:, None]).solution[:, 0]
        theta = torch.zeros_like(star[t])
        theta[s] = sol
        out.append(torch.linalg.vector_norm(theta - star[t]))
    return torch.stack(out)


def trial_metrics(traj: Trajectory, tol: float, steps: int) -> dict[str, list[float]]:
    """Per-trial final_dist, steps_to_tol (steps + 1 when never), dist_at_10, support_recall, final_loss."""
    import torch

    below = traj.dist < tol  # (steps + 1, T)
    first = torch.where(below.any(0), below.float().argmax(0), torch.full_like(below[0], steps + 1, dtype=torch.long))
    return {
        "final_dist": traj.dist[-1].tolist(), "steps_to_tol": first.tolist(),
        "dist_at_10": traj.dist[min(10, steps)].tolist(), "support_recall": traj.recall[-1].tolist(),
        "final_loss": traj.loss[-1].tolist(),
    }


def solve_cell(spec: Any, method: Any, record: dict[str, Any], progress: Callable[[int, int], None]) -> None:
    """Solve one synthetic cell and fill ``record``: metrics, series, sparsity, eval and model info."""
    import torch

    name = spec.model.id.split(":", 1)[1]
    problem = dict(spec.model.problem)
    k, d, steps = problem["k"], problem["d"], problem["steps"]
    x, y, star, theta0 = generate(name, problem, spec.seed)
    threads = torch.get_num_threads()
    if d <= SMALL_D:  # tiny batched matrices: OpenMP fan-out costs more than it gains (10x slower on a loaded box)
        torch.set_num_threads(1)
    try:
        traj = solve(method, x, y, star, theta0, k, steps, progress)
    finally:
        torch.set_num_threads(threads)
    record["prune_time_s"] = traj.solve_time_s
    nnz = (traj.theta != 0).sum(1)  # (T,)
    if int(nnz.max()) > k:
        raise ValueError(f"{method.name} returned {int(nnz.max())} nonzeros, above k={k}")
    per_trial = trial_metrics(traj, problem["tol"], steps)
    per_trial["oracle_dist"] = oracle_dist(x, y, star).tolist()
    med = {key: float(torch.tensor(vals, dtype=torch.float64).median()) for key, vals in per_trial.items()}
    reached = sum(s <= steps for s in per_trial["steps_to_tol"]) / problem["trials"]
    headline = ("final_dist", "steps_to_tol", "dist_at_10", "support_recall")
    record["metrics"] = [{"name": key, "value": med[key], "stderr": None, "n": problem["trials"],
                          "headline": key in headline} for key in (*headline, "final_loss", "oracle_dist")]
    record["metrics"].append({"name": "reached_tol", "value": reached, "stderr": None, "n": problem["trials"],
                              "headline": True})
    curves = {"loss": traj.loss.median(1).values, "dist": traj.dist.median(1).values,
              "support_recall": traj.recall.median(1).values, "dist_max": traj.dist.max(1).values}
    record["series"] = [{"name": key, "step": t, "value": float(v)}
                        for key, curve in curves.items() for t, v in enumerate(curve.tolist())]
    record["sparsity"] = {"global": float((traj.theta == 0).double().mean()), "target": 1.0 - k / d,
                          "nm_compliant": None}
    cond = torch.linalg.cond(x.transpose(1, 2) @ x) if problem["n"] >= d else None
    record["model_info"] = {"kind": "synthetic", "problem": name, **problem,
                            "median_kappa": float(cond.median()) if cond is not None else None}
    record["eval_info"] = {"synthetic": {"trials": [dict(zip(per_trial, vals)) for vals in zip(*per_trial.values())],
                                         "reached_tol": reached, "fixed_point_at": traj.fixed_point_at}}
