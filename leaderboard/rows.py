"""Leaderboard rows: stored runs grouped by protocol and keyed by (model, variant, target).

A *protocol* is what makes numbers comparable beyond the metric's own name: the calibration
(data set, samples, window length; not its seed) and the rest of the pruned model's identity that
is neither the model id, the method, its params, the target nor the seed (layer selection, dtype,
revision). Rows of every suite that share a protocol share one ranking; a suite is a tag.

An :class:`Entry` is one row: every seed of one (protocol, model, variant, target), never more
than one variant. Its metrics are :class:`~leaderboard.stats.Stat` values over the ok seeds.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from harness.core.metrics import AVG_ZERO_SHOT
from leaderboard.data import Run, target_order
from leaderboard.stats import Stat

# Spec keys that a row or a column already tells apart, or that change no number.
_NOT_PROTOCOL = {"suite", "method", "params", "target", "seed", "version", "profile", "perplexity",
                 "lm_eval", "image_evals", "label", "suite_path", "keep", "fresh", "batch_size"}
_MODEL_NOT_PROTOCOL = {"id", "trust_remote_code", "problem"}  # the row's model label holds a problem
_MODEL_DEFAULTS = {"dtype": "auto", "weights_keys": "name"}


@dataclass(frozen=True)
class Protocol:
    key: str  # canonical JSON; equal keys compare
    label: str  # e.g. "calibration c4 128×2048"
    calibration: tuple[tuple[str, object], ...]  # without the seed


def protocol_of(spec: dict) -> Protocol:
    """The protocol of a stored spec (either spec version: the suite and evaluations are ignored)."""
    cal = {k: v for k, v in sorted((spec.get("calibration") or {}).items()) if k != "seed" and v is not None}
    rest: dict[str, object] = {}
    for key, value in sorted(spec.items()):
        if key in _NOT_PROTOCOL or key == "calibration":
            continue
        if key == "model" and isinstance(value, dict):  # the id is the row; the rest only when set
            value = {k: v for k, v in value.items()
                     if k not in _MODEL_NOT_PROTOCOL and v not in (None, False) and _MODEL_DEFAULTS.get(k) != v}
        if key == "layers" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if v}
        if value not in (None, {}, [], ""):
            rest[key] = value
    return Protocol(json.dumps({"calibration": cal, **rest}, sort_keys=True), protocol_label(cal, rest),
                    tuple(cal.items()))


def protocol_label(cal: dict, rest: dict | None = None) -> str:
    """``calibration c4 128×2048``; image sets ``calibration digits 512 images``; extras after."""
    if not cal:
        text = "no calibration"
    elif cal.get("seqlen"):
        text = f"calibration {cal.get('dataset')} {cal.get('n_samples')}×{cal.get('seqlen')}"
    else:
        text = f"calibration {cal.get('dataset')} {cal.get('n_samples')} images"
    extra = [f"{k} {v}" for k, v in sorted(cal.items()) if k not in ("dataset", "n_samples", "seqlen")]
    for key, value in sorted((rest or {}).items()):
        items = value.items() if isinstance(value, dict) else [(key, value)]
        extra += [f"{k} {json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(items)]
    return text + (", " + ", ".join(extra) if extra else "")


def variant_of(run: Run, differing: Sequence[str] = ()) -> str:
    """The run's variant key: the store's (``harness.core.variants``), else derived for older
    stores from the label, the method, its profile (``+owl``) and ``differing`` params."""
    if run.variant_key:
        return run.variant_key
    if run.label:
        return run.label
    name = run.method + (f"+{run.profile.get('name', 'owl')}" if run.profile else "")
    parts = [f"{k}={'default' if run.params.get(k) is None else run.params.get(k)}" for k in differing]
    return f"{name}({', '.join(parts)})" if parts else name


def derived_variants(runs: Sequence[Run]) -> dict[str, str]:
    """``run id -> variant`` for every run: the store's key where it has one; else the params on
    which the runs of one method differ, so two ``iobs`` entries read ``iobs(curvature=fisher)``
    and ``iobs(curvature=default)`` and are never averaged together."""
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    out: dict[str, str] = {}
    for group in by_method.values():
        keys = sorted({k for r in group for k in r.params})
        differ = [k for k in keys if len({repr(r.params.get(k)) for r in group}) > 1]
        out.update((r.run_id, variant_of(r, differ)) for r in group)
    return out


def normalize_variant(name: str) -> str:
    """Variant names compared loosely: ``wanda +owl`` equals ``wanda+owl``."""
    return "".join(name.split()).lower()


# ---------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Entry:
    """One leaderboard row: the runs (one per seed) of one (protocol, model, variant, target)."""

    protocol: Protocol
    model: str
    variant: str
    method: str
    target: str
    runs: tuple[Run, ...]  # sorted by seed
    duplicates: tuple[Run, ...] = ()  # the same seed stored again (older stores: another suite)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.variant, self.target)

    @cached_property
    def ok_runs(self) -> tuple[Run, ...]:
        return tuple(r for r in self.runs if r.ok)

    @property
    def failed_runs(self) -> tuple[Run, ...]:
        return tuple(r for r in self.runs if not r.ok)

    @property
    def ok(self) -> bool:
        """Every seed ran: only such a row can be best."""
        return bool(self.runs) and not self.failed_runs

    @property
    def status(self) -> str:
        """``ok``, ``trial`` (an lm-eval limit), ``failed``/``error`` (every seed), or ``k of n failed``."""
        bad = self.failed_runs
        if not bad:
            return "trial" if any(r.publishable is False for r in self.runs) else "ok"
        if len(bad) == len(self.runs):
            return "failed" if any(r.status == "failed" for r in bad) else "error"
        return f"{len(bad)} of {len(self.runs)} failed"

    @property
    def is_dense(self) -> bool:
        return self.method == "dense"

    @property
    def fine_tuned(self) -> bool:
        return any(r.fine_tuned for r in self.runs)

    @property
    def publishable(self) -> bool:
        return all(r.publishable is not False for r in self.runs)

    @property
    def suites(self) -> tuple[str, ...]:
        return tuple(sorted({s for r in (*self.runs, *self.duplicates) for s in r.all_suites}))

    @property
    def origin(self) -> str | None:
        """A third-party method's ``dist==version``, or None for a built-in one."""
        return next((r.origin for r in self.runs if r.third_party), None)

    def stat(self, metric: str, zero_shot: Sequence[str] = ()) -> Stat | None:
        """``metric`` over the ok seeds (``avg zero-shot``: the per-seed mean of ``zero_shot``)."""
        pairs, ses = [], []
        for r in self.ok_runs:
            v = metric_value(r, metric, zero_shot)
            if v is not None:
                pairs.append((r.seed, v))
                ses.append(metric_stderr(r, metric, zero_shot))
        return Stat.of(pairs, ses)


def metric_value(run: Run, metric: str, zero_shot: Sequence[str] = ()) -> float | None:
    """A run's value of ``metric``; ``avg zero-shot`` is the mean of ``zero_shot`` metrics
    and None unless every one of them is present (a partial mean would not compare)."""
    if metric == AVG_ZERO_SHOT:
        vals = [run.metrics[m].value for m in zero_shot if m in run.metrics]
        if not zero_shot or len(vals) < len(zero_shot) or any(v is None for v in vals):
            return None
        return sum(vals) / len(vals)  # type: ignore[arg-type]
    mv = run.metrics.get(metric)
    return None if mv is None else mv.value


def metric_stderr(run: Run, metric: str, zero_shot: Sequence[str] = ()) -> float | None:
    """The metric's own stderr in one run; for ``avg zero-shot``, that of a mean of independent
    tasks (sqrt(sum se²) / k) when every task has one."""
    if metric == AVG_ZERO_SHOT:
        ses = [run.metrics[m].stderr if m in run.metrics else None for m in zero_shot]
        if not ses or any(se is None for se in ses):
            return None
        return math.sqrt(sum(se * se for se in ses)) / len(ses)  # type: ignore[operator]
    mv = run.metrics.get(metric)
    return None if mv is None else mv.stderr


def entries(runs: Iterable[Run]) -> list[Entry]:
    """Group runs into rows, in order: protocol, model, target (dense first, N:M after), variant."""
    runs = list(runs)
    variants = derived_variants(runs)
    groups: dict[tuple[str, str, str, str], list[Run]] = {}
    protocols: dict[str, Protocol] = {}
    for r in runs:
        p = protocol_of(r.spec)
        protocols[p.key] = p
        groups.setdefault((p.key, r.model, variants[r.run_id], r.target), []).append(r)
    out = []
    for (pkey, model, variant, target), group in groups.items():
        by_seed: dict[int, list[Run]] = {}
        for r in group:
            by_seed.setdefault(r.seed, []).append(r)
        kept, dups = [], []
        for seed in sorted(by_seed):
            # one run per seed: an ok one first, then the lowest id (the same cell stored twice)
            first, *rest = sorted(by_seed[seed], key=lambda r: (not r.ok, r.run_id))
            kept.append(first)
            dups += rest
        out.append(Entry(protocols[pkey], model, variant, group[0].method, target, tuple(kept), tuple(dups)))
    return sorted(out, key=entry_order)


def entry_order(e: Entry) -> tuple:
    return (e.protocol.key, e.model, target_order(e.target), not e.is_dense, e.variant)


def dense_stat(pool: Sequence[Entry], model: str, metric: str, zero_shot: Sequence[str] = (),
               protocol: str | None = None) -> Stat | None:
    """The dense model's ``metric`` for recovery: from the same protocol when it has a dense row,
    else from any dense row of the model (the dense model does not calibrate)."""
    dense = [e for e in pool if e.is_dense and e.model == model and e.ok_runs]
    same = [e for e in dense if e.protocol.key == protocol]
    for e in same + [e for e in dense if e not in same]:
        s = e.stat(metric, zero_shot)
        if s is not None and math.isfinite(s.mean):
            return s
    return None
