"""Checkpoint directory layout, hashes and the ``zoo.json`` manifest."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from harness.models.zoo._config import ZooConfig

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"  # checkpoints/<name>/
MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "zoo.json"
# Files every complete checkpoint holds; save_pretrained may add more (e.g. generation_config.json).
REQUIRED_FILES = ("config.json", MODEL_FILE, "tokenizer.json", "tokenizer_config.json", MANIFEST_FILE)


def checkpoint_sha256(path: Path) -> str:
    """SHA-256 (hex) of a checkpoint's ``model.safetensors``.

    Args:
        path: A checkpoint directory, or the ``model.safetensors`` file itself.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    """Parse a checkpoint directory's ``zoo.json``."""
    return json.loads((Path(path) / MANIFEST_FILE).read_text(encoding="utf-8"))


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``zoo.json`` with sorted keys, so equal manifests are equal bytes."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (Path(path) / MANIFEST_FILE).write_text(text, encoding="utf-8")


def manifest_problem(path: Path, required: tuple[str, ...], expected: dict[str, Any]) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None: every ``required`` file exists, the
    manifest holds each ``expected`` key/value, and the weights match the manifest's hash
    (so a truncated copy is caught). Shared by the LM and the vision zoo."""
    path = Path(path)
    missing = [f for f in required if not (path / f).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError) as exc:
        return f"unreadable {MANIFEST_FILE}: {exc}"
    for key, want in expected.items():
        if manifest.get(key) != want:
            return f"{MANIFEST_FILE} has {key}={manifest.get(key)!r}, expected {want!r}"
    if manifest.get("model_sha256") != checkpoint_sha256(path):
        return f"{MODEL_FILE} does not match the sha256 in {MANIFEST_FILE}"
    return None


def checkpoint_problem(path: Path, cfg: ZooConfig, corpus_sha: str) -> str | None:
    """Why ``path`` is not a complete, current checkpoint of ``cfg``, or None if it is.

    Complete means: every required file exists, the manifest names this model and its
    configured steps, it was trained on the current corpus snapshot, and the weights
    file matches the manifest's hash.
    """
    expected = {"name": cfg.name, "steps": cfg.steps, "corpus_sha256": corpus_sha}
    return manifest_problem(path, REQUIRED_FILES, expected)
