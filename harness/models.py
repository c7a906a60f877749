"""Load a model and its tokenizer from a prefixed id (``zoo:``, ``hf:``, ``path:``)."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.ids import ModelRef, parse_model_id
from harness.spec import ModelSpec

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "float16", "bfloat16")


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded here (offline, missing folder); the message is one line."""


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel in eval mode, on the CPU
    tokenizer: Any
    info: dict[str, Any] = field(default_factory=dict)  # provenance: source, path, sha256, num_params


def resolve_dtype(name: str, source: str, device: str) -> Any:
    """``auto`` is float32 on the CPU and for the zoo, float16 for hub models on a GPU."""
    import torch

    if name == "auto":
        return torch.float16 if (device.startswith("cuda") and source != "zoo") else torch.float32
    return getattr(torch, name)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _unavailable(ref: ModelRef, exc: BaseException) -> ModelUnavailable:
    hint = (
        f"download it where the hub is reachable (huggingface-cli download {ref.name}) and point the "
        f"suite at the folder with 'path:/that/folder', or copy the Hugging Face cache here and set HF_HOME"
    )
    why = "the hub is unreachable (offline mode)" if offline() else f"loading failed ({type(exc).__name__})"
    return ModelUnavailable(f"model '{ref}' is not available locally and {why}; {hint}")


def _sha256_of_weights(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
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

    hf_logging.disable_progress_bar()  # the CLI draws its own progress; tqdm bars would interleave
    ref = parse_model_id(spec.id)
    dtype = resolve_dtype(spec.dtype, ref.source, device)
    info: dict[str, Any] = {"source": ref.source, "id": str(ref), "dtype": str(dtype).replace("torch.", "")}
    if ref.source == "zoo":
        from harness import zoo

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
        info.update(path=str(folder), sha256=_sha256_of_weights(folder))
        where, kwargs = folder, {}
    else:
        where = ref.name
        kwargs = {"revision": spec.revision} if spec.revision else {}
        info["revision"] = spec.revision
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, trust_remote_code=spec.trust_remote_code, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=spec.trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        if ref.source == "hf":
            raise _unavailable(ref, exc) from exc
        raise ModelUnavailable(f"cannot load model '{ref}' from {where}: {str(exc).splitlines()[0]}") from exc
    if ref.source == "hf":
        commit = getattr(model.config, "_commit_hash", None)
        info["commit"] = commit
    model.eval()
    model.config.use_cache = False
    info["num_params"] = sum(p.numel() for p in model.parameters())
    info["architecture"] = type(model).__name__
    return LoadedModel(model, tokenizer, info)
