"""Where a decoder LM keeps its blocks: one search shared by the prune loop and block streaming."""
from __future__ import annotations

from typing import Any

from torch import nn

# Where decoder blocks live in the common families; anything else is found by search.
BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (dotted path, ModuleList) of the decoder blocks."""
    for path in BLOCK_PATHS:
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
