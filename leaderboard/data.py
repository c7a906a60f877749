"""Read the results database into frozen, typed runs, and export its tables.

This is the only leaderboard module that talks SQL; everything downstream works on
:class:`Run` objects, so the view model can be tested from hand-written records.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.target import Target, TargetError
from harness.store.records import RECORD_FILE

if TYPE_CHECKING:  # duckdb loads only when a store is used: `harness --help` stays fast
    from harness.store.index import Store

# Tables written to the site's data/ folder, and the columns left out of each: ingested_at is
# when this machine indexed a record, which says nothing about the result and breaks
# byte-identical rebuilds.
EXPORT_TABLES: dict[str, str] = {
    "results": "SELECT * FROM results ORDER BY ALL",
    "runs": "SELECT * EXCLUDE (ingested_at) FROM runs ORDER BY run_id",
    "evals": "SELECT * FROM evals ORDER BY ALL",
    "metrics": "SELECT * FROM metrics ORDER BY ALL",
    "layers": "SELECT * FROM layers ORDER BY run_id, block, layer",
    "series": "SELECT * FROM series ORDER BY run_id, name, step",
}
EXPORT_FORMATS = ("parquet", "json", "csv")


@dataclass(frozen=True)
class MetricValue:
    value: float | None  # NaN/inf kept: a diverged model
    stderr: float | None
    n: int | None
    # lm-eval reports many rows per task (acc and acc_norm, 57 MMLU subjects); the one the
    # leaderboard shows is flagged headline. None: not flagged (perplexity; older stores).
    headline: bool | None = None
    eval_id: str | None = None  # the evaluation that produced the row (stores with the column)

    @property
    def shown(self) -> bool:
        """On the index and in ``compare``: everything not explicitly a secondary row."""
        return self.headline is not False


@dataclass(frozen=True)
class LayerRow:
    layer: str
    block: int | None
    rows: int | None
    cols: int | None
    sparsity: float | None
    nm_ok: bool | None
    rel_error: float | None  # ‖(W−Ŵ)X‖²/‖WX‖²
    time_s: float | None


@dataclass(frozen=True)
class Run:
    """One stored run (one seed of one cell) with its metrics, layers and series."""

    run_id: str
    suite: str  # the first suite that stored the cell
    model: str
    method: str
    target: str
    seed: int
    status: str  # "ok", "failed" (the method's) or "error" (the machine's, not a result)
    error: str | None
    traceback: str | None
    spec: dict[str, Any]
    suite_text: str | None
    wall_time_s: float | None
    prune_time_s: float | None
    peak_rss_bytes: int | None
    peak_cuda_bytes: int | None
    device: str | None
    sparsity_global: float | None  # measured over the pruned layers
    nm_compliant: bool | None
    environment: dict[str, Any] | None
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    layers: tuple[LayerRow, ...] = ()
    series: dict[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    publishable: bool | None = None  # False: lm-eval ran with a limit, a trial run
    eval_info: dict[str, Any] | None = None  # lm-eval versions, shots, limit, item counts
    # The store's variant key (harness.core.variants); None in stores older than the column,
    # where leaderboard.rows derives one from the method, its profile and the params that differ.
    variant_key: str | None = None
    label: str | None = None  # the method entry's `label:`
    resolved_params: dict[str, Any] | None = None  # params_json; None: read them from the spec
    suites: tuple[str, ...] = ()  # every suite that asked for the cell (older stores: the one)
    suite_path: str | None = None  # the suite file of the last run that touched the cell
    artifact: dict[str, Any] | None = None  # the pruned weights: sha256, path, bytes, kept
    aliases: tuple[str, ...] = ()  # older run ids of the same cell
    model_info: dict[str, Any] | None = None  # source, sha256, num_params, architecture

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def is_dense(self) -> bool:
        return self.method == "dense"

    @property
    def category(self) -> str:
        """``"one-shot"`` or ``"fine-tuning"``, as the method declared it (runs stored before the
        field existed are one-shot)."""
        return str((self.environment or {}).get("method_category") or "one-shot")

    @property
    def fine_tuned(self) -> bool:
        return self.category == "fine-tuning"

    @property
    def short_id(self) -> str:
        return self.run_id[:12]

    @property
    def parsed_target(self) -> Target | None:
        """The target, or None if it does not parse (kept visible rather than dropped)."""
        try:
            return Target.parse(self.target)
        except TargetError:
            return None

    @property
    def params(self) -> dict[str, Any]:
        if self.resolved_params is not None:
            return dict(self.resolved_params)
        return dict(self.spec.get("params") or {})

    @property
    def profile(self) -> dict[str, Any] | None:
        """The sparsity profile (OWL) and its settings, or None for uniform sparsity."""
        return self.spec.get("profile") or None

    @property
    def origin(self) -> str | None:
        """Where the method came from: ``"builtin"``, or a plugin's ``dist==version``."""
        return (self.environment or {}).get("method_origin")

    @property
    def third_party(self) -> bool:
        return self.origin not in (None, "", "builtin")

    @property
    def num_params(self) -> int | None:
        n = (self.model_info or {}).get("num_params")
        return n if isinstance(n, int) and not isinstance(n, bool) else None

    @property
    def all_suites(self) -> tuple[str, ...]:
        return self.suites or (self.suite,)

    @property
    def device_label(self) -> str:
        """``cpu``, or ``cuda (NVIDIA H100 80GB HBM3)`` when the GPU's name was recorded."""
        cuda = (self.environment or {}).get("cuda") or {}
        name = cuda.get("device_name") if isinstance(cuda, dict) else None
        base = self.device or "?"
        return f"{base} ({name})" if name else base

    @property
    def device_short(self) -> str:
        """For a table cell: the GPU's name without the vendor (``H100 80GB HBM3``), or ``cpu``."""
        cuda = (self.environment or {}).get("cuda") or {}
        name = cuda.get("device_name") if isinstance(cuda, dict) else None
        return name.removeprefix("NVIDIA ") if name else (self.device or "?")


def target_order(target: str) -> tuple[int, float, int, str]:
    """Sort key for targets: dense, unstructured by sparsity, then N:M patterns by sparsity and M."""
    try:
        t = Target.parse(target)
        return (int(t.is_nm), t.sparsity, t.m, target)
    except TargetError:
        return (2, math.inf, 0, target)


def target_label(target: str) -> str:
    """``0.5`` -> ``50 %``, ``2:4`` stays, ``0`` -> ``dense``; unparsable text as it is."""
    try:
        t = Target.parse(target)
    except TargetError:
        return target
    if t.is_nm:
        return str(t)
    return "dense" if t.sparsity == 0 else f"{round(100 * t.sparsity, 2):g} %"


def run_order(run: Run) -> tuple:
    """Default row order: model, target (dense first), method, seed, then id for stability."""
    return (run.model, target_order(run.target), run.method, run.seed, run.run_id)


# Columns a store may lack (older schemas): read as NULL when missing.
_OPTIONAL_RUN_COLUMNS = ("publishable", "eval_info_json", "variant", "label", "params_json", "suites_json",
                         "suite_path", "artifact_json", "aliases_json", "model_info_json")


def _columns(store: "Store", table: str) -> set[str]:
    return {r[0] for r in store.query(f"SELECT column_name FROM (DESCRIBE {table})")}


def load_runs(store: "Store", suite: str | None = None) -> list[Run]:
    """Every run in the store (asked for by ``suite``, if given), in :func:`run_order`."""
    have = _columns(store, "runs")
    optional = ", ".join(c if c in have else f"NULL AS {c}" for c in _OPTIONAL_RUN_COLUMNS)
    cols = ("run_id, suite, model, method, target, seed, status, error, traceback, spec_json, "
            "suite_text, wall_time_s, prune_time_s, peak_rss_bytes, peak_cuda_bytes, device, "
            "sparsity_global, nm_compliant, environment_json, " + optional)
    base = store.query(f"SELECT {cols} FROM runs ORDER BY run_id")
    ids = [r[0] for r in base]
    metrics = _load_metrics(store, ids)
    layers: dict[str, list[LayerRow]] = {i: [] for i in ids}
    series: dict[str, dict[str, list[tuple[int, float]]]] = {i: {} for i in ids}
    if ids:
        for rid, *row in store.query(
                "SELECT run_id, layer, block, rows, cols, sparsity, nm_ok, rel_error, time_s "
                "FROM layers WHERE list_contains(?, run_id) ORDER BY block NULLS LAST, layer",
                [ids]):
            layers[rid].append(LayerRow(*row))
        for rid, name, step, value in store.query(
                "SELECT run_id, name, step, value FROM series WHERE list_contains(?, run_id) "
                "ORDER BY name, step", [ids]):
            series[rid].setdefault(name, []).append((step, value))
    runs = []
    for (rid, suite_, model, method, target, seed, status, error, tb, spec_json, suite_text,
         wall, prune, rss, cuda, device, sparsity, nm, env_json, pub, eval_json, variant, label,
         params_json, suites_json, suite_path, artifact_json, aliases_json, info_json) in base:
        suites = tuple(_loads(suites_json) or ())
        if suite and suite != suite_ and suite not in suites:
            continue
        runs.append(Run(
            run_id=rid, suite=suite_, model=model, method=method, target=target, seed=seed,
            status=status, error=error, traceback=tb, spec=_loads(spec_json) or {},
            suite_text=suite_text, wall_time_s=wall, prune_time_s=prune, peak_rss_bytes=rss,
            peak_cuda_bytes=cuda, device=device, sparsity_global=sparsity, nm_compliant=nm,
            environment=_loads(env_json), metrics=metrics.get(rid, {}), layers=tuple(layers[rid]),
            series={k: tuple(v) for k, v in series[rid].items()}, publishable=pub,
            eval_info=_loads(eval_json), variant_key=variant, label=label,
            resolved_params=_loads(params_json), suites=suites, suite_path=suite_path,
            artifact=_loads(artifact_json), aliases=tuple(_loads(aliases_json) or ()),
            model_info=_loads(info_json),
        ))
    # Stores without a model_info column: read it from one record.json per model (the truth).
    known = {r.model for r in runs if r.model_info}
    infos: dict[str, dict[str, Any] | None] = {}
    for r in runs:
        if r.model not in known and r.model not in infos and r.ok:
            infos[r.model] = _record_model_info(store, r.run_id)
    runs = [replace(r, model_info=infos[r.model]) if infos.get(r.model) else r for r in runs]
    return sorted(runs, key=run_order)


def _load_metrics(store: "Store", ids: list[str]) -> dict[str, dict[str, MetricValue]]:
    """``run id -> metric -> value``. A metric that two evaluations of one run report (the
    store keys metrics by (run, eval id, metric)) is taken from a publishable evaluation (one run
    without a limit) when there is one, else from the first eval id: the same row every time."""
    if not ids:
        return {}
    have = _columns(store, "metrics")
    eval_col = "eval_id" if "eval_id" in have else "NULL AS eval_id"
    trial = _trial_evals(store) if "eval_id" in have else set()
    out: dict[str, dict[str, MetricValue]] = {}
    ranked: dict[tuple[str, str], tuple] = {}
    for rid, metric, eval_id, value, stderr, n, head in store.query(
            f"SELECT run_id, metric, {eval_col}, value, stderr, n, headline FROM metrics "
            "WHERE list_contains(?, run_id) ORDER BY run_id, metric, eval_id NULLS LAST", [ids]):
        rank = ((rid, eval_id) in trial, eval_id or "")
        if (rid, metric) in ranked and ranked[(rid, metric)] <= rank:
            continue
        ranked[(rid, metric)] = rank
        out.setdefault(rid, {})[metric] = MetricValue(value, stderr, n, head, eval_id)
    return out


def _trial_evals(store: "Store") -> set[tuple[str, str]]:
    """``(run id, eval id)`` of evaluations run with a limit (not publishable), where the store says."""
    tables = {r[0] for r in store.query("SELECT table_name FROM information_schema.tables")}
    if "evals" in tables and {"run_id", "eval_id", "publishable"} <= _columns(store, "evals"):
        return {(r, e) for r, e in store.query("SELECT run_id, eval_id FROM evals WHERE NOT publishable")}
    return set()


def _record_model_info(store: "Store", run_id: str) -> dict[str, Any] | None:
    """``model_info`` from the run's record.json (the truth), for stores without a column for it."""
    try:
        path = store.run_dir(run_id) / RECORD_FILE
        if not path.is_file():
            return None
        info = json.loads(path.read_text(encoding="utf-8")).get("model_info")
    except (OSError, ValueError):  # unreadable or not JSON: the count is simply unknown
        return None
    return info if isinstance(info, dict) else None


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --------------------------------------------------------------------------------- export


def export_table(store: "Store", sql: str, fmt: str, out: Path) -> int:
    """Write the rows of ``sql`` to ``out`` as Parquet, JSON (an array of objects) or CSV.

    Returns:
        The number of rows written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; "
                         f"choose one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [r[0] for r in store.query(f"SELECT column_name FROM (DESCRIBE {sql})")]
    rows = store.query(sql)
    if fmt == "json":
        # Our own writer: strict JSON (NaN -> null), sorted keys, the same bytes every time.
        records = [{k: _plain(v) for k, v in zip(names, row, strict=True)} for row in rows]
        out.write_text(json.dumps(records, indent=1, sort_keys=True, ensure_ascii=False,
                                  allow_nan=False) + "\n", encoding="utf-8")
    else:
        # DuckDB writes Parquet/CSV itself; COPY TO a file works on a read-only connection.
        options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER true"
        path = str(out.resolve()).replace("'", "''")
        store.query(f"COPY ({sql}) TO '{path}' ({options})")
    return len(rows)


def export_results(store: "Store", fmt: str, out: Path) -> int:
    """Export the stable ``results`` view (one row per run and metric)."""
    return export_table(store, EXPORT_TABLES["results"], fmt, out)


def write_data_dir(store: "Store", out_dir: Path) -> list[Path]:
    """Write every table of :data:`EXPORT_TABLES` as Parquet and JSON into ``out_dir``."""
    written = []
    for name, sql in EXPORT_TABLES.items():
        for fmt in ("parquet", "json"):
            path = Path(out_dir) / f"{name}.{fmt}"
            export_table(store, sql, fmt, path)
            written.append(path)
    return written


def _plain(v: Any) -> Any:
    """A JSON-safe value: non-finite floats become null, timestamps ISO-8601 text."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    return v
