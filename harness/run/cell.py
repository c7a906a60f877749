"""One cell: load the model, prune it, store its weights, evaluate them in a clean model, fill the record.

:func:`run_cell` always returns a complete record (status ok, failed or error): a failing method
must not stop the suite, and the record keeps why. A full disk (or quota, or an I/O error) hit
inside the cell is the machine's, not the method's, and so is a hub or dataset that cannot be
reached: status "error", which a plain rerun retries (:mod:`harness.run.faults`).

The pruned weights are written as an artifact (:mod:`harness.run.artifacts`) and every
evaluation, and the sparsity gate, runs on a freshly built model holding exactly those weights.
A record is per pruned model: each evaluation has an entry in ``record["evals"]`` (its kind,
settings, status and the suites that asked for it), and its metric rows name its eval id.
"""
from __future__ import annotations

import errno
import logging
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.core.spec import DENSE, RunSpec
from harness.run.reporter import Reporter, error_line
from harness.store.validate import RECORD_VERSION

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
        "record_version": RECORD_VERSION, "run_id": spec.run_id, "spec": spec.to_dict(),
        "spec_json": spec.canonical_json(), "suite": spec.suite, "suites": [spec.suite],
        "suite_path": spec.suite_path, "suite_text": suite_text, "model": spec.model.label, "method": spec.method,
        "variant": spec.label or spec.method, "label": spec.label,
        "target": spec.target, "seed": spec.seed, "status": "failed", "error": None, "traceback": None,
        "pruned": False, "started_at": now(), "finished_at": None, "wall_time_s": None, "prune_time_s": None,
        "peak_rss_bytes": None, "peak_cuda_bytes": None, "device": device,
        "sparsity": {"global": None, "target": None, "nm_compliant": None},
        "metrics": [], "evals": {}, "layers": [], "series": [], "model_info": {}, "environment": env,
        "publishable": spec.publishable,  # False for trial settings (lm-eval limit)
        "eval_info": {},  # evaluator provenance: lm-eval and task versions, max_length, ...
        "artifact": None, "aliases": [],
    }


def resume_record(existing: dict[str, Any], spec: RunSpec, suite_text: str) -> dict[str, Any]:
    """A stored record that another suite (or a rerun) asks for again: tagged with this suite; its
    pruned model and evaluations are reused, only the missing evaluations run."""
    record = dict(existing)
    record["suites"] = sorted({*existing.get("suites", [existing["suite"]]), spec.suite})
    record.update(suite_path=spec.suite_path or existing.get("suite_path"), suite_text=suite_text,
                  started_at=now(), traceback=None, publishable=None)
    if spec.label:
        record["label"] = spec.label
    return record


def run_cell(
    spec: RunSpec,
    suite_text: str,
    *,
    device: str,
    env: dict[str, Any],
    caches: dict[str, dict],
    reporter: Reporter,
    store: Any = None,
) -> dict[str, Any]:
    """Prune and evaluate one cell; always return a complete record (status ok, failed or error).

    With ``store``, a pruned model already stored for the cell is reused (its artifact loaded, or
    pruned again when the artifact is gone) and only evaluations missing from its record run;
    ``spec.fresh`` (``--force``) prunes again and reruns every evaluation.
    """
    from harness.run.env import peak_rss_bytes

    existing = None if store is None or spec.fresh else store.read(spec.run_id)
    if existing is not None and existing.get("pruned"):
        record = resume_record(existing, spec, suite_text)
    else:
        record = new_record(spec, suite_text, device=device, env=env)
        if spec.fresh and store is not None and (prior := store.read(spec.run_id)) and prior.get("artifact"):
            record["artifact"] = {**prior["artifact"], "kept": False}  # to check that pruning again reproduces it
    root = store.root if store is not None else None
    t0 = time.perf_counter()
    try:
        _prune_and_evaluate(spec, record, device=device, caches=caches, reporter=reporter, root=root)
    except Exception as exc:  # one failed cell must not stop the suite; the record keeps why
        record["status"] = fault_status(exc)
        record["error"] = error_line(exc)
        record["traceback"] = traceback.format_exc()
        log.info("cell %s failed: %s", spec.short_id, record["error"])
    if root is not None and record.get("artifact"):
        from harness.run.artifacts import drop_artifact, keep_artifact

        art = record["artifact"]
        if art.get("kept") and not keep_artifact(spec.keep, record["status"], art["bytes"]):
            drop_artifact(root, art, spec.run_id)
    record["finished_at"] = now()
    record["wall_time_s"] = time.perf_counter() - t0
    record["peak_rss_bytes"] = peak_rss_bytes()
    return record


def fault_status(exc: BaseException) -> str:
    """"error" (the machine's fault or an unreachable hub: a plain rerun retries it) or "failed"."""
    from harness.data.text import DatasetUnavailable
    from harness.evaluate.lm_eval_adapter import TaskDataUnavailable
    from harness.models.load import ModelUnavailable

    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return "error"
    return "error" if isinstance(exc, (ModelUnavailable, DatasetUnavailable, TaskDataUnavailable)) else "failed"


def _prune_and_evaluate(spec: RunSpec, record: dict, *, device: str, caches: dict, reporter: Reporter,
                        root: Path | None) -> None:
    import torch

    from harness.core.method import build_params, params_dict
    from harness.core.target import Target
    from harness.core.variants import variant_name
    from harness.models.load import is_vision
    from harness.models.stream import wants_stream
    from harness.plugins import get_method
    from harness.run.env import apply_precision
    from harness.run.families import FAMILIES

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    target = Target.parse(spec.target)
    cls = get_method(spec.method)
    method = cls(build_params(cls, spec.params))
    method.seed = spec.seed
    record["variant"] = variant_name(spec.method, spec.params, params_dict(build_params(cls, {})), spec.profile,
                                     record.get("label"))
    if spec.model.problem:  # synthetic sparse recovery: no weights, its own metrics (harness.synthetic.bench)
        from harness.synthetic.bench import solve_cell

        record["environment"] = {**record["environment"], "method_origin": cls.origin}
        solve_cell(spec, method, record, progress=lambda d, n: reporter.progress("steps", d, n))
        record["status"], record["pruned"] = "ok", True
        return
    family = FAMILIES["vision" if is_vision(spec.model) else "lm"]  # image classifier (timm) or causal LM
    if family is FAMILIES["lm"] and wants_stream(spec.model):  # block by block from disk (harness.run.streamed)
        from harness.run.streamed import prune_and_evaluate_streamed

        prune_and_evaluate_streamed(spec, record, method, target, device=device, caches=caches, reporter=reporter,
                                    root=root, stored=stored_artifact(record, root), evaluate=evaluate_cell,
                                    gate=record_sparsity)
        return
    load = lambda: family.load(spec.model, device=device,  # noqa: E731
                               progress=lambda s, n, loss: reporter.progress("zoo build", s, n))
    loaded = load()
    dense_logits = _dense_logits(spec, loaded, device, caches) if family.dense_logits else None
    stored = stored_artifact(record, root)
    if stored is None:  # prune (again): the weights go to an artifact, the evaluations to a fresh model
        record["environment"] = {**record["environment"], "precision": apply_precision(),
                                 "method_origin": cls.origin,  # plugin dist==version
                                 "method_category": cls.category}  # "fine-tuning" is labelled on the leaderboard
        record["model_info"] = loaded.info
        loaded = _prune(spec, family, loaded, method, target, record, load, device=device, caches=caches,
                        reporter=reporter, root=root)
    else:
        from harness.run.artifacts import load_artifact

        load_artifact(loaded.model, stored)
    model = loaded.model.to(device)
    evaluate_cell(spec, record, loaded, model, device=device, caches=caches, reporter=reporter,
                  dense_logits=dense_logits)
    if spec.save and record["status"] == "ok":  # the evaluated weights, as a checkpoint to serve
        from harness.run.export import save_or_error

        model.to("cpu")
        record["saved"] = save_or_error(spec, record, loaded)  # a failed export keeps the cell ok
    if cuda:
        record["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    model.to("cpu")


def stored_artifact(record: dict, root: Path | None) -> Path | None:
    """The kept artifact of a stored, pruned cell whose files still have its hash; else None (prune)."""
    from harness.run.artifacts import artifact_path, verify_artifact

    if root is None or not record.get("pruned"):
        return None
    path = artifact_path(root, record.get("artifact"))
    if path is None or not verify_artifact(path, record["artifact"]["sha256"]):
        return None
    return path


def _prune(spec: RunSpec, family: Any, loaded: Any, method: Any, target: Any, record: dict, load: Any, *,
           device: str, caches: dict, reporter: Reporter, root: Path | None) -> Any:
    """Prune ``loaded.model``, write its weights as an artifact, and return a freshly built model
    holding exactly those weights, on which the sparsity gate has been measured."""
    import gc

    import torch

    from harness.run.artifacts import leftovers, load_artifact, write_artifact

    before = record.get("artifact")
    hooks_before = set(leftovers(loaded.model))  # a model may come with hooks of its own
    torch.manual_seed(spec.seed)  # methods that draw from the global generator vary with the cell seed
    record["prune_info"] = {"seed": spec.seed, "seeded": "method.seed and torch.manual_seed(seed)"}
    reports = family.prune(spec, loaded, method, target, record, device=device, caches=caches, reporter=reporter)
    if not reports:
        raise ValueError("no prunable layers matched (check the suite's layers: targets/ignore)")
    left = [x for x in leftovers(loaded.model) if x not in hooks_before]
    if left:
        more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
        raise ValueError(f"{method.name} left {left[0]}{more} on the pruned model; the stored weights are "
                         f"evaluated in a freshly built model, so a method must not change the forward")
    if root is None:  # no store (a direct call): measure the pruned model itself
        record_sparsity(record, loaded.model, reports, method, target)
        record["pruned"] = True
        return loaded
    t0 = time.perf_counter()
    loaded.model.to("cpu")
    artifact = write_artifact(loaded.model, root, spec.run_id)
    if before and before.get("sha256") != artifact["sha256"]:  # pruned again and the weights differ
        artifact["replaced"] = before["sha256"]
        record["evals"], record["metrics"], record["eval_info"] = {}, [], {}  # they scored other weights
    elif before:
        artifact["reproduced"] = True
    loaded.model = None  # the pruned model goes before the fresh one is built (the caller holds ``loaded``)
    gc.collect()
    fresh = load()
    load_artifact(fresh.model, Path(root) / artifact["path"])
    artifact["write_load_s"] = time.perf_counter() - t0
    record["artifact"] = artifact
    record["layers"] = []
    record_sparsity(record, fresh.model, reports, method, target)
    record["pruned"] = True
    return fresh


def evaluate_cell(spec: RunSpec, record: dict, loaded: Any, model: Any, *, device: str, caches: dict,
                  reporter: Reporter, dense_logits: Any, evaluate: Any = None) -> None:
    """Run each evaluation of ``spec`` not stored as ok in ``record`` (after a prune whose weights
    differ from the stored ones, that is all of them); one failing evaluation does not stop the
    others. The cell is ok when every evaluation in its record is. ``evaluate`` replaces
    ``evaluate_ref`` (streamed cells)."""
    from harness.evaluate.cell import evaluate_ref

    evaluate_ref = evaluate or evaluate_ref
    missing = [ref for ref in spec.evals() if record["evals"].get(ref.eval_id, {}).get("status") != "ok"]
    record["publishable"] = all(e.get("publishable", True) for e in record["evals"].values()) and spec.publishable
    first_error = None
    for ref in missing:
        entry = {"kind": ref.kind, "spec": next(e["spec"] for e in spec.evals_dict() if e["eval_id"] == ref.eval_id),
                 "publishable": ref.publishable, "suites": [spec.suite], "status": "failed", "error": None}
        prior = record["evals"].get(ref.eval_id)
        if prior:
            entry["suites"] = sorted({*prior.get("suites", []), spec.suite})
        try:
            rows, info = evaluate_ref(ref, model, loaded.tokenizer, spec, device=device, caches=caches,
                                      progress=lambda n, d, t: reporter.progress(f"eval {n}", d, t),
                                      data_config=loaded.data_config, dense_logits=dense_logits)
            for row in rows:
                if row["value"] != row["value"] or row["value"] in (float("inf"), float("-inf")):
                    raise ValueError(f"{row['name']} is not finite ({row['value']}): the pruned model diverged")
        except Exception as exc:
            entry.update(status=fault_status(exc), error=error_line(exc))
            record["traceback"] = traceback.format_exc()
            first_error = first_error or entry
        else:
            entry["status"] = "ok"
            record["metrics"] = [m for m in record["metrics"] if m.get("eval_id") != ref.eval_id] + rows
            if ref.kind == "lm_eval":
                record["eval_info"] = {**record["eval_info"], "lm_eval": info}
            elif ref.kind == "images":
                record["eval_info"] = {**record["eval_info"],
                                       "images": {**record["eval_info"].get("images", {}), ref.spec.dataset: info}}
        entry["finished_at"] = now()
        record["evals"] = {**record["evals"], ref.eval_id: entry}
    for ref in spec.evals():  # evaluations stored before: this suite asked for them too
        entry = record["evals"].get(ref.eval_id)
        if entry is not None and spec.suite not in entry.get("suites", []):
            record["evals"][ref.eval_id] = {**entry, "suites": sorted({*entry.get("suites", []), spec.suite})}
    bad = [e for e in record["evals"].values() if e["status"] != "ok"]
    if bad:
        worst = first_error or bad[0]
        record["status"] = "error" if any(e["status"] == "error" for e in bad) else "failed"
        record["error"] = f"evaluation {worst['kind']} failed: {worst['error']}"
    else:
        record["status"], record["error"] = "ok", None


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


def record_sparsity(record: dict, model: Any, reports: list, method: Any, target: Any, weight_of: Any = None) -> None:
    """Measure every pruned layer of ``model`` (the freshly built model holding the stored weights;
    conv weights flattened to rows) and fail on an out-of-tolerance one. The gate applies to every
    method but the dense baseline, whatever flags a method sets about itself. ``weight_of(name)``
    replaces ``layer_weight(model, name)`` (a streamed cell reads each block from its artifact)."""
    from harness.core.sparsity import Measured, check, measure
    from harness.core.target import Target
    from harness.drivers.layouts import layer_weight

    problems, zeros, numel, nm_all = [], 0, 0, True
    gated = method.name != DENSE  # every method whatever it says of itself; dense is the one allowed 0 %
    per_layer = target.is_nm or method.target_scope() == "layer"  # else one global threshold: the total counts
    for rep in reports:
        layer_target = Target(rep.info["target"]) if "target" in rep.info else target  # a sparsity profile
        weight = weight_of(rep.name) if weight_of is not None else layer_weight(model, rep.name)
        m = measure(weight, layer_target)  # (d_out, d_in): Conv1D transposed, one expert
        zeros, numel = zeros + m.zeros, numel + m.numel
        nm_all = nm_all and (m.nm_ok is not False)
        if gated and per_layer:
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
    if gated and not per_layer:
        why = check(Measured(numel, zeros, None), target, numel)
        if why:
            problems.append(f"all pruned layers together (global scope): {why}")
    if problems:
        more = f" (and {len(problems) - 1} more layers)" if len(problems) > 1 else ""
        raise ValueError(f"measured sparsity out of tolerance: {problems[0]}{more}")
