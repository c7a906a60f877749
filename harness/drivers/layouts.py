"""Weight layouts that are not ``nn.Linear``, shown to the prune loop as ``nn.Linear`` while it runs.

- GPT-2's ``Conv1D`` stores its weight transposed, (d_in, d_out): it is replaced by an
  ``nn.Linear`` whose weight is the transposed view (d_out, d_in) of the same storage, so
  methods prune in the (out, in) orientation (N:M groups run along the inputs) and the
  result lands in the Conv1D weight.
- A fused mixture-of-experts module (3-D parameters) is replaced by
  :class:`harness.drivers.moe.UnfusedExperts`: one Linear per expert matrix.

:func:`prunable_view` swaps them in for the loop and restores the original modules after, so
the model saves and reloads with its own layout. :func:`layer_weight` reads any pruned layer's
weight as (d_out, d_in) from the restored model (for the sparsity gate), and
:func:`block_share` counts how much of the decoder blocks' matrix parameters the reports cover.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.drivers.moe import UnfusedExperts, expert_weight, is_fused_experts


def _is_conv1d(mod: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers absent: no Conv1D anywhere
        return False
    return isinstance(mod, Conv1D)


class TransposedConv1D(nn.Linear):
    """An nn.Linear over a Conv1D's storage: weight = conv.weight.T (d_out, d_in), the same bias Parameter."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__(conv.nx, conv.nf, bias=False, device="meta")
        self._conv = [conv]  # out of the module tree
        self.weight = nn.Parameter(conv.weight.data.T, requires_grad=conv.weight.requires_grad)
        self.bias = conv.bias  # the same Parameter: moves with the block, nothing to write back

    def sync(self) -> None:
        """Write the weight into the Conv1D if it lives elsewhere (after .to(device)), then view it again."""
        src = self._conv[0].weight.data.T  # (d_out, d_in) view
        w = self.weight
        if w.device != src.device or w.data_ptr() != src.data_ptr() or w.stride() != src.stride():
            src.copy_(w.data)
            w.data = src


@dataclass
class View:
    """The modules swapped in by :func:`prunable_view`: per block index, (parent, attribute, original, stand-in)."""

    swaps: dict[int, list[tuple[nn.Module, str, nn.Module, nn.Module]]] = field(default_factory=dict)
    experts: set[str] = field(default_factory=set)  # full names of expert Linear layers

    def sync(self, block: int) -> None:
        """After block ``block`` went back to the CPU: expert and Conv1D weights back in the original parameters."""
        for _, _, _, stand_in in self.swaps.get(block, []):
            stand_in.sync()


def _stand_in(mod: nn.Module) -> nn.Module | None:
    if _is_conv1d(mod):
        return TransposedConv1D(mod)
    if is_fused_experts(mod):
        return UnfusedExperts(mod)
    return None


@contextmanager
def prunable_view(path: str, blocks: nn.ModuleList | list[nn.Module], first: int = 0) -> Iterator[View]:
    """Inside the block, each Conv1D and fused experts module of ``blocks`` (at dotted ``path``; the
    first has index ``first``) is replaced by its Linear stand-in; on exit the weights are synced
    back and the originals restored."""
    view = View()
    try:
        for i, block in enumerate(blocks, first):
            for sub, mod in list(block.named_modules()):
                new = _stand_in(mod) if sub else None
                if new is not None:
                    parent_name, _, attr = sub.rpartition(".")
                    parent = block.get_submodule(parent_name) if parent_name else block
                    setattr(parent, attr, new)
                    view.swaps.setdefault(i, []).append((parent, attr, mod, new))
                experts = new if new is not None else mod  # an UnfusedExperts already there: a view inside a view
                if isinstance(experts, UnfusedExperts):
                    view.experts.update(f"{path}.{i}.{sub}.{n}" for n, m in experts.named_modules() if isinstance(m, nn.Linear))
        yield view
    finally:
        for swaps in view.swaps.values():
            for parent, attr, original, stand_in in swaps:
                stand_in.sync()
                setattr(parent, attr, original)


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight of pruned layer ``name`` as the method saw it: (d_out, d_in) for Linear layers,
    Conv1D (transposed view) and experts (``<experts>.<e>.<kind>``, a view of the 3-D parameter);
    a Conv2d kernel as stored (callers flatten it C_in-major)."""
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        mod = None
    if mod is not None:
        return mod.weight.T if _is_conv1d(mod) else mod.weight
    parent, e, kind = (name.rsplit(".", 2) + ["", ""])[:3]
    try:
        experts = model.get_submodule(parent)
    except AttributeError:
        experts = None
    if experts is None or not is_fused_experts(experts) or not e.isdigit():
        raise ValueError(f"no layer '{name}' in {type(model).__name__}: neither a module nor an expert matrix")
    return expert_weight(experts, int(e), kind)


@dataclass(frozen=True)
class BlockShare:
    """How much of the decoder blocks' matrix parameters (every parameter with 2+ dimensions but
    stacked biases) was pruned."""

    pruned: int  # parameters in the pruned layers
    total: int  # parameters in all matrices of the decoder blocks (routers and fused experts included, biases not)
    unpruned: tuple[str, ...]  # the largest matrices left out, block index as '*', largest first

    @property
    def share(self) -> float:
        return self.pruned / self.total if self.total else 0.0


_FUSED_PARAMS = {"gate_proj": ("gate_up_proj",), "up_proj": ("gate_up_proj", "up_proj"), "down_proj": ("down_proj",)}


def block_share(path: str, blocks: nn.ModuleList, reports: list[Any]) -> BlockShare:
    """The share of the blocks' matrix parameters covered by ``reports`` (LayerReports or their dicts)."""
    covered: dict[str, int] = {}  # parameter name -> pruned elements
    pruned = 0
    for rep in reports:
        name, rows, cols = (rep["name"], rep["rows"], rep["cols"]) if isinstance(rep, dict) else (rep.name, rep.rows, rep.cols)
        if not name.startswith(path + "."):
            continue
        pruned += rows * cols
        covered[f"{name}.weight"] = covered.get(f"{name}.weight", 0) + rows * cols
        parent, _, kind = (name.rsplit(".", 2) + ["", ""])[:3]  # an expert matrix: a slice of <experts>.<param>
        for param in _FUSED_PARAMS.get(kind, ()):
            covered[f"{parent}.{param}"] = covered.get(f"{parent}.{param}", 0) + rows * cols
    total, left = 0, {}
    for i, block in enumerate(blocks):
        for pname, p in block.named_parameters():
            if p.dim() < 2 or pname.endswith("bias"):  # gpt-oss stacks its experts' biases (E, d_out)
                continue
            total += p.numel()
            full = f"{path}.{i}.{pname}"
            if covered.get(full, 0) < p.numel():
                key = re.sub(rf"^{re.escape(path)}\.\d+\.", f"{path}.*.", full)
                left[key] = left.get(key, 0) + p.numel() - min(covered.get(full, 0), p.numel())
    unpruned = tuple(f"{k} ({n:,} params)" for k, n in sorted(left.items(), key=lambda kv: -kv[1]))
    return BlockShare(min(pruned, total), total, unpruned)
