"""Pruned checkpoints out: each ok cell's evaluated weights as a folder to serve (suite key ``save:``).

:mod:`harness.run.cell` calls :func:`save_cell` after the evaluations with the freshly built model
that holds exactly the artifact's weights (:mod:`harness.run.artifacts`), so the folder is what was
measured and scored; there is no other export path. Under ``save["dir"]`` each cell gets
``<model>__<variant>__<target>__seed<seed>__<run id[:12]>`` holding

- a causal LM: ``save_pretrained``'s layout (``config.json``, safetensors, generation config) and the
  tokenizer; a timm classifier: timm's hub layout (``config.json`` with the architecture, its
  arguments and the data config it was evaluated with, ``model.safetensors``), which ``path:`` loads;
- ``sparsebench.json``: run id, model, method and variant, target, seed, the measured sparsity, the
  artifact's sha256, the metrics, the spec, the suite's YAML, and the sizes on disk.

``format: compressed`` (causal LMs) rewrites the pruned matrices in compressed-tensors' sparse formats
(:mod:`harness.models.compressed`): ``sparse-24-bitmask`` for a 2:4 target, else ``sparse-bitmask``.
Reloading a folder through ``path:`` (method ``dense``, the same dtype) reproduces the cell's metrics
exactly; a compressed folder is decompressed on load.

The folder is written under a hidden temporary name and renamed into place when complete, so a crash
never leaves a partial checkpoint under the final name (only a ``.<name>.tmp-*`` folder to delete).

An export that fails (:func:`save_or_error`: the save folder is a file, the disk is full, a checkpoint
that cannot be compressed) costs the cell nothing: its status and metrics stand, and the record's
``saved`` is ``{"error": "<one line>", "dir", "format"}``, which the runner shows as one warning line;
a rerun of the suite tries the export again (the weights and evaluations are reused).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.core.spec import RunSpec
from harness.run.reporter import error_line

INFO_FILE = "sparsebench.json"
INFO_VERSION = 1

log = logging.getLogger(__name__)


def folder_name(spec: RunSpec, record: dict[str, Any]) -> str:
    """``<model>__<variant>__<target>__seed<seed>__<run id[:12]>``: readable, unique by the run id."""
    model = spec.model.id
    if model.startswith("path:"):  # a folder: its last name, not the whole path
        model = "path:" + Path(model[len("path:"):].rstrip("/")).name
    variant = record.get("variant") or spec.label or spec.method
    parts = [_slug(model), _slug(variant), _slug(spec.target), f"seed{spec.seed}", spec.run_id[:12]]
    return "__".join(parts)


def save_or_error(spec: RunSpec, record: dict[str, Any], loaded: Any, artifact_dir: Path | None = None
                  ) -> dict[str, Any]:
    """:func:`save_cell`, or when it raises, ``{"error": "<type>: <first line>", "dir", "format"}``
    for ``record["saved"]``: the evaluated cell keeps its status and metrics."""
    try:
        return save_cell(spec, record, loaded, artifact_dir=artifact_dir)
    except Exception as exc:  # the export's own failure; the record keeps it and the cell stays as it is
        line = error_line(exc)  # with an OSError's file name: which folder could not be written
        # info, not warning: the runner shows it once, whichever process ran the cell
        log.info("cell %s: the checkpoint was not saved in %s: %s", spec.short_id, spec.save["dir"], line)
        return {"error": line, "dir": str(spec.save["dir"]), "format": spec.save["format"]}


def save_cell(spec: RunSpec, record: dict[str, Any], loaded: Any, artifact_dir: Path | None = None) -> dict[str, Any]:
    """Write ``loaded.model`` (on the CPU, holding the evaluated weights) as a checkpoint folder; a
    streamed cell's (``artifact_dir``: its shard folder, ``loaded.model`` a skeleton) shard by shard.

    Returns:
        ``record["saved"]``: ``{"path" (absolute), "format", "bytes" (weight files on disk),
        "dense_bytes" (the same weights stored dense), "folder"}`` plus, when compressed,
        ``"sparse_format"`` and ``"compressed_layers"``.

    Raises:
        ValueError: ``format: compressed`` for an image classifier, or a 2:4 checkpoint whose
            matrices are not 2:4 (one line each).
    """
    fmt = spec.save["format"]
    root = Path(spec.save["dir"])
    root.mkdir(parents=True, exist_ok=True)
    name = folder_name(spec, record)
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    vision = loaded.tokenizer is None
    if vision and fmt == "compressed":
        raise ValueError("save format 'compressed' (compressed-tensors' sparse formats) is for causal LMs; "
                         "an image classifier saves with format: dense")
    try:
        tmp.mkdir()
        if vision:
            _save_vision(loaded, tmp)
        elif artifact_dir is not None:
            _save_lm_shards(loaded, tmp, artifact_dir)
        else:
            _save_lm(loaded, tmp)
        dense_bytes = _weight_bytes(tmp)
        extra = _compress(tmp, spec, record) if fmt == "compressed" else {}
        saved = {"path": str(final), "format": fmt, "bytes": _weight_bytes(tmp), "dense_bytes": dense_bytes,
                 "folder": name, **extra}
        (tmp / INFO_FILE).write_text(json.dumps(_info(spec, record, saved), indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")
        _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return saved


def _save_lm(loaded: Any, folder: Path) -> None:
    """``save_pretrained`` of the model and its tokenizer. The loader turns the KV cache off for
    scoring; the served checkpoint gets it back on (it changes no weight)."""
    config = loaded.model.config
    use_cache = config.use_cache
    config.use_cache = True
    try:
        loaded.model.save_pretrained(folder)
    finally:
        config.use_cache = use_cache
    loaded.tokenizer.save_pretrained(folder)


def _save_lm_shards(loaded: Any, folder: Path, artifact_dir: Path) -> None:
    """``save_pretrained``'s layout from a streamed cell's artifact: config, generation config and
    tokenizer, and each artifact shard as ``model-0000i-of-0000n.safetensors`` with the index (tied
    tensors once); no model in memory. A shard is copied as it is, unless transformers saves the
    model's tensors under other names or in another layout (fused experts are saved per expert):
    then it is rewritten as ``save_pretrained`` would write it, one shard in memory at a time."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.core_model_loading import revert_weight_conversion

    config = copy.deepcopy(loaded.model.config)
    config.use_cache = True  # the loader turns the KV cache off for scoring; it changes no weight
    config.save_pretrained(folder)
    generation = getattr(loaded.model, "generation_config", None)
    if generation is not None and loaded.model.can_generate():
        generation.save_pretrained(folder)
    index = json.loads((Path(artifact_dir) / "index.json").read_text(encoding="utf-8"))
    n = len(index["shards"])
    names = {sh["file"]: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i, sh in enumerate(index["shards"])}
    weight_map: dict[str, str] = {}
    for old, new in names.items():
        part = load_file(str(Path(artifact_dir) / old))
        saved = revert_weight_conversion(loaded.model, part)  # {name: tensor} as save_pretrained names them
        if saved.keys() == part.keys():
            shutil.copyfile(Path(artifact_dir) / old, folder / new)
        else:  # views of the fused tensors: each its own contiguous copy
            save_file({k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in saved.items()},
                      str(folder / new), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(saved, new))
        del part, saved
    total = _weight_bytes(folder)  # file sizes (the index's total_size is informational)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n",
        encoding="utf-8")
    loaded.tokenizer.save_pretrained(folder)


def _save_vision(loaded: Any, folder: Path) -> None:
    """timm's hub layout, with the data config the cell was evaluated with."""
    from timm.models import save_for_hf

    save_for_hf(loaded.model, str(folder), safe_serialization=True, data_config=dict(loaded.data_config or {}))


def _compress(folder: Path, spec: RunSpec, record: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the pruned matrices of every safetensors file in ``folder`` in compressed-tensors'
    sparse format, keep the shard index in step, and add ``quantization_config`` to config.json."""
    from safetensors.torch import load_file, save_file

    from harness.core.target import Target
    from harness.models.compressed import compress_state, sparse_format, sparsity_config

    target = Target.parse(spec.target)
    fmt = sparse_format(target)
    modules = {layer["name"] for layer in record.get("layers") or []}
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text(encoding="utf-8")) if index_file.exists() else None
    done: list[str] = []
    total = 0
    for shard in sorted(folder.glob("*.safetensors")):  # one shard in memory at a time
        tensors = load_file(str(shard))
        out, compressed = compress_state(tensors, modules, fmt)
        save_file(out, str(shard), metadata={"format": "pt"})
        done += compressed
        total += sum(t.numel() * t.element_size() for t in out.values())
        if index is not None:
            index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
            index["weight_map"].update(dict.fromkeys(out, shard.name))
    if modules and not done:
        raise ValueError(f"none of the {len(modules)} pruned matrices is a 2-D '<name>.weight' of the saved "
                         "checkpoint, so nothing can be compressed; save it with format: dense")
    if index is not None:
        index["metadata"] = {**index.get("metadata", {}), "total_size": total}
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update(sparsity_config(fmt, done, (record.get("sparsity") or {}).get("global") or 0.0, target))
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    left = sorted(modules - set(done))
    return {"sparse_format": fmt, "compressed_layers": len(done), **({"dense_layers": left} if left else {})}


def _info(spec: RunSpec, record: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """``sparsebench.json``: what the folder holds and where it came from."""
    return {
        "sparsebench_export": INFO_VERSION, "run_id": spec.run_id, "model": record.get("model"),
        "model_id": spec.model.id, "dtype": (record.get("model_info") or {}).get("dtype") or spec.model.dtype,
        "method": spec.method, "variant": record.get("variant"), "label": spec.label, "target": spec.target,
        "seed": spec.seed, "sparsity": record.get("sparsity"),
        "artifact_sha256": (record.get("artifact") or {}).get("sha256"),
        "metrics": list(record.get("metrics") or []),
        "saved": {k: v for k, v in saved.items() if k != "path"},
        "saved_at": datetime.now(timezone.utc).isoformat(), "spec": record.get("spec"),
        "suite": record.get("suite"), "suite_path": record.get("suite_path"), "suite_text": record.get("suite_text"),
    }


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete folder into place; an older export of the cell is moved aside first and
    deleted after (a crash in between leaves it under a hidden ``.old`` name, never a partial one)."""
    mode = tmp.stat().st_mode & 0o666  # safetensors writes 0600; the folder's mode follows the umask
    for f in tmp.iterdir():
        f.chmod(mode)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _slug(text: str, limit: int = 48) -> str:
    """A file-name-safe piece: runs of other characters become "-" (``zoo:tiny-llama`` -> ``zoo-tiny-llama``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")[:limit] or "x"
