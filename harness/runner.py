"""Run a suite: for each cell, skip if stored, load, prune, measure, evaluate, record.

Each cell's record is self-contained and written atomically to its run directory before it
is indexed in DuckDB, so a crash loses at most the cell in flight and the cells can later
run in other processes. A failing cell is recorded with its error and the suite goes on.
"""
from __future__ import annotations

import fnmatch
import logging
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from harness.spec import RunSpec
from harness.suite import Suite, expand

log = logging.getLogger(__name__)


@dataclass
class CellResult:
    spec: RunSpec
    status: str  # "ok", "failed" or "skipped" (already stored as ok)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    sparsity: float | None = None
    wall_time_s: float = 0.0


class Reporter:
    """Progress sink. The library calls it; the CLI implements it with rich. Default: silent."""

    def plan(self, cells: list[RunSpec], skipped: int) -> None: ...

    def cell_start(self, index: int, total: int, spec: RunSpec) -> None: ...

    def progress(self, task: str, done: int, total: int) -> None: ...

    def cell_end(self, result: CellResult) -> None: ...


def select(cells: list[RunSpec], only: str | None) -> list[RunSpec]:
    """Keep cells whose run id starts with ``only`` or whose ``model/method/target`` matches it."""
    if not only:
        return cells
    return [c for c in cells if c.run_id.startswith(only) or fnmatch.fnmatch(cell_label(c), only)]


def cell_label(spec: RunSpec) -> str:
    return f"{spec.model.id}/{spec.method}/{spec.target}"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_suite(
    suite: Suite,
    *,
    store: Any,
    only: str | None = None,
    force: bool = False,
    device: str | None = None,
    reporter: Reporter | None = None,
) -> list[CellResult]:
    """Run every cell of ``suite`` not already stored as ok; return one result per cell."""
    from harness.env import environment

    reporter = reporter or Reporter()
    device = device or default_device()
    cells = select(expand(suite), only)
    store.ingest_pending()  # records a crashed run wrote to disk but never indexed
    done = store.statuses([c.run_id for c in cells])
    todo = [c for c in cells if force or done.get(c.run_id) != "ok"]
    reporter.plan(cells, len(cells) - len(todo))
    env = environment(device)
    caches: dict[str, dict] = {"calibration": {}, "tokens": {}}
    results: dict[str, CellResult] = {}
    for i, spec in enumerate(todo):
        reporter.cell_start(i, len(todo), spec)
        record = run_cell(spec, suite.text, device=device, env=env, caches=caches, reporter=reporter)
        store.save(record)
        res = CellResult(
            spec, record["status"], headline_metrics(record["metrics"]), record["error"],
            record["sparsity"]["global"], record["wall_time_s"],
        )
        results[spec.run_id] = res
        reporter.cell_end(res)
    stored = _stored_metrics(store, [c.run_id for c in cells if c.run_id not in results])
    out = []
    for c in cells:
        if c.run_id in results:
            out.append(results[c.run_id])
        else:
            metrics, sparsity = stored.get(c.run_id, ({}, None))
            out.append(CellResult(c, "skipped", metrics, None, sparsity))
    return out


def headline_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Metrics worth a summary column: perplexities and each lm-eval task's declared metric."""
    return {m["name"]: m["value"] for m in rows if m.get("headline") is not False}


def _stored_metrics(store: Any, run_ids: list[str]) -> dict[str, tuple[dict[str, float], float | None]]:
    out: dict[str, tuple[dict[str, float], float | None]] = {}
    if not run_ids:
        return out
    rows = store.query(
        "SELECT r.run_id, m.metric, m.value, r.sparsity_global FROM runs r "
        "LEFT JOIN metrics m ON m.run_id = r.run_id AND m.headline IS NOT false "
        "WHERE r.run_id IN (SELECT unnest(?))",
        [run_ids],
    )
    for run_id, metric, value, sparsity in rows:
        metrics, _ = out.setdefault(run_id, ({}, sparsity))
        if metric is not None:
            metrics[metric] = value
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def run_cell(
    spec: RunSpec,
    suite_text: str,
    *,
    device: str,
    env: dict[str, Any],
    caches: dict[str, dict],
    reporter: Reporter,
) -> dict[str, Any]:
    """Prune and evaluate one cell; always return a complete record (status ok or failed)."""
    from harness.env import peak_rss_bytes

    record: dict[str, Any] = {
        "record_version": 1, "run_id": spec.run_id, "spec": spec.to_dict(), "spec_json": spec.canonical_json(),
        "suite": spec.suite, "suite_text": suite_text, "model": spec.model.id, "method": spec.method,
        "target": spec.target, "seed": spec.seed, "status": "failed", "error": None, "traceback": None,
        "started_at": _now(), "finished_at": None, "wall_time_s": None, "prune_time_s": None,
        "peak_rss_bytes": None, "peak_cuda_bytes": None, "device": device,
        "sparsity": {"global": None, "target": None, "nm_compliant": None},
        "metrics": [], "layers": [], "series": [], "model_info": {}, "environment": env,
        "publishable": spec.publishable,  # False for trial settings (lm-eval limit)
        "eval_info": {},  # evaluator provenance: lm-eval and task versions, max_length, ...
    }
    t0 = time.perf_counter()
    try:
        _prune_and_evaluate(spec, record, device=device, caches=caches, reporter=reporter)
    except Exception as exc:  # one failed cell must not stop the suite; the record keeps why
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        record["traceback"] = traceback.format_exc()
        log.info("cell %s failed: %s", spec.short_id, record["error"])
    record["finished_at"] = _now()
    record["wall_time_s"] = time.perf_counter() - t0
    record["peak_rss_bytes"] = peak_rss_bytes()
    return record


def _prune_and_evaluate(spec: RunSpec, record: dict, *, device: str, caches: dict, reporter: Reporter) -> None:
    import torch

    from harness.evaluate import evaluate_all
    from harness.method import build_params, get_method
    from harness.models import is_vision, load_model, load_vision_model
    from harness.target import Target

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    target = Target.parse(spec.target)
    cls = get_method(spec.method)
    method = cls(build_params(cls, spec.params))
    vision = is_vision(spec.model)  # image classifier (timm) or causal LM
    load = load_vision_model if vision else load_model
    loaded = load(spec.model, device=device, progress=lambda s, n, loss: reporter.progress("zoo build", s, n))
    record["model_info"] = loaded.info
    record["environment"] = {**record["environment"], "method_origin": cls.origin,  # plugin dist==version
                             "method_category": cls.category}  # "fine-tuning" is labelled on the leaderboard
    model = loaded.model

    prune = _prune_vision if vision else _prune_lm  # each sets record["prune_time_s"]
    reports = prune(spec, loaded, method, target, record, device=device, caches=caches, reporter=reporter)
    _record_sparsity(record, model, reports, method, target)

    model.to(device)
    record["metrics"], record["eval_info"] = evaluate_all(
        model, loaded.tokenizer, spec, device=device, caches=caches,
        progress=lambda n, d, t: reporter.progress(f"eval {n}", d, t), data_config=loaded.data_config,
    )
    for row in record["metrics"]:
        if row["value"] != row["value"] or row["value"] in (float("inf"), float("-inf")):
            raise ValueError(f"{row['name']} is not finite ({row['value']}): the pruned model diverged")
    if cuda:
        record["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    record["status"] = "ok"
    model.to("cpu")


def _prune_lm(spec: RunSpec, loaded: Any, method: Any, target: Any, record: dict, *, device: str, caches: dict,
              reporter: Reporter) -> list:
    """Calibration token windows (cached per suite) and the layer-sequential driver."""
    from harness import data
    from harness.calibration import prune_sequential

    batches: list = []
    if method.modifies_weights:
        cal = spec.calibration
        key = (spec.model.id, cal.dataset, cal.n_samples, cal.seqlen, cal.seed)
        if key not in caches["calibration"]:
            caches["calibration"][key] = data.calibration_tokens(
                cal.dataset, loaded.tokenizer, cal.n_samples, cal.seqlen, cal.seed
            )
        tokens = caches["calibration"][key]  # (n_samples, seqlen)
        batches = list(tokens.split(spec.batch_size))
    t0 = time.perf_counter()
    if method.level == "model":  # the whole model and a loss: harness.global_driver
        from harness.global_driver import prune_model_lm

        result = prune_model_lm(loaded.model, tokens, method, target, device=device, selection=spec.layers,
                                batch_size=spec.batch_size, progress=reporter.progress)
        record["prune_time_s"] = time.perf_counter() - t0
        _record_model_level(record, result)
        return result.reports
    reports = prune_sequential(
        loaded.model, batches, method, target, device=device, selection=spec.layers,
        progress=lambda d, n: reporter.progress("prune", d, n),
    )
    record["prune_time_s"] = time.perf_counter() - t0
    return reports


def _prune_vision(spec: RunSpec, loaded: Any, method: Any, target: Any, record: dict, *, device: str, caches: dict,
                  reporter: Reporter) -> list:
    """Calibration images (drawn once per model and suite) and the vision driver; BN re-estimation recorded."""
    from harness import images
    from harness.vision import STRATEGY, prune_vision

    cal = spec.calibration
    stream = None
    if method.modifies_weights:  # magnitude too: BatchNorm re-estimation needs the images
        key = ("images", spec.model.id, spec.model.weights, cal.dataset, cal.n_samples, cal.seed,
               cal.augment_rounds, cal.root)
        if key not in caches["calibration"]:
            caches["calibration"][key] = images.calibration_stream(
                cal.dataset, loaded.data_config, cal.n_samples, cal.seed, cal.augment_rounds or 0, cal.root)
        stream = caches["calibration"][key]
    t0 = time.perf_counter()
    if method.level == "model":  # the whole model and a loss: harness.global_driver
        from harness.global_driver import prune_model_vision

        result = prune_model_vision(
            loaded.model, stream, method, target, device=device, selection=spec.layers,
            batch_size=spec.batch_size, bn_recalibration=cal.bn_recalibration, progress=reporter.progress)
    else:
        result = prune_vision(
            loaded.model, stream.batches if stream is not None else None, method, target, device=device,
            selection=spec.layers, batch_size=spec.batch_size, bn_recalibration=cal.bn_recalibration,
            progress=lambda d, n: reporter.progress("prune", d, n),
        )
    record["prune_time_s"] = time.perf_counter() - t0  # statistics, pruning and BatchNorm re-estimation
    record["prune_info"] = {"strategy": getattr(result, "strategy", STRATEGY),
                            "calibration_images": result.calibration_images,
                            "skipped_layers": result.skipped, "bn_recalibration": result.bn_recalibration}
    if method.level == "model":
        _record_model_level(record, result)
    return result.reports


def _record_model_level(record: dict, result: Any) -> None:
    """A model-level method's curves go to the series, its notes to prune_info."""
    record["series"] = list(record["series"]) + [dict(row) for row in result.series]
    record["prune_info"] = {**record.get("prune_info", {}), "level": "model", **result.info}


def _record_sparsity(record: dict, model: Any, reports: list, method: Any, target: Any) -> None:
    """Measure every pruned layer (conv weights flattened to rows) and fail on an out-of-tolerance one."""
    from harness.sparsity import Measured, check, measure

    problems, zeros, numel, nm_all = [], 0, 0, True
    per_layer = target.is_nm or method.target_scope() == "layer"  # else one global threshold: the total counts
    for rep in reports:
        m = measure(model.get_submodule(rep.name).weight, target)
        zeros, numel = zeros + m.zeros, numel + m.numel
        nm_all = nm_all and (m.nm_ok is not False)
        if method.modifies_weights and per_layer:
            why = check(m, target, rep.cols)
            if why:
                problems.append(f"{rep.name}: {why}")
        record["layers"].append({
            "name": rep.name, "block": rep.block, "rows": rep.rows, "cols": rep.cols, "numel": m.numel,
            "zeros": m.zeros, "sparsity": m.sparsity, "nm_ok": m.nm_ok, "rel_error": rep.rel_error,
            "time_s": rep.time_s, "info": rep.info,
        })
    record["sparsity"] = {
        "global": zeros / numel if numel else 0.0, "target": target.sparsity,
        "nm_compliant": nm_all if target.is_nm else None,
    }
    if not reports:
        raise ValueError("no prunable layers matched (check the suite's layers: targets/ignore)")
    if method.modifies_weights and not per_layer:
        why = check(Measured(numel, zeros, None), target, numel)
        if why:
            problems.append(f"all pruned layers together (global scope): {why}")
    if problems:
        more = f" (and {len(problems) - 1} more layers)" if len(problems) > 1 else ""
        raise ValueError(f"measured sparsity out of tolerance: {problems[0]}{more}")
