"""The decoder-LM family: any Hugging Face causal LM, its decoder blocks pruned in order.

1. Capture: block 0 is wrapped by a catcher that records its full positional and keyword
   arguments (hidden states, attention mask, position ids, ``position_embeddings``, cache
   position) for every calibration batch and stops the forward pass.
2. For each block (a :class:`~harness.drivers.loop.Unit`), on the compute device: forward hooks
   on its prunable Linear layers gather X^T X (one accumulator per distinct input tensor, so
   q/k/v and gate/up share one Hessian) from the block's activations; every layer is pruned;
   the pruned block is re-run to produce the next block's inputs. Only one block sits on the
   device at a time.

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
from harness.drivers.loop import Adapter, Progress, Unit, run_loop

log = logging.getLogger(__name__)

# Where decoder blocks live in the common families; anything else is found by search.
_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers")


class _StopForward(Exception):
    pass


class _Catcher(nn.Module):
    """Stands in for block 0: records (args, kwargs) of each call, then stops the forward."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.calls: list[tuple[tuple, dict]] = []

    def __getattr__(self, name: str) -> Any:
        # Model code reads attributes of its layers (e.g. ``attention_type``); pass them through.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("block"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        raise _StopForward


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (dotted path, ModuleList) of the decoder blocks."""
    for path in _BLOCK_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return path, obj
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n_layers is None or len(mod) == n_layers):
            if len({type(m) for m in mod}) == 1:
                return name, mod
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: no single list of layers")


def prunable_layers(block: nn.Module, prefix: str, selection: LayerSelection) -> dict[str, nn.Linear]:
    """Linear layers inside one block, by full dotted name, filtered by the suite's regexes."""
    out = {}
    for sub, mod in block.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        name = f"{prefix}.{sub}"
        if selection.targets and not any(re.search(p, name) for p in selection.targets):
            continue
        if any(re.search(p, name) for p in selection.ignore):
            continue
        out[name] = mod
    return out


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """Replace the hidden states (first positional, or the ``hidden_states`` keyword)."""
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def capture_inputs(
    model: nn.Module, batches: list[torch.Tensor], device: torch.device
) -> list[tuple[tuple, dict]]:
    """Run the model up to block 0 for each batch and return block 0's (args, kwargs) per batch."""
    path, blocks = find_blocks(model)
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    attr = path.rsplit(".", 1)[-1]
    catcher = _Catcher(blocks[0])
    setattr(parent, attr, nn.ModuleList([catcher]))  # model.to() below moves only non-block parts
    try:
        model.to(device)
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
    if len(catcher.calls) != len(batches):
        raise RuntimeError("block 0 was not reached for every calibration batch")
    return catcher.calls



class LMAdapter(Adapter):
    """Decoder blocks as units; calibration token batches replayed block by block.

    Args:
        batches: calibration token ids, each (batch, seqlen).
        offload: keep activations on the CPU between blocks (default: when ``device`` is a GPU).
        on_block_output: test hook, called with each block's outputs (pruned block).
    """

    def __init__(self, model: nn.Module, batches: list[torch.Tensor], method: LayerMethod, *,
                 device: torch.device | str = "cpu", selection: LayerSelection = LayerSelection(),
                 offload: bool | None = None,
                 on_block_output: Callable[[int, list[torch.Tensor]], None] | None = None) -> None:
        self.model, self.batches, self.method = model, batches, method
        self.device = torch.device(device)
        path, self.blocks = find_blocks(model)
        self.layers_per_block = [prunable_layers(b, f"{path}.{i}", selection) for i, b in enumerate(self.blocks)]
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
        calls = capture_inputs(self.model, self.batches, self.device) if self.batches else []
        self.calls = [(to_device(a, self.home), to_device(k, self.home)) for a, k in calls]
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
        return _first(block(*to_device(args, self.device), **to_device(kwargs, self.device))).to(self.home)

    def gather(self, unit: Unit, hooked: dict[str, nn.Module]) -> StatsCollector:
        """Replay the calibration batches through the unit's block with hooks on ``hooked``."""
        block = self.blocks[unit.index]
        collector = StatsCollector(hooked, self.mode)
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
        return collector

    def leave(self, unit: Unit) -> None:
        i, block = unit.index, self.blocks[unit.index]
        if self.calls:  # the pruned block's outputs are the next block's inputs
            outs = [self._run(block, args, kwargs) for args, kwargs in self.calls]
            if not all(torch.isfinite(o).all() for o in outs):
                raise NumericalError(f"non-finite activations after pruned block {i}")
            if self.on_block_output is not None:
                self.on_block_output(i, outs)
            self.calls = [_with_hidden(args, kwargs, o) for o, (args, kwargs) in zip(outs, self.calls)]
            if self.dense_calls is not None:
                if self.dense_outs is None:  # a block without prunable layers: replay it dense
                    self.dense_outs = [self._run(block, a, k) for a, k in self.dense_calls]
                self.dense_calls = [_with_hidden(a, k, o) for o, (a, k) in zip(self.dense_outs, self.dense_calls)]
        if self.device.type != "cpu":
            block.to("cpu")

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
) -> list[LayerReport]:
    """Prune a decoder LM in place, block by block, through the one loop; one report per layer.

    See :class:`LMAdapter` for ``batches``, ``offload`` and ``on_block_output`` and
    :func:`harness.drivers.loop.run_loop` for the rest.
    """
    adapter = LMAdapter(model, batches, method, device=device, selection=selection, offload=offload,
                        on_block_output=on_block_output)
    return run_loop(adapter, method, target, measure_error=measure_error, layer_targets=layer_targets,
                    progress=progress)
