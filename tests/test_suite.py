"""Suite loading: every bad fixture gives ``file:line:`` errors, good suites expand to stable cells.

Bad fixtures live in ``fixtures/bad_suites``, one problem each. Their first line is
``# expect: <substring of the message>`` and their second ``# line: <N or none>``, the line the
matching error must point at; ``none`` marks whole-file problems (unreadable, too large,
binary, empty), which are reported as ``<file>: message`` without a line. Files that cannot carry
a header (binary, zero bytes) keep their expectation in ``NO_HEADER``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pytest

from harness.suite import lines as _yaml
from harness.core.method import METHODS, PruneResult, PruningMethod, register_method
from harness.plugins import list_methods
from harness.core.spec import ModelSpec
from harness.suite.checker import SuiteError, SuiteProblem
from harness.suite.loader import expand, load_suite

FIXTURES = Path(__file__).parent / "fixtures"
BAD = sorted((FIXTURES / "bad_suites").glob("*.yaml"))
NO_HEADER = {"binary_garbage.yaml": ("binary file", None), "zero_bytes.yaml": ("empty file", None)}
GOOD_CELLS = {  # models x (dense per seed + methods x targets x seeds)
    "quickstart.yaml": 2 * (2 + 3 * 3 * 2),
    "dense_only.yaml": 2,
    "anchors.yaml": 2 * 4 * 3,
}


# Stand-ins with the built-in methods' Params, used only for names that ``methods/`` does not
# register (yet), so that these tests need neither torch nor the finished methods package.
@dataclass(frozen=True)
class _NoParams:
    pass


@dataclass(frozen=True)
class _MagnitudeParams:
    scope: Literal["layer", "global"] = "layer"  # threshold per layer or over the whole model


@dataclass(frozen=True)
class _SparseGPTParams:
    blocksize: int = 128  # columns per OBS block
    dampening_frac: float = 0.01  # fraction of mean diag(H) added to the diagonal


STAND_INS = {
    "dense": _NoParams,
    "magnitude": _MagnitudeParams,
    "wanda": _NoParams,
    "sparsegpt": _SparseGPTParams,
}


@pytest.fixture(scope="module", autouse=True)
def builtin_methods():
    missing = [name for name in STAND_INS if name not in list_methods()]
    for name in missing:
        register_method(name)(type(f"StandIn_{name}", (PruningMethod,), {"Params": STAND_INS[name]}))
    yield
    for name in missing:
        METHODS.unregister(name)


def _expectation(path: Path) -> tuple[str, int | None]:
    if path.name in NO_HEADER:
        return NO_HEADER[path.name]
    first, second = path.read_bytes().split(b"\n")[:2]
    expect, line = first.decode().removeprefix("# expect: "), second.decode().removeprefix("# line: ")
    assert first.startswith(b"# expect: ") and second.startswith(b"# line: "), path.name
    return expect, None if line == "none" else int(line)


def _write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def _errors(path: os.PathLike[str] | str) -> SuiteError:
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    return info.value


def test_enough_bad_fixtures():
    assert len(BAD) >= 40


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_suite_reports_file_and_line(path: Path, monkeypatch: pytest.MonkeyPatch):
    expect, line = _expectation(path)
    monkeypatch.chdir(FIXTURES)
    file = f"bad_suites/{path.name}"  # relative, and it must stay exactly so in the messages
    err = _errors(file)  # pytest.raises fails on any other exception type
    text = str(err).splitlines()
    assert len(text) == len(err.problems) >= 1
    for problem, shown in zip(err.problems, text):
        prefix = f"{file}:" if problem.line is None else f"{file}:{problem.line}:"
        assert shown.startswith(prefix + " "), shown
        assert problem.line is not None or line is None, f"only whole-file problems omit the line: {shown}"
    matching = [p for p in err.problems if expect in str(p)]
    assert matching, f"{expect!r} not in:\n{err}"
    assert line in [p.line for p in matching], f"expected line {line}:\n{err}"


def test_file_too_large_is_refused_before_parsing(tmp_path: Path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:  # 50 MB, sparse on disk
        f.truncate(50 * 1000 * 1000)
    err = _errors(path)
    assert str(err) == f"{path}: file is larger than 1 MiB; a suite is a short text file"

    text = tmp_path / "long.yaml"
    text.write_text("name: long\n" + "# padding\n" * 120_000)
    assert "larger than 1 MiB" in str(_errors(text))


def test_missing_file(tmp_path: Path):
    assert str(_errors(tmp_path / "nope.yaml")).startswith(f"{tmp_path / 'nope.yaml'}: cannot read file")


def test_yaml_constructs_never_run_code(tmp_path: Path):
    marker = tmp_path / "pwned"
    for tag in ("!!python/object/apply:os.system", "!!python/object/new:os.system"):
        text = f"name: {tag} ['touch {marker}']\nmodels: [zoo:tiny-llama]\nmethods: [dense]\n"
        path = _write(tmp_path, text)
        assert "is not allowed" in str(_errors(path))
    assert not marker.exists()


def test_all_problems_reported_together(tmp_path: Path):
    path = _write(tmp_path, """
        name: multi
        models:
          - zoo:tiny-lama
          - id: hf:facebook/opt-125m
            dtype: float61
        methods:
          - wandaa
          - name: sparsegpt
            params: {blocksiz: 64, dampening_frac: high}
        targets: [0.5, "5:4"]
        calibration: {dataset: pydoc, n_samples: 0}
        batch_size: -1
    """)
    err = _errors(path)
    assert [(p.line, p.path) for p in err.problems] == [
        (3, "models[0]"),
        (5, "models[1].dtype"),
        (7, "methods[0]"),
        (9, "methods[1].params"),
        (9, "methods[1].params.dampening_frac"),
        (10, "targets[1]"),
        (11, "calibration.n_samples"),
        (12, "batch_size"),
    ]
    assert len(str(err).splitlines()) == 8


def test_error_line_format_matches_the_style_guide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    @dataclass(frozen=True)
    class Params:
        sparsity: float = 0.5  # a field name to misspell

    prune = lambda self, name, weight, stats, target: PruneResult(weight)  # noqa: E731
    register_method("throwaway_sparsity")(type("Throwaway", (PruningMethod,), {"Params": Params, "prune": prune}))
    try:
        (tmp_path / "suites").mkdir()
        _write(tmp_path / "suites", "name: x\n" + "# filler\n" * 7 + textwrap.dedent("""\
            models: [zoo:tiny-opt]
            targets: [0.5]
            methods:
              - dense
              - name: throwaway_sparsity
                params: {sparsty: 0.5}
        """), "x.yaml")
        monkeypatch.chdir(tmp_path)
        assert str(_errors("suites/x.yaml")) == (
            "suites/x.yaml:14: methods[1].params: unknown key 'sparsty' (did you mean 'sparsity'?); "
            "valid keys: sparsity")
    finally:
        METHODS.unregister("throwaway_sparsity")


def test_loader_records_exact_lines():
    doc = _yaml.loads(textwrap.dedent("""\
        # comment
        name: lines
        models:
          - zoo:tiny-llama

          - id: zoo:tiny-opt
            dtype: float32
        targets: [0.5,
                  "2:4"]
        layers: {ignore: [lm_head]}
    """))
    data = doc.data
    assert doc.line == data.line == 2
    assert data.key_lines == {"name": 2, "models": 3, "targets": 8, "layers": 10}
    assert data["models"].line == 4 and data["models"].item_lines == [4, 6]
    assert data["models"][1].line == 6 and data["models"][1].key_lines == {"id": 6, "dtype": 7}
    assert data["targets"].item_lines == [8, 9]
    assert data["layers"].key_lines == {"ignore": 10} and data["layers"]["ignore"].item_lines == [10]


def test_loader_uses_the_yaml_1_2_core_scalars():
    data = _yaml.loads("a: [2:4, on, no, 1e-3, 2024-01-01, 0x10, 1_000, ~, true, .inf, 010]\n").data
    assert data["a"] == ["2:4", "on", "no", 0.001, "2024-01-01", 16, 1000, None, True, float("inf"), "010"]


def test_loader_allows_anchors_and_merge_keys():
    data = _yaml.loads("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\nlist: [*b, *b]\n").data
    assert data["use"] == {"x": 1, "y": 3} and data["list"] == [{"x": 1, "y": 2}] * 2


@pytest.mark.parametrize("name", sorted(GOOD_CELLS))
def test_good_suites_load_and_expand(name: str):
    suite = load_suite(FIXTURES / "good_suites" / name)
    cells = expand(suite)
    assert len(cells) == GOOD_CELLS[name]
    assert len({c.run_id for c in cells}) == len(cells)
    assert suite.text == (FIXTURES / "good_suites" / name).read_text()
    for cell in cells:
        assert cell.suite == suite.name and cell.calibration.seed == cell.seed
        assert (cell.method, cell.params, cell.profile, cell.label) in suite.methods


def test_run_ids_are_stable_and_follow_params(tmp_path: Path):
    source = (FIXTURES / "good_suites" / "quickstart.yaml").read_text()
    path = _write(tmp_path, source)
    first = [c.run_id for c in expand(load_suite(path))]
    assert first == [c.run_id for c in expand(load_suite(path))]

    path.write_text(source.replace("blocksize: 64", "blocksize: 32"))
    changed = expand(load_suite(path))
    assert len(changed) == len(first)
    for old, new in zip(first, changed):
        assert (old != new.run_id) == (new.method == "sparsegpt"), new.method


def test_expand_order_dense_and_resolved_params(tmp_path: Path):
    suite = load_suite(_write(tmp_path, """
        name: order
        models: [zoo:tiny-llama, zoo:tiny-opt]
        methods: [magnitude, dense, {name: sparsegpt, params: {blocksize: 64}}]
        targets: [0.5, "2:4"]
        seeds: [1, 2]
    """))
    cells = expand(suite)
    dense = [c for c in cells if c.method == "dense"]
    assert [(c.model.id, c.seed, c.target) for c in dense] == [
        ("zoo:tiny-llama", 1, "0"), ("zoo:tiny-llama", 2, "0"),
        ("zoo:tiny-opt", 1, "0"), ("zoo:tiny-opt", 2, "0")]
    first_model = [(c.method, c.target, c.seed) for c in cells if c.model.id == "zoo:tiny-llama"]
    assert first_model == [
        ("magnitude", "0.5", 1), ("magnitude", "0.5", 2), ("magnitude", "2:4", 1), ("magnitude", "2:4", 2),
        ("dense", "0", 1), ("dense", "0", 2),
        ("sparsegpt", "0.5", 1), ("sparsegpt", "0.5", 2), ("sparsegpt", "2:4", 1), ("sparsegpt", "2:4", 2)]
    assert cells[0].params == {"scope": "layer"}
    assert cells[-1].params == {"blocksize": 64, "dampening_frac": 0.01}
    assert len(cells) == 2 * (2 + 2 * 2 * 2)


def test_identical_cells_appear_once(tmp_path: Path):
    suite = load_suite(_write(tmp_path, "name: d\nmodels: [zoo:tiny-opt]\nmethods: [dense]\n"))
    twice = replace(suite, models=suite.models * 2, methods=suite.methods * 2)
    assert [c.run_id for c in expand(twice)] == [c.run_id for c in expand(suite)]


def test_seeds(tmp_path: Path):
    one = load_suite(_write(tmp_path, """
        name: s
        models: [zoo:tiny-opt]
        methods: [wanda]
        targets: [0.5]
        calibration: {seed: 7}
    """))
    assert one.seeds == (7,) and [c.calibration.seed for c in expand(one)] == [7]
    many = load_suite(_write(tmp_path, "name: s\nmodels: [zoo:tiny-opt]\nmethods: [wanda]\ntargets: [0.5]\n"
                                       "seeds: [3, 4]\n"))
    assert [(c.seed, c.calibration.seed) for c in expand(many)] == [(3, 3), (4, 4)]


def test_path_models_resolve_against_the_suite_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "suites").mkdir()
    _write(tmp_path / "suites", """
        name: p
        models: [path:ckpt/a, path:sub/../ckpt/b, path:/abs/model]
        methods: [dense]
    """, "p.yaml")
    monkeypatch.chdir(tmp_path)
    suite = load_suite("suites/p.yaml")
    assert suite.path == "suites/p.yaml"
    assert [m.id for m in suite.models] == [
        f"path:{tmp_path / 'suites/ckpt/a'}", f"path:{tmp_path / 'suites/ckpt/b'}", "path:/abs/model"]
    monkeypatch.chdir(tmp_path / "suites")
    assert load_suite("p.yaml").models == suite.models


def test_problem_format():
    assert str(SuiteProblem("a.yaml", None, "", "empty file")) == "a.yaml: empty file"
    assert str(SuiteProblem("a.yaml", 3, "", "m")) == "a.yaml:3: m"
    assert str(SuiteProblem("a.yaml", 3, "models[0]", "m")) == "a.yaml:3: models[0]: m"
    assert ModelSpec("zoo:tiny-opt").dtype == "auto"


def test_validation_does_not_import_torch():
    # `harness validate` must answer fast, so neither this module nor the method registry
    # (imported to resolve method names) may import torch at module level.
    code = (
        "import sys; from harness.suite.loader import load_suite; "
        "load_suite('tests/fixtures/good_suites/quickstart.yaml'); "
        "assert 'torch' not in sys.modules, 'validating a suite imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_messages_are_single_lines():
    for path in BAD:
        try:
            load_suite(path)
        except SuiteError as err:
            assert all(re.match(r"^\S+?(:\d+)?: ", line) for line in str(err).splitlines()), str(err)


SHIPPED = sorted((Path(__file__).parent.parent / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_suite_validates_and_expands(path, monkeypatch):
    """What the README tells users to run must load: a renamed param or dataset breaks it here."""
    monkeypatch.delenv("SPARSEBENCH_IMAGENET", raising=False)
    cells = expand(load_suite(path))
    assert cells and len({c.run_id for c in cells}) == len(cells)
