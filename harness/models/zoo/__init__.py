"""An offline model zoo: tiny models trained by our own code, nothing downloaded.

- Causal LMs (``ZOO_MODELS``: tiny-llama, tiny-opt) trained on a snapshot of CPython's own
  documentation text shipped in ``data/``.
- Image classifiers (``VISION_ZOO_MODELS``: tiny-resnet, tiny-vit), timm architectures
  trained on scikit-learn's bundled digits.

The trained checkpoints ship in ``checkpoints/<name>/``; :func:`ensure_model` rebuilds one
into the user cache if the shipped copy is missing or stale.

Example:
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> path = ensure_model("tiny-llama")
    >>> model = AutoModelForCausalLM.from_pretrained(path)
    >>> tokenizer = AutoTokenizer.from_pretrained(path)
    >>> import timm
    >>> resnet = timm.create_model(f"local-dir:{ensure_model('tiny-resnet')}", pretrained=True)

Importing this package is cheap: torch, transformers and timm load only when a function
needs them.
"""

from pathlib import Path

from harness.models.zoo._cache import cache_dir
from harness.models.zoo._cache import ensure_model as _ensure_lm
from harness.models.zoo._checkpoint import SHIPPED_DIR, checkpoint_sha256, read_manifest
from harness.models.zoo._config import (VISION_ZOO_MODELS, ZOO_MODELS, UnknownZooModelError, VisionZooConfig, ZooConfig,
                                 get_vision_zoo_config, get_zoo_config)
from harness.data.corpus import SPLITS, corpus_documents, corpus_sha256, snapshot_corpus
from harness.models.zoo._tokenizer import train_tokenizer
from harness.models.zoo._train import Progress, perplexity
from harness.models.zoo._train import build_model as _build_lm
from harness.models.zoo._vision import build_vision_model, digits_accuracy, ensure_vision_model

__all__ = [
    "SPLITS",
    "VISION_ZOO_MODELS",
    "ZOO_MODELS",
    "UnknownZooModelError",
    "VisionZooConfig",
    "ZooConfig",
    "build_model",
    "build_vision_model",
    "cache_dir",
    "checkpoint_sha256",
    "corpus_documents",
    "corpus_sha256",
    "digits_accuracy",
    "ensure_model",
    "ensure_vision_model",
    "get_vision_zoo_config",
    "get_zoo_config",
    "perplexity",
    "read_manifest",
    "shipped_dir",
    "snapshot_corpus",
    "train_tokenizer",
]


def shipped_dir(name: str) -> Path:
    """Where the package ships zoo model ``name``: ``checkpoints/<name>``."""
    return SHIPPED_DIR / name


def ensure_model(name: str, *, progress: Progress | None = None) -> Path:
    """A complete checkpoint directory of any zoo model (LM or vision), building it if needed.

    LMs load with ``from_pretrained``, vision models with
    ``timm.create_model(f"local-dir:{path}", pretrained=True)``.

    Raises:
        UnknownZooModelError: If ``name`` is not a zoo model.
    """
    if name in VISION_ZOO_MODELS:
        return ensure_vision_model(name, progress=progress)
    return _ensure_lm(name, progress=progress)


def build_model(name: str, out_dir: Path, *, steps: int | None = None, progress: Progress | None = None) -> Path:
    """Train zoo model ``name`` (LM or vision) from scratch into ``out_dir``; see the two builders."""
    if name in VISION_ZOO_MODELS:
        return build_vision_model(name, out_dir, steps=steps, progress=progress)
    return _build_lm(name, out_dir, steps=steps, progress=progress)
