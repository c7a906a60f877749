"""The decoder-LM family: any Hugging Face causal LM, its decoder blocks pruned in order.

0. Layouts: GPT-2's transposed ``Conv1D`` and fused mixture-of-experts modules (3-D
   parameters) are shown to the loop as ``nn.Linear`` layers over the same storage
   (:mod:`harness.drivers.layouts`, :mod:`harness.drivers.moe`) and restored after.
1. Capture: every block is replaced by a catcher that records its full positional and keyword
   arguments (hidden states, attention mask, position ids, ``position_embeddings``, cache
   position, ALiBi) for every calibration batch, so each block is later replayed with its own
   (sliding-window and global layers differ); the last catcher stops the forward pass.
2. For each block (a :class:`~harness.drivers.loop.Unit`), on the compute device: forward hooks
   on its prunable Linear layers gather X^T X (one accumulator per distinct input tensor, so
   q/k/v and gate/up share one Hessian; an expert's from the tokens routed to it) from the
   block's activations; every layer is pruned; the pruned block is re-run to produce the next
   block's inputs. Only one block sits on the device at a time.

A method with ``stats = "cross"`` also gets each layer's inputs in the dense model: the adapter
carries a second stream of hidden states through the blocks with the method's
``dense_weights()`` swapped in.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from harness.core.context import swap_weights
from harness.core.method import LayerMethod, LayerReport
from harness.core.spec import LayerSelection
from harness.core.target import Target
from harness.drivers.hooks import NumericalError, StatsCollector, to_device
from harness.drivers.layouts import BlockShare, View, block_share, prunable_view
from harness.drivers.loop import Adapter, Progress, Unit, run_loop
from harness.drivers.moe import MIN_EXPERT_TOKENS, RoutedStats, annotate
from harness.models.blocks import find_blocks

log = logging.getLogger(__name__)


class _StopForward(Exception):
    pass


class BlockStandIn(nn.Module):
    """A module that stands in a decoder block's place while holding the block out of the module
    tree (``model.to()`` must not move, or materialize, it: a streamed model's blocks are on the
    meta device), and passes attribute reads through to it (model code reads e.g. a layer's
    ``attention_type``)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["block"], name)


class _Catcher(BlockStandIn):
    """Stands in for one block while block inputs are captured: records (args, kwargs) of each call.

    Every block gets one, so each records the arguments the model passes to *it* (Gemma's and
    Qwen2's sliding-window and global layers get different masks, Gemma3 different rotary
    tables). A catcher returns the hidden states unchanged, in the structure the real block
    returns (learnt from block 0 on the first batch); the last one stops the forward.
    """

    def __init__(self, block: nn.Module, last: bool, template: dict) -> None:
        super().__init__(block)
        self.last, self.template = last, template
        self.calls: list[tuple[tuple, dict]] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        if self.last:
            raise _StopForward
        if "out" not in self.template:  # block 0, first batch: how does a block return?
            self.template["out"] = self.block(*args, **kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        out = self.template["out"]
        return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden


def prunable_layers(block: nn.Module, prefix: str, selection: LayerSelection) -> dict[str, nn.Linear]:
    """Linear layers inside one block, by full dotted name, filtered by the suite's regexes.

    Routers stay dense: a Linear sitting directly on a mixture-of-experts module (one with an
    ``experts`` child), such as Mixtral's ``gate`` in older layouts or Qwen2-MoE's
    ``shared_expert_gate``, is not pruned. Inside :func:`prunable_view`, Conv1D layers and
    experts are Linear layers too.
    """
    moe = {sub for sub, mod in block.named_modules() if isinstance(getattr(mod, "experts", None), nn.Module)}
    out = {}
    for sub, mod in block.named_modules():
        if not isinstance(mod, nn.Linear) or sub.rpartition(".")[0] in moe:
            continue
        name = f"{prefix}.{sub}"
        if selection.targets and not any(re.search(p, name) for p in selection.targets):
            continue
        if any(re.search(p, name) for p in selection.ignore):
            continue
        out[name] = mod
    return out


def first_output(out: Any) -> torch.Tensor:
    """A block's hidden states: the first element of a tuple output, or the output itself."""
    return out[0] if isinstance(out, (tuple, list)) else out


def with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """Replace the hidden states (first positional, or the ``hidden_states`` keyword)."""
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def capture_inputs(
    model: nn.Module, batches: list[torch.Tensor], device: torch.device
) -> list[list[tuple[tuple, dict]]]:
    """Run the model through its blocks (each replaced by a :class:`_Catcher`) for each batch and
    return every block's (args, kwargs) per batch: ``calls[block][batch]``."""
    path, blocks = find_blocks(model)
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    attr = path.rsplit(".", 1)[-1]
    template: dict = {}
    catchers = [_Catcher(b, i == len(blocks) - 1, template) for i, b in enumerate(blocks)]
    setattr(parent, attr, nn.ModuleList(catchers))  # model.to() below moves only non-block parts
    try:
        model.to(device)
        blocks[0].to(device)  # it runs once, to show how a block returns
        with torch.no_grad():
            for ids in batches:
                try:
                    model(input_ids=ids.to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        setattr(parent, attr, blocks)
        if device.type != "cpu":
            setattr(parent, attr, nn.ModuleList())
            model.to("cpu")
            setattr(parent, attr, blocks)
            blocks[0].to("cpu")
    for i, c in enumerate(catchers):
        if len(c.calls) != len(batches):
            raise RuntimeError(f"block {i} was not reached for every calibration batch")
    return [c.calls for c in catchers]


def _moved(obj: Any, device: torch.device, memo: dict[int, tuple[Any, Any]]) -> Any:
    """``to_device`` that moves each distinct tensor once (blocks share masks and rotary tables)."""
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = (obj, obj.to(device))
        return memo[id(obj)][1]
    if isinstance(obj, (tuple, list)):
        return type(obj)(_moved(o, device, memo) for o in obj)
    if isinstance(obj, dict):
        return {k: _moved(v, device, memo) for k, v in obj.items()}
    return obj


class LMAdapter(Adapter):
    """Decoder blocks as units; calibration token batches replayed block by block.

    Args:
        batches: calibration token ids, each (batch, seqlen).
        offload: keep activations on the CPU between blocks (default: when ``device`` is a GPU).
        on_block_output: test hook, called with each block's outputs (pruned block).
        view: the :func:`~harness.drivers.layouts.prunable_view` the model is in (Conv1D, experts).
        min_expert_tokens: an expert routed fewer calibration tokens gets identity statistics.
    """

    def __init__(self, model: nn.Module, batches: list[torch.Tensor], method: LayerMethod, *,
                 device: torch.device | str = "cpu", selection: LayerSelection = LayerSelection(),
                 offload: bool | None = None,
                 on_block_output: Callable[[int, list[torch.Tensor]], None] | None = None,
                 view: View | None = None, min_expert_tokens: int = MIN_EXPERT_TOKENS) -> None:
        self.model, self.batches, self.method = model, batches, method
        self.device = torch.device(device)
        path, self.blocks = find_blocks(model)
        self.layers_per_block = [prunable_layers(b, f"{path}.{i}", selection) for i, b in enumerate(self.blocks)]
        self.view = view or View()
        self.min_expert_tokens = min_expert_tokens
        self.expert_tokens: dict[str, int] = {}  # expert layer -> calibration tokens routed to it
        self.block_calls: list[list[tuple[tuple, dict]] | None] = []  # per block, per batch: its own (args, kwargs)
        # Activations (and the replayed kwargs) wait on the CPU between blocks when the compute
        # device is a GPU: only one block and one batch of activations occupy device memory.
        offload = self.device.type != "cpu" if offload is None else offload
        self.home = torch.device("cpu") if offload else self.device
        self.on_block_output = on_block_output
        self.calls: list[tuple[tuple, dict]] = []
        self.dense_calls: list[tuple[tuple, dict]] | None = None
        self.dense_outs: list[torch.Tensor] | None = None
        self.mode = "none"

    def begin(self, mode: str) -> None:
        self.mode = mode
        if mode != "none" and not self.batches:
            raise ValueError(f"method '{self.method.name}' needs calibration batches")
        if mode == "cross" and self.view.experts:
            raise ValueError(f"method '{self.method.name}' compares each layer's inputs in the dense and the pruned "
                             f"model token by token; in a mixture-of-experts model the two route tokens to different "
                             f"experts, so it is not supported here")
        calls = capture_inputs(self.model, self.batches, self.device) if self.batches else []
        memo: dict[int, tuple[Any, Any]] = {}  # one copy of each tensor the blocks share
        self.block_calls = [[(_moved(a, self.home, memo), _moved(k, self.home, memo)) for a, k in per_block]
                            for per_block in calls]
        self.calls = self.block_calls[0] if self.block_calls else []
        self.dense_calls = list(self.calls) if mode == "cross" else None  # block 0 sees the same inputs
        self.use_cache = getattr(self.model.config, "use_cache", None)

    def weights(self) -> dict[str, nn.Module]:
        return {n: m for layers in self.layers_per_block for n, m in layers.items()}

    def units(self) -> Iterator[Unit]:
        for i, layers in enumerate(self.layers_per_block):
            yield Unit(i, layers)

    def enter(self, unit: Unit) -> None:
        self.blocks[unit.index].to(self.device)
        self.dense_outs = None

    def _run(self, block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        return first_output(block(*to_device(args, self.device), **to_device(kwargs, self.device))).to(self.home)

    def gather(self, unit: Unit, hooked: dict[str, nn.Module]) -> StatsCollector:
        """Replay the calibration batches through the unit's block with hooks on ``hooked``."""
        block = self.blocks[unit.index]
        collector = RoutedStats(hooked, self.mode, self.view.experts, self.min_expert_tokens)
        self.dense_outs = [] if self.dense_calls is not None else None
        for j, (args, kwargs) in enumerate(self.calls):
            if self.dense_calls is not None:
                collector.phase = "dense"
                with swap_weights(unit.layers, self.method.dense_weights()):
                    self.dense_outs.append(self._run(block, *self.dense_calls[j]))
                collector.phase = "sparse"
            block(*to_device(args, self.device), **to_device(kwargs, self.device))
            collector.end_forward()
        collector.remove()
        self.expert_tokens.update({n: collector.tokens(n) for n in hooked if n in self.view.experts})
        return collector

    def leave(self, unit: Unit) -> None:
        i, block = unit.index, self.blocks[unit.index]
        if self.calls:  # the pruned block's outputs are the next block's inputs
            outs = [self._run(block, args, kwargs) for args, kwargs in self.calls]
            if not all(torch.isfinite(o).all() for o in outs):
                raise NumericalError(f"non-finite activations after pruned block {i}")
            if self.on_block_output is not None:
                self.on_block_output(i, outs)
            nxt = self.block_calls[i + 1] if i + 1 < len(self.block_calls) else []  # the next block's own kwargs
            self.block_calls[i] = None
            self.calls = [with_hidden(args, kwargs, o) for o, (args, kwargs) in zip(outs, nxt)]
            if self.dense_calls is not None:
                if self.dense_outs is None:  # a block without prunable layers: replay it dense
                    self.dense_outs = [self._run(block, a, k) for a, k in self.dense_calls]
                self.dense_calls = [with_hidden(a, k, o) for o, (a, k) in zip(self.dense_outs, nxt)]
        if self.device.type != "cpu":
            block.to("cpu")
            self.view.sync(i)  # expert and Conv1D weights back in their own parameters: one copy each

    def finish(self) -> None:
        if self.use_cache is not None:
            self.model.config.use_cache = self.use_cache


def prune_sequential(
    model: nn.Module,
    batches: list[torch.Tensor],
    method: LayerMethod,
    target: Target,
    *,
    device: torch.device | str = "cpu",
    selection: LayerSelection = LayerSelection(),
    measure_error: bool = True,
    offload: bool | None = None,
    progress: Progress | None = None,
    on_block_output: Callable[[int, list[torch.Tensor]], None] | None = None,
    layer_targets: dict[str, Target] | None = None,
    min_expert_tokens: int = MIN_EXPERT_TOKENS,
) -> list[LayerReport]:
    """Prune a decoder LM in place, block by block, through the one loop; one report per layer.

    See :class:`LMAdapter` for ``batches``, ``offload``, ``on_block_output`` and
    ``min_expert_tokens`` and :func:`harness.drivers.loop.run_loop` for the rest. Expert layers'
    reports carry ``expert_tokens`` (and ``expert_fallback``; :mod:`harness.drivers.moe`).
    """
    path, blocks = find_blocks(model)
    with prunable_view(path, blocks) as view:
        adapter = LMAdapter(model, batches, method, device=device, selection=selection, offload=offload,
                            on_block_output=on_block_output, view=view, min_expert_tokens=min_expert_tokens)
        reports = run_loop(adapter, method, target, measure_error=measure_error, layer_targets=layer_targets,
                           progress=progress)
    annotate(reports, adapter.expert_tokens, min_expert_tokens)
    return reports


def lm_block_share(model: nn.Module, reports: list) -> BlockShare:
    """How much of the decoder blocks' matrix parameters ``reports`` pruned (see :func:`block_share`)."""
    path, blocks = find_blocks(model)
    return block_share(path, blocks, reports)
