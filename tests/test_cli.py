"""The CLI as a user runs it: exit codes, one-line errors, no tracebacks, light imports."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
import types
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
    """Three cells of a model that is not here: its error is printed once as its cells end and once in
    the closing list (not once per cell, twice), then one line names what else the suite needs."""
    suite = tmp_path / "hub.yaml"
    suite.write_text(textwrap.dedent("""
        name: hub
        models: [hf:facebook/opt-125m]
        methods: [dense, magnitude, wanda]
        targets: [0.5]
        calibration: {dataset: c4, n_samples: 4, seqlen: 32, seed: 0}
        evals: {perplexity: [{dataset: pydoc, seqlen: 64, max_windows: 2}]}
    """))
    out = harness("run", str(suite), "--db", str(tmp_path / "r.duckdb"), "--offline", "--executor", "inline",
                  env={"COLUMNS": "400"})
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "hf:facebook/opt-125m" in ln and "not available locally" in ln]
    assert len(lines) == 2, out.stdout
    assert " 3 cells of hf:facebook/opt-125m (dense 0, magnitude 0.5, wanda 0.5): ModelUnavailable: " in lines[1]
    assert "path:" in lines[0]
    assert out.stdout.count("(same error as [1/3])") == 2
    assert "this suite needs from it: models hf:facebook/opt-125m; datasets c4." in out.stdout


def test_metric_directions():
    from harness.core.metrics import lower_is_better, recovery

    assert lower_is_better("wikitext2/ppl@2048") and lower_is_better("tiny_wiki/bits_per_byte")
    assert lower_is_better("val_loss") and lower_is_better("synthetic/final_dist")
    assert not lower_is_better("arc_easy/acc") and not lower_is_better("digits/top1")
    assert recovery(60.0, 50.0, "pydoc/ppl@128") == pytest.approx(100 * 50 / 60)
    assert recovery(0.45, 0.5, "arc_easy/acc") == pytest.approx(90.0)
    assert recovery(0.0, 0.5, "photos/agree_top1") == 0.0  # nothing kept is 0 %, not unknown
    assert recovery(0.0, 3.0, "x/kl_dense") is None and recovery(0.1, 0.0, "x/top1") is None


# --- help, results, sql, dry run, --only, failures (issue 16) --------------------------------------


def _in_process(capsys, *args: str) -> tuple[int, str, str]:
    """``harness ARGS`` in this process: (exit code, stdout, stderr); no traceback, no raw control byte."""
    from harness.cli.main import main
    from harness.core.visible import CONTROL

    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as exc:  # --help, argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    for stream in (out, err):
        assert "Traceback" not in stream
        assert not CONTROL.search(stream.replace("\n", "")), stream
    return rc, out, err


def _undescribed(parser, path: str) -> list[str]:
    """Commands and options of ``parser`` (and its subcommands) whose --help has no description."""
    import argparse

    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not (helps.get(name) or "").strip():
                    missing.append(f"{path} {name} (the command)")
                missing += _undescribed(sub, f"{path} {name}")
        elif not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_and_option_has_a_description():
    from harness.cli.main import build_parser

    parser = build_parser()
    assert not _undescribed(parser, "harness"), "no help text: " + ", ".join(_undescribed(parser, "harness"))
    commands = {name for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)
                for name in a.choices}
    assert {"run", "validate", "results", "sql", "compare", "export", "leaderboard", "reindex", "ls",
            "zoo"} <= commands


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory) -> Path:
    """The leaderboard tests' fixture store: 15 runs, two suites' worth of metrics, a long hf: id."""
    from test_leaderboard import build_fixture_db

    return build_fixture_db(tmp_path_factory.mktemp("cli") / "sparsebench.duckdb")


@pytest.mark.parametrize("columns", ["80", "400"])
def test_results_never_cut_a_value(fixture_db, capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    rc, out, err = _in_process(capsys, "results", "--db", str(fixture_db))
    assert rc == 0, err
    assert "…" not in out and "..." not in out
    assert all(len(line) <= int(columns) for line in out.splitlines())
    rows = [ln for ln in out.splitlines() if ln.startswith("│ ") and not ln.startswith("│  ")]
    # the ids are whole (zoo:tiny… was both Llama and OPT), and the escaped markup id is text
    assert any("hf:facebook/opt-125m " in ln for ln in rows) and any("zoo:tiny-llama " in ln for ln in rows)
    assert any("zoo:llama-<script>alert(1)</script>" in ln for ln in rows)
    tables = out.count("┏")
    assert (tables > 1) == (columns == "80")  # folded into further tables only when it must
    if columns == "80":
        assert "metrics 1 of" in out


def test_results_suite_filter_and_unknown_suite(fixture_db, capsys):
    rc, out, _ = _in_process(capsys, "results", "--db", str(fixture_db), "--suite", "demo")
    assert rc == 0 and "demo" in out
    rc, _, err = _in_process(capsys, "results", "--db", str(fixture_db), "--suite", "dmeo")
    assert rc == 2 and err.startswith("Unknown suite 'dmeo'. Did you mean: demo?")


def test_results_table_folds_metrics_and_keeps_ids(capsys):
    """In memory: a table 60 columns wide splits its metric columns, each fold repeating the ids."""
    import io

    from harness.cli.console import SafeConsole
    from harness.cli.tables import results_table

    rows = [("s", "hf:org/a-model-id-that-is-long", "wanda", "0.5", "ok", f"task{i}/acc", 0.5 + i / 100, "r1",
             "wanda(power=2, scope=row, x=1)", 0) for i in range(6)]
    store = types.SimpleNamespace(query=lambda sql, params: rows)
    columns = ("suite", "model", "method", "target", "status", "metric", "value", "run_id", "variant", "seed")
    console = SafeConsole(file=io.StringIO(), width=60)
    console.print(results_table(store, None, columns, width=60))
    out = console.file.getvalue()
    assert out.count("hf:org/a-model-id-that-is-long") == out.count("┏") > 1
    assert "s: seed 0, all ok" in out and "wanda(power=2," in out and "…" not in out
    assert all(len(line) <= 60 for line in out.splitlines())


def test_sql_prints_a_table_and_errors_in_one_line(fixture_db, capsys):
    db = str(fixture_db)
    rc, out, _ = _in_process(capsys, "sql", "SELECT model, count(*) AS n FROM runs GROUP BY model ORDER BY model",
                             "--db", db)
    assert rc == 0 and "hf:facebook/opt-125m" in out and out.rstrip().endswith("3 rows")
    rc, out, _ = _in_process(capsys, "sql", "SELECT run_id FROM runs", "--db", db, "--max-rows", "2")
    assert rc == 0 and out.rstrip().endswith("15 rows, 2 shown (--max-rows 0 shows all)")
    bad = {
        "SELEC 1": "harness sql: Parser Error: syntax error at or near",
        "SELECT * FROM nope": "The store has: results (view)",
        "DELETE FROM runs": "only read-only queries run here",
        "COPY runs TO 'x.csv'": "only read-only queries run here",
        "SELECT 1; SELECT 2": "expected one query, got 2 statements",
        " ; ": "the query is empty",
    }
    for query, start in bad.items():
        rc, out, err = _in_process(capsys, "sql", query, "--db", db)
        assert (rc, out) == (2, ""), query
        assert len(err.splitlines()) == 1 and start in err, err
    rc, _, err = _in_process(capsys, "sql", "SELECT 1", "--db", str(fixture_db.parent / "none.duckdb"))
    assert rc == 2 and err.startswith("no results database at")
    assert not (fixture_db.parent / "none.duckdb").exists()


def test_readme_sql_examples_run(fixture_db, capsys):
    from test_plugin_example import readme_block

    commands = [shlex.split(line) for line in readme_block("readme-sql").splitlines() if line.strip()]
    assert commands and all(c[0] == "harness" and c[1] == "sql" for c in commands)
    for argv in commands:
        rc, out, err = _in_process(capsys, *argv[1:], "--db", str(fixture_db))
        assert rc == 0, (argv, err)
        assert "┏" in out and out.rstrip().endswith("rows")


def test_dry_run_marks_stored_cells(capsys, monkeypatch):
    from harness.store.index import Store
    from harness.suite import expand, load_suite

    cells = expand(load_suite(REPO / "suites" / "quickstart.yaml"))
    stored = {cells[0].run_id: "ok", cells[1].run_id: "failed", cells[2].run_id: "error"}
    monkeypatch.setattr(Store, "statuses", lambda self, ids: {i: stored[i] for i in ids if i in stored})
    monkeypatch.setenv("COLUMNS", "200")
    rc, out, _ = _in_process(capsys, "run", "suites/quickstart.yaml", "--dry-run")
    assert rc == 0
    marks = [ln.split("│")[2].strip() for ln in out.splitlines() if ln.startswith("│ ")]
    assert marks == ["ok", "failed", "error"] + ["-"] * 17
    assert ("20 cells: 1 stored as ok, 1 as failed, 1 as error, 17 not stored; without --dry-run this command "
            "runs 18 (cells in error always run again); --retry-failed also reruns the 1 stored as failed") in out
    rc, out, _ = _in_process(capsys, "run", "suites/quickstart.yaml", "--dry-run", "--force")
    assert "this command runs 20" in out


@pytest.mark.parametrize("only, expected", [
    ("zoo:tiny-lama/*/*", "Did you mean: 'zoo:tiny-llama/*/*'"),
    ("wanda", "Did you mean: '*/wanda/*'?"),
    ("*/sparsgpt/0.5", "Did you mean: '*/sparsegpt/0.5'?"),
    ("zoo:tiny-opt/wanda/0.6", "Did you mean: 'zoo:tiny-opt/wanda/0.7', 'zoo:tiny-opt/wanda/0.5'?"),
    ("*/iobs/*", "No method of this suite matches 'iobs'; its methods: dense, magnitude, sparsegpt, wanda."),
])
def test_only_that_matches_nothing_says_so_with_close_matches(only, expected, capsys, tmp_path):
    db = tmp_path / "x.duckdb"
    for extra in (["--dry-run"], []):
        rc, out, err = _in_process(capsys, "run", "suites/quickstart.yaml", "--only", only, "--db", str(db), *extra)
        assert (rc, out) == (2, "") and len(err.splitlines()) == 1
        assert err.startswith(f"--only {only!r} matches none of the 20 cells of suite quickstart") and expected in err
    assert not db.exists()


def test_failures_sharing_an_error_are_one_line():
    from harness.cli.run_plan import failure_lines, offline_line
    from harness.core.spec import CalibrationSpec, ModelSpec, RunSpec
    from harness.run.reporter import CellResult

    def cell(model: str, method: str, error: str, status: str = "error") -> CellResult:
        spec = RunSpec(suite="s", model=ModelSpec(model), method=method, params={}, target="0.5",
                       calibration=CalibrationSpec())
        return CellResult(spec, status, error=error)

    down = "ModelUnavailable: model '{}' is not available locally and the hub is unreachable (offline mode); ..."
    results = [cell(m, method, down.format(m)) for m in ("hf:a/x", "hf:b/y") for method in
               ("dense", "magnitude", "wanda", "sparsegpt", "iobs")]
    results.append(cell("hf:a/x", "own", "ValueError: its own", status="failed"))
    lines = failure_lines(results)
    assert [status for status, _ in lines] == ["error", "error", "failed"]
    assert lines[0][1] == (" 5 cells of hf:a/x (dense 0.5, magnitude 0.5, wanda 0.5, +2 more): "
                           + down.format("hf:a/x"))
    assert lines[2][1].endswith("hf:a/x own 0.5: ValueError: its own")
    suite = types.SimpleNamespace(models=[ModelSpec("hf:a/x"), ModelSpec("zoo:tiny-llama")],
                                  calibration=CalibrationSpec(dataset="c4"), perplexity=(), lm_eval=None)
    line = offline_line(suite, results)
    assert line.startswith("Offline: the Hugging Face hub is unreachable, and this suite needs from it: "
                           "models hf:a/x; datasets c4.")
    assert offline_line(suite, results[-1:]) is None


# --- README ------------------------------------------------------------------------------------------

README = REPO / "README.md"


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation but '-' and '_' dropped."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_readme_contents_and_links_stay_inside_the_repository():
    text = README.read_text()
    headings = {_slug(h) for h in re.findall(r"^#{2,3} (.+)$", text, flags=re.M)}
    contents = next(p for p in text.split("\n\n") if p.startswith("**Contents:**"))
    listed = set(re.findall(r"\]\(#([^)]+)\)", contents))
    assert listed <= headings, f"contents links without a heading: {listed - headings}"
    top = {_slug(h) for h in re.findall(r"^## (.+)$", text, flags=re.M)}
    assert top <= listed, f"sections missing from the contents: {top - listed}"
    assert not re.search(r"(?i)\b(https?|ftp)://|\bwww\.", text), "README links outside the repository"
    for target in re.findall(r"\]\(([^)#][^)]*)\)", text):  # every other link is a file of the repository
        assert (REPO / target).exists(), f"README links to {target}, which is not in the repository"
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in headings, f"README links to #{anchor}, which no heading makes"


def test_readme_states_the_python_version_of_pyproject_once():
    requires = re.search(r'^requires-python = ">=3\.(\d+)"$', (REPO / "pyproject.toml").read_text(), flags=re.M)
    assert requires, "pyproject.toml: requires-python is no longer '>=3.N'; update this test and the README"
    text = README.read_text()
    statements = re.findall(r"Python 3\.\d+[^.;]*", text)
    assert statements == [f"Python 3.{requires[1]} or newer on Linux"], statements
    assert "CPU only is fine." in text


def test_readme_commands_table_lists_every_command_and_the_executor_options():
    from harness.cli.main import build_parser

    table = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    parser = build_parser()
    commands = next(a.choices for a in parser._actions if isinstance(getattr(a, "choices", None), dict))
    for name in commands:
        assert f"`harness {name} " in table, f"the README's Commands table lacks `harness {name}`"
    for option in ("--jobs", "--executor", "--dry-run", "--only", "--db"):
        assert option in table


def test_readme_commands_parse():
    """Every ``harness`` line in the README's code blocks is a command the parser accepts (those that
    need the hub, a GPU or a cluster are checked this far; the sql examples run above)."""
    from harness.cli.main import build_parser

    lines, fence = [], None  # the lines of the bash (or unmarked) code blocks
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        elif fence in ("bash", "sh", ""):
            lines.append(line)
    found = 0
    for line in lines:
        for part in line.split("&&"):
            words = shlex.split(part.split(" # ")[0])
            if words and words[0].endswith("harness"):
                found += 1
                try:
                    build_parser().parse_args(words[1:])
                except SystemExit as exc:
                    pytest.fail(f"README command does not parse ({exc.code}): {part.strip()}")
    assert found >= 10
