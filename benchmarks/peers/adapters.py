"""Each peer's own per-matrix entry point, called as its library calls it for one layer.

Every adapter takes (W (rows, cols), H = XᵀX/n (cols, cols), target) and returns the pruned
weight, or raises :class:`Unavailable` with one line (not installed, no such entry point, a
target the peer does not offer). Nothing here reimplements a peer: an adapter builds the
objects the peer's function expects (an ``nn.Linear``, its statistics dictionary, a pattern
object) and calls it.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch

from harness.core.target import Target


class Unavailable(RuntimeError):
    """This peer cannot run this cell; the message is one line."""


def _linear(w: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = w.clone()
    return lin


def _import(what: str, attr: str):
    import importlib

    try:
        return getattr(importlib.import_module(what), attr)
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"{what}.{attr} not importable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")


# --- llm-compressor 0.14: modifiers/pruning/{sparsegpt/sgpt_sparsify,wanda/wanda_sparsify}.sparsify_weight,
# and the magnitude modifier's "unstructured" mask creator -----------------------------------------------

def llmc_sparsegpt(w: torch.Tensor, h: torch.Tensor, t: Target) -> torch.Tensor:
    fn = _import("llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify", "sparsify_weight")
    lin = _linear(w)
    _loss, pruned = fn(lin, {lin: h.clone()}, t.sparsity, t.n, t.m, block_size=128, dampening_frac=0.01,
                       preserve_sparsity_mask=False)
    return pruned


def llmc_wanda(w: torch.Tensor, h: torch.Tensor, t: Target) -> torch.Tensor:
    fn = _import("llmcompressor.modifiers.pruning.wanda.wanda_sparsify", "sparsify_weight")
    lin = _linear(w)
    return fn(lin, {lin: torch.diagonal(h).clone()}, t.sparsity, t.n, t.m)


def llmc_magnitude(w: torch.Tensor, h: torch.Tensor, t: Target) -> torch.Tensor:
    if t.is_nm:
        raise Unavailable("llm-compressor's magnitude modifier builds N:M masks only inside its schedule")
    factory = _import("llmcompressor.modifiers.pruning.utils.pytorch.mask_factory", "PruningMaskFactory")
    args_cls = _import("llmcompressor.modifiers.pruning.utils.pytorch.mask_factory", "PruningMaskCreatorArgs")
    param = torch.nn.Parameter(w.clone(), requires_grad=False)
    keep = factory.create_mask_creator("unstructured")(args_cls(parameter=param, sparsity=t.sparsity,
                                                                 scores=param.data.abs()))
    return param.data * keep


# --- neural-compressor 3.7: compression/pruner/patterns/{nxm,ninm}.fasterprune (its SparseGPT pruner) -----

def nc_sparsegpt(w: torch.Tensor, h: torch.Tensor, t: Target) -> torch.Tensor:
    if t.is_nm:
        cls = _import("neural_compressor.compression.pruner.patterns.ninm", "PytorchPatternNInM")
        pattern = object.__new__(cls)  # fasterprune reads only N and M (set by __init__ from a config)
        pattern.N, pattern.M = t.n, t.m
    else:
        cls = _import("neural_compressor.compression.pruner.patterns.nxm", "PytorchPatternNxM")
        pattern = object.__new__(cls)  # "1x1" unstructured; fasterprune reads target_sparsity_ratio
        pattern.target_sparsity_ratio = t.sparsity
    lin = _linear(w)
    gpt = SimpleNamespace(module=lin, dev=w.device, rows=w.shape[0], columns=w.shape[1], H=h.clone())
    pattern.fasterprune(gpt)
    return lin.weight.data


# --- sparsekit 0.1.5: pruners.sparsegpt.sparsegpt (N:M only), pruners.obd.obd (per scope) ----------------

def sk_sparsegpt(w: torch.Tensor, h: torch.Tensor, t: Target) -> torch.Tensor:
    if not t.is_nm or 2 * t.n != t.m:
        raise Unavailable("sparsekit's sparsegpt prunes half of each scope (N:M with N = M/2) only")
    fn = _import("sparsekit.pruners.sparsegpt", "sparsegpt")
    return fn(w, h, block_size=1, scope_size=t.m, blocksize=128, damp=0.01)


def sk_wanda(w: torch.Tensor, h: torch.Tensor, t: Target) -> torch.Tensor:
    """OBD scores w²·H_jj rank like Wanda's |w|·sqrt(H_jj); one scope per row keeps the rest."""
    fn = _import("sparsekit.pruners.obd", "obd")
    cols = w.shape[1]
    if t.is_nm:
        return fn(w, h, scope_size=t.m, num_keep=t.m - t.n)
    return fn(w, h, scope_size=cols, num_keep=cols - int(cols * t.sparsity))


PEERS: dict[str, dict[str, Callable]] = {
    "llm-compressor": {"sparsegpt": llmc_sparsegpt, "wanda": llmc_wanda, "magnitude": llmc_magnitude},
    "neural-compressor": {"sparsegpt": nc_sparsegpt},
    "sparsekit": {"sparsegpt": sk_sparsegpt, "wanda": sk_wanda},
}
