"""Load a suite file into a frozen ``Suite``, and expand it into its grid of ``RunSpec`` cells.

``load_suite`` runs every check that needs no weights (house style rule 6): the shape and
types of the file, method names and their ``Params``, targets, model ids, dataset names and
layer regexes. It collects every problem before raising one ``SuiteError`` (HELM's
collect-then-raise), so a user fixes a suite in one pass. Each problem is one line::

    suites/x.yaml:14: methods[1].params: unknown key 'sparsty' (did you mean 'sparsity'?); valid keys: ...

Problems about the whole file (unreadable, larger than 1 MiB, binary, empty) have no line:
``suites/x.yaml: binary file ...``. This module imports no torch, so ``harness validate`` is
fast; note that resolving method names imports the ``methods`` package, and that ``timm:``
model names are checked against timm's registry, which imports timm (and torch) for the suites
that name one. Image-classifier rules live in :mod:`harness.suite.vision`; what only the
running machine can know (an ImageNet folder) is a warning, logged and kept in ``Suite.warnings``.

Seeds: the top-level ``seeds`` list makes one cell per seed, and a cell's seed is also its
calibration seed. ``calibration.seed`` is accepted as the single seed when ``seeds`` is absent;
giving both is an error, because one of them would be silently ignored.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Callable, Iterable

from harness.suite import synthetic as _suite_synthetic, vision as _suite_vision
from harness.suite.lines import LineDict, LineList, YamlError, load_file
from harness.data.text import IMAGE_DATASETS, dataset_names, text_dataset_names
from harness.core.ids import ModelIdError, parse_model_id
from harness.core.method import ParamsError, build_params, params_dict
from harness.plugins import get_method
from harness.core.registry import UnknownNameError, suggest, unknown_message
from harness.core.spec import (PACKAGE_PREFIX, CalibrationSpec, ImageEvalSpec, LayerSelection, LmEvalSpec, ModelSpec,
                          PerplexitySpec, RunSpec, SparsityProfile, canonical_json)
from harness.core.problems import target_of
from harness.core.target import Target, TargetError

log = logging.getLogger(__name__)

DENSE = "dense"  # the baseline method: one cell per model and seed, target "0"
DTYPES = ("auto", "float32", "float16", "bfloat16")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_MAX_MESSAGE = 1000  # characters; a message quotes user input, which may be huge
_ESCAPE_BREAKS = {ord(c): ascii(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a suite: where (file, 1-based line, path in the data) and what."""

    file: str
    line: int | None  # None for whole-file problems (unreadable, too large, binary, empty)
    path: str  # e.g. "methods[1].params"; "" for the document itself
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:" if self.line is not None else f"{self.file}:"
        text = f"{where} {self.path}: {self.message}" if self.path else f"{where} {self.message}"
        text = text.translate(_ESCAPE_BREAKS)  # one line per problem, even if a quoted key holds "\n"
        return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


class SuiteError(Exception):
    """Every problem found in a suite; ``str`` gives one ``file:line: path: message`` line each."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(problems, key=lambda p: p.line or 0)  # stable: same-line order kept
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Suite:
    """A validated suite. ``methods`` holds (name, resolved params, sparsity profile or None) with
    every default filled in."""

    path: str
    name: str
    description: str
    text: str = field(repr=False)  # the raw YAML, frozen into every stored record
    models: tuple[ModelSpec, ...] = ()
    methods: tuple[tuple[str, dict[str, Any], SparsityProfile | None], ...] = ()  # (name, params, profile)
    targets: tuple[Target, ...] = ()
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    perplexity: tuple[PerplexitySpec, ...] = ()
    layers: LayerSelection = field(default_factory=LayerSelection)
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 8
    lm_eval: LmEvalSpec | None = None
    image_evals: tuple[ImageEvalSpec, ...] = ()
    warnings: tuple[str, ...] = ()  # file:line lines about things only the running machine can know


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key(key: Any, valid: Iterable[str]) -> str:
    valid = list(valid)
    close = suggest(str(key), valid)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}; valid keys: {', '.join(valid)}"


def _key_line(mapping: LineDict, key: str) -> int:
    # build_params reports str(key); match it back to the key as written (`1:` is an int)
    return next((ln for k, ln in mapping.key_lines.items() if str(k) == key), mapping.line)


# A check takes (checker, value, path, line), reports what is wrong and returns the checked value.
Check = Callable[["_Checker", Any, str, int], Any]


class _Checker:
    """Collects the problems of one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def err(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, path, message))

    def warn(self, line: int | None, path: str, message: str) -> None:
        self.warnings.append(Problem(self.file, line, path, message))

    def record(self, value: Any, path: str, line: int, schema: dict[str, Check], required: Iterable[str] = (),
               expected: str = "") -> dict[str, Any] | None:
        """Check a mapping against ``schema``: the checked values of the keys present, or None if
        anything inside it was wrong. Every key is checked, so all of its problems are reported."""
        if not isinstance(value, LineDict):
            expected = expected or f"a mapping with keys {', '.join(schema)}"
            self.err(line, path, f"expected {expected}; got {_got(value)}")
            return None
        before = len(self.problems)
        for key in value:
            if key not in schema:
                self.err(value.key_lines[key], path, _unknown_key(key, schema))
        for key in required:
            if key not in value:
                self.err(value.line, path, f"missing required key '{key}'")
        out = {key: check(self, value[key], f"{path}.{key}" if path else key, value.key_lines[key])
               for key, check in schema.items() if key in value}
        return out if len(self.problems) == before else None

    def items(self, value: Any, path: str, line: int, what: str, check: Check, allow_empty: bool = False,
              key: Callable[[Any], Any] = lambda v: v) -> list[Any]:
        """Check a list item by item; items equal (by ``key``) to an earlier one are reported."""
        if not isinstance(value, LineList):
            self.err(line, path, f"expected a list of {what}s; got {_got(value)}")
            return []
        if not value and not allow_empty:
            self.err(line, path, f"empty list; at least one {what} is needed")
        out, first = [], {}
        for i, item in enumerate(value):
            before = len(self.problems)
            out.append(check(self, item, f"{path}[{i}]", value.item_lines[i]))
            if len(self.problems) == before:
                j = first.setdefault(key(out[-1]), i)
                if j != i:
                    self.err(value.item_lines[i], f"{path}[{i}]", f"duplicate of {path}[{j}]")
        return out

    def integer(self, value: Any, path: str, line: int, minimum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            bound = "> 0" if minimum == 1 else f">= {minimum}"
            self.err(line, path, f"expected an integer {bound}; got {_got(value)}")
        return value

    def string(self, value: Any, path: str, line: int) -> str | None:
        if not isinstance(value, str):
            self.err(line, path, f"expected a string; got {_got(value)}")
        return value

    def boolean(self, value: Any, path: str, line: int) -> bool | None:
        if not isinstance(value, bool):
            self.err(line, path, f"expected true or false; got {_got(value)}")
        return value

    def choice(self, value: Any, path: str, line: int, choices: list[str], kind: str) -> str | None:
        if isinstance(self.string(value, path, line), str) and value not in choices:
            self.err(line, path, unknown_message(kind, value, choices))
        return value


def _int(minimum: int) -> Check:
    return lambda ck, value, path, line: ck.integer(value, path, line, minimum)


def _str(ck: _Checker, value: Any, path: str, line: int) -> Any:
    return ck.string(value, path, line)


def _bool(ck: _Checker, value: Any, path: str, line: int) -> Any:
    return ck.boolean(value, path, line)


def _dataset(ck: _Checker, value: Any, path: str, line: int) -> Any:
    return ck.choice(value, path, line, dataset_names(), "dataset")


def _name(ck: _Checker, value: Any, path: str, line: int) -> Any:
    if isinstance(ck.string(value, path, line), str) and not _NAME.fullmatch(value):
        ck.err(line, path, f"'{value}' may use only letters, digits, '_', '.' and '-' (it is in every run id)")
    return value


def _description(ck: _Checker, value: Any, path: str, line: int) -> Any:
    return "" if value is None else ck.string(value, path, line)  # `description:` left empty


def _model_id(ck: _Checker, value: Any, path: str, line: int, base_dir: str) -> str | None:
    try:
        ref = parse_model_id(value)
    except ModelIdError as exc:
        ck.err(line, path, str(exc))
        return None
    if ref.source != "path" or os.path.isabs(ref.name):
        return str(ref)
    # Relative to the suite's folder, so the suite works from any working directory; it may not
    # climb out of it, so a suite cannot quietly reach into unrelated folders.
    rel = os.path.normpath(ref.name)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        ck.err(line, path, f"relative path '{ref.name}' leaves the suite's folder; use a path inside it "
                           "or an absolute path")
        return None
    return "path:" + os.path.join(os.path.abspath(base_dir), rel)


_MODEL: dict[str, Check] = {
    "id": _str,
    "dtype": lambda ck, v, p, ln: ck.choice(v, p, ln, list(DTYPES), "dtype"),
    "revision": _str,
    "trust_remote_code": _bool,
    "weights": _str,
    "weights_keys": lambda ck, v, p, ln: ck.choice(v, p, ln, ["name", "position"], "weights_keys"),
    "problem": lambda ck, v, p, ln: v,  # synthetic: only; judged by _suite_synthetic.model_problem
}


def _model(ck: _Checker, item: Any, path: str, line: int, base_dir: str) -> ModelSpec | None:
    if isinstance(item, str):
        raw: dict[str, Any] | None = {"id": item}
        id_path, id_line = path, line
    else:
        raw = ck.record(item, path, line, _MODEL, ("id",), expected="a model id or a mapping with 'id'")
        if raw is None:
            return None
        id_path, id_line = f"{path}.id", item.key_lines["id"]
    model_id = _model_id(ck, raw["id"], id_path, id_line, base_dir)
    if model_id is None:
        return None
    if "weights" in raw:
        if not model_id.startswith("timm:"):
            ck.err(item.key_lines["weights"], f"{path}.weights", "'weights' is for timm: models (a checkpoint "
                   "file instead of the hub's); other sources name their folder in the id")
            return None
        if str(raw["weights"]).startswith(PACKAGE_PREFIX):  # a package's file is found where the suite runs
            _suite_vision.package_warning(ck, raw["weights"], item.key_lines["weights"], f"{path}.weights")
        else:
            raw["weights"] = _suite_vision.suite_path(ck, raw["weights"], base_dir, item.key_lines["weights"],
                                                      f"{path}.weights")
        if raw["weights"] is None:
            return None
    if "weights_keys" in raw and "weights" not in raw:
        ck.err(item.key_lines["weights_keys"], f"{path}.weights_keys", "'weights_keys' says how to read the "
               "model's 'weights:' file; give 'weights' too")
        return None
    problem = _suite_synthetic.model_problem(ck, item, raw, model_id, path)
    if problem is None:
        return None
    raw["problem"] = problem
    if model_id.startswith("timm:"):  # imports timm, only for suites that name timm models
        from harness.models.load import timm_name_problem

        if why := timm_name_problem(model_id[len("timm:"):], has_weights="weights" in raw):
            ck.err(id_line, id_path, why)
            return None
    return ModelSpec(**{**raw, "id": model_id})


def _number(low: float, high: float) -> Check:
    def check(ck: _Checker, value: Any, path: str, line: int) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
            ck.err(line, path, f"expected a number in [{low:g}, {high:g}); got {_got(value)}")
            return None
        return float(value)
    return check


_PROFILE_KEYS = {"sparsity_profile": None, "owl_m": _number(1e-9, 1e9), "owl_lmbda": _number(0.0, 0.5)}


def _profile(ck: _Checker, item: LineDict, path: str, m: dict[str, Any]) -> SparsityProfile | None | bool:
    """The method entry's sparsity profile; False when it is invalid (already reported)."""
    kind = m.get("sparsity_profile", "uniform")
    if kind not in ("uniform", "owl"):
        ck.err(item.key_lines["sparsity_profile"], f"{path}.sparsity_profile",
               f"unknown sparsity profile {kind!r}; choose 'uniform' or 'owl'")
        return False
    owl_keys = [k for k in ("owl_m", "owl_lmbda") if k in m]
    if kind == "uniform":
        if owl_keys:
            ck.err(item.key_lines[owl_keys[0]], f"{path}.{owl_keys[0]}", "only with sparsity_profile: owl")
            return False
        return None
    return SparsityProfile("owl", m.get("owl_m", 5.0), m.get("owl_lmbda", 0.08))


def _method(ck: _Checker, item: Any, path: str, line: int) -> tuple[str, dict[str, Any], Any] | None:
    name, params, name_path, params_path, params_line = item, None, path, path, line
    profile = None
    if not isinstance(item, str):
        m = ck.record(item, path, line, {"name": _str, "params": lambda ck, v, p, ln: v,
                                         "sparsity_profile": _str, **{k: c for k, c in _PROFILE_KEYS.items() if c}},
                      ("name",), expected="a method name or a mapping with 'name' and 'params'")
        if m is None:
            return None
        profile = _profile(ck, item, path, m)
        if profile is False:
            return None
        name, params, name_path, line = m["name"], m.get("params"), f"{path}.name", item.key_lines["name"]
        params_path, params_line = f"{path}.params", item.key_lines.get("params", line)
    try:
        cls = get_method(name)
    except UnknownNameError as exc:
        ck.err(line, name_path, str(exc))
        return None
    if profile is not None and (not cls.modifies_weights or cls.kind != "layer"):
        ck.err(item.key_lines["sparsity_profile"], f"{path}.sparsity_profile",
               f"a sparsity profile applies to layer-wise pruning methods; '{name}' is not one")
        return None
    if params is not None and not isinstance(params, LineDict):  # `params:` left empty means none
        ck.err(params_line, params_path, f"expected a mapping of {name} params; got {_got(params)}")
        return None
    try:
        resolved = params_dict(build_params(cls, params))
        bad = [k for k, v in resolved.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:  # results are stored as canonical JSON, which has no NaN or infinity
            raise ParamsError([(k, f"expected a finite number, got {resolved[k]}") for k in bad])
    except ParamsError as exc:
        names = {f.name for f in fields(cls.Params)}
        for key, message in exc.problems:
            if key in names:  # a bad value: point at the field itself
                ck.err(_key_line(params, key), f"{params_path}.{key}", message)
            elif key and params is not None:  # an unknown key: the mapping is at fault
                ck.err(_key_line(params, key), params_path, message)
            else:
                ck.err(params_line, params_path, message)
        return None
    except (TypeError, ValueError) as exc:  # raised by a Params __post_init__: still the user's input
        ck.err(params_line, params_path, f"invalid {name} params: {exc}")
        return None
    return name, resolved, profile


def _target(ck: _Checker, value: Any, path: str, line: int) -> Target | None:
    try:
        return Target.parse(value)
    except TargetError as exc:
        ck.err(line, path, str(exc))
        return None


def _regex(ck: _Checker, value: Any, path: str, line: int) -> Any:
    if isinstance(ck.string(value, path, line), str):
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError) as exc:  # deep nesting, huge repeat counts
            ck.err(line, path, f"invalid regex '{value}': {exc}")
    return value


def _calibration(ck: _Checker, value: Any, path: str, line: int, base_dir: str) -> CalibrationSpec | None:
    schema = {"dataset": _dataset, "n_samples": _int(1), "seqlen": _int(1), "seed": _int(0),
              "augment_rounds": _int(0), "bn_recalibration": _bool, "root": _str, "sequential": _bool}
    before = len(ck.problems)
    rec = ck.record(value, path, line, schema)
    image = _suite_vision.calibration_keys(ck, value, path, base_dir) if isinstance(value, LineDict) else {}
    return None if rec is None or len(ck.problems) > before else CalibrationSpec(**{**rec, **image})


def _text_dataset(ck: _Checker, value: Any, path: str, line: int) -> Any:
    return ck.choice(value, path, line, text_dataset_names(), "dataset")  # perplexity: text only


def _perplexity(ck: _Checker, value: Any, path: str, line: int) -> tuple[PerplexitySpec, ...]:
    def item(ck: _Checker, value: Any, path: str, line: int) -> PerplexitySpec | None:
        schema = {"dataset": _text_dataset, "seqlen": _int(1), "max_windows": _int(1)}
        rec = ck.record(value, path, line, schema, ("dataset", "seqlen"))
        return None if rec is None else PerplexitySpec(**rec)

    return tuple(ck.items(value, path, line, "{dataset, seqlen} mapping", item))


def _limit(ck: _Checker, value: Any, path: str, line: int) -> Any:
    ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
        isinstance(value, float) and 0 < value < 1)
    if not ok:
        ck.err(line, path, f"expected null, an integer >= 1 (items per task) or a fraction in (0, 1); got {_got(value)}")
    return value


def _optional_int(ck: _Checker, value: Any, path: str, line: int) -> Any:
    return None if value is None else ck.integer(value, path, line, 1)


def _lm_eval(ck: _Checker, value: Any, path: str, line: int) -> LmEvalSpec | None:
    """``evals.lm_eval``: task names are checked against the adapter's table (no lm-eval import)."""
    from harness.evaluate.lm_eval_adapter import metric_problem, task_problem

    schema: dict[str, Check] = {
        "tasks": lambda ck, v, p, ln: ck.items(v, p, ln, "lm-eval task name", _str),
        "num_fewshot": _int(0), "batch_size": _int(1), "limit": _limit, "max_length": _optional_int,
        "metrics": lambda ck, v, p, ln: v, "allow_unknown_tasks": _bool,
    }
    before = len(ck.problems)
    rec = ck.record(value, path, line, schema, ("tasks",))
    if not isinstance(value, LineDict):
        return None
    # Names and metrics are judged even when another key is wrong, so one pass shows all.
    allow = value.get("allow_unknown_tasks") is True
    raw_tasks = value.get("tasks") if isinstance(value.get("tasks"), LineList) else []
    tasks = tuple(t for t in raw_tasks if isinstance(t, str))
    for i, name in enumerate(raw_tasks):
        if isinstance(name, str) and (why := task_problem(name, allow)):
            ck.err(raw_tasks.item_lines[i], f"{path}.tasks[{i}]", why)
    metrics = value.get("metrics")
    if not isinstance(metrics, LineDict):
        if metrics is not None:
            ck.err(value.key_lines["metrics"], f"{path}.metrics",
                   f"expected a mapping of task: metric, e.g. {{hellaswag: acc}}; got {_got(metrics)}")
        metrics = {}
    for key, metric in metrics.items():
        where, key_path = metrics.key_lines[key], f"{path}.metrics.{key}"
        if not isinstance(metric, str):
            ck.err(where, key_path, f"expected a metric name; got {_got(metric)}")
        elif why := metric_problem(str(key), metric, tasks):
            ck.err(where, key_path, why)
    if rec is None or len(ck.problems) > before:
        return None
    return LmEvalSpec(
        tasks=tasks, num_fewshot=rec.get("num_fewshot", 0), limit=rec.get("limit"),
        max_length=rec.get("max_length"), metrics=tuple(sorted((str(k), v) for k, v in metrics.items())),
        batch_size=rec.get("batch_size", 16), allow_unknown_tasks=allow)


def _evals(base_dir: str) -> dict[str, Check]:
    """One check per evals key: adding one is a function and an entry here (paths resolve against ``base_dir``)."""
    return {"perplexity": _perplexity, "lm_eval": _lm_eval,
            **{name: _suite_vision.image_eval(name, base_dir) for name in IMAGE_DATASETS}}


def _layers(ck: _Checker, value: Any, path: str, line: int) -> LayerSelection | None:
    def regexes(ck: _Checker, value: Any, path: str, line: int) -> tuple[str, ...]:
        return tuple(ck.items(value, path, line, "regex pattern", _regex, allow_empty=True))

    rec = ck.record(value, path, line, {"targets": regexes, "ignore": regexes})
    return None if rec is None else LayerSelection(**rec)


def _parse(ck: _Checker, path: str, text: str, data: Any, line: int) -> Suite | None:
    base_dir = os.path.dirname(path) or "."
    schema: dict[str, Check] = {
        "name": _name,
        "description": _description,
        "models": lambda ck, v, p, ln: ck.items(v, p, ln, "model id", partial(_model, base_dir=base_dir)),
        "methods": lambda ck, v, p, ln: ck.items(v, p, ln, "method", _method,
                                                 key=lambda m: (m[0], canonical_json(m[1]), repr(m[2]))),
        "targets": lambda ck, v, p, ln: ck.items(v, p, ln, "target", _target, allow_empty=True),
        "calibration": partial(_calibration, base_dir=base_dir),
        "evals": lambda ck, v, p, ln: ck.record(v, p, ln, _evals(base_dir)),
        "layers": _layers,
        "seeds": lambda ck, v, p, ln: ck.items(v, p, ln, "integer seed", _int(0)),
        "batch_size": _int(1),
    }
    if not isinstance(data, LineDict):
        ck.err(line, "", f"a suite must be a mapping with keys {', '.join(schema)}; got {_got(data)}")
        return None
    top = ck.record(data, "", line, schema, ("name", "models", "methods"))

    # Rules across keys, judged on the raw data so they are reported next to any other problem.
    methods = data.get("methods") if isinstance(data.get("methods"), list) else []
    names = [m.get("name") if isinstance(m, dict) else m for m in methods]
    synthetic = _suite_synthetic.kind_rules(ck, data)  # methods vs model kinds; keys synthetic suites lack
    if any(name != DENSE for name in names) and not synthetic:
        if "targets" not in data:
            ck.err(data.line, "", "missing required key 'targets' (every method but dense needs one), "
                                  "e.g. targets: [0.5, '2:4']")
        elif data["targets"] == []:
            ck.err(data.key_lines["targets"], "targets", "empty list; every method but dense needs a target")
    calibration = data.get("calibration")
    if "seeds" in data and isinstance(calibration, dict) and "seed" in calibration:
        ck.err(calibration.key_lines["seed"], "calibration.seed",
               "give seeds once, in the top-level 'seeds' list (each is a cell and its calibration seed)")
    _suite_vision.kind_rules(ck, data, dense_only=all(name == DENSE for name in names))
    _suite_vision.profile_rules(ck, data)
    if top is None or ck.problems:
        return None

    calibration = top.get("calibration", CalibrationSpec())
    evals = top.get("evals", {})
    image_evals = tuple(evals[k] for k in IMAGE_DATASETS if k in evals)
    return Suite(
        path=path, name=top["name"], description=top.get("description", ""), text=text,
        models=tuple(top["models"]), methods=tuple(top["methods"]), targets=tuple(top.get("targets", ())),
        calibration=calibration, perplexity=tuple(top.get("evals", {}).get("perplexity", ())),
        layers=top.get("layers", LayerSelection()), seeds=tuple(top.get("seeds", (calibration.seed,))),
        batch_size=top.get("batch_size", 8), lm_eval=evals.get("lm_eval"), image_evals=image_evals,
        warnings=tuple(str(w) for w in ck.warnings))


def load_suite(path: str | os.PathLike[str]) -> Suite:
    """Read and validate a suite file.

    Args:
        path: the suite file; kept exactly as given (a relative path stays relative) in
            ``Suite.path`` and in error messages.

    Returns:
        The validated, frozen ``Suite``.

    Raises:
        SuiteError: listing every problem found, one ``file:line: path: message`` line each.
    """
    file = os.fspath(path)
    try:
        doc = load_file(file)
    except YamlError as exc:
        raise SuiteError(Problem(file, line, "", message) for line, message in exc.problems) from exc
    ck = _Checker(file)
    suite = _parse(ck, file, doc.text, doc.data, doc.line)
    if suite is None:
        raise SuiteError(ck.problems)
    for warning in suite.warnings:
        log.warning("%s", warning)
    return suite


def expand(suite: Suite) -> list[RunSpec]:
    """The suite's cells: models x methods x targets x seeds, nested in that order.

    ``dense`` ignores the targets and gives one cell per model and seed, with target "0"; a
    ``synthetic:`` model has the one target its problem sets, 1 − k/d.
    Identical cells (same run id) appear once, at their first position.
    """
    cells: dict[str, RunSpec] = {}
    for model in suite.models:
        for name, params, profile in suite.methods:
            targets = ["0"] if name == DENSE else [str(t) for t in suite.targets
                                                   if profile is None or not t.is_nm]  # OWL: unstructured
            if model.problem:  # synthetic: the problem's k sets the sparsity
                targets = [target_of(dict(model.problem))]
            for target in targets:
                for seed in suite.seeds:
                    spec = RunSpec(
                        suite=suite.name, model=model, method=name, params=dict(params), target=target,
                        calibration=replace(suite.calibration, seed=seed), perplexity=suite.perplexity,
                        layers=suite.layers, seed=seed, batch_size=suite.batch_size, lm_eval=suite.lm_eval,
                        image_evals=suite.image_evals, profile=profile)
                    cells.setdefault(spec.run_id, spec)
    return list(cells.values())
