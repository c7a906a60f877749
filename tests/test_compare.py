"""``harness compare``: variants kept apart, seeds as statistics (Welch's t / stderr), symmetric
labels, the --fail-if-worse gate on failed cells, and ``--reported`` (published numbers vs this store).

The stores are the FABRICATED fixtures of tests/lb_fixtures.py (test-only values).
"""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
from lb_fixtures import build_fixture_db, build_llama2_fixture_db


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return build_fixture_db(tmp_path_factory.mktemp("cmp") / "sparsebench.duckdb", seeds=True)


@pytest.fixture(scope="module")
def runs(db):
    from harness.store.index import Store
    from leaderboard.data import load_runs

    return load_runs(Store(db))


@pytest.fixture
def harness(capsys, monkeypatch):
    from harness.cli.main import main

    monkeypatch.setenv("COLUMNS", "240")

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            rc = main(list(args))
        except SystemExit as e:
            rc = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["harness", *args], rc, out, err)

    return run


def test_welch_and_t_distribution_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    from leaderboard.stats import Stat, significance, t_two_sided_p

    for df in (1.0, 1.7, 3.0, 12.5, 80.0):
        for t in (0.05, 1.0, 2.3, 9.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * scipy_stats.t.sf(t, df), rel=1e-9, abs=1e-12)
    a, b = [1.0, 1.2, 0.9], [2.0, 2.3]
    test = significance(Stat.of(enumerate(a)), Stat.of(enumerate(b)))
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert test.kind == "welch" and test.p == pytest.approx(ref.pvalue)
    assert test.statistic == pytest.approx(ref.statistic)
    assert test.significant == bool(ref.pvalue < 0.05)


def test_significance_falls_back_to_stderr_then_untested():
    from leaderboard.stats import Stat, significance

    one = Stat.of([(0, 0.60)], [0.01])
    two = Stat.of([(0, 0.65), (1, 0.66)], [0.01, 0.01])
    assert significance(one, two).kind == "stderr" and significance(one, two).significant  # |Δ| > 2·se
    flat = Stat.of([(0, 0.5), (1, 0.5)], [0.01, 0.01])  # seeds that do not vary say nothing: stderr
    assert significance(flat, Stat.of([(0, 0.51), (1, 0.51)], [0.01, 0.01])).kind == "stderr"
    ppl = Stat.of([(0, 24.0)])
    assert significance(ppl, Stat.of([(0, 25.0)])).kind == "none"  # one seed, no stderr: untested
    assert significance(Stat.of([(0, math.nan), (1, 3.0)]), two).significant  # diverged


def test_variants_are_compared_apart_each_over_its_own_seeds(runs):
    from leaderboard.compare import compare

    result = compare(runs, "wanda", ["sparsegpt"])
    at70 = {d.variant: d for d in result.deltas if d.target == "0.7" and d.metric == "pydoc/ppl@128"}
    assert set(at70) == {"wanda", "wanda+owl"}
    assert (at70["wanda"].method.mean, at70["wanda"].method.n) == (81.0, 2)
    assert (at70["wanda+owl"].method.mean, at70["wanda+owl"].method.n) == (pytest.approx(50.2), 2)
    assert at70["wanda+owl"].test.kind == "welch" and at70["wanda+owl"].label == "better"
    assert at70["wanda"].label == "worse"
    # a single variant by name
    only = compare(runs, "wanda+owl", ["sparsegpt"])
    assert {d.variant for d in only.deltas} == {"wanda+owl"}


def test_labels_are_symmetric():
    from leaderboard.compare import Delta
    from leaderboard.stats import Stat

    def delta(metric, mine, base, se=None):
        return Delta("p", "m", "0.5", metric, "v", "b", Stat.of([(0, mine)], [se]), Stat.of([(0, base)], [se]))

    assert delta("x/acc", 0.66, 0.65, se=0.01).label == "better (n.s.)"
    assert delta("x/acc", 0.64, 0.65, se=0.01).label == "worse (n.s.)"
    assert delta("x/acc", 0.70, 0.65, se=0.01).label == "better"
    assert delta("x/acc", 0.60, 0.65, se=0.01).label == "worse"
    assert delta("x/ppl@128", 23.0, 24.0).label == "better (untested)"
    assert delta("x/ppl@128", 25.0, 24.0).label == "worse (untested)"
    assert delta("x/acc", 0.6, 0.6).label == "tie"
    # the gate: worse and significant or untested; a diverged run is worse
    assert delta("x/ppl@128", 25.0, 24.0).worse and not delta("x/acc", 0.64, 0.65, se=0.01).worse
    assert delta("x/ppl@128", float("nan"), 24.0).worse and not delta("x/ppl@128", 24.0, float("nan")).worse


def test_fail_if_worse_counts_failed_cells(harness, db):
    out = harness("compare", "--db", str(db), "--method", "random", "--baseline", "magnitude", "--fail-if-worse")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "failed (baseline ok)" in out.stdout and "random is worse on" in out.stdout


def test_compare_cli(harness, db):
    worse = harness("compare", "--db", str(db), "--method", "magnitude", "--baseline", "sparsegpt", "--fail-if-worse")
    assert worse.returncode == 1 and "magnitude is worse on" in worse.stdout
    assert harness("compare", "--db", str(db), "--method", "magnitude", "--baseline", "sparsegpt").returncode == 0
    better = harness("compare", "--db", str(db), "--method", "sparsegpt", "--baseline", "magnitude", "--fail-if-worse")
    assert better.returncode == 0, better.stdout + better.stderr
    assert "not worse on any of" in better.stdout and "sparsegpt vs magnitude" in better.stdout
    default = harness("compare", "--db", str(db), "--method", "sparsegpt")
    assert "sparsegpt vs magnitude, wanda" in default.stdout and "Welch t=" in default.stdout
    assert "better (untested)" in default.stdout and "(n=2)" in default.stdout
    unknown = harness("compare", "--db", str(db), "--method", "sparsegtp")
    assert unknown.returncode == 2 and "Did you mean: sparsegpt?" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    nothing = harness("compare", "--db", str(db))
    assert nothing.returncode == 2 and "--method" in nothing.stderr
    suite = harness("compare", "--db", str(db), "--method", "wanda", "--suite", "demo")
    assert suite.returncode == 0 and "(n=2)" not in suite.stdout  # only the demo suite's seed
    helptext = harness("compare", "--help").stdout
    assert "fail-if-worse" in helptext and "Welch" in helptext and "--reported" in helptext


def test_compare_reported_prints_the_gaps(harness, tmp_path):
    """FABRICATED Llama-2-7B reproductions (test-only) against the shipped Wanda README numbers."""
    db = build_llama2_fixture_db(tmp_path / "sparsebench.duckdb")
    out = harness("compare", "--db", str(db), "--reported")
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "Llama-2-7b-hf" in ln]
    dense = next(ln for ln in lines if " dense " in ln)
    assert "5.12" in dense and "5.20" in dense and "+1.6%" in dense
    wanda = next(ln for ln in lines if " wanda " in ln)
    assert "6.42" in wanda and "6.55 ± 0.07 (n=2)" in wanda and "+2.0%" in wanda
    assert any("sparsegpt" in ln and "failed" in ln for ln in lines)
    magnitude24 = [ln for ln in lines if " magnitude " in ln and "2:4" in ln]
    assert magnitude24 and "not run; 60 under another protocol" in magnitude24[0]  # shown, not compared
    assert "other protocol: eval seqlen 2048 ≠ 4096" in out.stdout and "128×2048 ≠ c4 128×4096" in out.stdout
    assert "3 reproduced here under the same protocol, 1 only under another protocol" in out.stdout
    only = harness("compare", "--db", str(db), "--reported", "--method", "wanda")
    assert only.returncode == 0 and "magnitude" not in only.stdout.split("published numbers:")[0]
    everything = harness("compare", "--db", str(db), "--reported", "--all")
    assert "Llama-2-70b-hf" in everything.stdout and "not run" in everything.stdout
