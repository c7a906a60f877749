"""Mixture-of-experts layers, pruned expert by expert.

transformers 5 keeps all experts of a layer in one module with 3-D parameters (``gate_up_proj``
(E, 2I, H), ``down_proj`` (E, H, I); gpt-oss stores them transposed, (E, H, 2I) and (E, I, H),
with gate and up interleaved and biases). While a model is pruned, :class:`UnfusedExperts`
stands in for such a module: one ``nn.Linear`` per expert matrix (``experts.3.gate_proj``,
``experts.3.up_proj``, ``experts.3.down_proj``), each weight a view of its slice of the fused
parameter, and a forward that routes each token to its top-k experts exactly as the fused
module does. So:

- each expert's statistics come from the tokens routed to it, and its gate and up projections
  share one Hessian (one input);
- the router stays dense: it is not an expert matrix (and ``prunable_layers`` skips Linear
  layers sitting directly on the MoE block, such as Qwen2-MoE's ``shared_expert_gate``);
- an expert that saw fewer than ``min_tokens`` calibration tokens gets identity statistics
  (H = I, or a diagonal of ones): every method then ranks its weights by |W| with no
  compensation, i.e. magnitude pruning. Its layer report says so (``expert_fallback``), and
  every expert layer's report carries ``expert_tokens``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.core.method import LayerReport, LayerStats
from harness.drivers.hooks import StatsCollector

MIN_EXPERT_TOKENS = 16  # fewer routed calibration tokens than this: identity statistics (magnitude)
FALLBACK = "identity statistics (magnitude ranking, no compensation)"
KINDS = ("gate_proj", "up_proj", "down_proj")  # the names of one expert's matrices


def is_fused_experts(mod: nn.Module) -> bool:
    """A transformers ``@use_experts_implementation`` module: all experts in 3-D parameters."""
    down = getattr(mod, "down_proj", None)
    return (isinstance(down, torch.Tensor) and down.dim() == 3 and hasattr(mod, "is_transposed")
            and hasattr(mod, "has_gate"))


def _matrix(experts: nn.Module, e: int, kind: str, *, bias: bool = False) -> torch.Tensor | None:
    """Expert ``e``'s ``kind`` matrix as a (d_out, d_in) view of the fused parameter (or its bias, (d_out,))."""
    gated = experts.has_gate
    param = "down_proj" if kind == "down_proj" else ("gate_up_proj" if gated else "up_proj")
    if bias:
        if not getattr(experts, "has_bias", False):
            return None
        full = getattr(experts, f"{param}_bias").data[e]  # (d_out,)
    else:
        full = getattr(experts, param).data[e]
        full = full.T if experts.is_transposed else full  # (d_out, d_in)
    if kind == "down_proj" or not gated:
        return full
    half = full.shape[0] // 2
    first = kind == "gate_proj"
    if getattr(experts, "is_concatenated", True):  # [gate; up]
        return full[:half] if first else full[half:]
    return full[0::2] if first else full[1::2]  # interleaved [g0, u0, g1, u1, ...]


def expert_weight(experts: nn.Module, e: int, kind: str) -> torch.Tensor:
    """Expert ``e``'s ``kind`` (gate_proj, up_proj, down_proj) weight as a (d_out, d_in) view."""
    if kind not in expert_kinds(experts):
        raise ValueError(f"{type(experts).__name__} has no expert matrix '{kind}' (it has {', '.join(expert_kinds(experts))})")
    return _matrix(experts, e, kind)


def expert_kinds(experts: nn.Module) -> tuple[str, ...]:
    return KINDS if experts.has_gate else ("up_proj", "down_proj")


def _view_linear(weight: torch.Tensor, bias: torch.Tensor | None, grad: bool) -> nn.Linear:
    """An nn.Linear whose parameters are the given views (no copy)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias, requires_grad=grad)
    return lin


class UnfusedExperts(nn.Module):
    """Stands in for a fused experts module while it is pruned; same inputs, same outputs.

    Children ``"0"``, ``"1"``, ... hold each expert's ``gate_proj``/``up_proj``/``down_proj``
    Linear layers, whose weights are views of the fused parameters: pruning them prunes the
    fused module. :meth:`sync` writes them back after a device round trip.
    """

    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        self._fused = [fused]  # a list: kept out of the module tree, so .to() and named_modules skip it
        self.num_experts = int(fused.down_proj.shape[0])
        for e in range(self.num_experts):
            expert = nn.Module()
            for kind in expert_kinds(fused):
                expert.add_module(kind, _view_linear(_matrix(fused, e, kind), _matrix(fused, e, kind, bias=True),
                                                     fused.down_proj.requires_grad))
            self.add_module(str(e), expert)
        if getattr(fused, "has_post_expert_norm", False):
            self.post_expert_norm = fused.post_expert_norm

    @property
    def fused(self) -> nn.Module:
        return self._fused[0]

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
                ) -> torch.Tensor:
        """hidden_states (T, H); top_k_index and top_k_weights (T, k): the fused modules' interface."""
        if top_k_weights.shape != top_k_index.shape:
            raise ValueError(f"{type(self.fused).__name__}: routing weights {tuple(top_k_weights.shape)} do not match "
                             f"the expert indices {tuple(top_k_index.shape)}; this expert layout is not supported")
        fused, out = self.fused, torch.zeros_like(hidden_states)
        for e in range(self.num_experts):
            expert = getattr(self, str(e))
            tok, pos = torch.where(top_k_index == e)  # (n_e,) token rows, their top-k slots
            x = hidden_states[tok]  # (n_e, H); every expert runs, so its hooks see even zero tokens
            if fused.has_gate:
                g, u = expert.gate_proj(x), expert.up_proj(x)  # (n_e, I) each
                h = torch.cat([g, u], -1) if getattr(fused, "is_concatenated", True) else torch.stack([g, u], -1).flatten(-2)
                h = fused._apply_gate(h)  # (n_e, I)
            else:
                h = fused.act_fn(expert.up_proj(x))
            y = expert.down_proj(h)  # (n_e, H)
            if getattr(fused, "has_post_expert_norm", False):
                y = self.post_expert_norm(y)
            out.index_add_(0, tok, (y * top_k_weights[tok, pos, None]).to(out.dtype))
        return out

    def sync(self) -> None:
        """Write each expert Linear's weight into the fused parameter if it lives elsewhere (after
        ``.to(device)`` and back), then make it a view again: one copy of every expert in memory."""
        for e in range(self.num_experts):
            expert = getattr(self, str(e))
            for kind in expert_kinds(self.fused):
                lin = getattr(expert, kind)
                for attr, src in (("weight", _matrix(self.fused, e, kind)),
                                  ("bias", _matrix(self.fused, e, kind, bias=True))):
                    param = getattr(lin, attr)
                    if src is None or param is None:
                        continue
                    if param.device != src.device or param.data_ptr() != src.data_ptr() or param.stride() != src.stride():
                        src.copy_(param.data)
                        param.data = src


class RoutedStats(StatsCollector):
    """A :class:`StatsCollector` that knows which layers are experts: their token counts, and
    identity statistics for an expert that saw fewer than ``min_tokens`` tokens."""

    def __init__(self, layers: dict[str, nn.Module], mode: str, experts: set[str], min_tokens: int) -> None:
        super().__init__(layers, mode)
        self.experts, self.min_tokens = experts, min_tokens

    def tokens(self, name: str) -> int:
        return self.count[self.group_of[name]]

    def starved(self, name: str) -> bool:
        return name in self.experts and self.tokens(name) < self.min_tokens

    def stats(self, name: str) -> LayerStats:
        if not self.starved(name):
            return super().stats(name)
        acc = self.acc[self.group_of[name]]
        n = self.tokens(name)
        if self.mode == "diag":
            return LayerStats(diag=torch.ones_like(acc), n=n)
        eye = torch.eye(acc.shape[0], dtype=acc.dtype, device=acc.device)
        stats = LayerStats.from_hessian(eye, n=n)
        if self.mode == "cross":
            stats.cross = eye.clone()
        return stats


def annotate(reports: list[LayerReport], tokens: dict[str, int], min_tokens: int) -> None:
    """Add ``expert_tokens`` (and ``expert_fallback`` when starved) to expert layers' reports."""
    for rep in reports:
        if rep.name in tokens:
            n = tokens[rep.name]
            extra: dict[str, Any] = {"expert_tokens": n}
            if n < min_tokens:
                extra["expert_fallback"] = f"{FALLBACK}: {n} < {min_tokens} calibration tokens"
            rep.info = {**rep.info, **extra}


def moe_summary(reports: list[Any], min_tokens: int = MIN_EXPERT_TOKENS) -> dict[str, Any] | None:
    """Tokens per expert of every MoE layer (from the reports' ``expert_tokens``), the experts that
    fell back to magnitude and the rule; None for a model without routed experts.

    ``reports`` are LayerReports or record["layers"] dicts; names are ``<experts>.<e>.<kind>``.
    """
    per_layer: dict[str, dict[int, int]] = {}
    for rep in reports:
        name, info = (rep["name"], rep["info"]) if isinstance(rep, dict) else (rep.name, rep.info)
        if "expert_tokens" not in info:
            continue
        layer, e, _ = name.rsplit(".", 2)
        per_layer.setdefault(layer, {})[int(e)] = int(info["expert_tokens"])
    if not per_layer:
        return None
    tokens = {layer: [counts.get(e) for e in range(max(counts) + 1)] for layer, counts in per_layer.items()}
    starved = {layer: [e for e, n in enumerate(row) if n is not None and n < min_tokens] for layer, row in tokens.items()}
    return {"tokens_per_expert": tokens, "min_tokens": min_tokens, "fallback": FALLBACK,
            "starved": {k: v for k, v in starved.items() if v}}
