"""compressed-tensors' sparse checkpoint formats: a pruned model's matrices written as
``sparse-bitmask`` (any sparsity) or ``sparse-24-bitmask`` (2:4), and read back to dense.

The layout is the one compressed-tensors' own sparse compressors wrote and read (through 0.14;
checked: 0.12.2 decompresses these folders to tensors identical to the dense export). Later
releases (transformers 5 requires >= 0.15) keep the config classes and the bit packing used here
but no longer read or write the tensors, transformers ignores ``sparsity_config``, and vLLM has
dropped sparse checkpoints (it never read ``sparse-bitmask``), so :func:`load_causal_lm`
decompresses such a folder itself; to serve, save ``format: dense``. For each compressed matrix
``<module>.weight`` of shape (rows, cols), the safetensors file holds instead:

- ``sparse-bitmask``: ``<module>.shape`` int64 (2,); ``<module>.compressed`` (nnz,), the nonzero
  values in row-major order; ``<module>.bitmask`` uint8 (rows, ceil(cols / 8)), one bit per weight,
  least significant bit first; ``<module>.row_offsets`` int64 (rows,), where each row's values start.
- ``sparse-24-bitmask``: ``<module>.shape`` int64 (2, 1); ``<module>.compressed`` (rows, cols / 2),
  the 2 kept values of every group of 4 consecutive inputs, in order; ``<module>.bitmask`` as above
  with exactly 2 bits set per group (a zero may be kept where a group has more than 2 zeros).

``config.json`` gains ``quantization_config = {"quant_method": "compressed-tensors", "version",
"sparsity_config": {"format", "targets" (the compressed modules), "ignore", "global_sparsity",
"sparsity_structure"}}``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.core.target import Target

BITMASK = "sparse-bitmask"
BITMASK_24 = "sparse-24-bitmask"
SPARSE_FORMATS = (BITMASK, BITMASK_24)
_PARTS = {BITMASK: ("shape", "compressed", "bitmask", "row_offsets"), BITMASK_24: ("shape", "compressed", "bitmask")}


# ---- the tensor format: pure functions on one (rows, cols) matrix -------------------------------

def bitmask_encode(weight: Any) -> dict[str, Any]:
    """``sparse-bitmask`` of a (rows, cols) matrix: its nonzeros, their bitmask and row offsets."""
    import torch
    from compressed_tensors.utils import pack_bitmasks

    keep = weight != 0  # (rows, cols); -0.0 counts as zero and comes back as +0.0
    per_row = keep.sum(dim=1)
    return {"shape": torch.tensor(list(weight.shape)), "compressed": weight[keep].contiguous(),
            "bitmask": pack_bitmasks(keep.cpu()), "row_offsets": torch.cumsum(per_row, 0) - per_row}


def sparse24_encode(weight: Any) -> dict[str, Any]:
    """``sparse-24-bitmask`` of a (rows, cols) matrix with at most 2 nonzeros in every group of 4
    consecutive inputs (cols % 4 == 0); raises ValueError naming the first group that is not."""
    import torch
    from compressed_tensors.utils import pack_bitmasks

    rows, cols = weight.shape
    if cols % 4:
        raise ValueError(f"{cols} input columns are not a multiple of 4")
    groups = (weight != 0).reshape(rows, cols // 4, 4)  # (rows, groups, 4)
    over = (groups.sum(dim=-1) > 2).nonzero()
    if len(over):
        r, g = over[0].tolist()
        raise ValueError(f"row {r}, inputs {4 * g}-{4 * g + 3} hold more than 2 nonzeros: not 2:4 sparse")
    # keep every nonzero, then the first zeros of a group until it has 2: exactly cols / 2 per row
    rank = groups.to(torch.int8) * 4 + torch.arange(3, -1, -1, dtype=torch.int8)  # distinct in a group
    keep = torch.zeros_like(groups).scatter_(-1, rank.topk(2, dim=-1).indices, True).reshape(rows, cols)
    return {"shape": torch.tensor(list(weight.shape)).reshape(-1, 1),
            "compressed": weight[keep].reshape(rows, cols // 2).contiguous(), "bitmask": pack_bitmasks(keep.cpu())}


def decode(parts: dict[str, Any]) -> Any:
    """The dense matrix of one compressed entry (either format): zeros, then the values scattered
    where the bitmask is set, in row-major order."""
    import torch
    from compressed_tensors.utils import unpack_bitmasks

    shape = [int(x) for x in parts["shape"].flatten().tolist()]
    keep = unpack_bitmasks(parts["bitmask"], shape)  # (rows, cols) bool
    values = parts["compressed"].flatten()
    if int(keep.sum()) != values.numel():
        raise ValueError(f"bitmask has {int(keep.sum())} bits set for {values.numel()} stored values")
    dense = torch.zeros(shape, dtype=values.dtype)
    dense[keep] = values
    return dense


def sparse_format(target: Target) -> str:
    """The format for a cell's target: ``sparse-24-bitmask`` for 2:4, else ``sparse-bitmask``."""
    return BITMASK_24 if (target.n, target.m) == (2, 4) else BITMASK


def structure(target: Target) -> str:
    """compressed-tensors' ``sparsity_structure``: "unstructured" or "N:M" (as here and in
    llm-compressor, N zeros in every M consecutive inputs)."""
    return str(target) if target.is_nm else "unstructured"


# ---- whole checkpoints -------------------------------------------------------------------------

def compress_state(tensors: dict[str, Any], modules: set[str], fmt: str) -> tuple[dict[str, Any], list[str]]:
    """Replace ``<module>.weight`` of each 2-D matrix in ``modules`` by its compressed entries.

    Returns:
        (the new tensors, the modules compressed). Keys of other modules pass through.
    """
    encode = sparse24_encode if fmt == BITMASK_24 else bitmask_encode
    out, done = {}, []
    for key, value in tensors.items():
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        if module not in modules or value.dim() != 2:
            out[key] = value
            continue
        try:
            parts = encode(value)
        except ValueError as exc:
            raise ValueError(f"{module}: {exc}; save it with format: dense") from exc
        out.update({f"{module}.{name}": t for name, t in parts.items()})
        done.append(module)
    return out, done


def decompress_state(tensors: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The dense state dict of compressed ``tensors``: each module's entries become ``<module>.weight``."""
    parts = _PARTS[fmt]
    modules = {k.rsplit(".", 1)[0] for k in tensors if k.endswith(".bitmask")}
    out = {k: v for k, v in tensors.items() if not (k.rsplit(".", 1)[0] in modules and k.rsplit(".", 1)[1] in parts)}
    for module in modules:
        missing = [p for p in parts if f"{module}.{p}" not in tensors]
        if missing:
            raise ValueError(f"{module}: compressed entry lacks '{missing[0]}' ({fmt} stores {', '.join(parts)})")
        key = module if module.endswith(".weight") else f"{module}.weight"  # early writers kept ".weight"
        out[key] = decode({p: tensors[f"{module}.{p}"] for p in parts})
    return out


def sparsity_config(fmt: str, targets: list[str], global_sparsity: float, target: Target) -> dict[str, Any]:
    """``config.json``'s ``quantization_config`` for a sparse-only checkpoint (compressed-tensors' names)."""
    import compressed_tensors
    from compressed_tensors.base import (COMPRESSION_VERSION_NAME, QUANTIZATION_CONFIG_NAME, QUANTIZATION_METHOD,
                                         QUANTIZATION_METHOD_NAME, SPARSITY_CONFIG_NAME)
    from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig

    cls = Sparse24BitMaskConfig if fmt == BITMASK_24 else BitmaskConfig
    sparsity = cls(targets=sorted(targets), ignore=[], global_sparsity=global_sparsity,
                   sparsity_structure=structure(target))
    return {QUANTIZATION_CONFIG_NAME: {COMPRESSION_VERSION_NAME: compressed_tensors.__version__,
                                       QUANTIZATION_METHOD_NAME: QUANTIZATION_METHOD,
                                       SPARSITY_CONFIG_NAME: sparsity.model_dump()}}


def folder_format(folder: Path) -> str | None:
    """The sparse format of a checkpoint folder's ``config.json`` (``sparse-bitmask`` or
    ``sparse-24-bitmask``), or None for a dense (or quantized-only) checkpoint.

    Raises:
        ValueError: the folder combines sparse compression with quantization, or names another
            sparse format (neither can be read here).
    """
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(qc, dict) or qc.get("quant_method") != "compressed-tensors":
        return None
    sc = qc.get("sparsity_config") or {}
    fmt = sc.get("format") if isinstance(sc, dict) else None
    if fmt in (None, "dense"):
        return None
    if fmt not in SPARSE_FORMATS:
        raise ValueError(f"sparsity format '{fmt}' cannot be read here (readable: {', '.join(SPARSE_FORMATS)})")
    if qc.get("config_groups"):
        raise ValueError(f"{fmt} together with quantization cannot be read here; only sparse-only checkpoints")
    return fmt


def load_causal_lm(folder: Path, *, dtype: Any, trust_remote_code: bool = False) -> Any:
    """A causal LM from a compressed sparse folder: its tensors decompressed, the model built
    from its config without ``quantization_config`` (transformers would otherwise try to apply it)."""
    import transformers
    from safetensors.torch import load_file

    fmt = folder_format(folder)
    files = sorted(Path(folder).glob("*.safetensors"))
    if fmt is None or not files:
        raise ValueError(f"'{folder}' holds no compressed-tensors sparse checkpoint")
    tensors: dict[str, Any] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    arch = (getattr(config, "architectures", None) or [""])[0]
    cls = getattr(transformers, arch, None) if arch else None  # the Auto classes need a name, not a state dict
    if cls is None:
        raise ValueError(f"architecture '{arch}' of '{folder}' is not one of transformers' own; a compressed "
                         "checkpoint is decompressed here only for those")
    return cls.from_pretrained(None, config=config, state_dict=decompress_state(tensors, fmt), dtype=dtype)
