"""Suite checks for image classifiers, used by :mod:`harness.suite.schema`.

- ``evals.digits: {limit, agreement}``, ``evals.imagenet: {root, limit, agreement}`` and
  ``evals.photos: {limit}`` (unlabelled: agreement with the dense model is all it measures);
- the calibration keys that only images have (``augment_rounds``, ``bn_recalibration``, ``root``)
  and the one only text has (``seqlen``);
- rules across keys: a suite holds language models or image classifiers, never both, and its
  calibration dataset and evals must suit them.

Whether an ImageNet folder exists is only known where the suite runs (a cluster may mount it
there), so a missing folder is a warning here and a one-line failure of the cell at run time.
Every function takes the file's :class:`~harness.suite.checker.Checker` as ``ck``.
"""
from __future__ import annotations

import os
from typing import Any

from harness.suite.checker import MAX_ITEMS, Check, Checker, check_bool, check_str, optional_int_in
from harness.suite.lines import LineDict
from harness.data.text import IMAGE_DATASETS, dataset_names
from harness.core.ids import ModelIdError, model_kind, parse_model_id
from harness.data.images import DIGITS_TEST, IMAGENET_ENV, PHOTOS_CROPS
from harness.core.spec import ImageEvalSpec

DIGITS_TRAIN = 1797 - DIGITS_TEST  # calibration images available in the digits training split
IMAGE_ONLY_KEYS = ("augment_rounds", "bn_recalibration", "root", "sequential")


def resolve_path(value: str, base_dir: str) -> str:
    """A path from the suite, relative to the suite's folder unless absolute (like ``path:`` ids)."""
    return value if os.path.isabs(value) else os.path.normpath(os.path.join(os.path.abspath(base_dir), value))


def suite_path(ck: Checker, value: str, base_dir: str, line: int, path: str) -> str | None:
    """:func:`resolve_path`, refusing a relative path that climbs out of the suite's folder (as
    ``path:`` ids do), so a suite cannot quietly reach into unrelated folders."""
    if not isinstance(value, str):
        return None  # already reported as "expected a string"
    rel = os.path.normpath(value)
    if not os.path.isabs(value) and (rel == os.pardir or rel.startswith(os.pardir + os.sep)):
        ck.err(line, path, f"relative path '{value}' leaves the suite's folder; use a path inside it "
                           "or an absolute path")
        return None
    return resolve_path(value, base_dir)


def package_warning(ck: Checker, weights: str, line: int, path: str) -> None:
    """``weights: package:MODULE/...`` whose package is not installed here: a warning, since it
    may be installed where the suite runs (the cells then fail with one line)."""
    from harness.models.load import package_dir, package_weights

    module, _, install = package_weights(weights)
    if package_dir(module) is None:
        ck.warn(line, path, f"package '{module}' is not installed here; the cells fail unless it is installed "
                            f"where the suite runs ({install})")


def _folder_warning(ck: Checker, line: int, path: str, root: str | None, split: str) -> None:
    if root is None and not os.environ.get(IMAGENET_ENV):
        ck.warn(line, path, f"no root given and {IMAGENET_ENV} is not set here; the cells fail unless it is "
                            f"set where the suite runs (the ImageNet folder holding train/ and val/)")
    else:
        folder = root if root is not None else os.path.join(os.environ[IMAGENET_ENV], split)
        if not os.path.isdir(folder):
            ck.warn(line, path, f"folder '{folder}' does not exist here; the cells fail unless it exists "
                                "where the suite runs")


def image_eval(dataset: str, base_dir: str) -> Check:
    """The check of ``evals.<dataset>``: ``{limit, agreement}`` (plus ``root`` for imagenet); null means ``{}``.

    ``photos`` has no labels, so agreement is always on there, and ``agreement: false`` is refused.
    """
    unlabelled = dataset == "photos"

    def check(ck: Checker, value: Any, path: str, line: int) -> ImageEvalSpec | None:
        if value is None:
            return ImageEvalSpec(dataset, agreement=unlabelled)
        schema: dict[str, Check] = {"limit": optional_int_in(MAX_ITEMS), "agreement": check_bool}
        if dataset == "imagenet":
            schema["root"] = check_str
        rec = ck.record(value, path, line, schema)
        if rec is None:
            return None
        root = None
        if rec.get("root"):
            root = suite_path(ck, rec["root"], base_dir, value.key_lines.get("root", line), f"{path}.root")
        if dataset == "imagenet":
            _folder_warning(ck, value.key_lines.get("root", line), path, root, "val")
        if unlabelled and rec.get("agreement") is False:
            ck.err(value.key_lines["agreement"], f"{path}.agreement", "photos has no labels: agreement with the "
                   "dense model is what it measures, so it cannot be off")
            return None
        return ImageEvalSpec(dataset, rec.get("limit"), root, unlabelled or bool(rec.get("agreement")))

    return check


def calibration_keys(ck: Checker, value: LineDict, path: str, base_dir: str) -> dict[str, Any]:
    """Judge the keys that belong to one kind of dataset; return the image fields (or {} for text).

    Images: ``seqlen`` is refused, ``augment_rounds`` defaults to 0, ``root`` is resolved
    against the suite's folder; text: the image-only keys are refused.
    """
    dataset = value.get("dataset", "pydoc")
    if dataset not in dataset_names():
        return {}
    if dataset not in IMAGE_DATASETS:
        for key in IMAGE_ONLY_KEYS:
            if key in value:
                ck.err(value.key_lines[key], f"{path}.{key}", f"'{key}' is for image datasets "
                       f"({', '.join(IMAGE_DATASETS)}); '{dataset}' is text")
        return {}
    if "seqlen" in value:
        ck.err(value.key_lines["seqlen"], f"{path}.seqlen", f"'seqlen' is for text datasets; '{dataset}' is images")
    available = {"digits": DIGITS_TRAIN, "photos": PHOTOS_CROPS}.get(dataset)
    if available and isinstance(value.get("n_samples"), int) and value["n_samples"] > available:
        ck.err(value.key_lines["n_samples"], f"{path}.n_samples",
               f"{dataset} has {available} training images; n_samples must be at most that")
    if "root" in value and dataset != "imagenet":
        ck.err(value.key_lines["root"], f"{path}.root", f"'root' is for imagenet; '{dataset}' ships with scikit-learn")
    root = None
    if isinstance(value.get("root"), str):
        root = suite_path(ck, value["root"], base_dir, value.key_lines["root"], f"{path}.root")
    if dataset == "imagenet":
        _folder_warning(ck, value.key_lines.get("root", value.line), path, root, "train")
    out = {"seqlen": None, "augment_rounds": value.get("augment_rounds", 0), "root": root}
    if dataset == "photos" and "bn_recalibration" not in value:
        # crops of two photos are no sample of a pretrained model's training data: statistics
        # re-estimated on them wreck it (measured: README, Vision), so here the default is off
        out["bn_recalibration"] = False
    return out


def model_kinds(data: LineDict) -> list[tuple[int, Any, str]]:
    """(index, id as written, kind) of each model in the raw suite whose kind is known; ids that do
    not parse are left out (the model check reports them)."""
    models = data.get("models") if isinstance(data.get("models"), list) else []
    out = []
    for i, item in enumerate(models):
        raw = item.get("id") if isinstance(item, dict) else item
        try:
            kind = model_kind(parse_model_id(raw))
        except ModelIdError:
            continue
        if kind is not None:
            out.append((i, raw, kind))
    return out


def kind_rules(ck: Checker, data: LineDict, dense_only: bool) -> None:
    """Rules across keys for the kinds of models: one kind per suite, matching calibration and evals."""
    models = data.get("models")
    kinds: dict[str, tuple[int, str]] = {}  # kind -> (line, id) of its first model
    for i, raw, kind in model_kinds(data):
        kinds.setdefault(kind, (models.item_lines[i], str(raw)))
    if len(kinds) > 1:
        words = {"lm": "language models", "vision": "image classifiers", "synthetic": "synthetic problems"}
        a, b = [k for k in words if k in kinds][:2]
        (line, first), (_, second) = kinds[a], kinds[b]
        ck.err(line, "models", f"a suite holds {words[a]} or {words[b]}, not both ({first} and {second}); "
                               "split it into two suites")
        return
    if "synthetic" in kinds:
        return  # harness.suite.synthetic judges synthetic suites
    if not kinds:
        return
    kind, (_, first) = next(iter(kinds.items()))
    calibration = data.get("calibration")
    dataset = calibration.get("dataset", "pydoc") if isinstance(calibration, dict) else "pydoc"
    if dataset in dataset_names() and (dataset in IMAGE_DATASETS) != (kind == "vision") and not dense_only:
        where = calibration.key_lines.get("dataset", calibration.line) if isinstance(calibration, LineDict) else data.line
        want = ", ".join(IMAGE_DATASETS) if kind == "vision" else "a text dataset (pydoc, wikitext2, c4)"
        what = "an image classifier" if kind == "vision" else "a language model"
        ck.err(where, "calibration.dataset", f"'{dataset}' does not suit {first}, {what}; use {want}")
    evals = data.get("evals") if isinstance(data.get("evals"), LineDict) else {}
    for key in evals:
        image_eval_key = key in IMAGE_DATASETS
        if key in ("perplexity", "lm_eval", *IMAGE_DATASETS) and image_eval_key != (kind == "vision"):
            what = "an image classifier" if kind == "vision" else "a language model"
            ck.err(evals.key_lines[key], f"evals.{key}", f"'{key}' does not suit {first}, {what}")
    save = data.get("save")
    if kind == "vision" and isinstance(save, LineDict) and save.get("format") == "compressed":
        ck.err(save.key_lines.get("format", save.line), "save.format", "'compressed' (compressed-tensors) is for "
               f"language models; {first} is an image classifier: use format: dense")


def profile_rules(ck: Checker, data: LineDict) -> None:
    """A sparsity profile (OWL) is measured over decoder blocks: language models only."""
    methods = data.get("methods") if isinstance(data.get("methods"), list) else []
    profiled = [(i, m) for i, m in enumerate(methods) if isinstance(m, dict) and m.get("sparsity_profile") == "owl"]
    if not profiled:
        return
    for _, raw, kind in model_kinds(data):
        if kind in ("vision", "synthetic"):
            i, m = profiled[0]
            what = "an image classifier" if kind == "vision" else "a synthetic problem"
            ck.err(m.key_lines["sparsity_profile"], f"methods[{i}].sparsity_profile",
                   f"sparsity_profile owl is measured over a language model's decoder blocks; {raw} is {what}")
            return
