"""``RunSpec``: one cell of a suite's grid, frozen, with a canonical JSON form and its hash.

The SHA-256 of the canonical JSON is the run id: a rerun of the same cell finds its stored
result and skips it. Anything that changes the numbers belongs in the spec.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

SPEC_VERSION = 1
PACKAGE_PREFIX = "package:"  # a model's weights: package:MODULE/REL/PATH, a file inside an installed package
DENSE = "dense"  # the baseline method: one cell per model and seed, target "0"
DTYPES = ("auto", "float32", "float16", "bfloat16")  # a model's dtype in a suite
# A cell's time limit in minutes (suite key `timeout_min`, `harness run --timeout-min`): the default
# and the most a suite may ask. Not part of the spec: a limit changes no number, only whether one comes.
DEFAULT_TIMEOUT_MIN = 24 * 60
MAX_TIMEOUT_MIN = 7 * 24 * 60


@dataclass(frozen=True)
class ModelSpec:
    """A model to prune. ``id`` carries a source prefix: ``zoo:``, ``hf:``, ``timm:`` or ``path:``."""

    id: str
    dtype: str = "auto"  # "auto" = float32 on CPU, float16 on CUDA for hf:, float32 for zoo: and vision
    revision: str | None = None  # hf: git revision / tag
    trust_remote_code: bool = False
    weights: str | None = None  # timm: a local checkpoint file instead of the hub's (in the run id when set)
    weights_keys: str = "name"  # "position": map the file's tensors onto the model's in order (in the run id then)
    problem: tuple[tuple[str, Any], ...] = ()  # synthetic: the resolved problem settings, sorted (key, value)

    def __post_init__(self) -> None:
        if isinstance(self.problem, dict):  # from a stored spec's JSON
            object.__setattr__(self, "problem", tuple(sorted(self.problem.items())))

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        if d["weights"] is None:  # absent unless set, so the run ids of earlier suites stay as they were
            del d["weights"]
        if d["weights_keys"] == "name":
            del d["weights_keys"]
        d.pop("problem")
        if self.problem:
            d["problem"] = dict(self.problem)
        return d

    @property
    def label(self) -> str:
        """How the model is shown and stored: the id, plus a synthetic problem's non-default settings."""
        if not self.problem:
            return self.id
        from harness.core.problems import label

        return label(self.id.split(":", 1)[1], dict(self.problem))


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration data. Text datasets use ``seqlen``; image datasets (digits, imagenet) use
    ``augment_rounds``, ``bn_recalibration``, ``root`` and ``sequential`` and have ``seqlen`` None."""

    dataset: str = "pydoc"
    n_samples: int = 128
    seqlen: int | None = 2048  # tokens per window (text); None for images
    seed: int = 0
    augment_rounds: int | None = None  # images: 0 = each image once, plain; R = R augmented copies (OBC: 10)
    bn_recalibration: bool | None = None  # images: re-estimate BatchNorm after pruning; None = if the model has BN
    # (a suite calibrating on photos gets False unless it says otherwise: harness.suite.vision)
    root: str | None = None  # imagenet: the train/ ImageFolder; None = $SPARSEBENCH_IMAGENET/train
    sequential: bool | None = None  # images: each layer's statistics after the earlier layers are pruned

    def identity(self) -> dict[str, Any]:
        """The fields that change results: ``root`` is where the files are, not which; unset image
        fields are left out, so text calibration keeps its earlier run ids."""
        d = asdict(self)
        del d["root"]
        return {k: v for k, v in d.items() if v is not None or k in ("dataset", "n_samples", "seed")}


@dataclass(frozen=True)
class ImageEvalSpec:
    """Top-1/top-5 accuracy on labelled images (``harness.data.images.eval_split``)."""

    dataset: str  # "digits" (the zoo's held-out split) or "imagenet" (the val/ ImageFolder)
    limit: int | None = None  # evenly spaced subset of this many images; set = not publishable
    root: str | None = None  # imagenet: the val/ ImageFolder; None = $SPARSEBENCH_IMAGENET/val (not identity)
    agreement: bool = False  # also top-1 agreement with, and KL from, the dense model on the same images

    def identity(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dataset": self.dataset, "limit": self.limit}
        if self.agreement:  # left out when off, so earlier run ids stay valid
            d["agreement"] = True
        return d


@dataclass(frozen=True)
class PerplexitySpec:
    dataset: str
    seqlen: int
    max_windows: int | None = None  # cap on evaluated windows (None = whole split, the paper protocol)


@dataclass(frozen=True)
class LmEvalSpec:
    """lm-eval tasks run on the pruned model in memory (``harness.evaluate.lm_eval_adapter``).

    ``batch_size`` and ``allow_unknown_tasks`` change no number, so they stay out of the
    run id (:meth:`identity`); everything else is part of it. ``metrics`` is too: it
    changes no number, but it decides which rows are marked headline in the record, and a
    changed headline should never sit beside stale flags under the same run id.
    """

    tasks: tuple[str, ...]  # lm-eval task or group names, e.g. ("tiny_suite",) or the Wanda 7
    num_fewshot: int = 0  # the Wanda protocol is zero-shot
    limit: int | float | None = None  # items per task (< 1: a fraction); set = not publishable
    max_length: int | None = None  # context window; None = the model's eval seqlen (zoo: 128)
    metrics: tuple[tuple[str, str], ...] = ()  # (task, headline metric) overrides, sorted
    batch_size: int = 16  # HFLM batch size; execution detail, not identity
    allow_unknown_tasks: bool = False  # validation only: accept names outside the known table

    @property
    def publishable(self) -> bool:
        """Only full task sets are leaderboard numbers; ``limit`` marks a run as a trial."""
        return self.limit is None

    def identity(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "num_fewshot": self.num_fewshot, "limit": self.limit,
                "max_length": self.max_length, "metrics": dict(self.metrics)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LmEvalSpec":
        return cls(tasks=tuple(d["tasks"]), num_fewshot=d.get("num_fewshot", 0), limit=d.get("limit"),
                   max_length=d.get("max_length"), metrics=tuple(sorted(dict(d.get("metrics") or {}).items())),
                   batch_size=d.get("batch_size", 16), allow_unknown_tasks=d.get("allow_unknown_tasks", False))


@dataclass(frozen=True)
class SparsityProfile:
    """Non-uniform per-layer sparsity around the target, for any layer-wise method.

    ``owl`` (Yin et al., ICML 2024, luuyin/OWL): each block's outlier ratio D is the share of
    its Wanda scores |W|·||X|| above ``m`` times their mean, measured on the dense model; the
    ratios are scaled to [0, 2·lmbda] and shifted so their mean density is 1 - target, i.e.
    blocks with more outliers are pruned less, each within target ± lmbda.
    """

    name: str = "owl"
    m: float = 5.0  # outlier threshold, a multiple of the mean score (OWL's Hyper_m)
    lmbda: float = 0.08  # the largest deviation from the target sparsity (OWL's Lamda)


@dataclass(frozen=True)
class LayerSelection:
    """Which layers are pruned (Python regexes on module names): an LM's Linear layers inside its decoder
    blocks; a classifier's Conv2d and Linear layers (stem and classifier dense unless a target names them)."""

    targets: tuple[str, ...] = ()  # empty = every prunable layer (see above)
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    suite: str
    model: ModelSpec
    method: str
    params: dict[str, Any]  # resolved: every field of the method's Params, defaults filled in
    target: str  # "0.5", "2:4"; "0" for the dense baseline
    calibration: CalibrationSpec
    perplexity: tuple[PerplexitySpec, ...] = ()
    layers: LayerSelection = field(default_factory=LayerSelection)
    seed: int = 0
    batch_size: int = 8  # calibration and eval batch size (does not change results)
    version: int = SPEC_VERSION
    lm_eval: LmEvalSpec | None = None  # zero-shot tasks; None = no lm-eval
    image_evals: tuple[ImageEvalSpec, ...] = ()  # vision: top-1/top-5 on digits or imagenet
    profile: SparsityProfile | None = None  # per-layer sparsity around the target; None = uniform

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("batch_size")  # execution detail, not part of the identity
        # Only present when set, so the run ids of suites without lm-eval or images stay as they were.
        d.pop("lm_eval")
        if self.lm_eval is not None:
            d["lm_eval"] = self.lm_eval.identity()
        d.pop("image_evals")
        if self.image_evals:
            d["image_evals"] = [e.identity() for e in self.image_evals]
        d.pop("profile")
        if self.profile is not None:
            d["profile"] = asdict(self.profile)
        d["model"] = self.model.identity()
        d["calibration"] = self.calibration.identity()
        return d

    @property
    def publishable(self) -> bool:
        """False for trial runs whose numbers must not reach the leaderboard (an eval ``limit``)."""
        return (self.lm_eval is None or self.lm_eval.publishable) and all(e.limit is None for e in self.image_evals)

    def canonical_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def short_id(self) -> str:
        return self.run_id[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any], batch_size: int = 8) -> "RunSpec":
        return cls(
            suite=d["suite"],
            model=ModelSpec(**d["model"]),
            method=d["method"],
            params=dict(d["params"]),
            target=d["target"],
            calibration=CalibrationSpec(**{"seqlen": None, **d["calibration"]}),
            perplexity=tuple(PerplexitySpec(**p) for p in d.get("perplexity", ())),
            layers=LayerSelection(**{k: tuple(v) for k, v in d.get("layers", {}).items()}),
            seed=d.get("seed", 0),
            batch_size=batch_size,
            version=d.get("version", SPEC_VERSION),
            lm_eval=LmEvalSpec.from_dict(d["lm_eval"]) if d.get("lm_eval") else None,
            image_evals=tuple(ImageEvalSpec(**e) for e in d.get("image_evals", ())),
            profile=SparsityProfile(**d["profile"]) if d.get("profile") else None,
        )


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, tuples as lists: the same spec always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
