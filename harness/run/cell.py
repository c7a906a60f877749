"""One cell: load the model, prune it through its family, measure sparsity, evaluate, fill the record.

:func:`run_cell` always returns a complete record (status ok, failed or error): a failing method
must not stop the suite, and the record keeps why. A full disk (or quota, or an I/O error) hit
inside the cell is the machine's, not the method's: status "error" (:mod:`harness.run.faults`).
"""
from __future__ import annotations

import errno
import logging
import time
import traceback
from datetime import datetime, timezone
from typing import Any

from harness.core.spec import RunSpec
from harness.run.reporter import Reporter

log = logging.getLogger(__name__)

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})  # the machine's fault


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_record(spec: RunSpec, suite_text: str, *, device: str, env: dict[str, Any]) -> dict[str, Any]:
    """A record for ``spec`` that counts as failed until a run fills it in."""
    return {
        "record_version": 1, "run_id": spec.run_id, "spec": spec.to_dict(), "spec_json": spec.canonical_json(),
        "suite": spec.suite, "suite_text": suite_text, "model": spec.model.label, "method": spec.method,
        "target": spec.target, "seed": spec.seed, "status": "failed", "error": None, "traceback": None,
        "started_at": now(), "finished_at": None, "wall_time_s": None, "prune_time_s": None,
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
    """Prune and evaluate one cell; always return a complete record (status ok, failed or error)."""
    from harness.run.env import peak_rss_bytes

    record = new_record(spec, suite_text, device=device, env=env)
    t0 = time.perf_counter()
    try:
        _prune_and_evaluate(spec, record, device=device, caches=caches, reporter=reporter)
    except Exception as exc:  # one failed cell must not stop the suite; the record keeps why
        record["status"] = "error" if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS else "failed"
        first = str(exc).strip().split("\n")[0]  # the first line; a "\r" inside it stays (made visible on print)
        record["error"] = f"{type(exc).__name__}: {first}"
        record["traceback"] = traceback.format_exc()
        log.info("cell %s failed: %s", spec.short_id, record["error"])
    record["finished_at"] = now()
    record["wall_time_s"] = time.perf_counter() - t0
    record["peak_rss_bytes"] = peak_rss_bytes()
    return record


def _prune_and_evaluate(spec: RunSpec, record: dict, *, device: str, caches: dict, reporter: Reporter) -> None:
    import torch

    from harness.run.env import apply_precision
    from harness.evaluate.cell import evaluate_all
    from harness.core.method import build_params
    from harness.plugins import get_method
    from harness.models.load import is_vision
    from harness.run.families import FAMILIES
    from harness.core.target import Target

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    record["environment"] = {**record["environment"], "precision": apply_precision()}
    target = Target.parse(spec.target)
    cls = get_method(spec.method)
    method = cls(build_params(cls, spec.params))
    if spec.model.problem:  # synthetic sparse recovery: no weights, its own metrics (harness.synthetic.bench)
        from harness.synthetic.bench import solve_cell

        record["environment"] = {**record["environment"], "method_origin": cls.origin}
        solve_cell(spec, method, record, progress=lambda d, n: reporter.progress("steps", d, n))
        record["status"] = "ok"
        return
    family = FAMILIES["vision" if is_vision(spec.model) else "lm"]  # image classifier (timm) or causal LM
    loaded = family.load(spec.model, device=device, progress=lambda s, n, loss: reporter.progress("zoo build", s, n))
    record["model_info"] = loaded.info
    record["environment"] = {**record["environment"], "method_origin": cls.origin,  # plugin dist==version
                             "method_category": cls.category}  # "fine-tuning" is labelled on the leaderboard
    model = loaded.model
    dense_logits = _dense_logits(spec, loaded, device, caches) if family.dense_logits else None

    # calibration data, the driver for the method's kind; sets record["prune_time_s"]
    reports = family.prune(spec, loaded, method, target, record, device=device, caches=caches, reporter=reporter)
    record_sparsity(record, model, reports, method, target)

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


def record_sparsity(record: dict, model: Any, reports: list, method: Any, target: Any) -> None:
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
