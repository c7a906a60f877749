"""``RunSpec``: one cell of a suite's grid, frozen, with a canonical JSON form and its hash.

Identity is what was run. The run id is the SHA-256 of the canonical JSON of the *pruned model*:
the model (and its weights), the method and every resolved param, the sparsity profile, the
target, calibration, layer selection and seed (:meth:`RunSpec.to_dict`). Neither the suite that
asked for the cell nor its evaluations are part of it: a suite is a tag, and any suite that asks
for a stored pruned model reuses it. Each evaluation (one perplexity set, one lm-eval task
list, one image set) has its own id (:class:`EvalRef`), and its metrics hang off
(run id, eval id), so a suite that adds an evaluation runs only that evaluation.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

SPEC_VERSION = 2  # 2: the suite and the evaluations left the run id (version 1 ids are aliases)
PACKAGE_PREFIX = "package:"  # a model's weights: package:MODULE/REL/PATH, a file inside an installed package
DENSE = "dense"  # the baseline method: one cell per model and seed, target "0"
DTYPES = ("auto", "float32", "float16", "bfloat16")  # a model's dtype in a suite
# A cell's time limit in minutes (suite key `timeout_min`, `harness run --timeout-min`): the default
# and the most a suite may ask. Not part of the spec: a limit changes no number, only whether one comes.
DEFAULT_TIMEOUT_MIN = 24 * 60
MAX_TIMEOUT_MIN = 7 * 24 * 60
# Which pruned-weight artifacts are kept after evaluation (suite key `keep`): "auto" keeps those of
# ok cells up to KEEP_AUTO_BYTES (small models), "ok" those of every ok cell, "all" also failed ones.
KEEP = ("auto", "none", "ok", "all")
KEEP_AUTO_BYTES = 2 << 30


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
    stream: bool | None = None  # causal LMs: read block by block from disk; None = when large (not in the run id)

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
        d.pop("stream")  # how the weights are read changes none of them
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

    def metric_name(self) -> str:
        """``<dataset>/ppl@<seqlen>``, and ``x<windows>`` when capped: numbers at another seqlen
        or on fewer windows are not comparable."""
        suffix = f"@{self.seqlen}" + (f"x{self.max_windows}" if self.max_windows else "")
        return f"{self.dataset}/ppl{suffix}"


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
class EvalRef:
    """One evaluation of a cell: its id (a hash of its kind and settings), kind and settings."""

    eval_id: str
    kind: str  # "perplexity", "lm_eval" or "images"
    identity: dict[str, Any]
    spec: Any  # the PerplexitySpec, LmEvalSpec or ImageEvalSpec
    publishable: bool = True


def eval_ref(kind: str, spec: Any) -> EvalRef:
    """The :class:`EvalRef` of one evaluation spec."""
    identity = spec.identity() if hasattr(spec, "identity") else asdict(spec)
    digest = hashlib.sha256(canonical_json({"kind": kind, **identity}).encode()).hexdigest()[:16]
    publishable = getattr(spec, "publishable", getattr(spec, "limit", None) is None)
    return EvalRef(digest, kind, identity, spec, bool(publishable))


@dataclass(frozen=True)
class RunSpec:
    suite: str  # the suite that asked for the cell (a tag, not identity)
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
    # Not identity: how the cell is shown, where its suite is, what is kept, how it is run.
    label: str | None = None  # the method entry's `label:`, shown instead of the derived variant name
    suite_path: str | None = None  # the suite file (absolute), for the Reproduce command
    keep: str = "auto"  # which pruned-weight artifacts are kept (KEEP)
    fresh: bool = False  # prune again even when the pruned model is stored (harness run --force)
    save: dict[str, str] | None = None  # {"dir": absolute folder, "format": "dense" | "compressed"}: export ok cells

    def to_dict(self) -> dict[str, Any]:
        """The pruned model's identity: everything that changes its weights, nothing else."""
        d: dict[str, Any] = {
            "model": self.model.identity(), "method": self.method, "params": dict(self.params),
            "target": self.target, "calibration": self.calibration.identity(), "layers": asdict(self.layers),
            "seed": self.seed, "version": self.version,
        }
        if self.profile is not None:
            d["profile"] = asdict(self.profile)
        return d

    def evals(self) -> list[EvalRef]:
        """The cell's evaluations, each with its own id, in the order they run."""
        refs = [eval_ref("perplexity", p) for p in self.perplexity]
        if self.lm_eval is not None:
            refs.append(eval_ref("lm_eval", self.lm_eval))
        refs += [eval_ref("images", e) for e in self.image_evals]
        return refs

    def evals_dict(self) -> list[dict[str, Any]]:
        """The evaluations as stored in a record (``RunSpec.from_dict`` reads them back)."""
        return [{"eval_id": e.eval_id, "kind": e.kind, "spec": _eval_settings(e)} for e in self.evals()]

    @property
    def publishable(self) -> bool:
        """False for trial runs whose numbers must not reach the leaderboard (an eval ``limit``)."""
        return all(e.publishable for e in self.evals())

    def canonical_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def short_id(self) -> str:
        return self.run_id[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any], batch_size: int = 8, evals: list[dict[str, Any]] | None = None,
                  suite: str | None = None) -> "RunSpec":
        """A spec from its identity (``to_dict``) and its evaluations (``evals_dict``); a version 1
        spec (suite and evaluations inside) is read too."""
        perplexity, lm_eval, images = list(d.get("perplexity", ())), d.get("lm_eval"), list(d.get("image_evals", ()))
        for e in evals or ():
            if e["kind"] == "perplexity":
                perplexity.append(e["spec"])
            elif e["kind"] == "lm_eval":
                lm_eval = e["spec"]
            else:
                images.append(e["spec"])
        return cls(
            suite=suite if suite is not None else d.get("suite", ""),
            model=ModelSpec(**d["model"]),
            method=d["method"],
            params=dict(d["params"]),
            target=d["target"],
            calibration=CalibrationSpec(**{"seqlen": None, **d["calibration"]}),
            perplexity=tuple(PerplexitySpec(**p) for p in perplexity),
            layers=LayerSelection(**{k: tuple(v) for k, v in d.get("layers", {}).items()}),
            seed=d.get("seed", 0),
            batch_size=batch_size,
            version=SPEC_VERSION,
            lm_eval=LmEvalSpec.from_dict(lm_eval) if lm_eval else None,
            image_evals=tuple(ImageEvalSpec(**e) for e in images),
            profile=SparsityProfile(**d["profile"]) if d.get("profile") else None,
        )


def _eval_settings(ref: EvalRef) -> dict[str, Any]:
    """Every setting of an evaluation (its identity plus those that change no number, e.g. a root)."""
    if ref.kind == "lm_eval":
        return {**ref.identity, "batch_size": ref.spec.batch_size}
    settings = asdict(ref.spec)
    if ref.kind == "images" and settings.get("root") is None:
        settings.pop("root")
    return settings


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, tuples as lists: the same spec always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
