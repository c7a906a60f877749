"""Leaderboard: golden index.html from a fixture DB, escaping, plots, compare, export.

Regenerate the golden file after an intended change to the HTML with
``SPARSEBENCH_REGEN_GOLDEN=1 python -m pytest tests/test_leaderboard.py`` and review the diff.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.spec import CalibrationSpec, ModelSpec, PerplexitySpec, RunSpec
from harness.store.index import Store

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "fixtures" / "leaderboard" / "index.html"
REGEN = os.environ.get("SPARSEBENCH_REGEN_GOLDEN") not in (None, "", "0")
XSS_MODEL = "zoo:llama-<script>alert(1)</script>"
SUITE_TEXT = "name: demo\n# <b>not bold</b> & friends\nmodels: [zoo:tiny-llama]\n"

# (model, method, target, ppl, arc_easy acc, hellaswag acc_norm); ppl None = failed run.
GRID = [
    ("zoo:tiny-llama", "dense", "0", 20.0, 0.70, 0.50),
    ("zoo:tiny-llama", "magnitude", "0.5", 30.0, 0.60, 0.44),
    ("zoo:tiny-llama", "wanda", "0.5", 25.0, 0.65, 0.46),
    ("zoo:tiny-llama", "sparsegpt", "0.5", 24.0, 0.66, 0.47),
    ("zoo:tiny-llama", "magnitude", "0.7", 300.0, 0.40, 0.30),
    ("zoo:tiny-llama", "wanda", "0.7", 80.0, 0.50, 0.36),
    ("zoo:tiny-llama", "sparsegpt", "0.7", 60.0, 0.52, 0.38),
    ("zoo:tiny-llama", "magnitude", "2:4", None, None, None),
    ("zoo:tiny-llama", "wanda", "2:4", 40.0, 0.55, 0.40),
    ("zoo:tiny-llama", "sparsegpt", "2:4", 36.0, 0.58, 0.41),
    ("hf:facebook/opt-125m", "dense", "0", 27.66, 0.43, 0.29),
    ("hf:facebook/opt-125m", "magnitude", "0.5", 193.0, 0.38, 0.27),
    ("hf:facebook/opt-125m", "sparsegpt", "0.5", 37.0, 0.41, 0.28),
    (XSS_MODEL, "dense", "0", 10.0, None, None),
    (XSS_MODEL, "wanda", "0.5", 12.5, None, None),
]


def make_record(model: str, method: str, target: str, ppl: float | None,
                acc: float | None, acc_norm: float | None, suite: str = "demo") -> dict:
    """A complete, valid record as the runner writes it (run id = hash of the spec)."""
    params = {"note": "<img src=x onerror=alert(2)>"} if method == "wanda" else {}
    spec = RunSpec(suite=suite, model=ModelSpec(model), method=method, params=params,
                   target=target, calibration=CalibrationSpec(seqlen=128),
                   perplexity=(PerplexitySpec("pydoc", 128),))
    ok = ppl is not None
    nm = ":" in target
    sparsity = 0.0 if target == "0" else (0.5 if nm else float(target) + 0.0003)
    metrics = []
    if ok:
        metrics.append({"name": "pydoc/ppl@128", "value": ppl, "stderr": None, "n": 80})
        if acc is not None:  # lm-eval rows; the secondary one is for the run page only
            metrics += [{"name": "arc_easy/acc", "value": acc, "stderr": 0.01, "n": 2376,
                         "headline": True},
                        {"name": "arc_easy/acc_norm", "value": acc - 0.02, "stderr": 0.01,
                         "n": 2376, "headline": False},
                        {"name": "hellaswag/acc_norm", "value": acc_norm, "stderr": 0.005,
                         "n": 10042, "headline": True}]
    layers = [{"name": f"model.layers.{b}.{p}", "block": b, "rows": 64, "cols": 64,
               "numel": 4096, "zeros": int(4096 * sparsity), "sparsity": sparsity,
               "nm_ok": True if nm else None, "rel_error": 0.0 if method == "dense" else
               0.01 * (b + 1) * (2 if p.startswith("mlp") else 1), "time_s": 0.01,
               "info": {}} for b in range(2) for p in ("self_attn.q_proj", "mlp.down_proj")]
    cuda = model.startswith("hf:")
    return {
        "record_version": 1, "run_id": spec.run_id, "spec": spec.to_dict(),
        "spec_json": spec.canonical_json(), "suite": suite, "suite_text": SUITE_TEXT,
        "model": model, "method": method, "target": target, "seed": 0,
        "status": "ok" if ok else "failed",
        "error": None if ok else "ValueError: measured sparsity <b>out</b> of tolerance",
        "traceback": None if ok else "Traceback (most recent call last):\nValueError: <b>",
        "started_at": "2025-01-02T03:04:05+00:00", "finished_at": "2025-01-02T03:04:09+00:00",
        "wall_time_s": 4.0, "prune_time_s": 1.5 if method != "dense" else 0.0,
        "peak_rss_bytes": 2**30, "peak_cuda_bytes": 2**31 if cuda else None,
        "device": "cuda" if cuda else "cpu",
        "sparsity": {"global": sparsity if ok else None, "target": sparsity,
                     "nm_compliant": True if nm and ok else None},
        "metrics": metrics, "layers": layers if ok else [],
        "series": [{"name": "calib/loss", "step": s, "value": 3.0 - 0.1 * s} for s in range(5)]
        if method == "sparsegpt" and model == "zoo:tiny-llama" else [],
        "model_info": {"sha256": "ab" * 32},
        "publishable": not (model == "hf:facebook/opt-125m" and method == "magnitude"),
        "environment": {"python": "3.11.7", "packages": {"torch": "2.14.1"},
                        "cuda": {"device_name": "NVIDIA H100 80GB HBM3"} if cuda else None},
    }


def build_fixture_db(path: Path) -> Path:
    """A results database of :data:`GRID` (used by the browser test too)."""
    store = Store(path, wait_s=10)
    for row in GRID:
        store.save(make_record(*row))
    return path


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return build_fixture_db(tmp_path_factory.mktemp("lb") / "sparsebench.duckdb")


@pytest.fixture(scope="module")
def site(db, tmp_path_factory) -> Path:
    from leaderboard.render import build_site

    out = tmp_path_factory.mktemp("site")
    build_site(db, out)
    return out


@pytest.fixture
def harness(capsys):
    """Run the CLI in this process (a subprocess per call would cost ~1 s of imports)."""
    from harness.cli.main import main

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            rc = main(list(args))
        except SystemExit as e:  # --help, argparse errors
            rc = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["harness", *args], rc, out, err)

    return run


def rows_by(table, **match):
    return [r for r in table.rows if all(getattr(r, k) == v for k, v in match.items())]


def cell(table, row, key):
    return row.cells[table.column(key)]


# ------------------------------------------------------------------------- golden HTML


def test_index_matches_golden_file(db, tmp_path):
    from leaderboard.render import build_site

    build_site(db, tmp_path, plots=False, data=False)
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert str(tmp_path) not in html and str(db.parent) not in html  # no absolute paths
    if REGEN or not GOLDEN.exists():
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(html, encoding="utf-8")
        if not REGEN:
            pytest.fail(f"golden file {GOLDEN} was missing and has been written; rerun")
    assert html == GOLDEN.read_text(encoding="utf-8"), (
        "index.html differs from the golden file; if the change is intended, regenerate it "
        "with SPARSEBENCH_REGEN_GOLDEN=1 and review the diff")


def test_rebuild_is_byte_identical(db, site, tmp_path):
    from harness.store.index import Store
    from leaderboard.data import load_runs
    from leaderboard.pages import pareto_plots, run_page
    from leaderboard.plots import draw
    from leaderboard.render import build_site

    build_site(db, tmp_path, plots=False)  # the pages and data/; plots are redrawn below
    first = {p.relative_to(site): p.read_bytes() for p in site.rglob("*")
             if p.is_file() and "plots" not in p.parts}
    second = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    runs = load_runs(Store(db))
    for plot in (pareto_plots(runs, "zoo:tiny-llama", "demo")[0],
                 run_page(runs[1], runs).layer_plot):
        assert draw(plot) == (site / plot.file).read_text(encoding="utf-8")


# ------------------------------------------------------------------------- view model


def test_table_model_cells(db):
    from harness.store.index import Store
    from leaderboard.build import build_tables
    from leaderboard.data import load_runs

    tables = {t.family: t for t in build_tables(load_runs(Store(db)))}
    assert set(tables) == {"llama", "opt", "script>"}
    t = tables["llama"]
    assert [r.method for r in t.rows[:4]] == ["dense", "magnitude", "sparsegpt", "wanda"]
    assert [r.target for r in t.rows] == ["0"] + ["0.5"] * 3 + ["2:4"] * 3 + ["0.7"] * 3
    (sgpt,) = rows_by(t, method="sparsegpt", target="0.5")
    ppl = cell(t, sgpt, "m:pydoc/ppl@128")
    assert (ppl.value, ppl.display, ppl.sort_key, ppl.css) == (24.0, "24.00", 24.0, "best")
    rec = cell(t, sgpt, "r:pydoc/ppl@128")
    assert rec.value == pytest.approx(100 * 20 / 24) and rec.display == "83.3"
    assert cell(t, sgpt, "m:arc_easy/acc").display == "66.0 ± 1.0"  # stderr where known
    avg = cell(t, sgpt, "avg")
    assert avg.value == pytest.approx((0.66 + 0.47) / 2) and avg.display == "56.5"
    assert cell(t, sgpt, "r:avg").value == pytest.approx(100 * 0.565 / 0.6)
    assert cell(t, sgpt, "sparsity").display == "50.0"
    assert cell(t, sgpt, "run").href == f"runs/{sgpt.run_id}.html"
    (failed,) = rows_by(t, status="failed")
    assert (failed.method, failed.target) == ("magnitude", "2:4")
    assert cell(t, failed, "status").title.startswith("ValueError: measured sparsity")
    for key in ("m:pydoc/ppl@128", "r:pydoc/ppl@128", "avg", "r:avg"):
        assert cell(t, failed, key).value is None and cell(t, failed, key).sort_key is None
    # N:M targets sort right after the unstructured target of the same sparsity
    keys = [cell(t, r, "target").sort_key for r in t.rows]
    assert keys == sorted(keys)
    col = t.columns[t.column("m:pydoc/ppl@128")]
    assert (col.kind, col.better, col.label) == ("num", "asc", "pydoc ppl @128 ↓")
    assert t.columns[t.column("m:arc_easy/acc")].better == "desc"
    opt = tables["opt"]
    device = cell(opt, opt.rows[0], "device")
    assert (device.display, device.title) == ("H100 80GB HBM3", "cuda (NVIDIA H100 80GB HBM3)")
    # headline flags and publishable come from record.json while the db has no column for them
    assert "m:arc_easy/acc_norm" not in [c.key for c in t.columns]
    (trial,) = rows_by(opt, method="magnitude")
    assert cell(opt, trial, "status").display == "trial"


def test_metric_declarations_agree_with_report_direction():
    from harness.core.metrics import lower_is_better
    from leaderboard.metrics import MEASURES, format_value, metric_info

    for measure in MEASURES:
        name = f"task/{measure}"
        assert metric_info(name).higher_is_better is not lower_is_better(name), name
    assert metric_info("wikitext2/ppl@2048").label == "wikitext2 ppl @2048"
    assert metric_info("arc_easy/acc").kind == "zero-shot"
    unknown = metric_info("mytask/score")
    assert (unknown.declared, unknown.higher_is_better) == (False, True)
    assert unknown.label == "mytask/score"
    assert metric_info("my/perplexity_thing").higher_is_better is False
    assert format_value(None, "fixed2") == "–" and format_value(float("nan"), "fixed2") == "nan"
    assert format_value(0.815, "percent") == "81.5" and format_value(81.5, "percent") == "81.5"


def test_secondary_lm_eval_rows_stay_off_the_index():
    from dataclasses import replace

    from leaderboard.build import build_table
    from leaderboard.data import MetricValue, Run

    base = Run("a" * 64, "s", "zoo:tiny-llama", "dense", "0", 0, "ok", None, None, {}, None,
               None, None, None, None, "cpu", 0.0, None, None)
    metrics = {"arc_easy/acc": MetricValue(0.6, 0.01, 100, True),
               "arc_easy/acc_norm": MetricValue(0.5, 0.01, 100, False),
               "mmlu_anatomy/acc": MetricValue(0.3, 0.05, 10, False),
               "pydoc/ppl@128": MetricValue(20.0, None, 80)}
    dense = replace(base, metrics=metrics)
    pruned = replace(base, run_id="b" * 64, method="wanda", target="0.5",
                     metrics={**metrics, "arc_easy/acc": MetricValue(0.3, 0.01, 100, True)})
    t = build_table([pruned, dense], suite="s", family="llama", table_id="t")
    assert [c.key for c in t.columns if c.key.startswith(("m:", "avg"))] == [
        "m:pydoc/ppl@128", "m:arc_easy/acc", "avg"]
    row = next(r for r in t.rows if r.method == "wanda")
    assert cell(t, row, "r:avg").value == pytest.approx(50.0)


@pytest.mark.parametrize("model, family", [
    ("hf:meta-llama/Llama-2-7b-hf", "llama"), ("hf:facebook/opt-125m", "opt"),
    ("zoo:tiny-llama", "llama"), ("timm:resnet50.a1_in1k", "resnet"),
    ("hf:mistralai/Mistral-7B-v0.1", "mistral"), ("hf:acme/foo-7b", "foo"),
])
def test_model_family(model, family):
    from leaderboard.build import model_family

    assert model_family(model) == family


def test_pareto_plots_skip_failed_and_mark_nm(db):
    from harness.store.index import Store
    from leaderboard.data import load_runs
    from leaderboard.pages import pareto_plots

    runs = load_runs(Store(db))
    plots = {p.metric.name: p for p in pareto_plots(runs, "zoo:tiny-llama", "demo")}
    assert set(plots) == {"pydoc/ppl@128", "arc_easy/acc", "hellaswag/acc_norm", "avg zero-shot"}
    ppl = plots["pydoc/ppl@128"]
    assert ppl.dense == 20.0
    assert {(p.method, p.target) for p in ppl.points if p.nm} == {("wanda", "2:4"),
                                                                    ("sparsegpt", "2:4")}
    assert ("magnitude", "2:4") not in {(p.method, p.target) for p in ppl.points}  # failed
    assert all(p.method != "dense" for p in ppl.points)


def test_plots_are_svg_with_nm_marker_and_dense_line(site):
    svgs = sorted((site / "plots").glob("zoo-tiny-llama-*-pydoc-ppl-128.svg"))
    assert len(svgs) == 1
    svg = svgs[0].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "<dc:date>" not in svg  # deterministic: no build date
    model_page = next((site / "models").glob("zoo-tiny-llama-*.html")).read_text()
    assert f'src="../plots/{svgs[0].name}"' in model_page
    assert len(list((site / "plots").glob("run-*-layers.svg"))) == 14  # ok runs only


# ------------------------------------------------------------------------- pages


def test_user_strings_are_escaped_everywhere(site):
    pages = [p for p in site.rglob("*.html")]
    assert len(pages) == 1 + 3 + 15
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "<script>alert" not in html, page
        assert "<img src=x" not in html, page
        assert "<b>" not in html, page
    index = (site / "index.html").read_text()
    assert "zoo:llama-&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert index.count("<script") == 1  # only ours: static/leaderboard.js


def test_run_page_has_details(db, site):
    from harness.store.index import Store

    runs = {(r[0], r[1], r[2]): r[3] for r in Store(db).query(
        "SELECT model, method, target, run_id FROM runs")}
    rid = runs[("zoo:tiny-llama", "wanda", "0.5")]
    html = (site / "runs" / f"{rid}.html").read_text()
    assert f"harness run suites/demo.yaml --only {rid}" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html  # params, escaped
    assert "# &lt;b&gt;not bold&lt;/b&gt; &amp; friends" in html  # the frozen suite YAML
    assert "model.layers.1.mlp.down_proj" in html and f"plots/run-{rid[:16]}-layers.svg" in html
    assert "&#34;torch&#34;: &#34;2.14.1&#34;" in html  # environment JSON
    failed = runs[("zoo:tiny-llama", "magnitude", "2:4")]
    html = (site / "runs" / f"{failed}.html").read_text()
    assert "status-failed" in html and "measured sparsity &lt;b&gt;out&lt;/b&gt;" in html
    assert "traceback" in html and "layers.svg" not in html
    sgpt = runs[("zoo:tiny-llama", "sparsegpt", "0.5")]
    sgpt_html = (site / "runs" / f"{sgpt}.html").read_text()
    assert "series-calib-loss" in sgpt_html
    assert "arc_easy acc_norm %" in sgpt_html  # secondary lm-eval rows: on the run page


def test_data_dir_is_readable(db, site):
    import duckdb

    results = json.loads((site / "data" / "results.json").read_text())
    n = len(results)
    assert n == sum(4 if acc is not None else 1 for *_, acc, _ in GRID)  # a row per metric
    parquet = site / "data" / "results.parquet"
    assert duckdb.connect().execute(f"SELECT count(*) FROM '{parquet}'").fetchone()[0] == n
    runs = json.loads((site / "data" / "runs.json").read_text())
    assert len(runs) == len(GRID) and "ingested_at" not in runs[0]


# ------------------------------------------------------------------------- CLI


def test_leaderboard_build_cli(harness, db, tmp_path):
    out = harness("leaderboard", "build", "--db", str(db), "--out", str(tmp_path / "s"),
                  "--no-plots")
    assert out.returncode == 0, out.stderr
    assert "15 runs, 1 failed" in out.stdout and (tmp_path / "s" / "index.html").exists()
    missing = harness("leaderboard", "build", "--db", str(tmp_path / "nope.duckdb"))
    assert missing.returncode == 2 and "no results database" in missing.stderr
    # Never into the results folder (its runs/ are the source of truth) or a foreign folder.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for out_dir in (db.parent, tmp_path / "mine"):
        refused = harness("leaderboard", "build", "--db", str(db), "--out", str(out_dir))
        assert refused.returncode == 2 and "--out" in refused.stderr, refused.stderr
    assert (tmp_path / "mine" / "notes.txt").exists() and (db.parent / "runs").is_dir()
    again = harness("leaderboard", "build", "--db", str(db), "--out", str(tmp_path / "s"),
                    "--no-plots")
    assert again.returncode == 0, again.stderr  # a previous site is rebuilt in place


def test_compare_fail_if_worse(harness, db):
    worse = harness("compare", "--db", str(db), "--method", "magnitude", "--baseline",
                    "sparsegpt", "--fail-if-worse")
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "magnitude is worse on" in worse.stdout
    assert harness("compare", "--db", str(db), "--method", "magnitude", "--baseline",
                   "sparsegpt").returncode == 0  # without the flag: report only
    better = harness("compare", "--db", str(db), "--method", "sparsegpt", "--fail-if-worse")
    assert better.returncode == 0, better.stdout + better.stderr
    assert "sparsegpt vs magnitude, wanda" in better.stdout  # default baselines
    assert "not worse on any of" in better.stdout
    unknown = harness("compare", "--db", str(db), "--method", "sparsegtp")
    assert unknown.returncode == 2 and "Did you mean: sparsegpt?" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    helptext = harness("compare", "--help").stdout
    assert "fail-if-worse" in helptext and "2·sqrt(se1²" in helptext


def test_compare_rule_uses_direction_and_stderr():
    from leaderboard.compare import Delta, Side

    def delta(metric, mine, base, se=None):
        return Delta("s", "m", "0.5", metric, "b", Side(mine, se, 1), Side(base, se, 1))

    assert delta("x/ppl@128", 25.0, 24.0).worse  # higher perplexity, no stderr: worse
    assert not delta("x/ppl@128", 23.0, 24.0).worse
    assert delta("x/acc", 0.60, 0.65).worse
    assert not delta("x/acc", 0.64, 0.65, se=0.01).worse  # within 2·sqrt(2)·0.01: not counted
    assert delta("x/acc", 0.60, 0.65, se=0.01).significant
    assert delta("x/ppl@128", float("nan"), 24.0).worse  # diverged
    assert not delta("x/ppl@128", 24.0, float("nan")).worse
    assert delta("x/acc", 0.6, 0.6).verdict == "tie"


@pytest.mark.parametrize("fmt", ["parquet", "json", "csv"])
def test_export(harness, db, tmp_path, fmt):
    import duckdb

    out = tmp_path / f"r.{fmt}"
    res = harness("export", "--db", str(db), "--format", fmt, "--out", str(out))
    assert res.returncode == 0, res.stderr
    con = duckdb.connect(str(db), read_only=True)
    (n,) = con.execute("SELECT count(*) FROM results").fetchone()
    con.close()
    if fmt == "json":
        rows = json.loads(out.read_text())
        assert {"run_id", "suite", "model", "method", "target", "metric", "value", "status"} \
            == set(rows[0])
    elif fmt == "csv":
        rows = list(csv.DictReader(out.open()))
    else:
        rows = duckdb.connect().execute(f"SELECT * FROM '{out}'").fetchall()
    assert len(rows) == n
    if fmt == "csv":
        assert any(r["model"] == XSS_MODEL for r in rows)


def test_export_json_to_stdout(harness, db):
    res = harness("export", "--db", str(db), "--format", "json", "--out", "-")
    assert res.returncode == 0 and len(json.loads(res.stdout)) > 0
    assert not any(isinstance(r["value"], float) and math.isnan(r["value"])
                   for r in json.loads(res.stdout))


def test_help_stays_light():
    code = ("import sys; from harness.cli.main import build_parser; build_parser()\n"
            "heavy = [m for m in ('duckdb', 'jinja2', 'matplotlib', 'torch') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_method_variants_are_told_apart_by_the_params_that_differ(tmp_path):
    """The same method twice in a suite (iobs with two curvatures) gets two labels, not one name twice."""
    from harness.core.spec import CalibrationSpec, ModelSpec, PerplexitySpec, RunSpec
    from harness.store.index import Store
    from leaderboard.build import build_tables
    from leaderboard.data import load_runs

    store = Store(tmp_path / "v.duckdb", wait_s=10)
    for params in ({"curvature": "fisher", "step_size": 0.01}, {"step_size": 0.5}, {"step_size": 0.5, "rounds": 3}):
        record = make_record("zoo:tiny-llama", "sparsegpt", "0.5", 25.0, None, None, suite="variants")
        spec = RunSpec(suite="variants", model=ModelSpec("zoo:tiny-llama"), method="iobs", params=params,
                       target="0.5", calibration=CalibrationSpec(seqlen=128),
                       perplexity=(PerplexitySpec("pydoc", 128),))
        record.update(run_id=spec.run_id, spec=spec.to_dict(), spec_json=spec.canonical_json(), method="iobs")
        store.save(record)
    store.save(make_record("zoo:tiny-llama", "magnitude", "0.5", 30.0, None, None, suite="variants"))
    (table,) = build_tables(load_runs(store))
    labels = sorted(cell(table, r, "method").display for r in table.rows)
    assert labels == ["iobs (curvature=default, rounds=3, step_size=0.5)",
                      "iobs (curvature=default, rounds=default, step_size=0.5)",
                      "iobs (curvature=fisher, rounds=default, step_size=0.01)", "magnitude"]
    # and on the model page each variant is its own line, never averaged with the others
    from leaderboard.pages import pareto_plots

    (plot,) = pareto_plots(load_runs(store), "zoo:tiny-llama", "variants")
    assert sorted(p.method for p in plot.points) == labels
    # harness compare: one row per variant, each against the baseline, never their average
    from leaderboard.compare import compare, compare_table

    result = compare(load_runs(store), "iobs", ["magnitude"])
    assert sorted(d.variant for d in result.deltas) == [label[len("iobs ("):-1] for label in labels[:3]]
    assert {d.baseline_label for d in result.deltas} == {"magnitude"}
    assert {d.method.value for d in result.deltas} == {25.0} and all(d.method.runs == 1 for d in result.deltas)
    assert "iobs variant" in [c.header.plain for c in compare_table(result).columns]
