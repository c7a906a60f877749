"""The pruning-method contract: a frozen ``Params`` dataclass and a pure per-layer ``prune``.

The layer-sequential driver (``harness.calibration``) owns hooks and statistics; a method
only says which statistics it needs and turns one weight matrix into a pruned one. This is
the split of SparseGPT's ``sparsegpt.py`` versus ``opt.py``, with the driver written once.
Statistics live in the driver (not in a per-method ``observe``) so that sub-layers that read
the same input (q/k/v, gate/up) share one Hessian.
"""
from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from harness.registry import Registry, suggest
from harness.target import Target

if TYPE_CHECKING:
    from harness.calibration import LayerReport
    from harness.global_driver import ModelContext

# "cross": the Hessian of the layer's inputs in the model being pruned (X_s) plus the
# cross-moment X_d^T X_s / n with its inputs in the dense model on the same tokens (I-OBS).
Stats = Literal["none", "diag", "hessian", "cross"]
Level = Literal["layer", "model"]  # pruned one layer at a time, or the whole model with a loss
Category = Literal["one-shot", "fine-tuning"]  # the leaderboard labels fine-tuning methods


@dataclass
class LayerStats:
    """Calibration statistics of one layer's input X (tokens, d_in).

    Attributes:
        hessian: X^T X / n, (d_in, d_in) float32, or None when only the diagonal was gathered.
        diag: mean of x_j^2 per input feature, (d_in,) float32.
        n: number of token rows accumulated.
        cross: X_d^T X_s / n, (d_in, d_in) float32, when the method asked for ``stats = "cross"``:
            X_d are the layer's inputs in the dense model, X_s in the model being pruned.
    """

    diag: Any
    hessian: Any = None
    n: int = 0
    cross: Any = None

    @classmethod
    def from_hessian(cls, hessian: Any, n: int = 0) -> "LayerStats":
        return cls(diag=hessian.diagonal().clone(), hessian=hessian, n=n)


@dataclass
class PruneResult:
    """What ``PruningMethod.prune`` returns: the new weight and notes worth recording."""

    weight: Any  # same shape as the input weight
    info: dict[str, Any] = field(default_factory=dict)  # e.g. {"damping": 0.01, "retries": 1}


class ParamsError(ValueError):
    """A params mapping that does not fit a method's ``Params`` dataclass."""

    def __init__(self, problems: list[tuple[str, str]]):
        # (key or "", message) pairs so the suite loader can point at the right line
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" if k else m for k, m in problems))


class PruningMethod:
    """Base class of every registered method.

    Subclasses set ``Params`` (a frozen dataclass with one comment per field), ``stats``,
    and implement ``prune``. A method that needs the whole model (global thresholds) may
    override ``prepare``, which the driver calls once before the layer-sequential pass.

    A method that needs the whole model *and a loss* (WoodFisher, fine-tuning) sets
    ``level = "model"`` and implements ``prune_model`` instead of ``prune``; the runner then
    uses ``harness.global_driver``, which shares hooks, sparsity measurement and reporting
    with the layer path.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = type("Params", (), {})
    stats: ClassVar[Stats] = "hessian"  # what the driver must gather for prune()
    needs_calibration: ClassVar[bool] = True
    modifies_weights: ClassVar[bool] = True  # False only for the dense baseline
    origin: ClassVar[str] = "builtin"
    model_kinds: ClassVar[tuple[str, ...]] = ("lm", "vision")  # harness.ids.KINDS this method applies to
    level: ClassVar[Level] = "layer"  # "model": prune_model(ctx, target) replaces prune()
    category: ClassVar[Category] = "one-shot"  # recorded with each result; "fine-tuning" is labelled

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    def prepare(self, weights: dict[str, Any], target: Target) -> None:
        """Called once with every prunable weight (name -> tensor) before pruning starts."""

    def dense_weights(self) -> dict[str, Any]:
        """For ``stats = "cross"``: the dense weight of every prunable layer (name -> tensor),
        which the driver swaps in to replay each block as the dense model computes it."""
        raise NotImplementedError(f"{type(self).__name__} asks for cross statistics but keeps no dense weights")

    def prune(self, name: str, weight: Any, stats: LayerStats | None, target: Target) -> PruneResult:
        raise NotImplementedError

    def prune_model(self, ctx: "ModelContext", target: Target) -> "list[LayerReport]":
        """Model-level methods: prune ``ctx.layers`` in place and return one report per layer."""
        raise NotImplementedError

    def target_scope(self) -> Literal["layer", "model"]:
        """Where the target must hold: in every layer (default) or over all pruned layers together
        (one global threshold); the runner checks measured sparsity accordingly."""
        return "layer"


METHODS: Registry[type[PruningMethod]] = Registry("method")


def _origin_of(cls: type) -> str:
    top = cls.__module__.split(".")[0]
    if top in ("methods", "harness", "tests", "__main__"):
        return "builtin"
    try:
        from importlib.metadata import packages_distributions, version

        dists = packages_distributions().get(top, [])
        if dists:
            return f"{dists[0]}=={version(dists[0])}"
    except Exception:  # metadata is best effort provenance; the module name still identifies it
        pass
    return f"module:{cls.__module__}"


def register_method(name: str):
    """Class decorator: ``@register_method("wanda")`` on a ``PruningMethod`` subclass."""

    def wrap(cls: type[PruningMethod]) -> type[PruningMethod]:
        if not (isinstance(cls, type) and issubclass(cls, PruningMethod)):
            raise TypeError(f"@register_method({name!r}) must decorate a PruningMethod subclass")
        if not dataclasses.is_dataclass(cls.Params):
            raise TypeError(f"{cls.__name__}.Params must be a dataclass")
        if cls.level == "model" and cls.prune_model is PruningMethod.prune_model:
            raise TypeError(f"{cls.__name__} declares level 'model' but does not implement prune_model")
        cls.origin = _origin_of(cls)
        METHODS.register(name, cls, origin=cls.origin)
        cls.name = name
        return cls

    return wrap


def get_method(name: str) -> type[PruningMethod]:
    from harness.registry import discover

    discover()
    return METHODS.get(name)


def list_methods() -> list[str]:
    from harness.registry import discover

    discover()
    return METHODS.names()


def _check_type(value: Any, annotation: Any) -> bool:
    """A small runtime check for the field types Params use (bool/int/float/str/Literal/Optional)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_check_type(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def build_params(cls: type[PruningMethod], raw: dict[str, Any] | None) -> Any:
    """Build ``cls.Params`` from a mapping, collecting every problem into one ParamsError."""
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    hints = typing.get_type_hints(cls.Params, vars(sys.modules[cls.Params.__module__]))
    problems: list[tuple[str, str]] = []
    for key in raw:
        if key not in fields:
            close = suggest(str(key), list(fields))
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            valid = ", ".join(fields) or "none"
            problems.append((str(key), f"unknown key '{key}'{hint}; valid keys: {valid}"))
    for key, value in raw.items():
        if key in fields and not _check_type(value, hints.get(key, Any)):
            problems.append((key, f"expected {_describe(hints.get(key))}, got {value!r}"))
    if problems:
        raise ParamsError(problems)
    try:
        params = cls.Params(**{k: (float(v) if hints.get(k) is float else v) for k, v in raw.items()})
        check = getattr(params, "validate", None)
        if callable(check):
            check()
    except (ValueError, TypeError) as exc:  # __post_init__ or validate() rejected the values
        raise ParamsError([("", str(exc))]) from None
    return params


def params_dict(params: Any) -> dict[str, Any]:
    """The resolved params (defaults filled in) as a plain dict, for specs and records."""
    return dataclasses.asdict(params)
