"""lm-eval zero-shot evaluation of the pruned model, in memory, through ``HFLM``.

Suite syntax (``evals.lm_eval``)::

    lm_eval:
      tasks: [tiny_suite]          # task or group names (required)
      num_fewshot: 0               # the Wanda protocol is zero-shot
      batch_size: 16               # HFLM batch size (not part of the run id)
      limit: null                  # items per task; set = a trial, not publishable
      max_length: null             # null = the model's eval seqlen (zoo: 128; hf: lm-eval's default)
      metrics: {hellaswag: acc}    # headline metric per task, overriding HEADLINE_METRICS
      allow_unknown_tasks: false   # accept lm-eval task names outside KNOWN_TASKS

Rows: every numeric metric of every task and group in lm-eval's results becomes one row
``{"name": "<task>/<metric>", "value", "stderr", "n", "headline"}`` (filters other than
``none`` are kept as ``<task>/<metric>:<filter>``). ``stderr`` is None where lm-eval says
"N/A"; ``n`` is the effective number of items (after ``limit``). ``headline`` is True on
the one row per task that the leaderboard reports: the task's metric in
:data:`HEADLINE_METRICS` or the suite's ``metrics:``.

How lm-eval is called, and why:

* ``HFLM(pretrained=model, logits_cache=False)``: lm-eval 0.4.13's logits cache reuses one
  request's logits for another whose context+continuation tokens coincide, which corrupts
  scores when two tasks share a sentence split differently (offline-notes §3, pitfall 2).
* ``max_length`` defaults to the zoo's training context; lm-eval would otherwise use
  ``max_position_embeddings`` (512) and score rolling perplexity in windows the model never
  saw (pitfall 3).
* ``use_cache=None``: lm-eval's sqlite request cache is keyed on the request, not the
  weights, so it would hand a pruned model the dense model's answers. Never used.
* ``TaskManager(include_path=harness/lm_tasks, include_defaults=False)`` when every task is
  one of ours: no hub, no 5 s index of 14,000 built-in tasks. Other tasks need the defaults
  and their datasets (the hub, or a copied ``HF_HOME``).
* lm-eval reseeds Python's, numpy's and torch's global RNGs; we keep its seeds (some tasks
  rely on them) but restore the caller's RNG states afterwards.

Importing this module is cheap (no torch, no lm_eval): ``harness validate`` uses its tables.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import numbers
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

from harness.evaluate.lm_tasks import TASK_DIR
from harness.core.metrics import WANDA_ZERO_SHOT_TASKS
from harness.core.registry import did_you_mean, key_hint
from harness.core.spec import LmEvalSpec

log = logging.getLogger(__name__)


class TaskDataUnavailable(RuntimeError):
    """A built-in lm-eval task whose dataset is neither cached nor reachable; one line."""


@dataclass(frozen=True)
class TaskInfo:
    """What validation knows about a task without importing lm-eval."""

    metrics: tuple[str, ...]  # metrics the task reports; the first is its headline
    offline: bool = False  # shipped in harness/lm_tasks (no hub needed)
    subtasks: tuple[str, ...] = ()  # for groups: the member tasks we know of


_MC = ("acc", "acc_norm")
KNOWN_TASKS: dict[str, TaskInfo] = {
    # offline, built from the zoo's held-out text (harness/evaluate/lm_tasks/build.py); which of
    # them count in "avg zero-shot" is measured: harness.core.metrics.AVERAGED_OFFLINE_TASKS
    "tiny_context": TaskInfo(("acc",), offline=True),
    "tiny_corrupt": TaskInfo(_MC, offline=True),  # shipped, not in tiny_suite: fails the rule
    "tiny_swap": TaskInfo(_MC, offline=True),  # shipped, not in tiny_suite: fails the rule
    "tiny_wiki": TaskInfo(("bits_per_byte", "word_perplexity", "byte_perplexity"), offline=True),
    "tiny_suite": TaskInfo(("acc",), offline=True, subtasks=("tiny_context", "tiny_wiki")),
    # Wanda's zero-shot tasks (algorithms.md §3): acc everywhere, hellaswag included (not acc_norm)
    "boolq": TaskInfo(("acc",)),
    "rte": TaskInfo(("acc",)),
    "hellaswag": TaskInfo(_MC),
    "winogrande": TaskInfo(("acc",)),
    "arc_easy": TaskInfo(_MC),
    "arc_challenge": TaskInfo(_MC),
    "openbookqa": TaskInfo(_MC),
    "mmlu": TaskInfo(("acc",)),  # a group of 57 subjects; its acc is the headline
}
HEADLINE_METRICS: dict[str, str] = {name: info.metrics[0] for name, info in KNOWN_TASKS.items()}
WANDA_TASKS = WANDA_ZERO_SHOT_TASKS  # declared with the average they feed (harness.core.metrics)
# What an lm-eval task name looks like (letters, digits, _ - .), for allow_unknown_tasks.
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


# ------------------------------------------------------------------------- validation


def task_problem(name: str, allow_unknown: bool) -> str | None:
    """Why ``name`` is not an acceptable task name, or None if it is."""
    if name in KNOWN_TASKS:
        return None
    if allow_unknown:
        if _TASK_NAME.fullmatch(name):
            return None
        return f"'{name}' does not look like an lm-eval task name (letters, digits, '_', '.', '-')"
    msg = f"Unknown lm-eval task '{name}'.{did_you_mean(name, list(KNOWN_TASKS))}"
    return (msg + f" Known: {', '.join(KNOWN_TASKS)}. Any other lm-eval task needs "
            "'allow_unknown_tasks: true' (checked when the run starts; it needs the hub or a local datasets cache)")


def metric_problem(task: str, metric: str, tasks: tuple[str, ...]) -> str | None:
    """Why ``metrics: {task: metric}`` is wrong for a suite running ``tasks``, or None."""
    covered = set(tasks) | {s for t in tasks for s in KNOWN_TASKS.get(t, TaskInfo(())).subtasks}
    if task not in covered:
        hint = key_hint(task, sorted(covered))
        return f"'{task}' is not among the tasks run{hint}; tasks: {', '.join(sorted(covered))}"
    known = KNOWN_TASKS.get(task)
    if known is not None and metric not in known.metrics:
        hint = did_you_mean(metric, list(known.metrics), n=1)
        return f"task '{task}' reports no metric '{metric}'.{hint} It reports: {', '.join(known.metrics)}"
    return None


def _needs_defaults(tasks: tuple[str, ...]) -> bool:
    """True if some task is not one of ours, so lm-eval's built-in task index is needed."""
    return any(not (t in KNOWN_TASKS and KNOWN_TASKS[t].offline) for t in tasks)


def needs_hub(spec: LmEvalSpec | None) -> bool:
    """True if some task is not shipped offline (its data comes from the hub or HF_HOME)."""
    return spec is not None and _needs_defaults(spec.tasks)


def default_max_length(model_id: str) -> int | None:
    """The context the model was trained and is evaluated at: the zoo's ``seq_len``.

    None for other models: lm-eval then uses the config's ``max_position_embeddings``
    (Wanda evaluates LLaMA-2 at 4096, its max_position_embeddings; algorithms.md §9).
    """
    source, _, name = model_id.partition(":")
    if source != "zoo":
        return None
    from harness.models.zoo import get_zoo_config

    return get_zoo_config(name).seq_len


# --------------------------------------------------------------------------- results


def _number(x: Any) -> float | None:
    """A float for numbers (numpy scalars included), None for "N/A", strings and bools."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    return float(x)


def _leaves(task: str, groups: dict[str, list[str]]) -> list[str]:
    """The plain tasks under ``task`` (itself if it is no group), depth first."""
    if task not in groups:
        return [task]
    return [leaf for sub in groups[task] for leaf in _leaves(sub, groups)]


def flatten_results(results: dict[str, Any]) -> list[dict[str, Any]]:
    """lm-eval's ``simple_evaluate`` output -> metric rows; the only place that parses it.

    ``results["results"][task]`` maps ``"metric,filter"`` to a value and
    ``"metric_stderr,filter"`` to its standard error (a float, a numpy float, or "N/A"),
    beside non-metric keys (``alias``, ``name``, ``sample_len``, ``sample_count``).

    Returns:
        Rows ``{"name", "value", "stderr", "n", "headline": False}``, in lm-eval's task order:
        ``name`` is ``task/metric`` (``task/metric:filter`` for a filter other than ``none``),
        ``n`` the effective item count (for a group, the items behind that metric).
    """
    n_samples = results.get("n-samples", {})
    groups = results.get("group_subtasks", {})
    rows = []
    for task, metrics in results.get("results", {}).items():
        counts = metrics.get("sample_count") or {}  # groups: items per aggregated metric
        for key, raw in metrics.items():
            metric, sep, filt = key.partition(",")
            value = _number(raw)
            if not sep or metric.endswith("_stderr") or value is None:
                continue
            if key in counts:
                n = counts[key]
            else:
                n = sum(n_samples.get(t, {}).get("effective", 0) for t in _leaves(task, groups)) or None
            name = f"{task}/{metric}" if filt == "none" else f"{task}/{metric}:{filt}"
            rows.append({"name": name, "value": value, "stderr": _number(metrics.get(f"{metric}_stderr,{filt}")),
                         "n": int(n) if n is not None else None, "headline": False})
    return rows


def mark_headlines(rows: list[dict[str, Any]], requested: tuple[str, ...], overrides: dict[str, str]) -> None:
    """Set ``headline`` on each task's reported row (in place).

    A task's headline metric is its suite override, else :data:`HEADLINE_METRICS`, else (for
    a requested task outside the table) ``acc`` if it reports one. Tasks outside the table
    that were not requested (e.g. the 57 MMLU subjects) get no headline.

    Raises:
        ValueError: a declared headline metric that the task did not report.
    """
    by_name = {r["name"]: r for r in rows}
    tasks = list(dict.fromkeys(r["name"].split("/", 1)[0] for r in rows))
    for task in tasks:
        metric = overrides.get(task) or HEADLINE_METRICS.get(task)
        if metric is None and task in requested and f"{task}/acc" in by_name:
            metric = "acc"
        if metric is None:
            continue
        row = by_name.get(f"{task}/{metric}")
        if row is None:
            reported = sorted(n.split("/", 1)[1] for n in by_name if n.startswith(task + "/"))
            raise ValueError(f"lm_eval task '{task}' reported no '{metric}' (it reported: {', '.join(reported)}); "
                             "set its headline with lm_eval.metrics")
        row["headline"] = True


def _info(results: dict[str, Any], spec: LmEvalSpec, max_length: int | None, include_defaults: bool,
          seconds: float) -> dict[str, Any]:
    """Provenance for the record's ``eval_info.lm_eval``."""
    manifest = json.loads((TASK_DIR / "data" / "manifest.json").read_text(encoding="utf-8"))
    used = {t for t in results.get("versions", {}) if t in manifest["tasks"]}
    return {
        "lm_eval_version": results.get("lm_eval_version"),
        "task_versions": {k: str(v) for k, v in results.get("versions", {}).items()},
        "n_shot": dict(results.get("n-shot", {})),
        "higher_is_better": results.get("higher_is_better", {}),
        "n_samples": results.get("n-samples", {}),
        "tasks": list(spec.tasks), "num_fewshot": spec.num_fewshot, "limit": spec.limit,
        "max_length": max_length, "batch_size": spec.batch_size,
        "logits_cache": False, "use_cache": None, "include_defaults": include_defaults,
        # the shipped tasks' data files, so a rebuilt data set is visible in the record
        "offline_data": {"corpus_sha256": manifest["corpus_sha256"],
                         "sha256": {t: manifest["tasks"][t]["sha256"] for t in sorted(used)}},
        "time_s": seconds,
    }


# ------------------------------------------------------------------------ evaluation


@contextlib.contextmanager
def _contained() -> Iterator[None]:
    """Run lm-eval without its side effects on this process.

    * lm-eval reseeds the global RNGs: their states are restored on exit.
    * Its tqdm bars would tear through the CLI's progress display (library code never
      prints), so every lm_eval module that imported ``tqdm`` gets a disabled one for the
      duration (bootstrap stderrs import it locally and still draw; our tasks never bootstrap).
    * Its per-call warnings (an in-memory model "may ignore arguments", custom-dataset
      hints) are noise here; unless this logger is at DEBUG they are raised to ERROR.
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    for module in ("lm_eval.evaluator", "lm_eval.api.model", "lm_eval.api.task", "lm_eval.models.huggingface"):
        importlib.import_module(module)  # so that every module drawing bars is in sys.modules
    patched = [mod for name, mod in list(sys.modules.items())
               if name.startswith("lm_eval.") and getattr(mod, "tqdm", None) is tqdm]
    for mod in patched:
        mod.tqdm = lambda *a, **k: tqdm(*a, **{**k, "disable": True})
    lm_logger = logging.getLogger("lm_eval")
    level = lm_logger.level
    if not log.isEnabledFor(logging.DEBUG):
        lm_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lm_logger.setLevel(level)
        for mod in patched:
            mod.tqdm = tqdm
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def task_manager(tasks: tuple[str, ...], cache: dict | None = None) -> Any:
    """lm-eval's TaskManager with our tasks; built-in tasks indexed only if one is needed."""
    from lm_eval.tasks import TaskManager

    include_defaults = _needs_defaults(tasks)
    cache = {} if cache is None else cache
    if include_defaults not in cache:  # the full index takes ~5 s: build it once per process
        cache[include_defaults] = TaskManager(include_path=str(TASK_DIR), include_defaults=include_defaults)
    return cache[include_defaults]


def evaluate_lm_eval(model: Any, tokenizer: Any, spec: LmEvalSpec, *, device: str, model_id: str,
                     cache: dict | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``spec``'s tasks on ``model`` as it is now (pruned, in memory).

    Every call builds a fresh ``HFLM`` and no response cache is used, so editing the
    weights between calls always changes the scores.

    Args:
        model: A transformers causal LM, already on ``device``.
        tokenizer: Its tokenizer.
        spec: Tasks and settings.
        device: Where the model is. HFLM takes the device from an in-memory model; it is
            passed anyway, as the lm-eval docs show.
        model_id: The model's prefixed id; picks the default ``max_length``.
        cache: Reused across calls (the runner passes one per suite) to hold TaskManagers.

    Returns:
        The metric rows (see :func:`flatten_results`) and the provenance for the record.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    max_length = spec.max_length if spec.max_length is not None else default_max_length(model_id)
    tm = task_manager(spec.tasks, cache)
    t0 = time.perf_counter()
    with _contained():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size, max_length=max_length,
                  logits_cache=False, device=device)
        try:
            results = lm_eval.simple_evaluate(
                model=lm, tasks=list(spec.tasks), num_fewshot=spec.num_fewshot, limit=spec.limit,
                task_manager=tm, use_cache=None, log_samples=False)
        except OSError as exc:  # datasets' ConnectionError / DatasetNotFoundError: data not here
            if not _needs_defaults(spec.tasks):
                raise
            hub = [t for t in spec.tasks if not (t in KNOWN_TASKS and KNOWN_TASKS[t].offline)]
            raise TaskDataUnavailable(
                f"lm_eval task data for {', '.join(hub)} is not available ({str(exc).strip().splitlines()[0]}); "
                "run once where the hub is reachable and copy that Hugging Face cache here (HF_HOME), "
                "or use the offline tasks (tiny_suite)") from exc
    seconds = time.perf_counter() - t0
    rows = flatten_results(results)
    mark_headlines(rows, spec.tasks, dict(spec.metrics))
    info = _info(results, spec, results.get("max_length", max_length), _needs_defaults(spec.tasks), seconds)
    return rows, info
