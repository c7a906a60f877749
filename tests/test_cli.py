"""The CLI as a user runs it: exit codes, one-line errors, no tracebacks, light imports."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BAD = sorted((REPO / "tests" / "fixtures" / "bad_suites").glob("*"))


def harness(*args, cwd=REPO, env=None, timeout=300):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


def test_help_and_validate_do_not_import_torch():
    code = (
        "import sys; from harness.cli.main import main\n"
        "rc = main(['validate', 'suites/quickstart.yaml', 'suites/llm_50pct.yaml'])\n"
        "assert 'torch' not in sys.modules, 'validate imported torch'\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "suites/quickstart.yaml: ok (20 cells)" in out.stdout
    assert "suites/llm_50pct.yaml: ok (20 cells)" in out.stdout
    assert harness("--help").returncode == 0


def test_bad_suites_fail_validation_with_file_line_and_no_traceback():
    assert len(BAD) >= 40
    out = harness("validate", *[str(p.relative_to(REPO)) for p in BAD])
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stdout == ""
    files_reported = {line.split(":", 1)[0] for line in out.stderr.splitlines()}
    assert files_reported == {str(p.relative_to(REPO)) for p in BAD}


@pytest.mark.parametrize("fixture", BAD[:3], ids=lambda p: p.name)
def test_run_rejects_bad_suite_before_loading_anything(fixture, tmp_path):
    out = harness("run", str(fixture), "--db", str(tmp_path / "x.duckdb"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_ls_lists_registered_things():
    out = harness("ls", "methods")
    assert out.returncode == 0
    for name in ("dense", "magnitude", "wanda", "sparsegpt", "blocksize=128"):
        assert name in out.stdout
    assert "zoo:tiny-llama" in harness("ls", "models").stdout
    assert "wikitext2" in harness("ls", "datasets").stdout


def test_dry_run_prints_grid_and_writes_nothing(tmp_path):
    out = harness("run", "suites/llm_50pct.yaml", "--dry-run", "--db", str(tmp_path / "x.duckdb"))
    assert out.returncode == 0
    assert "20 cells" in out.stdout and "hf:meta-llama/Llama-2-7b-hf" in out.stdout
    assert not (tmp_path / "x.duckdb").exists()


def test_offline_hub_model_gives_one_clear_line(tmp_path):
    suite = tmp_path / "hub.yaml"
    suite.write_text(textwrap.dedent("""
        name: hub
        models: [hf:facebook/opt-125m]
        methods: [magnitude]
        targets: [0.5]
        calibration: {dataset: pydoc, n_samples: 4, seqlen: 32, seed: 0}
        evals: {perplexity: [{dataset: pydoc, seqlen: 64, max_windows: 2}]}
    """))
    out = harness("run", str(suite), "--db", str(tmp_path / "r.duckdb"), "--offline")
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "hf:facebook/opt-125m" in ln and "not available locally" in ln]
    assert lines, out.stdout
    assert "path:" in " ".join(out.stdout.split())


def test_metric_directions():
    from harness.core.metrics import lower_is_better, recovery

    assert lower_is_better("wikitext2/ppl@2048") and lower_is_better("tiny_wiki/bits_per_byte")
    assert lower_is_better("val_loss") and lower_is_better("synthetic/final_dist")
    assert not lower_is_better("arc_easy/acc") and not lower_is_better("digits/top1")
    assert recovery(60.0, 50.0, "pydoc/ppl@128") == pytest.approx(100 * 50 / 60)
    assert recovery(0.45, 0.5, "arc_easy/acc") == pytest.approx(90.0)
    assert recovery(0.0, 0.5, "photos/agree_top1") == 0.0  # nothing kept is 0 %, not unknown
    assert recovery(0.0, 3.0, "x/kl_dense") is None and recovery(0.1, 0.0, "x/top1") is None
