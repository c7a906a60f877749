"""Leaderboard: golden index.html from a fixture DB, rows by variant with seed statistics, best marks,
published numbers, escaping, plots, pages, export. (``harness compare``: tests/test_compare.py.)

The fixture store (tests/lb_fixtures.py) holds FABRICATED values only. Regenerate the golden file
after an intended change to the HTML with ``SPARSEBENCH_REGEN_GOLDEN=1 python -m pytest
tests/test_leaderboard.py`` and review the diff.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lb_fixtures import (GRID, OLD_ID, PLUGIN_ORIGIN, REPORTED_FIXTURE, SEEDS, SUITE_PATH, XSS_MODEL,  # noqa: F401
                         build_fixture_db, make_record)

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "fixtures" / "leaderboard" / "index.html"
REGEN = os.environ.get("SPARSEBENCH_REGEN_GOLDEN") not in (None, "", "0")
DATE = "2025-01-02"
PPL = "m:pydoc/ppl@128"


def reported():
    """The shipped published numbers and the TEST-ONLY fabricated ones of the fixture."""
    from leaderboard.reported import load_reported

    return load_reported() + load_reported(REPORTED_FIXTURE)


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return build_fixture_db(tmp_path_factory.mktemp("lb") / "sparsebench.duckdb", seeds=True)


@pytest.fixture(scope="module")
def runs(db):
    from harness.store.index import Store
    from leaderboard.data import load_runs

    return load_runs(Store(db))


@pytest.fixture(scope="module")
def site(db, tmp_path_factory) -> Path:
    from leaderboard.render import build_site

    out = tmp_path_factory.mktemp("site")
    build_site(db, out, reported=reported(), date=DATE)
    return out


@pytest.fixture(scope="module")
def tables(runs):
    from leaderboard.build import build_tables

    return build_tables(runs, reported())


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


def llama(tables):
    return next(t for t in tables if t.family == "llama" and t.runs)


# ------------------------------------------------------------------------- golden HTML


def test_index_matches_golden_file(db, tmp_path):
    """With the fixture's published numbers only, so that editing the shipped ones changes no golden file."""
    from leaderboard.render import build_site
    from leaderboard.reported import load_reported

    build_site(db, tmp_path, plots=False, data=False, reported=load_reported(REPORTED_FIXTURE), date=DATE)
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


def test_rebuild_is_byte_identical(db, site, runs, tmp_path):
    from leaderboard.pages import pareto_plots, run_page
    from leaderboard.plots import draw
    from leaderboard.render import build_site
    from leaderboard.rows import entries

    build_site(db, tmp_path, plots=False, reported=reported(), date=DATE)  # plots are redrawn below
    first = {p.relative_to(site): p.read_bytes() for p in site.rglob("*")
             if p.is_file() and "plots" not in p.parts}
    second = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    pool = entries(runs)
    mine = [e for e in pool if e.model == "zoo:tiny-llama"]
    for plot in (pareto_plots(mine, "zoo:tiny-llama", pool, mine[0].protocol.key)[0],
                 run_page(runs[1], runs, pool).layer_plot):
        assert draw(plot) == (site / plot.file).read_text(encoding="utf-8")


# ------------------------------------------------------------------------- view model


def test_one_ranking_per_protocol_across_suites(tables):
    with_runs = [t for t in tables if t.runs]
    assert [(t.family, t.protocol) for t in with_runs] == [
        ("llama", "calibration pydoc 128×128"), ("opt", "calibration pydoc 128×128"),
        ("script>", "calibration pydoc 128×128")]
    t = llama(tables)
    assert t.suites == ("demo", "seeds") and t.title == "llama · calibration pydoc 128×128"
    # the cell both suites asked for is one row; its seeds come from both
    (dense,) = rows_by(t, variant="dense", kind="run")
    assert dense.suites == ("demo", "seeds") and cell(t, dense, PPL).note == "n=2"


def test_rows_are_variants_with_seed_statistics(tables):
    t = llama(tables)
    runs = [r for r in t.rows if r.kind == "run"]
    # targets as 50 %, 70 %, then N:M; within a target dense first, then variants by name
    assert [cell(t, r, "target").display for r in runs] == (
        ["dense"] + ["50 %"] * 4 + ["70 %"] * 5 + ["2:4"] * 3)
    keys = [cell(t, r, "target").sort_key for r in runs]
    assert keys == sorted(keys)
    at70 = {r.variant: r for r in runs if r.target == "0.7"}
    assert set(at70) == {"magnitude", "random", "sparsegpt", "wanda", "wanda+owl"}  # never averaged
    owl, wanda = cell(t, at70["wanda+owl"], PPL), cell(t, at70["wanda"], PPL)
    assert (owl.value, owl.display, owl.note) == (pytest.approx(50.2), "50.20 ± 0.28", "n=2")
    assert "seed 0: 50.00, seed 1: 50.40" in owl.title and "sample std over 2 seeds" in owl.title
    assert (wanda.value, wanda.display) == (pytest.approx(81.0), "81.00 ± 1.41")
    links = cell(t, at70["wanda"], "run").links
    assert len(links) == 2 and links[0].text == at70["wanda"].id[:6] and links[1].title == "seed 1: ok"
    # one seed: the metric's own stderr, no n
    (sgpt,) = rows_by(t, variant="sparsegpt", target="0.5", kind="run")
    acc = cell(t, sgpt, "m:arc_easy/acc")
    assert (acc.display, acc.note) == ("66.0 ± 1.0", "")
    rec = cell(t, sgpt, f"r:{PPL[2:]}")
    assert rec.value == pytest.approx(100 * 20 / 24) and rec.display == "83.3"
    assert cell(t, sgpt, "avg").value == pytest.approx((0.66 + 0.47) / 2)
    assert cell(t, sgpt, "sparsity").display == "50.0"
    assert cell(t, sgpt, "run").links[0].href == f"runs/{sgpt.id}.html"
    assert cell(t, sgpt, "model").note == "812k"  # parameter count from the record's model_info


def test_columns_name_their_metric_and_fold_secondary_ones(tables):
    t = llama(tables)
    labels = {c.key: c.label for c in t.columns}
    assert labels[f"r:{PPL[2:]}"] == "recovery (pydoc ppl @128)"
    assert labels["r:avg"] == "recovery (avg zero-shot)"
    secondary = {c.key for c in t.columns if c.secondary}
    assert secondary == {"m:arc_easy/acc", "m:hellaswag/acc_norm", "sparsity", "prune_time", "device", "suites"}
    assert "m:arc_easy/acc_norm" not in labels  # secondary lm-eval rows: run pages only
    col = t.columns[t.column(PPL)]
    assert (col.kind, col.better, col.label) == ("num", "asc", "pydoc ppl @128 ↓")


def test_best_marks_only_significant_leads(tables):
    t = llama(tables)

    def css(variant, target, key):
        (row,) = rows_by(t, variant=variant, target=target, kind="run")
        return cell(t, row, key).css

    # 70 %: wanda+owl (50.0, 50.4) vs sparsegpt (60, 61): Welch's t over seeds, significant
    assert css("wanda+owl", "0.7", PPL) == "best"
    assert "Welch t=" in cell(t, rows_by(t, variant="wanda+owl", target="0.7", kind="run")[0], PPL).title
    # 50 %: sparsegpt 24.0 (one seed, no stderr) vs wanda 25.3: a lead, but not tested
    assert css("sparsegpt", "0.5", PPL) == "lead"
    # 50 %, arc_easy: sparsegpt 66.0 ± 1.0 vs wanda 64.2 (two seeds): not significant, unmarked
    assert {css(v, "0.5", "m:arc_easy/acc") for v in ("sparsegpt", "wanda", "magnitude")} == {""}
    # 2:4 avg zero-shot: sparsegpt 49.5 vs wanda 47.5, stderrs known: significant
    assert css("sparsegpt", "2:4", "avg") == "best"
    # failed rows, the dense row and published numbers are never marked
    failed = [r for r in t.rows if r.kind == "run" and r.status not in ("ok", "trial")]
    assert {(r.variant, r.target) for r in failed} == {("magnitude", "2:4"), ("random", "0.7")}
    assert all(c.css in ("", "failed", "runs") for r in failed for c in r.cells)
    assert all("best" not in c.css and "lead" not in c.css for r in t.rows if r.kind != "run" for c in r.cells)


def test_ties_are_not_marked():
    from leaderboard.data import MetricValue, Run
    from leaderboard.rows import entries
    from leaderboard.standing import best_marks
    from leaderboard.metrics import metric_info

    def run(rid, method, acc):
        return Run(rid * 64, "s", "zoo:m", method, "0.5", 0, "ok", None, None, {}, None, None, None, None, None,
                   "cpu", 0.5, None, None, metrics={"x/acc": MetricValue(acc, 0.0, 10, True)})

    rows = entries([run("a", "m1", 1.0), run("b", "m2", 1.0), run("c", "m3", 0.5)])
    assert best_marks(rows, [metric_info("x/acc")])["x/acc"] == {}  # 100.0 ± 0.0 twice: nobody


def test_standing_is_one_number_per_variant(tables):
    s = llama(tables).standing
    assert s.metric == "pydoc ppl @128" and s.cells == 3
    by = {r.variant: r for r in s.rows}
    assert by["random"].failed == 1 and by["magnitude"].failed == 1
    assert by["sparsegpt"].mean_rank < by["wanda"].mean_rank < by["magnitude"].mean_rank
    assert by["sparsegpt"].recovery[0] == pytest.approx((100 * 20 / 24 + 100 * 20 / 60.5 + 100 * 20 / 36) / 3)
    assert [r.variant for r in s.rows] == sorted(by, key=lambda v: (by[v].mean_rank, v))


def test_third_party_method_is_badged(tables):
    t = llama(tables)
    (row,) = rows_by(t, variant="random", target="0.5", kind="run")
    method = cell(t, row, "method")
    assert method.badge == "sb-random 0.0.1" and PLUGIN_ORIGIN in method.title


def test_published_numbers_beside_reproduced_rows(tables):
    t = llama(tables)
    kinds = [(r.kind, r.variant, r.target) for r in t.rows]
    # a published number right after the reproduced row of its (model, variant, target)
    i = kinds.index(("run", "sparsegpt", "0.5"))
    assert kinds[i + 1] == ("reported", "sparsegpt", "0.5")
    rep = cell(t, t.rows[i + 1], PPL)
    assert (rep.value, rep.note) == (23.0, "repro +4.3 %") and "never ranked" in rep.title
    assert cell(t, t.rows[i + 1], "status").display == "reported"
    # nothing reproduced it: an empty slot, then the number
    j = kinds.index(("reported", "magnitude", "4:8"))
    assert t.rows[j - 1].kind == "missing" and cell(t, t.rows[j - 1], PPL).display == "–"
    assert cell(t, t.rows[j - 1], "status").display == "not run"


def test_llama2_published_rows_render_beside_empty_slots(site):
    """No hub here: the Llama-2 numbers of the Wanda README sit in their own protocol, each beside its
    empty reproduced slot, on the index and the model page."""
    index = (site / "index.html").read_text()
    assert "llama · calibration c4 128×4096 (30 numbers)" in index
    section = index[index.index('id="published"'):]
    assert section.count('data-kind="missing" data-model="hf:meta-llama/Llama-2-7b-hf"') == 10
    assert section.count('data-kind="reported" data-model="hf:meta-llama/Llama-2-7b-hf"') == 10
    page = next((site / "models").glob("hf-meta-llama-llama-2-7b-hf-*.html")).read_text()
    assert "not run" in page and "arXiv:2306.11695" in page and "6.42" in page


def test_reported_files_load_and_errors_name_file_and_line(tmp_path):
    from leaderboard.reported import ReportedError, load_file, load_reported

    shipped = load_reported()
    llama2 = [r for r in shipped if r.model == "hf:meta-llama/Llama-2-7b-hf"]
    assert len(llama2) == 10 and all(r.metric_name == "wikitext2/ppl@4096" for r in llama2)
    assert {r.calibration_dict["seqlen"] for r in llama2} == {4096} and all(r.verified for r in llama2)
    assert any(not r.verified for r in shipped)  # recalled numbers are flagged, not hidden
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: {citation: c, table: t, dataset: d, calibration: {dataset: c4}}\n"
                   "rows:\n  - {model: m, method: wanda, target: 0.5, valeu: 1}\n"
                   "  - {model: m, method: wanda, target: '7:4', value: 1}\n")
    with pytest.raises(ReportedError) as err:
        load_file(bad)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{bad}:3: rows[0]: unknown key 'valeu' (did you mean 'value'?)"
    assert lines[1] == f"{bad}:3: rows[0]: missing 'value'"
    assert lines[2].startswith(f"{bad}:4: rows[1]: N:M target '7:4' needs 0 < N < M")


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


# ------------------------------------------------------------------------- plots


def test_pareto_plots_skip_failed_and_keep_variants_apart(runs):
    from leaderboard.pages import pareto_plots
    from leaderboard.rows import entries

    pool = entries(runs)
    mine = [e for e in pool if e.model == "zoo:tiny-llama"]
    plots = {p.metric.name: p for p in pareto_plots(mine, "zoo:tiny-llama", pool, mine[0].protocol.key)}
    assert set(plots) == {"pydoc/ppl@128", "arc_easy/acc", "hellaswag/acc_norm", "avg zero-shot"}
    ppl = plots["pydoc/ppl@128"]
    assert ppl.dense == 20.0 and ppl.targets == (0.5, 0.7)
    points = {(p.method, p.target): p for p in ppl.points}
    assert {k for k, p in points.items() if p.nm} == {("wanda", "2:4"), ("sparsegpt", "2:4")}
    assert ("magnitude", "2:4") not in points and ("random", "0.7") not in points  # failed
    assert points[("wanda+owl", "0.7")].y == pytest.approx(50.2) and points[("wanda", "0.7")].y == 81.0
    assert points[("wanda+owl", "0.7")].std == pytest.approx(math.sqrt(0.08))


def test_single_target_axis_reads_as_one_sparsity():
    """One target measured as 50.000 % and 50.004 %: ticks at the target, no offset (+5e1)."""
    import matplotlib

    from leaderboard.plots import _RC, _figure, _sparsity_axis

    with matplotlib.rc_context(_RC):
        fig, (ax,) = _figure(6.0, 3.8)
        ax.plot([50.0, 50.004], [1, 2])
        _sparsity_axis(ax, [50.0, 50.004], (0.5,))
        assert list(ax.get_xticks()) == [50.0] and ax.get_xlim() == (40.0, 60.004)
        assert ax.xaxis.get_major_formatter().get_offset() == ""


def test_plots_are_svg_with_overview(site):
    svgs = sorted((site / "plots").glob("zoo-tiny-llama-*-pydoc-ppl-128.svg"))
    assert len(svgs) == 1
    svg = svgs[0].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "<dc:date>" not in svg
    model_page = next((site / "models").glob("zoo-tiny-llama-*.html")).read_text()
    assert f'src="../plots/{svgs[0].name}"' in model_page
    index = (site / "index.html").read_text()
    overviews = sorted((site / "plots").glob("overview-*.svg"))
    assert len(overviews) == 3 and all(f'src="plots/{p.name}"' in index for p in overviews)
    assert len(list((site / "plots").glob("run-*-layers.svg"))) == 24 - 2  # ok runs only


# ------------------------------------------------------------------------- pages


def test_user_strings_are_escaped_everywhere(site, runs):
    pages = list(site.rglob("*.html"))
    models = {r.model for r in runs} | {r.model for r in reported()}
    assert len(pages) == 1 + len(models) + len(runs) + 1  # index, models, runs, one redirect
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

    ids = {(r[0], r[1], r[2], r[3]): r[4] for r in Store(db).query(
        "SELECT model, variant, target, seed, run_id FROM runs")}
    rid = ids[("zoo:tiny-llama", "wanda", "0.5", 0)]
    html = (site / "runs" / f"{rid}.html").read_text()
    assert f"harness run {SUITE_PATH} --only {rid[:12]}" in html  # the stored suite path
    assert "<h1>wanda · 50 % · seed 0" in html
    assert "› wanda · 50 % · seed 0</nav>" in html  # the breadcrumb names the page as its title does
    assert "&lt;img src=x onerror=alert(2)&gt;" in html  # params, escaped
    assert "# &lt;b&gt;not bold&lt;/b&gt; &amp; friends" in html  # the frozen suite YAML
    assert "model.layers.1.mlp.down_proj" in html and f"plots/run-{rid[:16]}-layers.svg" in html
    assert "&#34;torch&#34;: &#34;2.14.1&#34;" in html  # environment JSON
    seeded = ids[("zoo:tiny-llama", "wanda", "0.5", 1)]  # stored by a suite without a recorded path
    html = (site / "runs" / f"{seeded}.html").read_text()
    assert f"harness run seeds.yaml --only {seeded[:12]}" in html and "save the suite YAML below" in html
    failed = ids[("zoo:tiny-llama", "magnitude", "2:4", 0)]
    html = (site / "runs" / f"{failed}.html").read_text()
    assert "status-failed" in html and "measured sparsity &lt;b&gt;out&lt;/b&gt;" in html
    assert "traceback" in html and "layers.svg" not in html
    sgpt = ids[("zoo:tiny-llama", "sparsegpt", "0.5", 0)]
    sgpt_html = (site / "runs" / f"{sgpt}.html").read_text()
    assert "series-calib-loss" in sgpt_html and "arc_easy acc_norm %" in sgpt_html
    assert OLD_ID[:12] in sgpt_html  # its older run id
    redirect = (site / "runs" / f"{OLD_ID}.html").read_text()  # and the old link still resolves
    assert f'url={sgpt}.html"' in redirect


def test_model_page_crumbs_and_published_gaps(site):
    page = next((site / "models").glob("zoo-tiny-llama-*.html")).read_text()
    assert "› zoo:tiny-llama</nav>" in page and "<h1>zoo:tiny-llama</h1>" in page
    assert "812,416 parameters" in page
    gaps = page[page.index("<h2>Published numbers</h2>"):]
    assert "+4.3 %" in gaps  # sparsegpt 50 %: 24.0 reproduced, 23.0 fabricated "reported"
    assert "other protocol: 60.5 (eval seqlen 128 ≠ 256)" in gaps  # the mismatch, shown
    assert "TEST-ONLY fabricated reference" in gaps


def test_data_dir_is_readable(db, site, runs):
    import duckdb

    results = json.loads((site / "data" / "results.json").read_text())
    assert len(results) == sum(max(1, len(r.metrics)) for r in runs)  # a row per (run, metric)
    rows_with_metrics = {(x["run_id"], x["metric"]) for x in results if x["metric"]}
    assert len(rows_with_metrics) == sum(len(r.metrics) for r in runs)
    parquet = site / "data" / "results.parquet"
    assert duckdb.connect().execute(f"SELECT count(*) FROM '{parquet}'").fetchone()[0] == len(results)
    stored = json.loads((site / "data" / "runs.json").read_text())
    assert len(stored) == len(runs) and "ingested_at" not in stored[0]
    assert {"variant", "seed", "suites", "eval_id"} <= set(results[0])


# ------------------------------------------------------------------------- CLI


def test_leaderboard_build_cli(harness, db, tmp_path):
    out = harness("leaderboard", "build", "--db", str(db), "--out", str(tmp_path / "s"), "--no-plots")
    assert out.returncode == 0, out.stderr
    assert "24 runs, 2 failed" in out.stdout and (tmp_path / "s" / "index.html").exists()
    missing = harness("leaderboard", "build", "--db", str(tmp_path / "nope.duckdb"))
    assert missing.returncode == 2 and "no results database" in missing.stderr
    # Never into the results folder (its runs/ are the source of truth) or a foreign folder.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for out_dir in (db.parent, tmp_path / "mine"):
        refused = harness("leaderboard", "build", "--db", str(db), "--out", str(out_dir))
        assert refused.returncode == 2 and "--out" in refused.stderr, refused.stderr
    assert (tmp_path / "mine" / "notes.txt").exists() and (db.parent / "runs").is_dir()
    again = harness("leaderboard", "build", "--db", str(db), "--out", str(tmp_path / "s"), "--no-plots")
    assert again.returncode == 0, again.stderr  # a previous site is rebuilt in place


def test_help_stays_light():
    code = ("import sys; from harness.cli.main import build_parser; build_parser()\n"
            "heavy = [m for m in ('duckdb', 'jinja2', 'matplotlib', 'torch', 'yaml') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_older_stores_without_variants_keep_params_apart(tmp_path):
    """A store whose runs lack the variant column's value (older records) still keeps two entries of
    one method apart by the params on which they differ, never averaging them."""
    from dataclasses import replace

    from harness.core.spec import CalibrationSpec, ModelSpec, PerplexitySpec, RunSpec
    from harness.store.index import Store
    from leaderboard.build import build_table
    from leaderboard.data import load_runs
    from leaderboard.rows import derived_variants, entries

    store = Store(tmp_path / "v.duckdb", wait_s=10)
    for params in ({"curvature": "fisher", "step_size": 0.01}, {"step_size": 0.5}):
        record = make_record("zoo:tiny-llama", "sparsegpt", "0.5", 25.0 + params["step_size"], None, None, "v")
        spec = RunSpec(suite="v", model=ModelSpec("zoo:tiny-llama"), method="iobs", params=params, target="0.5",
                       calibration=CalibrationSpec(seqlen=128), perplexity=(PerplexitySpec("pydoc", 128),))
        record.update(run_id=spec.run_id, spec=spec.to_dict(), spec_json=spec.canonical_json(), method="iobs",
                      variant="iobs")
        store.save(record)
    runs = [replace(r, variant_key=None, resolved_params=None) for r in load_runs(store)]
    assert sorted(derived_variants(runs).values()) == ["iobs(curvature=default, step_size=0.5)",
                                                       "iobs(curvature=fisher, step_size=0.01)"]
    t = build_table(entries(runs), family="llama", table_id="t")
    assert sorted(r.variant for r in t.rows) == sorted(derived_variants(runs).values())
