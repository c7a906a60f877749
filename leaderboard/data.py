"""Read the results database into frozen, typed runs, and export its tables.

This is the only leaderboard module that talks SQL; everything downstream works on
:class:`Run` objects, so the view model can be tested from hand-written records.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.target import Target, TargetError

if TYPE_CHECKING:  # duckdb loads only when a store is used: `harness --help` stays fast
    from harness.store.index import Store

# Tables written to the site's data/ folder, and the columns left out of each: ingested_at is
# when this machine indexed a record, which says nothing about the result and breaks
# byte-identical rebuilds.
EXPORT_TABLES: dict[str, str] = {
    "results": "SELECT * FROM results ORDER BY suite, model, method, target, run_id, metric",
    "runs": "SELECT * EXCLUDE (ingested_at) FROM runs "
            "ORDER BY suite, model, method, target, run_id",
    "metrics": "SELECT * FROM metrics ORDER BY run_id, metric",
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
    """One stored run with its metrics, layers and series."""

    run_id: str
    suite: str
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
        return dict(self.spec.get("params") or {})

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


def target_order(target: str) -> tuple[float, int, str]:
    """Sort key for targets: by sparsity, N:M after unstructured at equal sparsity."""
    try:
        t = Target.parse(target)
        return (t.sparsity, int(t.is_nm), target)
    except TargetError:
        return (math.inf, 0, target)


def run_order(run: Run) -> tuple:
    """Default row order: model, target (dense first), method, seed, then id for stability."""
    return (run.suite, run.model, target_order(run.target), run.method, run.seed, run.run_id)


def load_runs(store: "Store", suite: str | None = None) -> list[Run]:
    """Every run in the store (of ``suite``, if given), in :func:`run_order`."""
    where, params = ("WHERE suite = ?", [suite]) if suite else ("", [])
    cols = ("run_id, suite, model, method, target, seed, status, error, traceback, spec_json, "
            "suite_text, wall_time_s, prune_time_s, peak_rss_bytes, peak_cuda_bytes, device, "
            "sparsity_global, nm_compliant, environment_json, publishable, eval_info_json")
    base = store.query(f"SELECT {cols} FROM runs {where}", params)
    ids = [r[0] for r in base]
    metrics: dict[str, dict[str, MetricValue]] = {i: {} for i in ids}
    layers: dict[str, list[LayerRow]] = {i: [] for i in ids}
    series: dict[str, dict[str, list[tuple[int, float]]]] = {i: {} for i in ids}
    if ids:
        for rid, metric, value, stderr, n, head in store.query(
                "SELECT run_id, metric, value, stderr, n, headline FROM metrics "
                "WHERE list_contains(?, run_id) ORDER BY metric", [ids]):
            metrics[rid][metric] = MetricValue(value, stderr, n, head)
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
         wall, prune, rss, cuda, device, sparsity, nm, env_json, pub, eval_json) in base:
        runs.append(Run(
            run_id=rid, suite=suite_, model=model, method=method, target=target, seed=seed,
            status=status, error=error, traceback=tb, spec=_loads(spec_json) or {},
            suite_text=suite_text, wall_time_s=wall, prune_time_s=prune, peak_rss_bytes=rss,
            peak_cuda_bytes=cuda, device=device, sparsity_global=sparsity, nm_compliant=nm,
            environment=_loads(env_json), metrics=metrics[rid], layers=tuple(layers[rid]),
            series={k: tuple(v) for k, v in series[rid].items()}, publishable=pub,
            eval_info=_loads(eval_json),
        ))
    return sorted(runs, key=run_order)


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
