"""The method contract: three kinds of method, each with only the hooks its driver calls.

- :class:`LayerMethod` turns one weight matrix into a pruned one from its layer's input
  statistics (magnitude, Wanda, SparseGPT, OBC). The one prune loop (``harness.drivers``) owns
  hooks, statistics and propagation; a method only says which statistics it needs. This is the
  split of SparseGPT's ``sparsegpt.py`` versus ``opt.py``, with the loop written once.
  Statistics live in the loop (not in a per-method ``observe``) so that layers that read the
  same input (q/k/v, gate/up) share one Hessian.
- :class:`ModelMethod` prunes the whole model with a loss (WoodFisher, I-OBS, sparse_ft): it gets
  a :class:`harness.core.context.ModelContext` and returns one :class:`LayerReport` per layer.
- :class:`RecoveryMethod` (:mod:`harness.core.recovery`) solves ``synthetic:`` sparse-recovery
  problems and prunes no model.

Every kind has a frozen ``Params`` dataclass (one comment per field) and registers with
``@register_method("name")``; the name is a permanent leaderboard key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from harness.core.params import ParamsError, build_params, params_dict
from harness.core.registry import Registry
from harness.core.target import Target

if TYPE_CHECKING:
    from harness.core.context import ModelContext

__all__ = [
    "METHODS", "Category", "Kind", "LayerMethod", "LayerReport", "LayerStats", "MethodBase", "ModelMethod",
    "ParamsError", "PruneResult", "PruningMethod", "Scope", "Stats", "build_params", "params_dict", "register_method",
]

# What the loop gathers for LayerMethod.prune. "cross": the Hessian of the layer's inputs in the
# model being pruned (X_s) plus the cross-moment X_d^T X_s / n with its inputs in the dense model
# on the same tokens (I-OBS).
Stats = Literal["none", "diag", "hessian", "cross"]
Kind = Literal["layer", "model", "recovery"]
Category = Literal["one-shot", "fine-tuning"]  # the leaderboard labels fine-tuning methods
Scope = Literal["layer", "model"]  # where the target must hold


@dataclass
class LayerStats:
    """Calibration statistics of one layer's input X (tokens, d_in). Read-only for methods.

    Attributes:
        hessian: X^T X / n, (d_in, d_in) float32, or None when only the diagonal was gathered.
        diag: mean of x_j^2 per input feature, (d_in,) float32.
        n: number of token rows accumulated.
        cross: X_d^T X_s / n, (d_in, d_in) float32, when the method asked for ``stats = "cross"``:
            X_d are the layer's inputs in the dense model, X_s in the model being pruned.
        rows: X itself, (n, d_in) float32, when the loop kept it (n <= d_in) to measure the
            reconstruction error; None in what a method is handed.
    """

    diag: Any
    hessian: Any = None
    n: int = 0
    cross: Any = None
    rows: Any = None

    @classmethod
    def from_hessian(cls, hessian: Any, n: int = 0) -> "LayerStats":
        return cls(diag=hessian.diagonal().clone(), hessian=hessian, n=n)


@dataclass
class PruneResult:
    """What ``LayerMethod.prune`` returns: the new weight and notes worth recording."""

    weight: Any  # same shape as the input weight, (d_out, d_in)
    info: dict[str, Any] = field(default_factory=dict)  # JSON-safe notes, e.g. {"damping": 0.01}


@dataclass
class LayerReport:
    """What happened to one pruned layer (its sparsity is measured by the runner, never reported).

    Attributes:
        name: the layer's dotted module name.
        block: index of the unit it belongs to (decoder block, or a vision stage) for plots.
        rows, cols: the (d_out, d_in) the method saw (conv kernels flattened C_in-major).
        rel_error: ||(W - W')X||^2 / ||WX||^2 on the layer's calibration inputs, or None.
        time_s: seconds spent on this layer.
        info: the method's JSON-safe notes (``PruneResult.info``), stored with the layer.
    """

    name: str
    block: int
    rows: int
    cols: int
    rel_error: float | None
    time_s: float
    info: dict[str, Any] = field(default_factory=dict)


class MethodBase:
    """What every kind declares. Subclass :class:`LayerMethod`, :class:`ModelMethod` or
    :class:`harness.core.recovery.RecoveryMethod`, never this class.

    Class attributes:
        name: the registered name (set by ``register_method``).
        Params: a frozen dataclass of hyper-parameters, one comment per field.
        kind: which driver calls the method (set by the kind's base class).
        origin: ``"builtin"`` or the plugin's ``dist==version`` (set at registration).
        model_kinds: the model kinds (``harness.core.ids.KINDS``) the method applies to.
        category: ``"fine-tuning"`` methods are labelled on the leaderboard.
        modifies_weights: False only for the dense baseline. The loop then gathers no
            statistics, loads no calibration data and re-estimates no BatchNorm. The sparsity
            gate does not read it: every method but ``dense`` must reach its target.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = type("Params", (), {})
    kind: ClassVar[Kind]
    origin: ClassVar[str] = "builtin"
    model_kinds: ClassVar[tuple[str, ...]] = ("lm", "vision")
    category: ClassVar[Category] = "one-shot"
    modifies_weights: ClassVar[bool] = True

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.seed = 0  # the cell's seed, set by the runner before pruning (the record notes it)

    def generator(self, device: Any = "cpu") -> Any:
        """A ``torch.Generator`` seeded with the cell's seed: a stochastic method draws from it, so
        its seeds differ and each one reproduces."""
        import torch

        return torch.Generator(device=device).manual_seed(self.seed)

    def target_scope(self) -> Scope:
        """Where the target must hold: in every layer (default) or over all pruned layers together
        (one global threshold); the runner checks the measured sparsity accordingly."""
        return "layer"


class LayerMethod(MethodBase):
    """Prunes one weight matrix at a time from its layer's input statistics.

    Contract of :meth:`prune`:
        - ``weight`` is (d_out, d_in): a Linear weight, or a Conv2d kernel (C_out, C_in, k_h, k_w)
          flattened input-channel first (C_in major, then k_h, k_w), the layout of its unfolded
          input patches. N:M groups run along that d_in.
        - In an N:M target, N counts the *pruned* weights of each group of M consecutive inputs.
        - ``weight`` and ``stats`` must not be mutated: return a new tensor of the same shape.
        - ``PruneResult.info`` must be JSON-safe.

    Attributes:
        stats: what the loop gathers for ``prune``: ``"none"``, ``"diag"`` (mean x_j^2),
            ``"hessian"`` (X^T X / n) or ``"cross"`` (also the dense model's cross-moment; the
            loop then replays each unit with :meth:`dense_weights` swapped in).
        sequential_groups: prune the layers that share an input one group at a time
            (q,k,v -> o -> gate,up -> down), each group's statistics gathered after the groups
            before it were pruned (SparseGPT's ``--true-sequential``). May be set per instance.
    """

    kind: ClassVar[Kind] = "layer"
    stats: Stats = "hessian"
    sequential_groups: bool = False

    def prepare(self, weights: dict[str, Any], target: Target) -> None:
        """Called once with every prunable weight (name -> (d_out, d_in) tensor, read-only) before
        pruning starts; e.g. to compute one global threshold."""

    def dense_weights(self) -> dict[str, Any]:
        """For ``stats = "cross"``: the dense weight of every prunable layer (name -> tensor)."""
        raise NotImplementedError(f"{type(self).__name__} asks for cross statistics but keeps no dense weights")

    def prune(self, name: str, weight: Any, stats: LayerStats | None, target: Target) -> PruneResult:
        """Return the pruned ``weight`` of layer ``name`` at ``target`` (see the class docstring)."""
        raise NotImplementedError


class ModelMethod(MethodBase):
    """Prunes the whole model with its calibration loss, through a ``ModelContext``.

    :meth:`prune_model` changes ``ctx.layers``' weights in place (``ctx.set_weight``) and returns one
    :class:`LayerReport` per layer of ``ctx.layers``. Everything it needs from the model comes
    through ``ctx``: forwards and losses, weight swaps, and layer-wise passes of another method
    (``ctx.run_method``). Notes go to ``ctx.info``, curves to ``ctx.series`` (JSON-safe).
    """

    kind: ClassVar[Kind] = "model"

    def validation_samples(self) -> int:
        """How many held-out calibration samples the method wants in ``ctx.validation`` (0: none)."""
        return 0

    def prune_model(self, ctx: "ModelContext", target: Target) -> list[LayerReport]:
        raise NotImplementedError


PruningMethod = LayerMethod  # the name of the layer kind before the kinds were split; plugins keep working

METHODS: Registry[type[MethodBase]] = Registry("method")

_HOOKS = {"layer": "prune", "model": "prune_model", "recovery": "update"}


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


def check_method_class(cls: Any, name: str) -> None:
    """Raise TypeError unless ``cls`` is a method of one kind that implements that kind's hook."""
    if not (isinstance(cls, type) and issubclass(cls, MethodBase) and getattr(cls, "kind", None) in _HOOKS):
        raise TypeError(f"method {name!r} must subclass LayerMethod, ModelMethod or RecoveryMethod")
    if not dataclasses.is_dataclass(cls.Params):
        raise TypeError(f"{cls.__name__}.Params must be a dataclass")
    hook = _HOOKS[cls.kind]
    base = next(b for b in cls.__mro__ if b.__dict__.get("kind") == cls.kind and b.__module__.startswith("harness."))
    if getattr(cls, hook) is getattr(base, hook):
        raise TypeError(f"{cls.__name__} is a {cls.kind} method but does not implement {hook}")


def register_method(name: str):
    """Class decorator: ``@register_method("wanda")`` on a method class of one kind."""

    def wrap(cls: type[MethodBase]) -> type[MethodBase]:
        check_method_class(cls, name)
        cls.origin = _origin_of(cls)
        METHODS.register(name, cls, origin=cls.origin)
        cls.name = name
        return cls

    return wrap
