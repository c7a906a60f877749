"""sparsebench: prune models with registered methods, evaluate them, record every result.

Public API (explicit; heavy modules import lazily so ``harness --help`` stays fast)::

    from harness import prune_weight, register_method, PruningMethod, load_suite, run_suite
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.core.method import LayerStats, PruneResult, PruningMethod, register_method
from harness.plugins import get_method, list_methods
from harness.core.target import Target

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"

__all__ = [
    "LayerStats",
    "PruneResult",
    "PruningMethod",
    "Target",
    "get_method",
    "list_methods",
    "load_suite",
    "prune_weight",
    "register_method",
    "run_suite",
]


def prune_weight(
    method: str,
    weight: "torch.Tensor",
    *,
    hessian: "torch.Tensor | None" = None,
    target: float | str = 0.5,
    **params: Any,
) -> "torch.Tensor":
    """Prune one weight matrix with a registered method and return the new weight.

    Args:
        method: registered name, e.g. ``"sparsegpt"``.
        weight: (d_out, d_in) tensor; not modified.
        hessian: X X^T / n of the layer's inputs, (d_in, d_in); required by methods that use
            calibration statistics (Wanda reads its diagonal).
        target: fraction pruned (``0.5``) or an N:M string (``"2:4"``, N pruned per M inputs).
        **params: the method's hyper-parameters (its ``Params`` fields).

    Returns:
        The pruned weight: same shape, dtype and device as ``weight``.
    """
    from harness.core.method import build_params

    cls = get_method(method)
    if cls.kind != "layer":
        raise ValueError(f"method '{method}' prunes a whole model or solves a problem ({cls.kind} method), not one "
                         "weight matrix: run it on a model through a suite (harness run)")
    tgt = Target.parse(target)
    stats = None
    if hessian is not None:
        stats = LayerStats.from_hessian(hessian.to(weight.device, dtype=hessian.dtype))
    elif cls.stats != "none":
        raise ValueError(f"method '{method}' needs hessian= (X X^T / n of the layer's inputs)")
    m = cls(build_params(cls, params))
    m.prepare({"weight": weight}, tgt)
    out = m.prune("weight", weight, stats, tgt).weight
    return out.to(device=weight.device, dtype=weight.dtype)


def load_suite(path: Any, *, trust_remote_code: bool = False):
    """Load and validate a suite YAML (see ``harness.suite.loader.load_suite``)."""
    from harness.suite.loader import load_suite as _load

    return _load(path, trust_remote_code=trust_remote_code)


def run_suite(*args: Any, **kwargs: Any):
    """Run every cell of a suite (see ``harness.run.runner.run_suite``)."""
    from harness.run.runner import run_suite as _run

    return _run(*args, **kwargs)
