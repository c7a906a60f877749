"""The pieces of the prune loop that every model family shares: statistics hooks and one layer's step.

- :class:`StatsCollector`: forward hooks that gather X^T X / n (or its diagonal, or I-OBS's
  cross-moment) per distinct input, so layers that read one tensor share one Hessian, and the
  input rows X themselves while there are no more of them than inputs (d_in).
- :func:`prune_layer`: call a :class:`~harness.core.method.LayerMethod` on one layer's weight
  as (d_out, d_in), check the result, write it back and report it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Callable

import torch
from torch import nn

from harness.core.method import LayerMethod, LayerReport, LayerStats
from harness.core.target import Target


class NumericalError(RuntimeError):
    """Non-finite activations or statistics: the cell fails instead of storing garbage."""


class MethodOutputError(RuntimeError):
    """A method returned something that is not a weight for the layer it was given (one line)."""


def _check_output(method: LayerMethod, name: str, w: torch.Tensor, result: Any) -> torch.Tensor:
    """The returned weight, if it has the layer's shape (d_out, d_in) exactly and a floating dtype.

    Checked on every layer before anything is written: a reshape would accept any weight of the
    same size (a transposed square or rectangular matrix, a flattened one) and scramble the layer.
    """
    new = getattr(result, "weight", None)
    if not isinstance(new, torch.Tensor):
        got = f"a weight of type {type(new).__name__}" if hasattr(result, "weight") else type(result).__name__
        raise MethodOutputError(f"{method.name} returned {got} for layer {name}; expected a PruneResult whose "
                                f"weight is a tensor of shape (d_out, d_in) = {tuple(w.shape)}")
    if tuple(new.shape) != tuple(w.shape):
        raise MethodOutputError(f"{method.name} returned a weight of shape {tuple(new.shape)} for layer {name}; "
                                f"expected (d_out, d_in) = {tuple(w.shape)}")
    if not new.is_floating_point():
        raise MethodOutputError(f"{method.name} returned a weight of dtype {str(new.dtype).replace('torch.', '')} "
                                f"for layer {name}; expected a floating-point weight (the layer is "
                                f"{str(w.dtype).replace('torch.', '')})")
    return new


def _fingerprint(t: Any) -> bytes | None:
    """blake2b of a tensor's bytes, read in place: a contiguous CPU tensor is not copied (a CUDA
    tensor is copied to the host once)."""
    if not isinstance(t, torch.Tensor):
        return None
    data = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()  # (numel * itemsize,) a view
    return hashlib.blake2b(data, digest_size=16).digest()


_STATISTICS = ("hessian", "diag", "cross")  # the LayerStats tensors a method is handed
_CHECKED = "_checked_after"  # attribute on the driver's LayerStats: {field: (tensor, digest)} after the last check


def _fingerprints(w: torch.Tensor, stats: LayerStats | None,
                  known: dict[str, tuple[Any, bytes | None]] | None = None) -> dict[str, tuple[Any, bytes | None]]:
    """Hashes of what a method is handed, to check afterwards that it was only read: key -> (tensor,
    digest). A statistic in ``known`` (the same tensor, hashed after the previous layer of its
    shared-input group) is not hashed again."""
    out = {"weight": (w, _fingerprint(w))}
    for k in _STATISTICS if stats is not None else ():
        t = getattr(stats, k)
        seen = (known or {}).get(k)
        out[k] = seen if seen is not None and seen[0] is t else (t, _fingerprint(t))
    return out


def _check_untouched(method: LayerMethod, name: str, before: dict, after: dict) -> None:
    """The weight and statistics a method was handed are read-only: the weight is measured against
    the result (reconstruction error), and layers that share an input share its Hessian."""
    changed = [k if k == "weight" else f"statistics ({k})" for k in before if before[k][1] != after[k][1]]
    if changed:
        raise MethodOutputError(f"{method.name} modified the {changed[0]} it was handed for layer {name} in place; "
                                f"a method must return a new tensor and leave its inputs unchanged")


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors inside args/kwargs (tuples, lists, dicts) to ``device``; others unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


class StatsCollector:
    """Forward hooks that gather X^T X (or only its diagonal) per distinct input.

    ``inputs`` optionally maps a layer name to a function that turns the layer's input tensor
    into the rows its (d_out, d_in) weight multiplies, (rows, d_in); the default flattens all
    but the last dimension (Linear). The vision driver passes unfolded patches for Conv2d.
    Layers share one accumulator when they read the same tensor through the same function
    (q/k/v and gate/up; two convolutions of one geometry on one input).

    In ``"cross"`` mode every calibration batch is replayed twice: first with ``phase =
    "dense"`` (the block holding its dense weights; each layer's input rows are kept), then
    with ``phase = "sparse"``, which accumulates X_s^T X_s and the cross-moment X_d^T X_s.

    Outside ``"diag"`` mode each group also keeps its input rows X (float32) while there are at
    most d_in of them, for :func:`relative_error` (rows x d_in x n instead of rows x d_in^2); past
    d_in they are dropped, never costing more memory than the Hessian. :meth:`stats` ends the
    accumulation: it divides the accumulators by n in place and returns one LayerStats per group.
    """

    def __init__(self, layers: dict[str, nn.Module], mode: str,
                 inputs: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> None:
        self.mode = mode  # "diag", "hessian" or "cross"
        self.inputs = dict(inputs or {})
        self.phase = "sparse"
        self.group_of: dict[str, int] = {}  # layer name -> accumulator index, in order of first use
        self.acc: list[torch.Tensor] = []
        self.cross: list[torch.Tensor] = []
        self.count: list[int] = []
        self.kept_rows: list[list[torch.Tensor] | None] = []  # per group: input rows (rows, d_in) while count <= d_in
        self._stats: dict[int, LayerStats] = {}  # per group, once read: the accumulators divided by n
        # inputs of the current forward, kept alive so that ``is`` cannot match a recycled tensor
        self._seen: list[tuple[torch.Tensor, Callable | None, int]] = []
        self._dense: dict[str, torch.Tensor] = {}  # layer name -> dense input rows of this batch
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]

    def _rows(self, name: str, x: torch.Tensor) -> torch.Tensor:
        to_rows = self.inputs.get(name)
        x = x.detach()
        return (to_rows(x) if to_rows is not None else x.reshape(-1, x.shape[-1])).float()  # (rows, d_in)

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            x = inputs[0]
            if self.phase == "dense":
                self._dense[name] = self._rows(name, x)
                return
            to_rows = self.inputs.get(name)
            for seen, seen_fn, gid in self._seen:  # same tensor, same transform: shared input
                if seen is x and seen_fn is to_rows:
                    self.group_of.setdefault(name, gid)
                    return
            flat = self._rows(name, x)
            gid = self.group_of.get(name)
            if gid in self._stats:
                raise RuntimeError(f"{name}: calibration inputs arrived after its statistics were read")
            if gid is None:
                gid = len(self.acc)
                d = flat.shape[1]
                shape = (d,) if self.mode == "diag" else (d, d)
                self.acc.append(torch.zeros(shape, dtype=torch.float32, device=x.device))
                if self.mode == "cross":
                    self.cross.append(torch.zeros(shape, dtype=torch.float32, device=x.device))
                self.count.append(0)
                self.kept_rows.append(None if self.mode == "diag" else [])
                self.group_of[name] = gid
            self._seen.append((x, to_rows, gid))
            if self.mode == "diag":
                self.acc[gid] += (flat * flat).sum(0)
            else:
                self.acc[gid].addmm_(flat.T, flat)
            # A NaN or inf in the inputs makes its feature's sum of squares NaN or inf, so the
            # accumulator's diagonal (d values) stands for a pass over the inputs (rows x d); a
            # finite overflow of x^2 is told apart by the full check.
            diagonal = self.acc[gid] if self.mode == "diag" else torch.diagonal(self.acc[gid])
            if not bool(torch.isfinite(diagonal).all()) and not bool(torch.isfinite(flat).all()):
                raise NumericalError(f"non-finite calibration activations entering {name}")
            if self.mode == "cross":
                dense = self._dense.get(name)
                if dense is None or dense.shape != flat.shape:
                    raise RuntimeError(f"{name}: no matching dense input for the cross-moment")
                self.cross[gid].addmm_(dense.T, flat)
            kept = self.kept_rows[gid]
            if kept is not None and self.count[gid] + flat.shape[0] <= flat.shape[1]:
                # a view of the layer's input would change with it should the model write to it later
                shares = flat.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
                kept.append(flat.clone() if shares else flat)
            elif kept is not None:
                self.kept_rows[gid] = None  # more rows than inputs: H is the cheaper form from here on
            self.count[gid] += flat.shape[0]

        return hook

    def end_forward(self) -> None:
        self._seen.clear()
        self._dense.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def groups(self) -> list[list[str]]:
        """Layer names grouped by shared input, in the order the forward pass first used them."""
        out: dict[int, list[str]] = {}
        for name, gid in sorted(self.group_of.items(), key=lambda kv: kv[1]):
            out.setdefault(gid, []).append(name)
        return list(out.values())

    def stats(self, name: str) -> LayerStats:
        """The statistics of ``name``'s group: one object for every layer of the group, built on
        the first call (the accumulators become the statistics in place; no more inputs after)."""
        gid = self.group_of[name]
        if gid in self._stats:
            return self._stats[gid]
        n = max(self.count[gid], 1)
        mat = self.acc[gid].div_(n)  # in place: no second (d_in, d_in) tensor
        if self.mode == "diag":
            stats = LayerStats(diag=mat, n=n)
        else:
            stats = LayerStats.from_hessian(mat, n=n)
            kept, self.kept_rows[gid] = self.kept_rows[gid], None
            stats.rows = torch.cat(kept) if kept else None  # (n, d_in)
            if self.mode == "cross":
                stats.cross = self.cross[gid].div_(n)
        self._stats[gid] = stats
        return stats


def relative_error(w_old: torch.Tensor, w_new: torch.Tensor, hessian: torch.Tensor | None = None,
                   rows: torch.Tensor | None = None) -> float:
    """||(W - W')X^T||^2 / ||W X^T||^2 over the layer's calibration inputs X (n, d_in).

    From the rows X themselves when given (two (d_out, d_in) @ (d_in, n) products), else from
    H = X^T X / n as tr(dW H dW^T) / tr(W H W^T) (two (d_out, d_in) @ (d_in, d_in) products): the
    same ratio, the 1/n cancels. The rows are the cheaper form while n < d_in.
    """
    w = w_old.float()
    dw = w - w_new.float()
    if rows is not None:
        num = (dw @ rows.T).square().sum()  # (d_out, n)
        den = (w @ rows.T).square().sum()
    elif hessian is not None:
        num = ((dw @ hessian) * dw).sum()
        den = ((w @ hessian) * w).sum()
    else:
        raise ValueError("relative_error needs the layer's Hessian or its input rows")
    return float(num / den) if float(den) > 0 else 0.0


def prune_layer(method: LayerMethod, name: str, mod: nn.Module, stats: LayerStats | None, target: Target,
               block: int) -> LayerReport:
    """Prune one layer in place and report it (error measured on the layer's calibration inputs).

    The method sees the weight as (d_out, d_in): a Conv2d kernel (C_out, C_in, k_h, k_w) is
    flattened C_in-major, the layout of its unfolded input patches, and its shape is noted.

    The method gets its own copy of ``stats`` without the input rows (the same tensors otherwise),
    so it can neither touch the rows nor rebind what this function measures with. The weight and
    statistics are hashed before and after the call; a statistic shared by a group (one LayerStats
    object from :meth:`StatsCollector.stats`) hashed after the previous layer of the group is not
    hashed again before the next, so a group of k layers costs k + 1 hashes of its Hessian, and a
    method that mutates it is still caught before the next layer reads it.
    """
    t0 = time.perf_counter()
    old = mod.weight.data
    w = old.reshape(old.shape[0], -1)  # (d_out, d_in); a view
    before = _fingerprints(w, stats, getattr(stats, _CHECKED, None))
    handed = dataclasses.replace(stats, rows=None) if stats is not None else None
    result = method.prune(name, w, handed, target)
    after = _fingerprints(w, stats)
    _check_untouched(method, name, before, after)
    if stats is not None:  # the statistics as checked, for the next layer of the group (not the weight)
        setattr(stats, _CHECKED, {k: v for k, v in after.items() if k != "weight"})
    new = _check_output(method, name, w, result).to(old.dtype)
    if not torch.isfinite(new).all():
        raise NumericalError(f"{method.name} produced non-finite weights in {name}")
    err = None
    if stats is not None and stats.hessian is not None:
        err = relative_error(w, new, stats.hessian, rows=stats.rows)
    elif not method.modifies_weights:
        err = 0.0
    rows, cols = w.shape
    if new is not w:
        old.copy_(new.reshape(old.shape))
    info = result.info if old.dim() == 2 else {**result.info, "shape": list(old.shape)}
    return LayerReport(name, block, rows, cols, err, time.perf_counter() - t0, info)
