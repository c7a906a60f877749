"""Block streaming: a causal LM whose weights stay on disk until their block's turn comes.

A streamed model is a *skeleton*: built from its config with every parameter on the meta device
(no memory, no random init; buffers such as rotary tables are built for real, as small as they
are), then everything outside the decoder blocks (embeddings, final norm, head) is read from the
checkpoint's safetensors. Each block's tensors are read (:meth:`TensorSource.read`,
``safetensors.safe_open``) by :func:`load_tensors` when the driver reaches it, and put back on the
meta device by :func:`release` after it is written out, so peak memory is about the embeddings +
one block + the calibration activations, whatever the depth (:mod:`harness.drivers.stream`).

Which cells stream (:func:`wants_stream`): a model entry with ``stream: true`` (``path:`` and
``hf:`` causal LMs), and any ``path:`` checkpoint whose safetensors files are larger than
:data:`STREAM_AUTO_BYTES` unless the entry says ``stream: false``. Streaming changes no number (the
same prune loop and methods, the same per-block forwards), so ``stream`` is not in the run id.

Tensor names are the model's own ``state_dict`` names, or what transformers' own checkpoint
conversions turn into them on load (:meth:`TensorSource.match`): ``save_pretrained`` writes
mixture-of-experts layers per expert (``experts.<e>.w1.weight``, ...), which are stacked into the
fused 3-D tensors block by block exactly as ``from_pretrained`` stacks them. A tensor that neither
provides is refused with one line naming it.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.spec import ModelSpec

STREAM_AUTO_BYTES = 2 << 30  # a path: checkpoint whose safetensors exceed 2 GiB streams unless told not to
INDEX_FILE = "model.safetensors.index.json"


class TensorSource:
    """Tensor name -> the safetensors file holding it; tensors are read on demand, a few at a time."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.renamed: dict[str, str] = {}  # model name -> the checkpoint's name for the same tensor
        # model name -> (transformers' converter, [(its source pattern, checkpoint name)] in load order)
        self.merged: dict[str, tuple[Any, list[tuple[str, str]]]] = {}
        self.config: Any = None  # the model's config, for the converters' operations

    @classmethod
    def from_folder(cls, folder: Path, index_file: str = INDEX_FILE) -> "TensorSource":
        """A ``save_pretrained`` folder: its shard index, else every ``*.safetensors`` file's header."""
        from safetensors import safe_open

        folder = Path(folder)
        index = folder / index_file
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return cls({name: folder / file for name, file in weight_map.items()})
        files: dict[str, Path] = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), framework="pt", device="cpu") as f:
                files.update(dict.fromkeys(f.keys(), path))
        if not files:
            raise FileNotFoundError(f"no safetensors weights in '{folder}' (block streaming reads safetensors only)")
        return cls(files)

    def match(self, model: nn.Module) -> "TensorSource":
        """Find ``model``'s state-dict names that the checkpoint stores under another name or in
        another layout, with transformers' own load-time conversions for the model (the ones
        ``from_pretrained`` applies: renamed modules, per-expert tensors stacked into fused experts);
        a checkpoint that holds every name as it is needs none. Returns self."""
        meta = model.state_dict()  # the skeleton's: meta tensors, no memory
        if meta.keys() <= self.files.keys():
            return self
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

        mapping = get_model_conversion_mapping(model)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
        by_pattern = {p: c for c in converters for p in c.source_patterns}
        prefix = model.base_model_prefix
        for key in sorted(self.files, key=dot_natural_key):  # from_pretrained's order: experts 0, 1, ..., 10
            name, pattern = rename_source_key(key, renamings, converters, prefix, meta)
            if name not in meta and key in meta:
                name, pattern = rename_source_key(key, [], [], prefix, meta)
            if name not in meta or name in self.files:
                continue
            if pattern is None:
                self.renamed[name] = key
            else:
                self.merged.setdefault(name, (by_pattern[pattern], []))[1].append((pattern, key))
        self.config = model.config
        return self

    def __contains__(self, name: str) -> bool:
        return name in self.files or name in self.renamed or name in self.merged

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors (model names), each file opened once; converted ones built as
        ``from_pretrained`` builds them."""
        plain = [n for n in names if n not in self.merged]
        parts = [key for n in names if n in self.merged for _, key in self.merged[n][1]]
        stored = self._read([self.renamed.get(n, n) for n in plain] + parts)
        out = {n: stored.pop(self.renamed.get(n, n)) for n in plain}
        for name in names:
            if name not in self.merged:
                continue
            template, sources = self.merged[name]
            converter = copy.deepcopy(template)
            for pattern, key in sources:
                converter.add_tensor(name, key, pattern, stored.pop(key))
            value = converter.convert(name, config=self.config).get(name)
            if value is None:
                raise ValueError(f"tensor '{name}': transformers' conversion of {sources[0][1]} and "
                                 f"{len(sources) - 1} more checkpoint tensors did not produce it")
            out[name] = value[0] if isinstance(value, list) else value
        return out

    def _read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named checkpoint tensors, each file opened once (and closed before returning)."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out = {}
        for path, in_file in by_file.items():
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in in_file:
                    out[name] = f.get_tensor(name)
        return out


def checkpoint_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def wants_stream(spec: ModelSpec, base_dir: Path | None = None) -> bool:
    """Whether a causal LM cell streams: ``stream: true``, or (unset) a ``path:`` checkpoint whose
    safetensors exceed :data:`STREAM_AUTO_BYTES`."""
    if spec.stream is not None:
        return bool(spec.stream)
    if not spec.id.startswith("path:"):
        return False
    folder = _folder(spec.id[len("path:"):], base_dir)
    return (folder / "config.json").is_file() and checkpoint_bytes(folder) > STREAM_AUTO_BYTES


def _folder(name: str, base_dir: Path | None) -> Path:
    folder = Path(name)
    return base_dir / folder if not folder.is_absolute() and base_dir is not None else folder


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device (buffers stay real): a model's
    skeleton without its weights' memory or their random initialisation."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":  # one already on meta (a tied weight) stays itself
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def return_freed_memory(threshold: int = 128 << 10) -> bool:
    """Serve allocations above ``threshold`` bytes with their own mmap, so freeing gives them back
    (glibc only; False elsewhere). glibc otherwise raises its threshold as large blocks are freed
    and keeps them in its heap: measured on a 0.8 B Llama, RSS then rose ~50 MB per streamed block
    with the live tensors constant; with the threshold fixed it stays flat."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def skeleton(config: Any, dtype: Any, trust_remote_code: bool = False) -> nn.Module:
    """A causal LM for ``config`` with its parameters on the meta device, in eval mode, no KV cache."""
    from transformers import AutoModelForCausalLM

    with params_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval()
    model.config.use_cache = False
    return model


def _tensors(module: nn.Module, prefix: str, skip: str | None) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """id(tensor) -> every (owner, attribute, full name) holding it (tied weights share one entry);
    parameters and persistent buffers only, those under ``skip`` left out."""
    groups: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for owner_name, owner in module.named_modules():
        slots = [(a, t) for a, t in owner._parameters.items()]
        slots += [(a, t) for a, t in owner._buffers.items() if a not in owner._non_persistent_buffers_set]
        for attr, t in slots:
            full = ".".join(x for x in (prefix, owner_name, attr) if x)
            if t is None or (skip and full.startswith(skip + ".")):
                continue
            groups.setdefault(id(t), []).append((owner, attr, full))
    return groups


def load_tensors(module: nn.Module, source: TensorSource, prefix: str = "", *, skip: str | None = None) -> int:
    """Give every meta tensor of ``module`` (state-dict names ``prefix.<name>``) its value from
    ``source``, in the skeleton's dtype; tied tensors stay one tensor. Returns the bytes read.

    Raises:
        ValueError: one line, when a tensor is missing from the source or has another shape.
    """
    wanted: dict[str, list[tuple[nn.Module, str, str]]] = {}
    for entries in _tensors(module, prefix, skip).values():
        owner, attr, full = entries[0]
        current = getattr(owner, attr)
        if current.device.type != "meta":
            continue
        name = next((e[2] for e in entries if e[2] in source), None)
        if name is None:
            raise ValueError(f"tensor '{full}' is not in the checkpoint's safetensors (block streaming needs the "
                             f"model's own state-dict names; set 'stream: false' on the model to load it whole)")
        wanted[name] = entries
    values = source.read(list(wanted))
    nbytes = 0
    for name, entries in wanted.items():
        owner, attr, _ = entries[0]
        current = getattr(owner, attr)
        value = values.pop(name)
        if tuple(value.shape) != tuple(current.shape):
            raise ValueError(f"tensor '{name}' has shape {tuple(value.shape)} in the checkpoint but "
                             f"{tuple(current.shape)} in the model")
        value = value.to(current.dtype)
        nbytes += value.numel() * value.element_size()
        new = nn.Parameter(value, requires_grad=current.requires_grad) if isinstance(current, nn.Parameter) else value
        for owner, attr, _ in entries:
            (owner._parameters if attr in owner._parameters else owner._buffers)[attr] = new
    return nbytes


def release(module: nn.Module, *, skip: str | None = None) -> None:
    """Put every parameter and persistent buffer of ``module`` (those under ``skip`` left out) back
    on the meta device (frees its memory)."""
    for entries in _tensors(module, "", skip).values():
        owner, attr, _ = entries[0]
        current = getattr(owner, attr)
        if current.device.type == "meta":
            continue
        empty = torch.empty_like(current, device="meta")
        new = nn.Parameter(empty, requires_grad=current.requires_grad) if isinstance(current, nn.Parameter) else empty
        for owner, attr, _ in entries:
            (owner._parameters if attr in owner._parameters else owner._buffers)[attr] = new


def resolve_folder(spec: ModelSpec, base_dir: Path | None = None) -> Path:
    """The local ``save_pretrained`` folder of a ``path:`` or ``hf:`` model (hf: from the local
    Hugging Face cache or the hub, safetensors and small files only)."""
    from harness.models.load import ModelUnavailable, hub_unavailable

    source, _, name = spec.id.partition(":")
    if source == "path":
        folder = _folder(name, base_dir)
        if not (folder / "config.json").is_file():
            raise ModelUnavailable(f"model folder '{folder}' has no config.json (expected a save_pretrained folder)")
        return folder
    if source != "hf":
        raise ValueError(f"block streaming is for path: and hf: causal LMs, not '{spec.id}'")
    from huggingface_hub import snapshot_download

    from harness.core.ids import parse_model_id

    try:
        return Path(snapshot_download(name, revision=spec.revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]))
    except Exception as exc:  # hub errors come in many types
        raise hub_unavailable(parse_model_id(spec.id), exc) from exc


def open_streamed(spec: ModelSpec, *, device: str = "cpu", base_dir: Path | None = None) -> Any:
    """A :class:`~harness.models.load.LoadedModel` whose ``model`` is a skeleton (every parameter on
    the meta device) and whose ``source`` reads the checkpoint; the driver loads what it needs."""
    from transformers import AutoConfig, AutoTokenizer

    from harness.core.ids import parse_model_id
    from harness.models.load import LoadedModel, check_remote_code, sha256_of_weights, resolve_dtype

    check_remote_code(spec)
    return_freed_memory()
    ref = parse_model_id(spec.id)
    folder = resolve_folder(spec, base_dir)
    dtype = resolve_dtype(spec.dtype, ref.source, device)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
    model = skeleton(config, dtype, spec.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
    info: dict[str, Any] = {"source": ref.source, "id": str(ref), "dtype": str(dtype).replace("torch.", ""),
                            "path": str(folder), "sha256": sha256_of_weights(folder), "streamed": True,
                            "checkpoint_bytes": checkpoint_bytes(folder)}
    if ref.source == "hf":  # snapshot_download returns snapshots/<commit>
        info.update(revision=spec.revision, commit=folder.name)
    info["num_params"] = sum(p.numel() for p in model.parameters())
    info["architecture"] = type(model).__name__
    return LoadedModel(model, tokenizer, info, source=TensorSource.from_folder(folder).match(model))
