"""Model families as the runner sees them: a cell's calibration data and the driver that prunes it.

Decoder LMs draw calibration token windows (cached per suite); image classifiers draw
calibration images (and re-estimate BatchNorm). Layer methods go through the one prune loop
(``harness.drivers``), model-level methods through ``harness.drivers.model_level``; the
family's ``prune`` returns the layer reports and records what it did. Add a model family here
(one ``Family``) and in ``harness.drivers`` (one ``Adapter``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from harness.core.method import MethodBase, ModelMethod
from harness.core.spec import DENSE, RunSpec
from harness.core.target import Target
from harness.run.reporter import Reporter


def lm_tokens(spec: RunSpec, loaded: Any, caches: dict) -> Any:
    """The cell's calibration token windows (n_samples, seqlen), drawn once per model and suite."""
    from harness.data import text as data

    cal = spec.calibration
    key = (spec.model.id, cal.dataset, cal.n_samples, cal.seqlen, cal.seed)
    if key not in caches["calibration"]:
        caches["calibration"][key] = data.calibration_tokens(
            cal.dataset, loaded.tokenizer, cal.n_samples, cal.seqlen, cal.seed
        )
    return caches["calibration"][key]


def prune_lm(spec: RunSpec, loaded: Any, method: MethodBase, target: Target, record: dict, *, device: str,
             caches: dict, reporter: Reporter) -> list:
    """Calibration token windows and the LM driver; sets ``record["prune_time_s"]``."""
    from harness.data import text as data

    tokens = lm_tokens(spec, loaded, caches) if method.modifies_weights else None  # (n_samples, seqlen)
    t0 = time.perf_counter()
    if isinstance(method, ModelMethod):  # the whole model and a loss: harness.drivers.model_level
        from harness.drivers.model_level import prune_model_lm

        if tokens is None:
            raise ValueError(f"model-level method '{method.name}' changes no weight: nothing to prune with")
        cal, val = spec.calibration, None
        n_val = method.validation_samples()
        if n_val:  # held-out windows of the calibration text, none overlapping a calibration window
            val = data.validation_tokens(cal.dataset, loaded.tokenizer, cal.n_samples, n_val, cal.seqlen, cal.seed)
        result = prune_model_lm(loaded.model, tokens, method, target, device=device, selection=spec.layers,
                                batch_size=spec.batch_size, progress=reporter.progress, validation=val)
        record["prune_time_s"] = time.perf_counter() - t0
        record_model_level(record, result)
        record_block_share(spec, loaded.model, result.reports, record)
        return result.reports
    reports = _prune_lm_layers(spec, loaded, method, target, record, tokens, device, reporter, t0)
    record_block_share(spec, loaded.model, reports, record, enforce=method.name != DENSE)  # dense: recorded; no flag trusted
    return reports


MIN_BLOCK_SHARE = 0.9  # a cell must prune at least this share of its decoder blocks' matrix parameters


def record_block_share(spec: RunSpec, model: Any, reports: list, record: dict, *, enforce: bool = True) -> None:
    """Store the pruned share of the decoder blocks' matrix parameters (and tokens per expert) in
    ``record["prune_info"]``; fail a cell below :data:`MIN_BLOCK_SHARE` unless the suite's
    ``layers:`` chose its layers or ``enforce`` is False (the dense baseline): then it is recorded."""
    from harness.drivers.lm import lm_block_share
    from harness.drivers.moe import moe_summary

    share = lm_block_share(model, reports)
    info = {"block_share": share.share, "block_params": {"pruned": share.pruned, "total": share.total}}
    moe = moe_summary(reports)
    if moe is not None:
        info["moe"] = moe
    record["prune_info"] = {**record.get("prune_info", {}), **info}
    chosen = bool(spec.layers.targets or spec.layers.ignore)
    if enforce and share.share < MIN_BLOCK_SHARE and not chosen:
        left = "; ".join(share.unpruned[:3])
        raise ValueError(f"pruned only {share.share:.0%} of the decoder blocks' matrix parameters "
                         f"({share.pruned:,} of {share.total:,}; at least {MIN_BLOCK_SHARE:.0%} unless the suite's "
                         f"layers: targets/ignore choose fewer); not pruned: {left}")


def _prune_lm_layers(spec: RunSpec, loaded: Any, method: Any, target: Target, record: dict, tokens: Any,
                     device: str, reporter: Reporter, t0: float) -> list:
    """A layer method through the one loop, with the suite's sparsity profile (OWL) when set."""
    from harness.drivers.lm import prune_sequential

    batches = list(tokens.split(spec.batch_size)) if tokens is not None else []
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


def prune_vision(spec: RunSpec, loaded: Any, method: MethodBase, target: Target, record: dict, *, device: str,
                 caches: dict, reporter: Reporter) -> list:
    """Calibration images (drawn once per model and suite) and the vision driver; BN re-estimation recorded."""
    from harness.data import images
    from harness.drivers import vision

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
    if isinstance(method, ModelMethod):  # the whole model and a loss: harness.drivers.model_level
        from harness.drivers.model_level import prune_model_vision

        result = prune_model_vision(
            loaded.model, stream, method, target, device=device, selection=spec.layers,
            batch_size=spec.batch_size, bn_recalibration=cal.bn_recalibration, progress=reporter.progress)
    else:
        result = vision.prune_vision(
            loaded.model, stream.batches if stream is not None else None, method, target, device=device,
            selection=spec.layers, batch_size=spec.batch_size, bn_recalibration=cal.bn_recalibration,
            progress=lambda d, n: reporter.progress("prune", d, n), sequential=bool(cal.sequential),
        )
    record["prune_time_s"] = time.perf_counter() - t0  # statistics, pruning and BatchNorm re-estimation
    strategy = vision.SEQUENTIAL_STRATEGY if cal.sequential and method.kind == "layer" else vision.STRATEGY
    record["prune_info"] = {"strategy": getattr(result, "strategy", strategy),
                            "calibration_images": result.calibration_images,
                            "skipped_layers": result.skipped, "bn_recalibration": result.bn_recalibration}
    if isinstance(method, ModelMethod):
        record_model_level(record, result)
    return result.reports


def record_model_level(record: dict, result: Any) -> None:
    """A model-level method's curves go to the series, its notes to prune_info."""
    record["series"] = list(record["series"]) + [dict(row) for row in result.series]
    record["prune_info"] = {**record.get("prune_info", {}), "level": "model", **result.info}


Prune = Callable[..., list]


def load_lm(spec: Any, **kwargs: Any) -> Any:
    from harness.models.load import load_model

    return load_model(spec, **kwargs)


def load_classifier(spec: Any, **kwargs: Any) -> Any:
    from harness.models.load import load_vision_model

    return load_vision_model(spec, **kwargs)


@dataclass(frozen=True)
class Family:
    """A model kind's cell steps: load, prune (calibration included), and whether image evals
    may score agreement with the dense model's predictions."""

    load: Callable[..., Any]
    prune: Prune
    dense_logits: bool


FAMILIES = {"lm": Family(load_lm, prune_lm, dense_logits=False),
            "vision": Family(load_classifier, prune_vision, dense_logits=True)}
