"""Published reference numbers ("reported" rows) and their gaps to what this store reproduced.

The papers' own numbers ship as data, ``leaderboard/reported/*.yaml``; each file has optional
``defaults`` (any row field) and ``rows``::

    defaults:
      citation: "Sun et al., A Simple and Effective Pruning Approach for LLMs (Wanda), ICLR 2024"
      table: "LLaMA-2 perplexity (README)"
      provenance: "checked against locuslab/wanda README.md"
      evidence: code
      dataset: wikitext2
      seqlen: 4096
      metric: ppl
      calibration: {dataset: c4, n_samples: 128, seqlen: 4096}
    rows:
      - {model: hf:meta-llama/Llama-2-7b-hf, method: wanda, target: 0.5, value: 6.42}

A reported row compares with the reproduced row of the same *protocol*: the same model, variant
(``method``: ``wanda``, ``wanda+owl``), target, metric (data set, measure, eval seqlen) and
calibration (data set, samples, window). A reproduction under another protocol (another seqlen or
calibration) is shown as such, never silently compared. A reported row is never ranked.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from harness.core.registry import key_hint
from harness.core.target import Target, TargetError
from leaderboard.rows import Entry, normalize_variant, protocol_label
from leaderboard.stats import Stat

REPORTED_DIR = Path(__file__).resolve().parent / "reported"
_CALIBRATION_KEYS = ("dataset", "n_samples", "seqlen")
# How far a number is trusted (the project's evidence tags): checked against the authors' code or
# README; copied by a third party from the paper; recalled, unchecked (never a pass/fail gate).
EVIDENCE = {"code": "checked against the authors' code/README", "third-party": "third-party copy of the paper",
            "recalled": "recalled, unverified"}


class ReportedError(ValueError):
    """A reported-numbers file that does not parse or lacks a field: one line per problem."""


@dataclass(frozen=True)
class ReportedRow:
    """One published number and where it comes from."""

    citation: str  # paper (authors, title, venue, arXiv id)
    table: str  # which table or README section
    model: str  # a harness model id, e.g. hf:meta-llama/Llama-2-7b-hf
    method: str  # a variant name: dense, magnitude, wanda, sparsegpt, wanda+owl
    target: str  # "0", "0.5", "2:4"
    dataset: str  # the evaluation set, e.g. wikitext2
    seqlen: int | None  # the evaluation window (perplexity); None for accuracies
    calibration: tuple[tuple[str, Any], ...]  # dataset, n_samples, seqlen of the calibration data
    value: float
    metric: str = "ppl"  # the measure, as in harness metric names (ppl, acc, acc_norm, top1)
    evidence: str = "recalled"  # how far to trust it: code (the authors' code/README), third-party, recalled
    provenance: str = ""  # how it was checked, or why it is not
    note: str = ""
    source: str = ""  # file:line, for messages

    @property
    def metric_name(self) -> str:
        """The harness metric name: ``wikitext2/ppl@4096``."""
        return f"{self.dataset}/{self.metric}" + (f"@{self.seqlen}" if self.seqlen else "")

    @property
    def calibration_dict(self) -> dict[str, Any]:
        return dict(self.calibration)

    @property
    def protocol_label(self) -> str:
        return protocol_label(self.calibration_dict)

    @property
    def verified(self) -> bool:
        return self.evidence != "recalled"

    @property
    def id(self) -> str:
        return f"reported:{self.source}"


_FIELDS = [f.name for f in fields(ReportedRow) if f.name != "source"]
_REQUIRED = ("citation", "table", "model", "method", "target", "dataset", "calibration", "value")


class _LineLoader(yaml.SafeLoader):
    """Safe YAML whose mappings remember the line they start on (for file:line messages)."""


def _mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    d = _Lined(loader.construct_mapping(node, deep=True))
    d.line = node.start_mark.line + 1
    return d


class _Lined(dict):
    line = 0


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_file(path: Path) -> list[ReportedRow]:
    """The rows of one file. Raises :class:`ReportedError` listing every problem, one per line."""
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)  # noqa: S506 (a SafeLoader)
    except (OSError, yaml.YAMLError) as err:
        raise ReportedError(f"{path}: cannot read reported numbers: {str(err).splitlines()[0]}") from None
    problems: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ReportedError(f"{path}: expected a mapping with a 'rows' list (and optional 'defaults')")
    for key in doc:
        if key not in ("defaults", "rows"):
            problems.append(f"{path}:{doc.line}: unknown key '{key}'{key_hint(key, ['defaults', 'rows'])}")
    defaults = doc.get("defaults") or {}
    out = []
    for i, raw in enumerate(doc["rows"]):
        line = getattr(raw, "line", doc.line)
        where = f"{path}:{line}: rows[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        row = {**defaults, **raw}
        bad = [k for k in row if k not in _FIELDS]
        problems += [f"{where}: unknown key '{k}'{key_hint(k, _FIELDS)}" for k in bad]
        missing = [k for k in _REQUIRED if row.get(k) is None]
        problems += [f"{where}: missing '{k}'" for k in missing]
        if bad or missing:
            continue
        try:
            out.append(_row(row, f"{path.name}:{line}"))
        except (TypeError, ValueError, TargetError) as err:
            problems.append(f"{where}: {err}")
    if problems:
        raise ReportedError("\n".join(problems))
    return out


def _row(row: dict[str, Any], source: str) -> ReportedRow:
    target = str(Target.parse(row["target"]))
    cal = row["calibration"]
    if not isinstance(cal, dict) or set(cal) - set(_CALIBRATION_KEYS):
        raise ValueError(f"calibration must be a mapping of {', '.join(_CALIBRATION_KEYS)}, got {cal!r}")
    evidence = str(row.get("evidence", "recalled"))
    if evidence not in EVIDENCE:
        raise ValueError(f"evidence must be one of {', '.join(EVIDENCE)}, got {evidence!r}")
    value = float(row["value"])
    if not math.isfinite(value):
        raise ValueError(f"value must be a finite number, got {row['value']!r}")
    return ReportedRow(
        citation=str(row["citation"]), table=str(row["table"]), model=str(row["model"]),
        method=str(row["method"]), target=target, dataset=str(row["dataset"]),
        seqlen=None if row.get("seqlen") is None else int(row["seqlen"]),
        calibration=tuple(sorted((k, cal[k]) for k in cal)), value=value, metric=str(row.get("metric", "ppl")),
        evidence=evidence, provenance=str(row.get("provenance", "")),
        note=str(row.get("note", "")), source=source)


def load_reported(folder: Path | None = None) -> list[ReportedRow]:
    """Every row of ``folder/*.yaml`` (default: the shipped ``leaderboard/reported``), in file order."""
    folder = REPORTED_DIR if folder is None else Path(folder)
    rows: list[ReportedRow] = []
    problems = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            rows += load_file(path)
        except ReportedError as err:
            problems.append(str(err))
    if problems:
        raise ReportedError("\n".join(problems))
    return rows


# ---------------------------------------------------------------------------- gaps


def same_target(a: str, b: str) -> bool:
    try:
        return Target.parse(a) == Target.parse(b)
    except TargetError:
        return a == b


def calibration_matches(reported: ReportedRow, calibration: Sequence[tuple[str, Any]]) -> bool:
    """The reported calibration's data set, samples and window equal the run's."""
    cal = dict(calibration)
    return all(cal.get(k) == v for k, v in reported.calibration)


def matches(reported: ReportedRow, entry: Entry) -> bool:
    """The same model, variant and target (protocol aside)."""
    return (entry.model == reported.model and same_target(entry.target, reported.target)
            and normalize_variant(entry.variant) == normalize_variant(reported.method))


@dataclass(frozen=True)
class Other:
    """A reproduction of the reported cell under another protocol (shown, not compared)."""

    entry: Entry
    metric: str
    stat: Stat
    differences: str  # "eval seqlen 2048 ≠ 4096; calibration c4 128×2048 ≠ c4 128×4096"


@dataclass(frozen=True)
class Gap:
    """A reported number beside this store's reproduction of the same protocol."""

    reported: ReportedRow
    entry: Entry | None  # the reproduced row of the same protocol, if any (it may have failed)
    stat: Stat | None  # its value over ok seeds
    others: tuple[Other, ...]  # reproductions under other protocols

    @property
    def delta_pct(self) -> float | None:
        """(reproduced − reported) / reported, in percent."""
        if self.stat is None or not math.isfinite(self.stat.mean) or self.reported.value == 0:
            return None
        return 100.0 * (self.stat.mean - self.reported.value) / abs(self.reported.value)


def _differences(reported: ReportedRow, entry: Entry, metric: str) -> str:
    from harness.core.metrics import parse_metric

    out = []
    seqlen = parse_metric(metric).seqlen
    if metric != reported.metric_name:
        out.append(f"eval seqlen {seqlen or '–'} ≠ {reported.seqlen or '–'}")
    if not calibration_matches(reported, entry.protocol.calibration):
        out.append(f"{protocol_label(dict(entry.protocol.calibration))} ≠ "
                   f"{reported.protocol_label.removeprefix('calibration ')}")
    return "; ".join(out)


def gap(reported: ReportedRow, pool: Sequence[Entry]) -> Gap:
    """The reported row against every matching row of ``pool`` (all protocols)."""
    from harness.core.metrics import parse_metric

    want = parse_metric(reported.metric_name)
    same: Entry | None = None
    others = []
    for e in pool:
        if not matches(reported, e):
            continue
        if calibration_matches(reported, e.protocol.calibration) and same is None and \
                (e.stat(reported.metric_name) is not None or not e.ok_runs):
            same = e
            continue
        for metric in sorted({m for r in e.ok_runs for m in r.metrics}):
            p = parse_metric(metric)
            if (p.task, p.measure, p.lm_filter) == (want.task, want.measure, want.lm_filter):
                s = e.stat(metric)
                if s is not None and (metric != reported.metric_name or
                                      not calibration_matches(reported, e.protocol.calibration)):
                    others.append(Other(e, metric, s, _differences(reported, e, metric)))
    return Gap(reported, same, None if same is None else same.stat(reported.metric_name), tuple(others))


def gaps(reported: Sequence[ReportedRow], pool: Sequence[Entry]) -> list[Gap]:
    return [gap(r, pool) for r in reported]
