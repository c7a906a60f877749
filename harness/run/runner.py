"""Run a suite: for each cell, skip if stored, load, prune, measure, evaluate, record.

Each cell's record is self-contained and written atomically to its run directory before it
is indexed in DuckDB, so a crash loses at most the cell in flight and the cells can later
run in other processes. A failing cell is recorded with its error and the suite goes on.
"""
from __future__ import annotations

import fnmatch
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from harness.core.spec import RunSpec
from harness.suite.loader import Suite, expand

log = logging.getLogger(__name__)


@dataclass
class CellResult:
    spec: RunSpec
    status: str  # "ok", "failed", "skipped" (already stored as ok) or "not run" (stopped first)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    sparsity: float | None = None
    wall_time_s: float = 0.0
    stored: bool = False  # from an earlier run, not run now


class Reporter:
    """Progress sink. The library calls it; the CLI implements it with rich. Default: silent."""

    def plan(self, cells: list[RunSpec], skipped: int, failed: int = 0) -> None:
        """``skipped`` cells are already stored; ``failed`` of them as failed."""

    def note(self, message: str) -> None:
        """Something the user should see (a submitted Slurm array, a busy database)."""

    def cell_start(self, index: int, total: int, spec: RunSpec) -> None: ...

    def progress(self, task: str, done: int, total: int) -> None: ...

    def cell_end(self, result: CellResult) -> None: ...


def select(cells: list[RunSpec], only: str | None) -> list[RunSpec]:
    """Keep cells whose run id starts with ``only`` or whose ``model/method/target`` matches it."""
    if not only:
        return cells
    return [c for c in cells if c.run_id.startswith(only) or fnmatch.fnmatch(cell_label(c), only)]


def cell_label(spec: RunSpec) -> str:
    return f"{spec.model.label}/{spec.method}/{spec.target}"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_suite(
    suite: Suite,
    *,
    store: Any,
    only: str | None = None,
    force: bool = False,
    retry_failed: bool = False,
    device: str | None = None,
    reporter: Reporter | None = None,
    executor: Any = None,
    stop: threading.Event | None = None,
) -> list[CellResult]:
    """Run every cell of ``suite`` not already stored; return one result per cell.

    Args:
        force: rerun every cell, even those stored as ok.
        retry_failed: rerun cells stored as failed (by default they are reported, not rerun).
        executor: where cells run (:mod:`harness.run.executors`); default in this process.
        stop: once set (e.g. by a first Ctrl-C), no new cell starts; cells in flight finish and
            the cells never started come back with status ``"not run"``.
    """
    from harness.run.executors import Batch, InlineExecutor

    reporter = reporter or Reporter()
    cells = select(expand(suite), only)
    store.ingest_pending()  # records a crashed run wrote to disk but never indexed
    stored = store.statuses([c.run_id for c in cells])
    rerun = {"ok", "failed"} if force else {"failed"} if retry_failed else set()
    todo = [c for c in cells if c.run_id not in stored or stored[c.run_id] in rerun]
    spec_by_id = {c.run_id: c for c in todo}
    failed_before = sum(1 for c in cells if stored.get(c.run_id) == "failed" and c.run_id not in spec_by_id)
    reporter.plan(cells, len(cells) - len(todo), failed=failed_before)
    results: dict[str, CellResult] = {}
    busy: list[str] = []

    def finish(record: dict[str, Any]) -> None:
        """The executor wrote ``record`` to its run dir: index it and report it."""
        from harness.store.index import StoreBusy

        try:
            store.ingest(record)
        except StoreBusy as exc:  # the record is safe on disk; index it at the end
            busy.append(record["run_id"])
            reporter.note(f"{exc} (the record is kept; indexing is retried at the end)")
        res = CellResult(
            spec_by_id[record["run_id"]], record["status"], headline_metrics(record["metrics"]),
            record["error"], (record.get("sparsity") or {}).get("global"), record["wall_time_s"] or 0.0,
        )
        results[res.spec.run_id] = res
        reporter.cell_end(res)

    executor = executor or InlineExecutor()
    executor.run(Batch(todo, suite.text, device, store, reporter, stop or threading.Event(), finish))
    if busy:
        store.ingest_pending()  # waits up to store.wait_s for the database again
    previous = _stored_results(store, [c.run_id for c in cells if c.run_id not in results])
    out = []
    for c in cells:
        if c.run_id in results:
            out.append(results[c.run_id])
        elif c.run_id in spec_by_id or c.run_id not in previous:
            out.append(CellResult(c, "not run"))  # stopped before it started
        else:
            out.append(replace(previous[c.run_id], spec=c))
    return out


def headline_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Metrics worth a summary column: perplexities and each lm-eval task's declared metric."""
    return {m["name"]: m["value"] for m in rows if m.get("headline") is not False}


def _stored_results(store: Any, run_ids: list[str]) -> dict[str, CellResult]:
    """Stored cells as results: ok ones as "skipped", failed ones as "failed" with their error."""
    if not run_ids:
        return {}
    rows = store.query(
        "SELECT r.run_id, r.status, r.error, r.sparsity_global, r.wall_time_s, m.metric, m.value "
        "FROM runs r LEFT JOIN metrics m ON m.run_id = r.run_id AND m.headline IS NOT false "
        "WHERE r.run_id IN (SELECT unnest(?))",
        [run_ids],
    )
    out: dict[str, CellResult] = {}
    for run_id, status, error, sparsity, wall, metric, value in rows:
        res = out.get(run_id)
        if res is None:
            res = out[run_id] = CellResult(
                None, "skipped" if status == "ok" else "failed", {}, error, sparsity,  # type: ignore[arg-type]
                wall or 0.0, stored=True)
        if metric is not None:
            res.metrics[metric] = value
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_record(spec: RunSpec, suite_text: str, *, device: str, env: dict[str, Any]) -> dict[str, Any]:
    """A record for ``spec`` that counts as failed until a run fills it in."""
    return {
        "record_version": 1, "run_id": spec.run_id, "spec": spec.to_dict(), "spec_json": spec.canonical_json(),
        "suite": spec.suite, "suite_text": suite_text, "model": spec.model.label, "method": spec.method,
        "target": spec.target, "seed": spec.seed, "status": "failed", "error": None, "traceback": None,
        "started_at": _now(), "finished_at": None, "wall_time_s": None, "prune_time_s": None,
        "peak_rss_bytes": None, "peak_cuda_bytes": None, "device": device,
        "sparsity": {"global": None, "target": None, "nm_compliant": None},
        "metrics": [], "layers": [], "series": [], "model_info": {}, "environment": env,
        "publishable": spec.publishable,  # False for trial settings (lm-eval limit)
        "eval_info": {},  # evaluator provenance: lm-eval and task versions, max_length, ...
    }


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
    from harness.run.env import peak_rss_bytes

    record = new_record(spec, suite_text, device=device, env=env)
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

    from harness.run.env import apply_precision
    from harness.evaluate.cell import evaluate_all
    from harness.core.method import build_params
    from harness.plugins import get_method
    from harness.models.load import is_vision, load_model, load_vision_model
    from harness.core.target import Target

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    record["environment"] = {**record["environment"], "precision": apply_precision()}
    target = Target.parse(spec.target)
    cls = get_method(spec.method)
    method = cls(build_params(cls, spec.params))
    if spec.model.problem:  # synthetic sparse recovery: no weights, its own metrics (harness.synthetic.bench)
        from harness.synthetic.bench import run_cell as run_synthetic

        record["environment"] = {**record["environment"], "method_origin": cls.origin}
        run_synthetic(spec, method, record, progress=lambda d, n: reporter.progress("steps", d, n))
        record["status"] = "ok"
        return
    vision = is_vision(spec.model)  # image classifier (timm) or causal LM
    load = load_vision_model if vision else load_model
    loaded = load(spec.model, device=device, progress=lambda s, n, loss: reporter.progress("zoo build", s, n))
    record["model_info"] = loaded.info
    record["environment"] = {**record["environment"], "method_origin": cls.origin,  # plugin dist==version
                             "method_category": cls.category}  # "fine-tuning" is labelled on the leaderboard
    model = loaded.model
    dense_logits = _dense_logits(spec, loaded, device, caches) if vision else None

    prune = _prune_vision if vision else _prune_lm  # each sets record["prune_time_s"]
    reports = prune(spec, loaded, method, target, record, device=device, caches=caches, reporter=reporter)
    _record_sparsity(record, model, reports, method, target)

    model.to(device)
    record["metrics"], record["eval_info"] = evaluate_all(
        model, loaded.tokenizer, spec, device=device, caches=caches,
        progress=lambda n, d, t: reporter.progress(f"eval {n}", d, t), data_config=loaded.data_config,
        dense_logits=dense_logits,
    )
    for row in record["metrics"]:
        if row["value"] != row["value"] or row["value"] in (float("inf"), float("-inf")):
            raise ValueError(f"{row['name']} is not finite ({row['value']}): the pruned model diverged")
    if cuda:
        record["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    record["status"] = "ok"
    model.to("cpu")


def _dense_logits(spec: RunSpec, loaded: Any, device: str, caches: dict) -> dict[str, Any]:
    """The unpruned model's logits on each image eval that asks for ``agreement`` (cached per suite)."""
    from harness.data import images

    out = {}
    for ev in spec.image_evals:
        if not ev.agreement:
            continue
        key = (repr(spec.model), ev.dataset, ev.limit, ev.root)
        if key not in caches.setdefault("dense_logits", {}):
            loaded.model.to(device).eval()
            split = images.eval_split(ev.dataset, ev.root, ev.limit)
            caches["dense_logits"][key] = images.predict(loaded.model, split, loaded.data_config, device=device,
                                                         batch_size=spec.batch_size)
        out[ev.dataset] = caches["dense_logits"][key]
    return out


def _prune_lm(spec: RunSpec, loaded: Any, method: Any, target: Any, record: dict, *, device: str, caches: dict,
              reporter: Reporter) -> list:
    """Calibration token windows (cached per suite) and the layer-sequential driver."""
    from harness.data import text as data
    from harness.drivers.lm import prune_sequential

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
    if method.kind == "model":  # the whole model and a loss: harness.drivers.model_level
        from harness.drivers.model_level import prune_model_lm

        val = None
        n_val = method.validation_samples()
        if n_val:  # held-out windows of the calibration text, none overlapping a calibration window
            val = data.validation_tokens(cal.dataset, loaded.tokenizer, cal.n_samples, n_val, cal.seqlen, cal.seed)
        result = prune_model_lm(loaded.model, tokens, method, target, device=device, selection=spec.layers,
                                batch_size=spec.batch_size, progress=reporter.progress, validation=val)
        record["prune_time_s"] = time.perf_counter() - t0
        _record_model_level(record, result)
        return result.reports
    layer_targets = None
    if spec.profile is not None:  # measured on the dense model, part of the prune time
        from harness.drivers.profiles import owl_profile

        layer_targets, record["profile"] = owl_profile(loaded.model, batches, target, spec.profile,
                                                       device=device, selection=spec.layers)
    reports = prune_sequential(
        loaded.model, batches, method, target, device=device, selection=spec.layers,
        progress=lambda d, n: reporter.progress("prune", d, n), layer_targets=layer_targets,
    )
    for rep in reports:
        if layer_targets:
            rep.info = {**rep.info, "target": layer_targets[rep.name].sparsity}
    record["prune_time_s"] = time.perf_counter() - t0
    return reports


def _prune_vision(spec: RunSpec, loaded: Any, method: Any, target: Any, record: dict, *, device: str, caches: dict,
                  reporter: Reporter) -> list:
    """Calibration images (drawn once per model and suite) and the vision driver; BN re-estimation recorded."""
    from harness.data import images
    from harness.drivers.vision import SEQUENTIAL_STRATEGY, STRATEGY, prune_vision

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
    if method.kind == "model":  # the whole model and a loss: harness.drivers.model_level
        from harness.drivers.model_level import prune_model_vision

        result = prune_model_vision(
            loaded.model, stream, method, target, device=device, selection=spec.layers,
            batch_size=spec.batch_size, bn_recalibration=cal.bn_recalibration, progress=reporter.progress)
    else:
        result = prune_vision(
            loaded.model, stream.batches if stream is not None else None, method, target, device=device,
            selection=spec.layers, batch_size=spec.batch_size, bn_recalibration=cal.bn_recalibration,
            progress=lambda d, n: reporter.progress("prune", d, n), sequential=bool(cal.sequential),
        )
    record["prune_time_s"] = time.perf_counter() - t0  # statistics, pruning and BatchNorm re-estimation
    strategy = SEQUENTIAL_STRATEGY if cal.sequential and method.kind == "layer" else STRATEGY
    record["prune_info"] = {"strategy": getattr(result, "strategy", strategy),
                            "calibration_images": result.calibration_images,
                            "skipped_layers": result.skipped, "bn_recalibration": result.bn_recalibration}
    if method.kind == "model":
        _record_model_level(record, result)
    return result.reports


def _record_model_level(record: dict, result: Any) -> None:
    """A model-level method's curves go to the series, its notes to prune_info."""
    record["series"] = list(record["series"]) + [dict(row) for row in result.series]
    record["prune_info"] = {**record.get("prune_info", {}), "level": "model", **result.info}


def _record_sparsity(record: dict, model: Any, reports: list, method: Any, target: Any) -> None:
    """Measure every pruned layer (conv weights flattened to rows) and fail on an out-of-tolerance one."""
    from harness.core.sparsity import Measured, check, measure
    from harness.core.target import Target

    problems, zeros, numel, nm_all = [], 0, 0, True
    per_layer = target.is_nm or method.target_scope() == "layer"  # else one global threshold: the total counts
    for rep in reports:
        layer_target = Target(rep.info["target"]) if "target" in rep.info else target  # a sparsity profile
        m = measure(model.get_submodule(rep.name).weight, layer_target)
        zeros, numel = zeros + m.zeros, numel + m.numel
        nm_all = nm_all and (m.nm_ok is not False)
        if method.modifies_weights and per_layer:
            why = check(m, layer_target, rep.cols)
            if why and rep.info.get("dead_inputs"):
                why += (f" ({rep.info['dead_inputs']} of its {rep.cols} inputs were zero on every calibration "
                        f"sample and were pruned with it, as the method's reference does; more calibration "
                        f"samples usually fix it)")
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
