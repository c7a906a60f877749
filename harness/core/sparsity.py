"""Masks (top-k per group, N:M) and measurement of the sparsity a method really reached."""
from __future__ import annotations

from dataclasses import dataclass

from harness.core.lazy import torch

from harness.core.target import Target


def prune_smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` smallest entries in each row of ``scores`` (rows, cols).

    Ties break by column index, lowest first: the mask a stable sort gives (the Wanda
    reference's ``torch.sort(..., stable=True)[:, :count]``). It is found without a sort: the
    row's count-th smallest value t (``kthvalue``, a partition), every entry below t, then the
    entries equal to t from the left until the row has ``count``; NaN ranks above every number,
    as in the sort.
    """
    rows, cols = scores.shape
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if count >= cols:
        return torch.ones_like(scores, dtype=torch.bool)
    thresh = torch.kthvalue(scores, count, dim=1, keepdim=True).values  # (rows, 1)
    if bool(torch.isnan(thresh).any()):  # a row with fewer than count numbers: the sort decides
        return _prune_smallest_sorted(scores, count)
    mask = scores <= thresh
    ties = (mask.sum(1) > count).nonzero().flatten()  # rows where entries equal to t overshoot
    if ties.numel():
        sub, t = scores[ties], thresh[ties]
        equal = sub == t
        need = count - (sub < t).sum(1, keepdim=True)  # how many of the ties this row still takes
        mask[ties] = (sub < t) | (equal & (equal.cumsum(1) <= need))
    return mask


def _prune_smallest_sorted(scores: torch.Tensor, count: int) -> torch.Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    idx = torch.sort(scores, dim=1, stable=True).indices[:, :count]  # (rows, count)
    return mask.scatter_(1, idx, True)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Mask of the ``n`` smallest scores in every group of ``m`` consecutive columns.

    Args:
        scores: (rows, cols) with cols divisible by m.
    """
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M {n}:{m} needs the input dimension ({cols}) to be a multiple of {m}")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=-1, largest=False).indices  # (rows, groups, n)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def threshold_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune ``scores <= sorted(scores)[int(p * numel)]`` (the reference codes' rule).

    The ``<=`` prunes one extra element (more with ties): the sparsity check allows for it. The
    threshold is found by a partition, not a sort (:func:`kth_smallest`): the same value.
    """
    flat = scores.flatten()
    k = int(flat.numel() * sparsity)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    return scores <= kth_smallest(flat, min(k, flat.numel() - 1))


def kth_smallest(flat: torch.Tensor, index: int) -> torch.Tensor:
    """``torch.sort(flat).values[index]`` by a partition (``kthvalue``): the same float, NaN last."""
    return torch.kthvalue(flat, index + 1).values


@dataclass(frozen=True)
class Measured:
    """Sparsity measured on one weight matrix."""

    numel: int
    zeros: int
    nm_ok: bool | None  # None for unstructured targets

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


def measure(weight: torch.Tensor, target: Target) -> Measured:
    """Count zeros, and for N:M targets check every group has at least N zeros."""
    w = weight.detach().reshape(weight.shape[0], -1)
    zeros = int((w == 0).sum())
    nm_ok = None
    if target.is_nm:
        cols = w.shape[1]
        if cols % target.m:
            nm_ok = False
        else:
            per_group = (w == 0).reshape(w.shape[0], cols // target.m, target.m).sum(-1)
            nm_ok = bool((per_group >= target.n).all())
    return Measured(w.numel(), zeros, nm_ok)


def tolerance(target: Target, row_len: int) -> float:
    """Allowed |measured - target| for one layer.

    0.1 percentage point, plus the rounding a method cannot avoid when it picks a whole
    number of weights per row (Wanda keeps exactly int(p * d_in) per row, so on a 128-wide
    layer 70% lands at 69.5%).
    """
    return 0.001 + (1.0 / row_len if row_len else 0.0)


def check(measured: Measured, target: Target, row_len: int) -> str | None:
    """Return why a layer misses its target, or None when it is within tolerance."""
    if target.is_nm:
        if not measured.nm_ok:
            return f"breaks {target} in at least one group of {target.m}"
        return None
    diff = measured.sparsity - target.sparsity
    tol = tolerance(target, row_len)
    if abs(diff) > tol:
        return f"sparsity {measured.sparsity:.4f} misses target {target.sparsity:g} by more than {tol:.4f}"
    return None
