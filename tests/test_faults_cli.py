"""Runtime faults on the input/terminal side (issue 15): each gives its documented exit code and
one line, no traceback, and loses nothing.

- Every string that reaches the terminal is text, never rich markup, and its control characters
  are shown as escapes (``\\x1b``): model ids, plugin errors and suite names through every
  command's output (run, --dry-run, validate, results, ls, compare, export to stdout, reindex).
- Every size a suite gives has a limit, named in its message (README "Suite bounds").
- Remote code needs the model's ``trust_remote_code: true`` and ``--trust-remote-code``.
- A file that is no suite, a ``weights:`` file that is no checkpoint and a method's weight of the
  wrong shape each give one line.

Fixtures: ``tests/fixtures/faults/cli/`` (see its README). The real run (one suite, ten cells on
zoo:tiny-llama's checkpoint, inline) takes about 15 s on two cores; everything else is validation,
``--dry-run`` and in-process rendering.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.cli.common import EXIT_BAD_INPUT, EXIT_FAILED_CELLS, EXIT_OK, eprint
from harness.cli.console import SafeConsole, text
from harness.cli.main import main
from harness.cli.report import CliReporter, grid_table, results_table, summary_table
from harness.core.method import METHODS, LayerMethod, PruneResult, register_method
from harness.core.spec import CalibrationSpec, ModelSpec, RunSpec
from harness.core.visible import CONTROL, visible
from harness.run.reporter import CellResult
from harness.suite.checker import SuiteError, SuiteProblem

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "tests" / "fixtures" / "faults" / "cli"
NASTY = ["[/x]", "[bold]", "[/]", "\x1b[31m", "\x1b]0;title\x07", "\r", "\x07", "\x00", "\x7f", "\x9b", "\u202e",
         ":smile:", "\\", "\n", "\t"]


def harness(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``harness ARGS`` in this process (plugins registered here are visible): (exit code, stdout, stderr)."""
    try:
        rc = main(list(args))
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    for stream in (out, err):
        assert "Traceback" not in stream
        assert not CONTROL.search(stream.replace("\n", "")), f"a raw control character reached the terminal: {stream!r}"
    return rc, out, err


def lines_of(stream: str) -> list[str]:
    return [ln for ln in stream.splitlines() if ln.strip()]


# ---------------------------------------------------------------------------- plugin methods


@dataclass(frozen=True)
class _NoParams:
    pass


@dataclass(frozen=True)
class _PatternParams:
    pattern: str = "[/a-z]\x1b[31m"  # shown by `harness ls methods` (markup-like, with ESC)


class _Raise(LayerMethod):
    Params = _PatternParams
    stats = "none"

    def prune(self, name, weight, stats, target):
        raise ValueError(f"pattern {self.params.pattern} rejected\x07 here\rand there")


class _Transposed(LayerMethod):
    """Returns W^T: the shape of a square layer, the wrong one of every other (was reshaped silently)."""

    Params = _NoParams
    stats = "none"

    def prune(self, name, weight, stats, target):
        return PruneResult(weight.T.contiguous())


class _Flat(LayerMethod):
    """Returns W flattened to one row: wrong on every layer, square ones included."""

    Params = _NoParams
    stats = "none"

    def prune(self, name, weight, stats, target):
        return PruneResult(weight.reshape(1, -1).clone())


FAULT_METHODS = {"fault_raise": _Raise, "fault_transposed": _Transposed, "fault_flat": _Flat}


@pytest.fixture(scope="module")
def fault_methods():
    for name, cls in FAULT_METHODS.items():
        register_method(name)(cls)
    yield
    for name in FAULT_METHODS:
        METHODS.unregister(name)


# ------------------------------------------------------------- markup and control characters


@pytest.fixture(scope="module")
def faulty_store(tmp_path_factory, fault_methods):
    """A real run of markup_and_control.yaml, inline: (suite path, db, the run's exit code, stdout)."""
    from harness.models.zoo import ensure_model

    root = tmp_path_factory.mktemp("faults")
    suite = root / "markup_and_control.yaml"
    shutil.copy(FAULTS / suite.name, suite)
    shutil.copytree(ensure_model("tiny-llama"), root / "m[" / "x]\x1b[31m[bold]")
    db = root / "results" / "r.duckdb"
    mp = pytest.MonkeyPatch()
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        mp.setenv(var, "1")
    mp.setenv("COLUMNS", "400")
    out, err = io.StringIO(), io.StringIO()
    mp.setattr(sys, "stdout", out)
    mp.setattr(sys, "stderr", err)
    try:
        rc = main(["run", str(suite), "--db", str(db), "--executor", "inline", "--offline"])
    finally:
        mp.undo()
    return SimpleNamespace(suite=suite, db=db, rc=rc, out=out.getvalue(), err=err.getvalue(),
                           model=visible(f"path:{root}/m[/x]\x1b[31m[bold]"),
                           missing=visible("path:/nonexistent/[/y]\x1b]0;title\x07\rred"))


def test_run_with_markup_ids_and_errors_fails_only_those_cells(faulty_store):
    s = faulty_store
    assert s.rc == EXIT_FAILED_CELLS, s.out + s.err
    for stream in (s.out, s.err):
        assert "Traceback" not in stream and not CONTROL.search(stream.replace("\n", ""))
    failed = [ln for ln in s.out.splitlines() if ln.startswith(("failed ", "error "))]
    assert len(failed) == 4  # the missing model's five cells (one error, one line) and three plugin faults
    by_method = {ln.split(": ", 1)[0].split()[-2]: ln for ln in failed if s.model in ln}
    # a record keeps an error's first line (up to a newline: a "\r" stays); its characters are shown escaped
    assert by_method["fault_raise"].endswith(r"ValueError: pattern [/a-z]\x1b[31m rejected\x07 here\rand there")
    assert by_method["fault_transposed"].endswith(
        "MethodOutputError: fault_transposed returned a weight of shape (128, 352) for layer "
        "model.layers.0.mlp.gate_proj; expected (d_out, d_in) = (352, 128)")
    assert by_method["fault_flat"].endswith(
        "MethodOutputError: fault_flat returned a weight of shape (1, 16384) for layer "
        "model.layers.0.self_attn.q_proj; expected (d_out, d_in) = (128, 128)")
    missing = [ln for ln in failed if s.missing in ln]
    assert len(missing) == 1 and all(
        ln.split(" ", 1)[1].startswith(f"5 cells of {s.missing} (") and
        ln.endswith(r"ModelUnavailable: model folder '/nonexistent/[/y]\x1b]0;title\x07\rred' has no config.json "
                    "(expected a save_pretrained folder)")
        for ln in missing)  # the record keeps the whole first line of the error, "\r" included, shown escaped
    assert f"{s.model}/wanda/0.5" in s.out  # the per-cell line, escaped


def test_nothing_is_lost_and_every_command_reads_the_store(faulty_store, capsys, monkeypatch):
    s = faulty_store
    monkeypatch.setenv("COLUMNS", "400")  # long ids stay on one line in every table
    records = sorted((s.db.parent / "runs").glob("*/record.json"))
    assert len(records) == 10
    status = sorted(json.loads(r.read_text())["status"] for r in records)
    assert status == ["error"] * 5 + ["failed"] * 3 + ["ok"] * 2  # a model that cannot be loaded: error

    rc, out, _ = cli(capsys, "run", str(s.suite), "--db", str(s.db), "--executor", "inline", "--offline")
    assert rc == EXIT_FAILED_CELLS  # the five cells in error run again, and fail the same way
    assert "10 cells; 5 to run, 2 already stored (use --force to rerun), 3 stored as failed" in out
    assert out.count("(same error as [1/5])") == 4
    rc, out, _ = cli(capsys, "run", str(s.suite), "--dry-run")
    assert rc == EXIT_OK and s.model in out and s.missing in out and "faults_cli: 10 cells" in out
    rc, out, _ = cli(capsys, "results", "--db", str(s.db))
    assert rc == EXIT_OK and out.count(s.model) == 5 and out.count(s.missing) == 5
    rc, out, _ = cli(capsys, "ls", "methods")
    assert rc == EXIT_OK and r"pattern='[/a-z]\x1b[31m'" in out
    rc, out, _ = cli(capsys, "compare", "--db", str(s.db), "--method", "wanda", "--baseline", "magnitude")
    assert rc == EXIT_OK and s.model in out and "wanda is" in out
    rc, out, _ = cli(capsys, "export", "--db", str(s.db), "--format", "csv", "--out", "-")
    assert rc == EXIT_OK and s.model in out and s.missing in out
    rc, out, _ = cli(capsys, "export", "--db", str(s.db), "--format", "json", "--out", "-")
    models = {row["model"] for row in json.loads(out)}  # lossless: JSON escapes, the data is unchanged
    assert rc == EXIT_OK and any(m.endswith("m[/x]\x1b[31m[bold]") for m in models)
    rc, out, _ = cli(capsys, "reindex", "--db", str(s.db))
    assert rc == EXIT_OK and out.startswith("10 records from")
    rc, out, _ = cli(capsys, "results", "--db", str(s.db))
    assert rc == EXIT_OK and out.count(s.model) == 5 and out.count(s.missing) == 5


def test_validate_and_dry_run_show_control_characters_escaped(tmp_path):
    out = harness("validate", "tests/fixtures/faults/cli/name_control.yaml")
    assert out.returncode == EXIT_BAD_INPUT and out.stdout == ""
    assert out.stderr == (r"tests/fixtures/faults/cli/name_control.yaml:1: name: 'bad\x1b[31mname\r\x07' may use "
                          "only letters, digits, '_', '.' and '-' (it is in every run id)\n")
    suite = tmp_path / "s.yaml"
    suite.write_text('name: ok\nmodels: ["path:/m[/x]/\\e[31m[bold]\\r"]\nmethods: [dense]\n')
    out = harness("run", str(suite), "--dry-run")
    assert out.returncode == EXIT_OK and "Traceback" not in out.stderr
    assert r"path:/m[/x]/\x1b[31m[bold]\r" in out.stdout and "\x1b" not in out.stdout + out.stderr
    out = harness("validate", str(suite), "--trust-remote-code")
    assert (out.returncode, out.stdout) == (EXIT_OK, f"{suite}: ok (1 cells)\n")


# ------------------------------------------------------------------ property: any string


def _nasty_strings():
    from hypothesis import strategies as st

    piece = st.one_of(st.sampled_from(NASTY), st.text(max_size=4))
    return st.lists(piece, max_size=6).map("".join)


def _render(renderable) -> str:
    console = SafeConsole(file=io.StringIO(), width=2000)
    console.print(renderable)
    return console.file.getvalue()


def test_any_string_is_shown_as_text_on_every_output_path(capsys):
    hypothesis = pytest.importorskip("hypothesis")

    @hypothesis.settings(max_examples=150, deadline=None, database=None)
    @hypothesis.given(s=_nasty_strings())
    def check(s: str) -> None:
        shown = visible(s)
        assert not CONTROL.search(shown) and "\n" not in shown
        spec = RunSpec(suite="s", model=ModelSpec(f"path:/{s}"), method="wanda", params={"p": s}, target="0.5",
                       calibration=CalibrationSpec())
        suite = SimpleNamespace(name="s", calibration=CalibrationSpec(), perplexity=(), lm_eval=None,
                                image_evals=(), models=[spec.model])
        result = CellResult(spec, "failed", {f"m/{s}": 1.0}, error=f"ValueError: {s}")
        store = SimpleNamespace(query=lambda sql, params: [(s, f"path:/{s}", "wanda", "0.5", "ok", "x", 1.0)])
        outputs = [_render(text(s)), _render(s), _render(grid_table(suite, [spec])),
                   _render(summary_table(s, [result])), _render(results_table(store, None)),
                   str(SuiteProblem("f.yaml", 1, "name", s))]
        reporter = CliReporter(SafeConsole(file=io.StringIO(), width=2000))
        with reporter:
            reporter.cell_start(0, 1, spec)
            reporter.progress(s, 1, 2)
            reporter.note(s)
            reporter.cell_end(result)
        outputs.append(reporter.console.file.getvalue())
        eprint(s)
        outputs.append(capsys.readouterr().err)
        for out in outputs:
            assert not CONTROL.search(out.replace("\n", "")), repr(out)
        assert _render(text(s)) == shown + "\n"
        for out in outputs[2:5] + outputs[6:7]:
            assert f"/{shown}" in out
        assert shown in outputs[5] and "\n" not in outputs[5]
        assert f"ValueError: {shown}" in outputs[6]
        assert outputs[-1] == "".join(visible(line) + "\n" for line in s.split("\n"))

    check()


# --------------------------------------------------------------------------------- bounds


def test_oversize_sizes_fail_validation_naming_their_limit():
    with pytest.raises(SuiteError) as info:
        from harness.suite.loader import load_suite

        load_suite(FAULTS / "oversize.yaml")
    shown = {(p.line, p.path): p.message for p in info.value.problems}
    assert shown[(5, "calibration.n_samples")] == (
        "expected an integer > 0 and at most 1,000,000 (the limit); got 99999999999999999999")
    limits = {"calibration.seqlen": "1,048,576", "evals.perplexity[0].max_windows": "10,000,000",
              "evals.lm_eval.num_fewshot": "1,000", "evals.lm_eval.batch_size": "65,536",
              "evals.lm_eval.limit": "10,000,000", "evals.lm_eval.max_length": "1,048,576",
              "seeds[1]": "2,147,483,647", "batch_size": "65,536", "methods[1].params.blocksize": "2,147,483,647"}
    for path, limit in limits.items():
        message = next(m for (_, p), m in shown.items() if p == path)
        assert f"{limit} (the limit)" in message, message
    assert len(shown) == len(limits) + 1

    with pytest.raises(SuiteError) as info:
        load_suite(FAULTS / "oversize_synthetic.yaml")
    assert [(p.path, p.message.split(", got")[0]) for p in info.value.problems] == [
        ("models[0].problem.n", "expected an integer >= 1 and at most 1,000,000 (the limit)"),
        ("models[0].problem.steps", "expected an integer >= 1 and at most 1,000,000 (the limit)"),
        ("models[0].problem.trials", "expected an integer >= 1 and at most 10,000 (the limit)"),
        ("models[1].problem.d", "expected an integer >= 2 and at most 16,384 (the limit)"),
        ("models[2].problem.n", "n x d is 16,384,000,000 values; the limit is 268,435,456"),
    ]


def test_calibration_tokens_have_a_limit_too(tmp_path):
    from harness.suite.loader import load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\nmodels: [zoo:tiny-llama]\nmethods: [wanda]\ntargets: [0.5]\n"
                     "calibration: {n_samples: 1000000, seqlen: 4096}\n")
    with pytest.raises(SuiteError) as info:
        load_suite(suite)
    assert str(info.value) == (f"{suite}:5: calibration.n_samples: n_samples x seqlen is 4,096,000,000 "
                               "calibration tokens; the limit is 1,073,741,824")


# ---------------------------------------------------------------------------- remote code


def test_remote_code_needs_the_suite_key_and_the_flag(tmp_path):
    fixture = "tests/fixtures/faults/cli/remote_code.yaml"
    line = (f"{fixture}:4: models[1].trust_remote_code: 'path:custom-model' would run code from its own "
            "repository; this key needs --trust-remote-code as well (harness run --trust-remote-code, "
            "harness validate --trust-remote-code)\n")
    for args in (("validate", fixture), ("run", fixture, "--dry-run")):
        out = harness(*args)
        assert (out.returncode, out.stdout, out.stderr) == (EXIT_BAD_INPUT, "", line)
    out = harness("run", fixture, "--dry-run", "--trust-remote-code")
    assert out.returncode == EXIT_OK, out.stderr
    assert out.stdout.splitlines()[0] == (
        f"running code from their own repositories (trust_remote_code): path:{REPO / 'tests/fixtures/faults/cli'}"
        "/custom-model")


def test_remote_code_refused_at_load_time_naming_both_keys(tmp_path, monkeypatch):
    from harness.models.load import REMOTE_CODE_ENV, ModelUnavailable, load_model

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "sb-custom", "auto_map": {"AutoConfig": "configuration_x.XConfig",
                                                "AutoModelForCausalLM": "modeling_x.XModel"}}))
    monkeypatch.delenv(REMOTE_CODE_ENV, raising=False)
    with pytest.raises(ModelUnavailable) as info:  # the model wants its code; the suite did not say so
        load_model(ModelSpec(f"path:{tmp_path}"))
    assert str(info.value) == (
        f"model 'path:{tmp_path}' needs to run code from its own repository; to allow it, set "
        "'trust_remote_code: true' on the model in the suite and pass --trust-remote-code to harness run")
    with pytest.raises(ModelUnavailable) as info:  # the suite says so, the run did not
        load_model(ModelSpec(f"path:{tmp_path}", trust_remote_code=True))
    assert str(info.value) == (
        f"model 'path:{tmp_path}' has 'trust_remote_code: true' in the suite, but this run was not started "
        f"with --trust-remote-code ({REMOTE_CODE_ENV}=1); both are needed")


# ------------------------------------------------------------------------- minor items


def test_a_file_that_is_no_suite_is_refused_without_quoting_it(tmp_path):
    from harness.suite.schema import suite_schema

    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET_TOKEN: hunter2\nother_key: also secret\n")
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    links = {"to_secret.yaml": (secret, "a mapping of 2 keys, none of them a suite key"),
             "to_passwd.yaml": (passwd, "text")}
    if Path("/etc/passwd").is_file():
        links["to_etc_passwd.yaml"] = (Path("/etc/passwd"), "text")
    for link, (target, _) in links.items():
        (tmp_path / link).symlink_to(target)
    out = harness("validate", *links, cwd=tmp_path)
    assert out.returncode == EXIT_BAD_INPUT and out.stdout == "" and "Traceback" not in out.stderr
    keys = ", ".join(suite_schema("."))
    assert out.stderr.splitlines() == [
        f"{link}:1: not a suite: a suite must be a mapping with keys {keys}; the file holds {holds}"
        for link, (_, holds) in links.items()]


def test_a_weights_file_that_is_no_checkpoint_gives_one_line(tmp_path):
    from harness.models.load import ModelUnavailable, load_vision_model

    text_file = tmp_path / "passwd"
    text_file.write_text("root:x:0:0:root:/root:/bin/bash\n")
    broken_zip = tmp_path / "broken.pth"
    broken_zip.write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    cases = {
        str(text_file): f"weights file '{text_file}' for model 'timm:resnet18' is not a checkpoint (expected a "
                        "PyTorch .pth/.pt/.bin file or a .safetensors file)",
        "/dev/zero": "weights file '/dev/zero' for model 'timm:resnet18' is not a regular file (a checkpoint is a "
                     ".pth/.pt/.bin or .safetensors file)",
        str(tmp_path / "absent.pth"): f"weights file '{tmp_path / 'absent.pth'}' for model 'timm:resnet18' does "
                                      "not exist",
    }
    for weights, message in cases.items():
        with pytest.raises(ModelUnavailable) as info:
            load_vision_model(ModelSpec("timm:resnet18", weights=weights))
        assert str(info.value) == message
    with pytest.raises(ModelUnavailable) as info:
        load_vision_model(ModelSpec("timm:resnet18", weights=str(broken_zip)))
    shown = str(info.value)
    assert shown.startswith(f"cannot load model 'timm:resnet18' from {broken_zip}: ") and "\n" not in shown


def test_a_wrong_shape_is_named_on_every_layer_before_anything_is_written():
    import torch
    from torch import nn

    from harness.core.target import Target
    from harness.drivers.hooks import MethodOutputError, prune_layer

    class Returns(LayerMethod):
        name = "returns"
        Params = _NoParams
        stats = "none"

        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def prune(self, name, weight, stats, target):
            return self.fn(weight)

    layers = {"square": nn.Linear(8, 8), "wide": nn.Linear(8, 4), "conv": nn.Conv2d(2, 4, 3)}
    wrong = {
        "transposed": lambda w: PruneResult(w.T.contiguous()),
        "flat": lambda w: PruneResult(w.reshape(-1).clone()),
        "a column short": lambda w: PruneResult(w[:, 1:].clone()),
        "a mask": lambda w: PruneResult(w != 0),
        "not a tensor": lambda w: PruneResult(w.tolist()),
        "no PruneResult": lambda w: w,
    }
    for layer_name, layer in layers.items():
        d = tuple(layer.weight.reshape(layer.weight.shape[0], -1).shape)
        before = layer.weight.detach().clone()
        for what, fn in wrong.items():
            if what == "transposed" and d[0] == d[1]:
                continue  # a square W^T has the right shape: nothing to tell it apart by
            with pytest.raises(MethodOutputError) as info:
                prune_layer(Returns(fn), layer_name, layer, None, Target.parse(0.5), 0)
            message = str(info.value)
            assert f"for layer {layer_name}; expected" in message and "\n" not in message
            assert str(d) in message or "dtype bool" in message
            assert torch.equal(layer.weight, before), f"{what}: the layer was written"
    with pytest.raises(MethodOutputError) as info:
        prune_layer(Returns(lambda w: PruneResult(w.reshape(1, -1).clone())), "square", layers["square"], None,
                    Target.parse(0.5), 0)
    assert str(info.value) == ("returns returned a weight of shape (1, 64) for layer square; "
                               "expected (d_out, d_in) = (8, 8)")
