"""The vision zoo: timm classifiers trained on scikit-learn's digits, shipped as timm checkpoints.

A checkpoint directory holds what ``timm.create_model("local-dir:<dir>", pretrained=True)``
reads (``config.json`` with the architecture, its ``model_args`` and the ``pretrained_cfg``
that ``timm.data.resolve_data_config`` turns into the preprocessing) plus ``zoo.json``, the
manifest with the held-out accuracy and the sha256 of the data and the weights.

Training (:func:`build_vision_model`) preprocesses the fixed digits training split once with
the model's own evaluation transform (resize 8x8 to ``img_size``, normalize with the split's
pixel mean/std), then runs ``steps`` AdamW steps on random batches drawn from a local
generator, with the LM zoo's warmup + cosine schedule. Weight init is seeded inside a forked
RNG and the thread count is fixed, so a build is byte-reproducible on a given machine.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

from harness.models.zoo._cache import ensure_checkpoint
from harness.models.zoo._checkpoint import MANIFEST_FILE, MODEL_FILE, checkpoint_sha256, manifest_problem, write_manifest
from harness.models.zoo._config import VisionZooConfig, get_vision_zoo_config
from harness.models.zoo._train import Progress, lr_at

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
REQUIRED_FILES = (CONFIG_FILE, MODEL_FILE, MANIFEST_FILE)
_LOG_EVERY = 100  # steps between INFO log lines


@functools.lru_cache(maxsize=1)
def digits_sha256() -> str:
    """SHA-256 of the digits pixels, labels and the fixed train/test split (catches any change)."""
    from harness.data import images

    h = hashlib.sha256()
    for split in ("train", "test"):
        data = images.digits(split)
        for img in data.items:
            h.update(img.tobytes())
        h.update(json.dumps(data.labels).encode())
    return h.hexdigest()


def data_config(cfg: VisionZooConfig) -> dict[str, Any]:
    """The preprocessing the model is trained and evaluated with (timm ``pretrained_cfg`` keys).

    Mean and std are those of the training split's pixels (scaled to [0, 1]), rounded.
    """
    import numpy as np

    from harness.data import images

    pixels = np.stack([np.asarray(im, dtype=np.float64) / 255 for im in images.digits("train").items])
    return {
        "input_size": [1, cfg.img_size, cfg.img_size],
        "interpolation": "bilinear",
        "mean": [round(float(pixels.mean()), 4)],
        "std": [round(float(pixels.std()), 4)],
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


def _timm_config(cfg: VisionZooConfig, model: Any, preprocessing: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` in timm's hub format (what ``local-dir:`` loading parses)."""
    traits = model.pretrained_cfg
    return {
        "architecture": cfg.architecture,
        "num_classes": cfg.model_args["num_classes"],
        "num_features": int(model.num_features),
        "model_args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.model_args.items()},
        "pretrained_cfg": {
            **preprocessing,
            "num_classes": cfg.model_args["num_classes"],
            "first_conv": traits.get("first_conv"),
            "classifier": traits.get("classifier"),
            "tag": "sparsebench_digits",
            "license": "apache-2.0",
            "fixed_input_size": bool(traits.get("fixed_input_size", False)),
        },
    }


def _tensors(split: str, preprocessing: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    from harness.data import images

    data = images.digits(split)
    transform = images.eval_transform(preprocessing)
    return torch.stack([transform(im) for im in data.items]), torch.tensor(data.labels)


def digits_accuracy(model: Any, preprocessing: dict[str, Any]) -> tuple[float, float]:
    """(top-1, top-5) of ``model`` on the 500 held-out digits, through the evaluation transform."""
    import torch

    x, y = _tensors("test", preprocessing)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        top5 = torch.cat([model(b).topk(5, dim=1).indices for b in x.split(256)])  # (n, 5)
    model.train(was_training)
    return float((top5[:, 0] == y).float().mean()), float((top5 == y[:, None]).any(1).float().mean())


def _train(model: Any, x: Any, y: Any, cfg: VisionZooConfig, steps: int, progress: Progress | None) -> float:
    """``steps`` AdamW steps on random batches of (x, y); returns the last training loss."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(cfg.seed)  # batch sampling only
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg)
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])  # logits (batch, classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        if progress is not None:
            progress(step + 1, steps, loss_value)
        if (step + 1) % _LOG_EVERY == 0 or step + 1 == steps:
            logger.info("%s: step %d/%d loss %.4f", cfg.name, step + 1, steps, loss_value)
    model.eval()
    return loss_value


def build_vision_model(name: str, out_dir: Path, *, steps: int | None = None,
                       progress: Progress | None = None) -> Path:
    """Train vision zoo model ``name`` from scratch and write its checkpoint directory.

    Args:
        name: A key of ``VISION_ZOO_MODELS``.
        out_dir: The checkpoint directory to write (created if missing).
        steps: Override the configured number of optimizer steps (e.g. 3 in tests).
        progress: Called after every step as ``progress(step, total, loss)``.

    Returns:
        ``out_dir``.
    """
    import safetensors.torch
    import sklearn
    import timm
    import torch

    cfg = get_vision_zoo_config(name)
    steps = cfg.steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)  # restored below; results depend on the count
    try:
        preprocessing = data_config(cfg)
        with torch.random.fork_rng(devices=[]):  # timm initializes from the global RNG
            torch.manual_seed(cfg.seed)
            model = timm.create_model(cfg.architecture, pretrained=False, **cfg.model_args)
        x, y = _tensors("train", preprocessing)  # (n, 1, S, S), (n,)
        final_loss = _train(model, x, y, cfg, steps, progress)
        top1, top5 = digits_accuracy(model, preprocessing)
    finally:
        torch.set_num_threads(threads)

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(out_dir / MODEL_FILE), metadata={"format": "pt"})
    config = _timm_config(cfg, model, preprocessing)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    manifest: dict[str, Any] = {
        "name": name,
        "architecture": cfg.architecture,
        "steps": steps,
        "seed": cfg.seed,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dataset": "sklearn.datasets.load_digits (fixed split: 1297 train / 500 test)",
        "digits_sha256": digits_sha256(),
        "train_images": len(y),
        "final_train_loss": round(final_loss, 6),
        "test_top1": round(top1, 4),
        "test_top5": round(top5, 4),
        "data_config": preprocessing,
        "model_sha256": checkpoint_sha256(out_dir),
        # Wall time is logged, not stored, so that equal builds give equal manifests.
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "timm": timm.__version__, "scikit-learn": sklearn.__version__},
        "num_threads": cfg.num_threads,
    }
    write_manifest(out_dir, manifest)
    logger.info("%s: built in %.1f s, digits top-1 %.4f -> %s", name, time.perf_counter() - t0, top1, out_dir)
    return out_dir


def vision_checkpoint_problem(path: Path, cfg: VisionZooConfig) -> str | None:
    """Why ``path`` is not a complete, current checkpoint of ``cfg``, or None if it is
    (trained with this architecture and step count on the current digits split)."""
    expected = {"name": cfg.name, "steps": cfg.steps, "architecture": cfg.architecture,
                "digits_sha256": digits_sha256()}
    return manifest_problem(path, REQUIRED_FILES, expected)


def ensure_vision_model(name: str, *, progress: Progress | None = None) -> Path:
    """The shipped checkpoint of vision zoo model ``name`` if complete, else a build in the cache.

    Raises:
        UnknownZooModelError: If ``name`` is not a vision zoo model.
    """
    cfg = get_vision_zoo_config(name)
    return ensure_checkpoint(
        name, lambda path: vision_checkpoint_problem(path, cfg),
        lambda out: build_vision_model(name, out, progress=progress), cost="about a minute on a CPU",
    )
