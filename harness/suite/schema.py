"""The checks of a suite's fields: models, methods and their ``Params``, targets, calibration,
evals and layers, and the rules across keys.

:func:`suite_schema` gives the check of each top-level key; :func:`cross_key_rules` judges the
raw data for rules that span keys, so they are reported next to any other problem. Every check
takes the file's :class:`~harness.suite.checker.Checker` and reports through it. Rules for image
classifiers live in :mod:`harness.suite.vision`, those for ``synthetic:`` models in
:mod:`harness.suite.synthetic`.

This module imports no torch. Resolving method names imports the ``methods`` package, and
``timm:`` model names are checked against timm's registry, which imports timm (and torch) for
the suites that name one.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import fields
from functools import partial
from typing import Any

from harness.core.ids import ModelIdError, parse_model_id
from harness.core.method import ParamsError, build_params, params_dict
from harness.core.registry import UnknownNameError
from harness.core.spec import (DENSE, DTYPES, PACKAGE_PREFIX, CalibrationSpec, LayerSelection, LmEvalSpec,
                               ModelSpec, PerplexitySpec, SparsityProfile, canonical_json)
from harness.core.target import Target, TargetError
from harness.data.text import IMAGE_DATASETS, dataset_names, text_dataset_names
from harness.plugins import get_method
from harness.suite import synthetic, vision
from harness.suite.checker import (MAX_BATCH, MAX_CALIBRATION_TOKENS, MAX_FEWSHOT, MAX_ITEMS, MAX_PARAM_INT,
                                   MAX_ROUNDS, MAX_SAMPLES, MAX_SEED, MAX_SEQLEN, Check, Checker, check_bool,
                                   check_regex, check_str, describe, int_in, key_line, number_in, optional_int_in)
from harness.suite.lines import LineDict, LineList
from harness.core.spec import DEFAULT_TIMEOUT_MIN, KEEP, KEEP_AUTO_BYTES, MAX_TIMEOUT_MIN

REQUIRED_KEYS = ("name", "models", "methods")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def _dataset(ck: Checker, value: Any, path: str, line: int) -> Any:
    return ck.choice(value, path, line, dataset_names(), "dataset")


def _text_dataset(ck: Checker, value: Any, path: str, line: int) -> Any:
    return ck.choice(value, path, line, text_dataset_names(), "dataset")  # perplexity: text only


def _name(ck: Checker, value: Any, path: str, line: int) -> Any:
    if isinstance(ck.string(value, path, line), str) and not _NAME.fullmatch(value):
        ck.err(line, path, f"'{value}' may use only letters, digits, '_', '.' and '-' (it is in every run id)")
    return value


def _description(ck: Checker, value: Any, path: str, line: int) -> Any:
    return "" if value is None else ck.string(value, path, line)  # `description:` left empty


def timeout_min(ck: Checker, value: Any, path: str, line: int) -> float | None:
    """A cell's time limit in minutes, ``0 < value <= MAX_TIMEOUT_MIN`` (a float is fine: 0.5)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT_MIN:
        ck.err(line, path, f"expected a time limit per cell in minutes, more than 0 and at most {MAX_TIMEOUT_MIN} "
                           f"(7 days; default {DEFAULT_TIMEOUT_MIN}); got {describe(value)}")
        return None
    return float(value)


# -------------------------------------------------------------------------------- models


def _model_id(ck: Checker, value: Any, path: str, line: int, base_dir: str) -> str | None:
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
    "id": check_str,
    "dtype": lambda ck, v, p, ln: ck.choice(v, p, ln, list(DTYPES), "dtype"),
    "revision": check_str,
    "trust_remote_code": check_bool,
    "weights": check_str,
    "weights_keys": lambda ck, v, p, ln: ck.choice(v, p, ln, ["name", "position"], "weights_keys"),
    "problem": lambda ck, v, p, ln: v,  # synthetic: only; judged by synthetic.model_problem
    "stream": check_bool,  # path:/hf: causal LMs: block streaming (harness.models.stream)
}


def _model(ck: Checker, item: Any, path: str, line: int, base_dir: str) -> ModelSpec | None:
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
            vision.package_warning(ck, raw["weights"], item.key_lines["weights"], f"{path}.weights")
        else:
            raw["weights"] = vision.suite_path(ck, raw["weights"], base_dir, item.key_lines["weights"],
                                               f"{path}.weights")
        if raw["weights"] is None:
            return None
    if "weights_keys" in raw and "weights" not in raw:
        ck.err(item.key_lines["weights_keys"], f"{path}.weights_keys", "'weights_keys' says how to read the "
               "model's 'weights:' file; give 'weights' too")
        return None
    if "stream" in raw and raw["stream"] and model_id.split(":", 1)[0] not in ("path", "hf"):
        ck.err(item.key_lines["stream"], f"{path}.stream", "'stream' reads a path: or hf: causal LM block by "
               "block from its safetensors; zoo: and vision models load whole")
        return None
    problem = synthetic.model_problem(ck, item, raw, model_id, path)
    if problem is None:
        return None
    raw["problem"] = problem
    if model_id.startswith("timm:"):  # imports timm, only for suites that name timm models
        from harness.models.load import timm_name_problem

        if why := timm_name_problem(model_id[len("timm:"):], has_weights="weights" in raw):
            ck.err(id_line, id_path, why)
            return None
    return ModelSpec(**{**raw, "id": model_id})


# ------------------------------------------------------------------------------- methods


_PROFILE_KEYS = {"sparsity_profile": None, "owl_m": number_in(1e-9, 1e9), "owl_lmbda": number_in(0.0, 0.5)}


def _profile(ck: Checker, item: LineDict, path: str, m: dict[str, Any]) -> SparsityProfile | None | bool:
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


def keep(ck: Checker, value: Any, path: str, line: int) -> str | None:
    """Which pruned-weight artifacts are kept after evaluation (harness.run.artifacts)."""
    if value not in KEEP:
        ck.err(line, path, f"expected one of {', '.join(KEEP)} (auto: keep ok cells' weights up to "
                           f"{KEEP_AUTO_BYTES >> 30} GiB); got {describe(value)}")
        return None
    return value


SAVE_FORMATS = ("dense", "compressed")  # a save_pretrained folder; compressed-tensors' sparse formats


def save(ck: Checker, value: Any, path: str, line: int, base_dir: str = ".") -> dict[str, str] | None:
    """``save: DIR`` or ``save: {dir: DIR, format: dense | compressed}``: where each ok cell's pruned
    checkpoint goes (a relative DIR is relative to the suite's folder)."""
    if isinstance(value, str):
        value = {"dir": value}
    if not isinstance(value, dict) or not isinstance(value.get("dir"), str) or not value["dir"].strip():
        ck.err(line, path, f"expected a folder, or a mapping with 'dir' and 'format' ({' | '.join(SAVE_FORMATS)}); "
                           f"got {describe(value)}")
        return None
    unknown = sorted(set(value) - {"dir", "format"})
    fmt = value.get("format", "dense")
    if unknown or fmt not in SAVE_FORMATS:
        what = f"unknown key '{unknown[0]}'" if unknown else f"format {describe(fmt)}"
        ck.err(line, path, f"{what}; save takes 'dir' and 'format' ({' | '.join(SAVE_FORMATS)})")
        return None
    return {"dir": os.path.abspath(os.path.join(base_dir, os.path.expanduser(value["dir"]))), "format": fmt}


def _method(ck: Checker, item: Any, path: str, line: int) -> tuple[str, dict[str, Any], Any, str | None] | None:
    name, params, name_path, params_path, params_line = item, None, path, path, line
    profile, label = None, None
    if not isinstance(item, str):
        m = ck.record(item, path, line, {"name": check_str, "params": lambda ck, v, p, ln: v,
                                         "sparsity_profile": check_str, "label": check_str,
                                         **{k: c for k, c in _PROFILE_KEYS.items() if c}},
                      ("name",), expected="a method name or a mapping with 'name' and 'params'")
        if m is None:
            return None
        profile = _profile(ck, item, path, m)
        if profile is False:
            return None
        name, params, name_path, line = m["name"], m.get("params"), f"{path}.name", item.key_lines["name"]
        label = m.get("label")
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
        ck.err(params_line, params_path, f"expected a mapping of {name} params; got {describe(params)}")
        return None
    resolved = _method_params(ck, cls, name, params, params_path, params_line)
    return None if resolved is None else (name, resolved, profile, label)


def _method_params(ck: Checker, cls: Any, name: str, params: LineDict | None, params_path: str,
                   params_line: int) -> dict[str, Any] | None:
    """The method's ``Params`` with every default filled in, as a dict; None when wrong (reported)."""
    try:
        resolved = params_dict(build_params(cls, params))
        bad = [(k, f"expected a finite number, got {v}") for k, v in resolved.items()
               if isinstance(v, float) and not math.isfinite(v)]  # canonical JSON has no NaN or infinity
        bad += [(k, f"expected an integer from -{MAX_PARAM_INT:,} to {MAX_PARAM_INT:,} (the limit), got {v}")
                for k, v in resolved.items() if isinstance(v, int) and not isinstance(v, bool)
                and abs(v) > MAX_PARAM_INT]
        if bad:
            raise ParamsError(bad)
    except ParamsError as exc:
        names = {f.name for f in fields(cls.Params)}
        for key, message in exc.problems:
            if key in names:  # a bad value: point at the field itself
                ck.err(key_line(params, key), f"{params_path}.{key}", message)
            elif key and params is not None:  # an unknown key: the mapping is at fault
                ck.err(key_line(params, key), params_path, message)
            else:
                ck.err(params_line, params_path, message)
        return None
    except (TypeError, ValueError) as exc:  # raised by a Params __post_init__: still the user's input
        ck.err(params_line, params_path, f"invalid {name} params: {exc}")
        return None
    return resolved


def _target(ck: Checker, value: Any, path: str, line: int) -> Target | None:
    try:
        return Target.parse(value)
    except TargetError as exc:
        ck.err(line, path, str(exc))
        return None


# --------------------------------------------------------------- calibration, evals, layers


def _calibration(ck: Checker, value: Any, path: str, line: int, base_dir: str) -> CalibrationSpec | None:
    schema = {"dataset": _dataset, "n_samples": int_in(1, MAX_SAMPLES), "seqlen": int_in(1, MAX_SEQLEN),
              "seed": int_in(0, MAX_SEED), "augment_rounds": int_in(0, MAX_ROUNDS), "bn_recalibration": check_bool,
              "root": check_str, "sequential": check_bool}
    before = len(ck.problems)
    rec = ck.record(value, path, line, schema)
    if rec is not None:  # each size is within bounds; their product may not be
        tokens = rec.get("n_samples", CalibrationSpec.n_samples) * (rec.get("seqlen") or CalibrationSpec.seqlen)
        if tokens > MAX_CALIBRATION_TOKENS and rec.get("dataset", "pydoc") not in IMAGE_DATASETS:
            ck.err(value.key_lines.get("n_samples", value.key_lines.get("seqlen", line)), f"{path}.n_samples",
                   f"n_samples x seqlen is {tokens:,} calibration tokens; the limit is {MAX_CALIBRATION_TOKENS:,}")
    image = vision.calibration_keys(ck, value, path, base_dir) if isinstance(value, LineDict) else {}
    return None if rec is None or len(ck.problems) > before else CalibrationSpec(**{**rec, **image})


def _perplexity(ck: Checker, value: Any, path: str, line: int) -> tuple[PerplexitySpec, ...]:
    def item(ck: Checker, value: Any, path: str, line: int) -> PerplexitySpec | None:
        schema = {"dataset": _text_dataset, "seqlen": int_in(1, MAX_SEQLEN), "max_windows": int_in(1, MAX_ITEMS)}
        rec = ck.record(value, path, line, schema, ("dataset", "seqlen"))
        return None if rec is None else PerplexitySpec(**rec)

    return tuple(ck.items(value, path, line, "{dataset, seqlen} mapping", item))


def _limit(ck: Checker, value: Any, path: str, line: int) -> Any:
    ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ITEMS) or (
        isinstance(value, float) and 0 < value < 1)
    if not ok:
        ck.err(line, path, f"expected null, an integer >= 1 and at most {MAX_ITEMS:,} (the limit) of items per task, "
                           f"or a fraction in (0, 1); got {describe(value)}")
    return value


def _lm_eval(ck: Checker, value: Any, path: str, line: int) -> LmEvalSpec | None:
    """``evals.lm_eval``: task names are checked against the adapter's table (no lm-eval import)."""
    from harness.evaluate.lm_eval_adapter import metric_problem, task_problem

    schema: dict[str, Check] = {
        "tasks": lambda ck, v, p, ln: ck.items(v, p, ln, "lm-eval task name", check_str),
        "num_fewshot": int_in(0, MAX_FEWSHOT), "batch_size": int_in(1, MAX_BATCH), "limit": _limit,
        "max_length": optional_int_in(MAX_SEQLEN), "metrics": lambda ck, v, p, ln: v, "allow_unknown_tasks": check_bool,
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
                   f"expected a mapping of task: metric, e.g. {{hellaswag: acc}}; got {describe(metrics)}")
        metrics = {}
    for key, metric in metrics.items():
        where, key_path = metrics.key_lines[key], f"{path}.metrics.{key}"
        if not isinstance(metric, str):
            ck.err(where, key_path, f"expected a metric name; got {describe(metric)}")
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
            **{name: vision.image_eval(name, base_dir) for name in IMAGE_DATASETS}}


def _layers(ck: Checker, value: Any, path: str, line: int) -> LayerSelection | None:
    def regexes(ck: Checker, value: Any, path: str, line: int) -> tuple[str, ...]:
        return tuple(ck.items(value, path, line, "regex pattern", check_regex, allow_empty=True))

    rec = ck.record(value, path, line, {"targets": regexes, "ignore": regexes})
    return None if rec is None else LayerSelection(**rec)


# ---------------------------------------------------------------------------- the suite


def suite_schema(base_dir: str) -> dict[str, Check]:
    """The check of each top-level key (relative paths resolve against ``base_dir``, the suite's folder)."""
    return {
        "name": _name,
        "description": _description,
        "models": lambda ck, v, p, ln: ck.items(v, p, ln, "model id", partial(_model, base_dir=base_dir)),
        "methods": lambda ck, v, p, ln: ck.items(v, p, ln, "method", _method,
                                                 key=lambda m: (m[0], canonical_json(m[1]), repr(m[2]))),
        "targets": lambda ck, v, p, ln: ck.items(v, p, ln, "target", _target, allow_empty=True),
        "calibration": partial(_calibration, base_dir=base_dir),
        "evals": lambda ck, v, p, ln: ck.record(v, p, ln, _evals(base_dir)),
        "layers": _layers,
        "seeds": lambda ck, v, p, ln: ck.items(v, p, ln, "integer seed", int_in(0, MAX_SEED)),
        "batch_size": int_in(1, MAX_BATCH),
        "timeout_min": timeout_min,  # not in the run id: a time limit changes no number
        "keep": keep,  # which pruned weights are kept; not in the run id
        "save": partial(save, base_dir=base_dir),  # export ok cells as checkpoints; not in the run id
    }


def cross_key_rules(ck: Checker, data: LineDict) -> None:
    """Rules across keys, judged on the raw data so they are reported next to any other problem."""
    methods = data.get("methods") if isinstance(data.get("methods"), list) else []
    names = [m.get("name") if isinstance(m, dict) else m for m in methods]
    is_synthetic = synthetic.kind_rules(ck, data)  # methods vs model kinds; keys synthetic suites lack
    if any(name != DENSE for name in names) and not is_synthetic:
        if "targets" not in data:
            ck.err(data.line, "", "missing required key 'targets' (every method but dense needs one), "
                                  "e.g. targets: [0.5, '2:4']")
        elif data["targets"] == []:
            ck.err(data.key_lines["targets"], "targets", "empty list; every method but dense needs a target")
    calibration = data.get("calibration")
    if "seeds" in data and isinstance(calibration, dict) and "seed" in calibration:
        ck.err(calibration.key_lines["seed"], "calibration.seed",
               "give seeds once, in the top-level 'seeds' list (each is a cell and its calibration seed)")
    vision.kind_rules(ck, data, dense_only=all(name == DENSE for name in names))
    vision.profile_rules(ck, data)
