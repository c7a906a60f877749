"""The layer-sequential driver, written once for every decoder-only Hugging Face LM.

1. Capture: block 0 is wrapped by a catcher that records its full positional and keyword
   arguments (hidden states, attention mask, position ids, ``position_embeddings``, cache
   position) for every calibration batch and stops the forward pass.
2. For each block, on the compute device: forward hooks on its prunable Linear layers gather
   X^T X (one accumulator per distinct input tensor, so q/k/v and gate/up share one Hessian)
   from the block's dense activations; every layer is pruned; the pruned block is re-run to
   produce the next block's inputs. Only one block sits on the device at a time.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from harness.method import LayerStats, PruningMethod
from harness.spec import LayerSelection
from harness.target import Target

log = logging.getLogger(__name__)

# Where decoder blocks live in the common families; anything else is found by search.
_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers")


class NumericalError(RuntimeError):
    """Non-finite activations or statistics: the cell fails instead of storing garbage."""


@dataclass
class LayerReport:
    """What happened to one pruned Linear layer (sparsity is measured later by the runner)."""

    name: str
    block: int
    rows: int
    cols: int
    rel_error: float | None  # ||(W - W')X||^2 / ||WX||^2 on the layer's calibration inputs
    time_s: float
    info: dict[str, Any] = field(default_factory=dict)


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


def _to(obj: Any, device: torch.device) -> Any:
    """Move tensors inside args/kwargs (tuples, lists, dicts) to ``device``; others unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


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


class _Collector:
    """Forward hooks that gather X^T X (or only its diagonal) per distinct input.

    ``inputs`` optionally maps a layer name to a function that turns the layer's input tensor
    into the rows its (d_out, d_in) weight multiplies, (rows, d_in); the default flattens all
    but the last dimension (Linear). The vision driver passes unfolded patches for Conv2d.
    Layers share one accumulator when they read the same tensor through the same function
    (q/k/v and gate/up; two convolutions of one geometry on one input).

    In ``"cross"`` mode every calibration batch is replayed twice: first with ``phase =
    "dense"`` (the block holding its dense weights; each layer's input rows are kept), then
    with ``phase = "sparse"``, which accumulates X_s^T X_s and the cross-moment X_d^T X_s.
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
            if gid is None:
                gid = len(self.acc)
                d = flat.shape[1]
                shape = (d,) if self.mode == "diag" else (d, d)
                self.acc.append(torch.zeros(shape, dtype=torch.float32, device=x.device))
                if self.mode == "cross":
                    self.cross.append(torch.zeros(shape, dtype=torch.float32, device=x.device))
                self.count.append(0)
                self.group_of[name] = gid
            self._seen.append((x, to_rows, gid))
            if not torch.isfinite(flat).all():
                raise NumericalError(f"non-finite calibration activations entering {name}")
            if self.mode == "diag":
                self.acc[gid] += (flat * flat).sum(0)
            else:
                self.acc[gid].addmm_(flat.T, flat)
            if self.mode == "cross":
                dense = self._dense.get(name)
                if dense is None or dense.shape != flat.shape:
                    raise RuntimeError(f"{name}: no matching dense input for the cross-moment")
                self.cross[gid].addmm_(dense.T, flat)
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
        gid = self.group_of[name]
        n = max(self.count[gid], 1)
        mat = self.acc[gid] / n
        if self.mode == "diag":
            return LayerStats(diag=mat, n=n)
        stats = LayerStats.from_hessian(mat, n=n)
        if self.mode == "cross":
            stats.cross = self.cross[gid] / n
        return stats


class _Swap:
    """Context manager: the given layers hold other weights (the dense ones) inside the block."""

    def __init__(self, layers: dict[str, nn.Module], weights: dict[str, torch.Tensor]) -> None:
        self.layers, self.weights, self.saved = layers, weights, {}

    def __enter__(self) -> None:
        for name, mod in self.layers.items():
            self.saved[name] = mod.weight.data
            mod.weight.data = self.weights[name].to(mod.weight.device, mod.weight.dtype)

    def __exit__(self, *exc: Any) -> None:
        for name, mod in self.layers.items():
            mod.weight.data = self.saved[name]
        self.saved = {}


def relative_error(w_old: torch.Tensor, w_new: torch.Tensor, hessian: torch.Tensor) -> float:
    """||(W - W')X||^2 / ||WX||^2 = tr(dW H dW^T) / tr(W H W^T) with H = X^T X / n."""
    w = w_old.float()
    dw = w - w_new.float()
    num = ((dw @ hessian) * dw).sum()
    den = ((w @ hessian) * w).sum()
    return float(num / den) if float(den) > 0 else 0.0


def prune_sequential(
    model: nn.Module,
    batches: list[torch.Tensor],
    method: PruningMethod,
    target: Target,
    *,
    device: torch.device | str = "cpu",
    selection: LayerSelection = LayerSelection(),
    measure_error: bool = True,
    offload: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_block_output: Callable[[int, list[torch.Tensor]], None] | None = None,
    layer_targets: dict[str, Target] | None = None,
) -> list[LayerReport]:
    """Prune ``model`` in place, block by block, and return one report per pruned layer.

    Args:
        batches: calibration token ids, each (batch, seqlen).
        measure_error: gather full Hessians so every layer's reconstruction error is reported,
            even for methods that need less.
        on_block_output: test hook, called with each block's outputs (pruned block).
        layer_targets: a target per layer name (a sparsity profile such as OWL); others get ``target``.

    A method with ``stats = "cross"`` also gets each layer's inputs in the dense model: the
    driver carries a second stream of hidden states through the blocks with the method's
    ``dense_weights()`` swapped in. A method with ``sequential_groups = True`` is pruned one
    group of layers that share an input at a time (q,k,v -> o -> gate,up -> down), each
    group's statistics gathered after the groups before it were pruned (SparseGPT's
    ``--true-sequential``); otherwise all of a block's statistics come from one replay.
    """
    device = torch.device(device)
    path, blocks = find_blocks(model)
    layers_per_block = [prunable_layers(b, f"{path}.{i}", selection) for i, b in enumerate(blocks)]
    method.prepare({n: m.weight for layers in layers_per_block for n, m in layers.items()}, target)

    mode = "hessian" if (method.stats == "hessian" or measure_error) else method.stats
    if method.stats == "cross":
        mode = "cross"
    modifies = method.modifies_weights
    if not modifies:
        mode = "none"
    if mode != "none" and not batches:
        raise ValueError(f"method '{method.name}' needs calibration batches")
    dense_w = method.dense_weights() if mode == "cross" else None
    grouped = bool(getattr(method, "sequential_groups", False))

    calls = capture_inputs(model, batches, device) if batches else []
    # Activations (and the replayed kwargs) wait on the CPU between blocks when the compute
    # device is a GPU: only one block and one batch of activations occupy device memory.
    offload = device.type != "cpu" if offload is None else offload
    home = torch.device("cpu") if offload else device
    calls = [(_to(a, home), _to(k, home)) for a, k in calls]
    dense_calls = list(calls) if dense_w is not None else None  # block 0 sees the same inputs
    use_cache = getattr(model.config, "use_cache", None)

    def gather(block: nn.Module, all_layers: dict, hooked: dict) -> tuple[_Collector, list | None]:
        """Replay the calibration batches through ``block`` with hooks on ``hooked``."""
        collector = _Collector(hooked, mode)
        dense_outs: list | None = [] if dense_calls is not None else None
        for j, (args, kwargs) in enumerate(calls):
            if dense_calls is not None:
                collector.phase = "dense"
                with _Swap(all_layers, dense_w):
                    d_args, d_kwargs = dense_calls[j]
                    dense_outs.append(_first(block(*_to(d_args, device), **_to(d_kwargs, device))).to(home))
                collector.phase = "sparse"
            block(*_to(args, device), **_to(kwargs, device))
            collector.end_forward()
        collector.remove()
        return collector, dense_outs

    reports: list[LayerReport] = []
    targets = layer_targets or {}
    with torch.no_grad():
        for i, block in enumerate(blocks):
            layers = layers_per_block[i]
            block.to(device)
            dense_outs = None
            if mode != "none" and layers:
                collector, dense_outs = gather(block, layers, layers)
                groups = collector.groups() if grouped else [list(layers)]
                for g, names in enumerate(groups):
                    if g > 0:  # statistics of this group after the earlier groups were pruned
                        collector, dense_outs = gather(block, layers, {n: layers[n] for n in names})
                    for name in names:
                        reports.append(_prune_one(method, name, layers[name], collector.stats(name),
                                                  targets.get(name, target), i))
                del collector
            else:
                for name, lin in layers.items():
                    reports.append(_prune_one(method, name, lin, None, targets.get(name, target), i))
            if calls:  # the pruned block's outputs are the next block's inputs
                outs = []
                for args, kwargs in calls:
                    outs.append(_first(block(*_to(args, device), **_to(kwargs, device))).to(home))
                if not all(torch.isfinite(o).all() for o in outs):
                    raise NumericalError(f"non-finite activations after pruned block {i}")
                if on_block_output is not None:
                    on_block_output(i, outs)
                calls = [_with_hidden(args, kwargs, o) for o, (args, kwargs) in zip(outs, calls)]
                if dense_calls is not None:
                    if dense_outs is None:  # a block without prunable layers: replay it dense
                        dense_outs = [_first(block(*_to(a, device), **_to(k, device))).to(home) for a, k in dense_calls]
                    dense_calls = [_with_hidden(a, k, o) for o, (a, k) in zip(dense_outs, dense_calls)]
            if device.type != "cpu":
                block.to("cpu")
            if progress is not None:
                progress(i + 1, len(blocks))
    if use_cache is not None:
        model.config.use_cache = use_cache
    return reports


def _prune_one(method: PruningMethod, name: str, mod: nn.Module, stats: LayerStats | None, target: Target,
               block: int) -> LayerReport:
    """Prune one layer in place and report it (error measured on the layer's calibration inputs).

    The method sees the weight as (d_out, d_in): a Conv2d kernel (C_out, C_in, k_h, k_w) is
    flattened C_in-major, the layout of its unfolded input patches, and its shape is noted.
    """
    t0 = time.perf_counter()
    old = mod.weight.data
    w = old.reshape(old.shape[0], -1)  # (d_out, d_in); a view
    result = method.prune(name, w, stats, target)
    new = result.weight.to(old.dtype)
    if not torch.isfinite(new).all():
        raise NumericalError(f"{method.name} produced non-finite weights in {name}")
    err = None
    if stats is not None and stats.hessian is not None:
        err = relative_error(w, new, stats.hessian)
    elif not method.modifies_weights:
        err = 0.0
    rows, cols = w.shape
    if new is not w:
        old.copy_(new.reshape(old.shape))
    info = result.info if old.dim() == 2 else {**result.info, "shape": list(old.shape)}
    return LayerReport(name, block, rows, cols, err, time.perf_counter() - t0, info)
