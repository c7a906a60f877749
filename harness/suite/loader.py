"""Load a suite file into a frozen ``Suite``, and expand it into its grid of ``RunSpec`` cells.

``load_suite`` runs every check that needs no weights (house style rule 6): the shape and
types of the file, method names and their ``Params``, targets, model ids, dataset names and
layer regexes. It collects every problem before raising one ``SuiteError`` (HELM's
collect-then-raise), so a user fixes a suite in one pass. Each problem (a ``SuiteProblem``) is one line::

    suites/x.yaml:14: methods[1].params: unknown key 'sparsty' (did you mean 'sparsity'?); valid keys: ...

Problems about the whole file (unreadable, larger than 1 MiB, binary, empty) have no line:
``suites/x.yaml: binary file ...``. This module imports no torch, so ``harness validate`` is
fast; note that resolving method names imports the ``methods`` package, and that ``timm:``
model names are checked against timm's registry, which imports timm (and torch) for the suites
that name one. The checks of the fields are in :mod:`harness.suite.schema` (image-classifier
rules in :mod:`harness.suite.vision`); what only the running machine can know (an ImageNet
folder) is a warning, logged and kept in ``Suite.warnings``.

Remote code needs two keys: a model's ``trust_remote_code: true`` in the suite, and
``trust_remote_code=True`` here (``harness run --trust-remote-code``); without the second, the key
is a problem on its line, naming the model and the flag.

Seeds: the top-level ``seeds`` list makes one cell per seed, and a cell's seed is also its
calibration seed. ``calibration.seed`` is accepted as the single seed when ``seeds`` is absent;
giving both is an error, because one of them would be silently ignored.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

from harness.core.problems import target_of
from harness.core.spec import (DENSE, CalibrationSpec, ImageEvalSpec, LayerSelection, LmEvalSpec, ModelSpec,
                               PerplexitySpec, RunSpec, SparsityProfile)
from harness.core.target import Target
from harness.data.text import IMAGE_DATASETS
from harness.core.registry import key_hint
from harness.suite.checker import Checker, SuiteError, SuiteProblem
from harness.suite.lines import LineDict, YamlError, load_file
from harness.suite.schema import REQUIRED_KEYS, cross_key_rules, suite_schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suite:
    """A validated suite. ``methods`` holds (name, resolved params, sparsity profile or None) with
    every default filled in."""

    path: str
    name: str
    description: str
    text: str = field(repr=False)  # the raw YAML, frozen into every stored record
    models: tuple[ModelSpec, ...] = ()
    methods: tuple[tuple[str, dict[str, Any], SparsityProfile | None, str | None], ...] = ()  # (name, params, profile, label)
    targets: tuple[Target, ...] = ()
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    perplexity: tuple[PerplexitySpec, ...] = ()
    layers: LayerSelection = field(default_factory=LayerSelection)
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 8
    lm_eval: LmEvalSpec | None = None
    image_evals: tuple[ImageEvalSpec, ...] = ()
    warnings: tuple[str, ...] = ()  # file:line lines about things only the running machine can know
    timeout_min: float | None = None  # a cell's time limit in minutes (worker executors); None: 24 h
    keep: str = "auto"  # which pruned-weight artifacts are kept (harness.run.artifacts)
    save: dict[str, str] | None = None  # {"dir", "format"}: export each ok cell's checkpoint (harness.run.export)


REMOTE_CODE_FLAG = "--trust-remote-code"


def _remote_code_rule(ck: Checker, data: LineDict, allowed: bool) -> None:
    """``trust_remote_code: true`` runs a repository's own Python: only with the command-line flag too."""
    models = data.get("models") if isinstance(data.get("models"), list) else []
    for i, item in enumerate(models):
        if not allowed and isinstance(item, LineDict) and item.get("trust_remote_code") is True:
            ck.err(item.key_lines["trust_remote_code"], f"models[{i}].trust_remote_code",
                   f"'{item.get('id')}' would run code from its own repository; this key needs "
                   f"{REMOTE_CODE_FLAG} as well (harness run {REMOTE_CODE_FLAG}, harness validate "
                   f"{REMOTE_CODE_FLAG})")


def _not_a_suite(ck: Checker, data: Any, line: int, keys: list[str]) -> bool:
    """A document that is no suite at all (a scalar, a list, or a mapping without one suite key):
    one problem that quotes none of its content, which may be any file the path points at."""
    if isinstance(data, LineDict):
        if not data or any(str(k) in keys or key_hint(k, keys) for k in data):
            return False  # a suite, perhaps with misspelt keys: report each key
        got = f"a mapping of {len(data)} keys, none of them a suite key"
    else:
        kinds = ((list, "a list"), (str, "text"), (bool, "true or false"), ((int, float), "a number"))
        got = next((what for kind, what in kinds if isinstance(data, kind)), "a scalar")
    ck.err(line, "", f"not a suite: a suite must be a mapping with keys {', '.join(keys)}; the file holds {got}")
    return True


def _parse(ck: Checker, path: str, text: str, data: Any, line: int, trust_remote_code: bool) -> Suite | None:
    schema = suite_schema(os.path.dirname(path) or ".")
    if _not_a_suite(ck, data, line, list(schema)):
        return None
    top = ck.record(data, "", line, schema, REQUIRED_KEYS)
    cross_key_rules(ck, data)
    _remote_code_rule(ck, data, trust_remote_code)
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
        warnings=tuple(str(w) for w in ck.warnings), timeout_min=top.get("timeout_min"), keep=top.get("keep", "auto"),
        save=top.get("save"))


def load_suite(path: str | os.PathLike[str], *, trust_remote_code: bool = False) -> Suite:
    """Read and validate a suite file.

    Args:
        path: the suite file; kept exactly as given (a relative path stays relative) in
            ``Suite.path`` and in error messages.
        trust_remote_code: allow models marked ``trust_remote_code: true`` (``harness run
            --trust-remote-code``); without it each such model is a problem.

    Returns:
        The validated, frozen ``Suite``.

    Raises:
        SuiteError: listing every problem found, one ``file:line: path: message`` line each.
    """
    file = os.fspath(path)
    try:
        doc = load_file(file)
    except YamlError as exc:
        raise SuiteError(SuiteProblem(file, line, "", message) for line, message in exc.problems) from exc
    ck = Checker(file)
    suite = _parse(ck, file, doc.text, doc.data, doc.line, trust_remote_code)
    if suite is None:
        raise SuiteError(ck.problems)
    for warning in suite.warnings:
        log.warning("%s", warning)
    return suite


def expand(suite: Suite) -> list[RunSpec]:
    """The suite's cells: models x methods x targets x seeds, nested in that order.

    ``dense`` ignores the targets and gives one cell per model and seed, with target "0"; a
    ``synthetic:`` model has the one target its problem sets, 1 − k/d.
    Identical cells (same run id: the same pruned model) appear once, at their first position.
    """
    cells: dict[str, RunSpec] = {}
    for model in suite.models:
        for name, params, profile, label in suite.methods:
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
                        image_evals=suite.image_evals, profile=profile, label=label,
                        suite_path=os.path.abspath(suite.path), keep=suite.keep, save=suite.save)
                    cells.setdefault(spec.run_id, spec)
    return list(cells.values())
