"""Block streaming through the one prune loop, and perplexity the same way.

The model is a skeleton (:mod:`harness.models.stream`): everything outside the decoder blocks
loaded, every block on the meta device. :class:`StreamAdapter` is the decoder-LM adapter
(:class:`~harness.drivers.lm.LMAdapter`: the same capture, statistics, methods and propagation)
with three more steps per block: its tensors are read from disk just before its turn (its
Conv1D/expert stand-ins swapped in then, :func:`~harness.drivers.layouts.prunable_view`), and
after propagation the pruned block is handed to ``sink`` (which writes it out) and released back
to the meta device. Peak memory: the skeleton's embeddings and head, one block, and the
calibration activations (n_samples x seqlen x hidden, as in memory), independent of depth.

:func:`streamed_perplexity` runs the papers' protocol (:func:`harness.data.text.perplexity`) one
block at a time: every window through block i, then block i + 1; the final norm and head run in
the model's own forward with each block replaced by a replay of the last block's outputs. The
same batches in the same order give the same floats as the whole model in memory.

Not streamed (refused with one line, see :func:`stream_problem`): model-level methods, sparsity
profiles (OWL measures the whole dense model first), a global threshold (``scope: global``:
every weight before any is pruned) and cross statistics (the dense model's inputs beside the
pruned ones).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from harness.core.method import LayerMethod, LayerReport, ModelMethod
from harness.core.spec import LayerSelection
from harness.core.target import Target
from harness.data.text import Perplexity, eval_windows, perplexity_of, window_nll
from harness.drivers.hooks import to_device
from harness.drivers.layouts import layer_weight, prunable_view
from harness.drivers.lm import BlockStandIn, LMAdapter, capture_inputs, first_output, prunable_layers, with_hidden
from harness.drivers.loop import Progress, Unit, run_loop
from harness.drivers.moe import MIN_EXPERT_TOKENS, annotate
from harness.models.blocks import find_blocks
from harness.models.stream import TensorSource, load_tensors, release

Sink = Callable[[int, str, nn.Module], None]  # (block index, its state-dict prefix, the pruned block)


def stream_problem(method: Any, profile: Any = None) -> str | None:
    """Why ``method`` (with a sparsity ``profile``) cannot prune block by block, or None."""
    if isinstance(method, ModelMethod):
        return f"model-level method '{method.name}' trains the whole model at once"
    if profile is not None:
        return "a sparsity profile (OWL) measures the whole dense model before pruning"
    if method.target_scope() != "layer":
        return f"'{method.name}' with a global threshold needs every weight before it prunes any"
    if method.stats == "cross":
        return f"'{method.name}' compares each layer's inputs in the dense and the pruned model"
    return None


def open_skeleton(model: nn.Module, source: TensorSource) -> str:
    """Load everything outside the decoder blocks of skeleton ``model`` from ``source``; returns the blocks' path."""
    path, _ = find_blocks(model)
    load_tensors(model, source, skip=path)
    return path


def rest_state(model: nn.Module, path: str) -> dict[str, torch.Tensor]:
    """The skeleton's tensors outside the decoder blocks, by state-dict name."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(path + ".")}


class StreamAdapter(LMAdapter):
    """:class:`LMAdapter` over a skeleton: each block read before its turn, written and released after it."""

    def __init__(self, model: nn.Module, source: TensorSource, sink: Sink, batches: list[torch.Tensor],
                 method: LayerMethod, *, device: torch.device | str = "cpu",
                 selection: LayerSelection = LayerSelection(), offload: bool | None = None,
                 min_expert_tokens: int = MIN_EXPERT_TOKENS) -> None:
        super().__init__(model, batches, method, device=device, selection=selection, offload=offload,
                         min_expert_tokens=min_expert_tokens)
        self.source, self.sink, self.selection = source, sink, selection
        self.path, _ = find_blocks(model)
        self.opened: int | None = None
        self._view: Any = None  # the open block's prunable_view context

    def _open(self, i: int) -> None:
        if self.opened == i:
            return
        block = self.blocks[i]
        load_tensors(block, self.source, f"{self.path}.{i}")
        self._view = prunable_view(self.path, [block], first=i)
        self.view = self._view.__enter__()
        self.layers_per_block[i] = prunable_layers(block, f"{self.path}.{i}", self.selection)
        self.opened = i

    def close(self) -> None:
        """Restore the open block's own modules (after its last use, or on an error)."""
        if self._view is not None:
            view, self._view = self._view, None
            view.__exit__(None, None, None)

    def begin(self, mode: str) -> None:
        self._open(0)  # capture runs block 0 once to learn how a block returns
        super().begin(mode)
        # Past the capture nothing outside the blocks runs (the callers wrote those tensors out
        # first, :func:`rest_state`): embeddings and head leave memory for the whole loop.
        release(self.model, skip=self.path)

    def units(self) -> Iterator[Unit]:
        for i in range(len(self.blocks)):
            self._open(i)
            yield Unit(i, self.layers_per_block[i])

    def leave(self, unit: Unit) -> None:
        super().leave(unit)  # propagate through the pruned block (on a GPU: back on the CPU after)
        block = self.blocks[unit.index]
        self.close()
        if self.device.type != "cpu":
            block.to("cpu")
        self.sink(unit.index, f"{self.path}.{unit.index}", block)
        release(block)
        self.layers_per_block[unit.index] = {}
        self.opened = None


def prune_streamed(model: nn.Module, source: TensorSource, sink: Sink, batches: list[torch.Tensor],
                   method: LayerMethod, target: Target, *, device: torch.device | str = "cpu",
                   selection: LayerSelection = LayerSelection(), offload: bool | None = None,
                   progress: Progress | None = None,
                   min_expert_tokens: int = MIN_EXPERT_TOKENS) -> list[LayerReport]:
    """Prune skeleton ``model`` block by block (see :func:`~harness.drivers.lm.prune_sequential`,
    which this matches layer for layer); each pruned block goes to ``sink`` and is released.
    ``method.prepare`` sees the weights as meta tensors (shapes only). The tensors outside the
    blocks (embeddings, final norm, head) are released once the calibration inputs are captured:
    write them out before (:func:`rest_state`) if they are needed."""
    if why := stream_problem(method):
        raise ValueError(f"cannot stream this cell: {why}; set 'stream: false' on the model to load it whole")
    adapter = StreamAdapter(model, source, sink, batches, method, device=device, selection=selection,
                            offload=offload, min_expert_tokens=min_expert_tokens)
    try:
        reports = run_loop(adapter, method, target, measure_error=True, progress=progress)
    finally:
        adapter.close()
    annotate(reports, adapter.expert_tokens, min_expert_tokens)
    return reports


class BlockWeights:
    """``weight_of(name)`` for the sparsity gate over a skeleton: the block holding layer ``name``
    is read from ``source`` (the artifact) when first asked for, the one before it released."""

    def __init__(self, model: nn.Module, source: TensorSource) -> None:
        self.model, self.source = model, source
        self.path, self.blocks = find_blocks(model)
        self.opened: int | None = None

    def __call__(self, name: str) -> torch.Tensor:
        rest = name[len(self.path) + 1:] if name.startswith(self.path + ".") else ""
        index = rest.split(".", 1)[0]
        if index.isdigit() and int(index) != self.opened:
            self.close()
            load_tensors(self.blocks[int(index)], self.source, f"{self.path}.{index}")
            self.opened = int(index)
        return layer_weight(self.model, name)

    def close(self) -> None:
        if self.opened is not None:
            release(self.blocks[self.opened])
            self.opened = None


class _Replay(BlockStandIn):
    """Stands in for a block in the final forward: returns the last block's output for the current batch."""

    def __init__(self, block: nn.Module, outs: list[torch.Tensor], template: Any, state: dict) -> None:
        super().__init__(block)
        self.outs, self.template, self.state = outs, template, state

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        ref = args[0] if args else kwargs["hidden_states"]
        hidden = self.outs[self.state["batch"]].to(ref.device)
        return (hidden,) + tuple(self.template[1:]) if isinstance(self.template, tuple) else hidden


def streamed_perplexity(model: nn.Module, source: TensorSource, ids: torch.Tensor, seqlen: int, *,
                        device: Any = "cpu", batch_size: int = 8, max_windows: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> Perplexity:
    """:func:`harness.data.text.perplexity` of skeleton ``model`` whose blocks are read from ``source``."""
    dev = torch.device(device)
    home = torch.device("cpu")
    windows = eval_windows(ids, seqlen, max_windows)  # (n, seqlen)
    n = windows.shape[0]
    batches = list(windows.split(batch_size))
    path, blocks = find_blocks(model)
    load_tensors(blocks[0], source, f"{path}.0")
    with torch.no_grad():
        calls: list[Any] = capture_inputs(model, batches, dev)  # calls[block][batch]: (args, kwargs)
        outs: list[torch.Tensor] | None = None
        template: Any = None
        for i, block in enumerate(blocks):
            load_tensors(block, source, f"{path}.{i}")
            block.to(dev)
            new = []
            for j, (args, kwargs) in enumerate(calls[i]):
                if outs is not None:
                    args, kwargs = with_hidden(args, kwargs, outs[j])
                out = block(*to_device(args, dev), **to_device(kwargs, dev))
                template = out if template is None else template
                new.append(first_output(out).to(home if dev.type != "cpu" else dev))
            calls[i], outs = None, new
            release(block)
            if progress is not None:
                progress(i + 1, len(blocks) + 1)
        parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
        attr = path.rsplit(".", 1)[-1]
        state = {"batch": 0}
        setattr(parent, attr, nn.ModuleList(_Replay(b, outs, template, state) for b in blocks))
        nll = 0.0
        try:
            model.to(dev)
            for j, batch in enumerate(batches):
                state["batch"] = j
                batch = batch.to(dev)
                logits = model(input_ids=batch, use_cache=False).logits  # (b, seqlen, vocab)
                nll += window_nll(logits, batch)
                del logits
        finally:
            setattr(parent, attr, blocks)
            if dev.type != "cpu":
                setattr(parent, attr, nn.ModuleList())
                model.to("cpu")
                setattr(parent, attr, blocks)
    if progress is not None:
        progress(len(blocks) + 1, len(blocks) + 1)
    return perplexity_of(nll, n, seqlen)
