"""Image datasets for vision models: calibration streams and evaluation splits (labelled or not).

Three datasets, all read as PIL images and preprocessed by each model's own data config
(``timm.data.resolve_data_config``), so one code path serves a 32-px digits ResNet and a
224-px ImageNet ViT:

- ``digits``: scikit-learn's bundled ``load_digits()`` (1,797 8x8 images, 10 classes; offline).
  A fixed split, independent of any run seed: :data:`DIGITS_TEST` images for evaluation,
  the rest for training and calibration.
- ``photos``: crops of scikit-learn's two bundled photos (``load_sample_images()``, a temple
  and a flower, 427x640), for ImageNet-pretrained models with no ImageNet at hand. They have
  no labels, so they are scored only by agreement with the dense model. Calibration crops come
  from the left half of each photo and evaluation crops from the right half, so the two never
  share a pixel; the crops are fixed (:data:`PHOTOS_CROPS` per split, drawn with a fixed seed).
- ``imagenet``: ImageFolder trees (``<root>/<wnid>/*.JPEG``). Evaluation reads ``val/``,
  calibration ``train/``; the roots come from the suite or ``$SPARSEBENCH_IMAGENET``
  (the ImageNet folder holding ``train/`` and ``val/``).

Calibration follows OBC (Frantar & Alistarh, NeurIPS 2022): ``n_samples`` training images drawn
with ``random.Random(seed)``; with ``augment_rounds = R > 0`` the stream holds R randomly
augmented copies of each (RandomResizedCrop, plus a horizontal flip for ImageNet), with
``R = 0`` each image once through the evaluation transform. All randomness comes from local
``random.Random`` instances; the global RNGs are never touched.
"""
from __future__ import annotations

import functools
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.data.text import DatasetUnavailable

IMAGENET_ENV = "SPARSEBENCH_IMAGENET"  # an ImageNet root holding train/ and val/ ImageFolders
DIGITS_TEST = 500  # held-out digits images; the other 1,297 are the training split
_DIGITS_SPLIT_SEED = 0  # fixed forever: changing it changes every digits number
PHOTOS_CROPS = 256  # crops per photos split (half from each photo)
_PHOTOS_SEED = 0  # fixed forever, like the digits split
_PHOTOS_SCALE = (0.1, 1.0)  # crop area as a fraction of the half photo (RandomResizedCrop's rule)
# RandomResizedCrop area range and flip per dataset: OBC's ImageNet recipe; digits are not
# mirror-symmetric and lose their strokes in small crops, so they get gentle crops, no flip.
_AUGMENT = {"imagenet": ((0.2, 1.0), True), "photos": ((0.2, 1.0), True), "digits": ((0.6, 1.0), False)}


@dataclass(frozen=True)
class LabelledImages:
    """A list of images (PIL images or file paths) and their class indices."""

    items: list[Any]
    labels: list[int]  # empty for unlabelled images (photos)
    source: str  # where they came from, for the record: "sklearn load_digits" or a folder


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[Any, Any, list[int]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = list(range(len(bunch.target)))
    random.Random(_DIGITS_SPLIT_SEED).shuffle(order)
    return bunch.images, bunch.target, order


def digits(split: str) -> LabelledImages:
    """The fixed digits split, ``"train"`` (1,297 images) or ``"test"`` (500), as 8x8 PIL images.

    Pixel values 0..16 are scaled to 0..255 (uint8, mode ``L``).
    """
    import numpy as np
    from PIL import Image

    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    images, target, order = _digits()
    idx = order[:DIGITS_TEST] if split == "test" else order[DIGITS_TEST:]
    pil = [Image.fromarray(np.round(images[i] * (255 / 16)).astype(np.uint8), mode="L") for i in idx]
    return LabelledImages(pil, [int(target[i]) for i in idx], "sklearn.datasets.load_digits")


def photo_boxes(split: str, sizes: list[tuple[int, int]]) -> list[tuple[int, tuple[int, int, int, int], bool]]:
    """The fixed crops of the photos ``split``: (photo index, (left, top, right, bottom) in the
    photo's pixels, mirrored), :data:`PHOTOS_CROPS` in all, half from each photo of ``sizes``
    ((width, height) each). ``"train"`` boxes lie in the left half of a photo, ``"test"`` boxes in
    the right half; each is a random resized crop box (area :data:`_PHOTOS_SCALE` of the half,
    aspect 3/4..4/3), drawn from a ``random.Random`` seeded per split."""
    if split not in ("train", "test"):
        raise ValueError(f"photos split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"photos-{split}-{_PHOTOS_SEED}")
    out = []
    for index, (width, height) in enumerate(sizes):
        half = width // 2
        x0 = 0 if split == "train" else half
        region_w = half if split == "train" else width - half
        for _ in range(PHOTOS_CROPS // len(sizes)):
            top, left, h, w = _random_crop_box(rng, region_w, height, _PHOTOS_SCALE)
            out.append((index, (x0 + left, top, x0 + left + w, top + h), rng.random() < 0.5))
    return out


@functools.lru_cache(maxsize=2)
def photos(split: str) -> LabelledImages:
    """The fixed photos split (:func:`photo_boxes`) as RGB PIL crops, unlabelled; the model's own
    evaluation transform then resizes them."""
    from PIL import Image, ImageOps
    from sklearn.datasets import load_sample_images

    originals = [Image.fromarray(a) for a in load_sample_images().images]
    crops = []
    for index, box, mirrored in photo_boxes(split, [p.size for p in originals]):
        crop = originals[index].crop(box)
        crops.append(ImageOps.mirror(crop) if mirrored else crop)
    side = "left" if split == "train" else "right"
    return LabelledImages(crops, [], f"sklearn.datasets.load_sample_images ({side} halves, {len(crops)} crops)")


def imagenet_root(split: str, root: str | None) -> Path:
    """The ImageFolder of ``split`` ("train" or "val"): ``root`` if given, else ``$SPARSEBENCH_IMAGENET/<split>``.

    Raises:
        DatasetUnavailable: one line naming the folder that is missing and how to give it.
    """
    where = "evals.imagenet.root" if split == "val" else "calibration.root"
    if root is None:
        base = os.environ.get(IMAGENET_ENV)
        if not base:
            raise DatasetUnavailable(
                f"imagenet {split} images: no folder given; set {where} in the suite to an ImageFolder "
                f"({split}/<wnid>/*.JPEG) or {IMAGENET_ENV} to the ImageNet root holding train/ and val/")
        path = Path(base) / split
    else:
        path = Path(root)
    if not path.is_dir():
        raise DatasetUnavailable(
            f"imagenet {split} folder '{path}' does not exist here; point {where} (or {IMAGENET_ENV}, "
            f"the root holding train/ and val/) at an ImageFolder with one sub-folder per class")
    return path


@functools.lru_cache(maxsize=4)
def _scan(folder: str) -> tuple[list[str], list[int], int]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    classes, index = find_classes(folder)
    samples = make_dataset(folder, index, extensions=IMG_EXTENSIONS)
    return [p for p, _ in samples], [c for _, c in samples], len(classes)


def imagenet(split: str, root: str | None) -> LabelledImages:
    """Every image of an ImageFolder, sorted by class folder then file name (torchvision order)."""
    path = imagenet_root(split, root)
    try:
        paths, labels, n_classes = _scan(str(path))
    except (FileNotFoundError, OSError) as exc:
        raise DatasetUnavailable(f"imagenet {split} folder '{path}': {str(exc).splitlines()[0]}") from exc
    if n_classes != 1000:
        raise DatasetUnavailable(f"imagenet {split} folder '{path}' has {n_classes} class folders, expected 1000")
    return LabelledImages(paths, labels, str(path))


def evenly_spaced(total: int, limit: int | None) -> list[int]:
    """Indices of a deterministic subset: every (total/limit)-th item, so ImageFolder classes stay balanced."""
    if limit is None or limit >= total:
        return list(range(total))
    return [i * total // limit for i in range(limit)]


def _mode(data_config: dict[str, Any]) -> str:
    return "L" if data_config["input_size"][0] == 1 else "RGB"


def _open(item: Any, mode: str) -> Any:
    from PIL import Image

    if isinstance(item, (str, Path)):
        with Image.open(item) as img:
            return img.convert(mode)
    return item.convert(mode) if item.mode != mode else item


def eval_transform(data_config: dict[str, Any]) -> Callable[[Any], Any]:
    """timm's evaluation transform for the model (resize, center crop, normalize)."""
    from timm.data import create_transform

    return create_transform(**data_config)


def _random_crop_box(rng: random.Random, width: int, height: int, scale: tuple[float, float],
                     ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w), drawn from ``rng`` (torchvision's rule)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return 0, 0, height, width  # fallback: the whole image


def augment_transform(dataset: str, data_config: dict[str, Any]) -> Callable[[Any, random.Random], Any]:
    """OBC's calibration augmentation: a random resized crop to the input size (+ flip), then normalize."""
    import torchvision.transforms.functional as TF
    from timm.data.transforms import str_to_interp_mode

    scale, flip = _AUGMENT[dataset]
    size = list(data_config["input_size"][1:])
    interp = str_to_interp_mode(data_config.get("interpolation", "bilinear"))
    mean, std = list(data_config["mean"]), list(data_config["std"])

    def apply(img: Any, rng: random.Random) -> Any:
        top, left, h, w = _random_crop_box(rng, img.width, img.height, scale)
        out = TF.resized_crop(img, top, left, h, w, size, interp)
        if flip and rng.random() < 0.5:
            out = TF.hflip(out)
        return TF.normalize(TF.to_tensor(out), mean, std)

    return apply


@dataclass
class ImageStream:
    """A deterministic stream of preprocessed images: every iteration yields identical batches.

    ``rounds == 0`` is each image once through the evaluation transform; ``rounds = R`` is R
    augmented copies of each, the augmentation drawn from ``random.Random(seed)`` afresh on
    every pass (so the Hessian pass and the BatchNorm pass see the same images).
    """

    items: list[Any]
    data_config: dict[str, Any]
    dataset: str
    rounds: int = 0
    seed: int = 0
    labels: tuple[int, ...] = ()  # class of each item, when known (image i of a pass is item i % len(items))

    def __len__(self) -> int:
        return len(self.items) * max(self.rounds, 1)

    def batches(self, batch_size: int) -> Iterator[Any]:
        """Batches (b, C, H, W) float32; the last may be smaller."""
        import torch

        mode = _mode(self.data_config)
        if self.rounds == 0:
            plain = eval_transform(self.data_config)
            images: Iterator[Any] = (plain(_open(it, mode)) for it in self.items)
        else:
            aug, rng = augment_transform(self.dataset, self.data_config), random.Random(self.seed)
            images = (aug(_open(it, mode), rng) for _ in range(self.rounds) for it in self.items)
        buf = []
        for x in images:
            buf.append(x)
            if len(buf) == batch_size:
                yield torch.stack(buf)
                buf = []
        if buf:
            yield torch.stack(buf)


def calibration_stream(dataset: str, data_config: dict[str, Any], n_samples: int, seed: int,
                       augment_rounds: int = 0, root: str | None = None) -> ImageStream:
    """``n_samples`` training images drawn with ``random.Random(seed)`` (without replacement)."""
    source = _split(dataset, "train", root)
    if n_samples > len(source.items):
        raise ValueError(f"calibration.n_samples {n_samples} exceeds the {len(source.items)} {dataset} training images")
    picks = random.Random(seed).sample(range(len(source.items)), n_samples)
    return ImageStream([source.items[i] for i in picks], data_config, dataset, augment_rounds, seed,
                       tuple(source.labels[i] for i in picks) if source.labels else ())


def eval_split(dataset: str, root: str | None = None, limit: int | None = None) -> LabelledImages:
    """The evaluation images: the digits or photos test split or ImageNet val, evenly subsampled to ``limit``."""
    full = _split(dataset, "test", root)
    keep = evenly_spaced(len(full.items), limit)
    return LabelledImages([full.items[i] for i in keep], [full.labels[i] for i in keep] if full.labels else [],
                          full.source)


def _split(dataset: str, split: str, root: str | None) -> LabelledImages:
    """``split`` ("train" or "test") of a named image dataset; ImageNet's test split is val/."""
    if dataset == "digits":
        return digits(split)
    if dataset == "photos":
        return photos(split)
    return imagenet("train" if split == "train" else "val", root)


def predict(model: Any, split: LabelledImages, data_config: dict[str, Any], *, device: Any = "cpu",
            batch_size: int = 64, progress: Callable[[int, int], None] | None = None) -> Any:
    """The model's logits on ``split`` through its evaluation transform, (images, classes) float32 on the CPU."""
    import torch

    param = next(model.parameters())
    out, done = [], 0
    stream = ImageStream(split.items, data_config, "eval")
    with torch.no_grad():
        for x in stream.batches(batch_size):
            out.append(model(x.to(device, param.dtype)).float().cpu())  # (b, classes)
            done += x.shape[0]
            if progress is not None:
                progress(done, len(split.items))
    if done == 0:
        raise ValueError(f"no evaluation images in {split.source}")
    return torch.cat(out)


def accuracy_of(logits: Any, split: LabelledImages) -> tuple[float, float | None, int]:
    """(top-1, top-5, images) from logits (images, classes); top-5 is None below 5 classes."""
    import torch

    if not split.labels:
        raise ValueError(f"{split.source} has no labels; score it by agreement with the dense model")
    labels = torch.tensor(split.labels)
    if int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"the model has {logits.shape[1]} classes but {split.source} has labels up to "
                         f"{int(labels.max())}")
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (n, k)
    n = logits.shape[0]
    top5 = float((top == labels[:, None]).any(1).float().mean()) if logits.shape[1] >= 5 else None
    return float((top[:, 0] == labels).float().mean()), top5, n


def accuracy(model: Any, split: LabelledImages, data_config: dict[str, Any], *, device: Any = "cpu",
             batch_size: int = 64, progress: Callable[[int, int], None] | None = None) -> tuple[float, float | None, int]:
    """(top-1, top-5, images) of ``model`` on ``split`` through its evaluation transform."""
    logits = predict(model, split, data_config, device=device, batch_size=batch_size, progress=progress)
    return accuracy_of(logits, split)


def agreement(logits: Any, dense_logits: Any) -> tuple[float, float, float]:
    """(top-1 agreement, mean KL(p_dense ‖ p_model) in nats per image, its standard error) against
    the dense model's logits.

    Needs no labels: a way to score a pruned model on any images, and a finer signal than top-1
    (two models with equal accuracy can disagree on many images).
    """
    import torch.nn.functional as F

    if logits.shape != dense_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and dense logits {tuple(dense_logits.shape)} differ")
    agree = float((logits.argmax(1) == dense_logits.argmax(1)).float().mean())
    ref, cur = F.log_softmax(dense_logits.double(), 1), F.log_softmax(logits.double(), 1)
    kl = (ref.exp() * (ref - cur)).sum(1)  # (images,)
    stderr = float(kl.std() / kl.numel() ** 0.5) if kl.numel() > 1 else 0.0
    return agree, float(kl.mean()), stderr
