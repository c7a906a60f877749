"""The plugin example as a user meets it, and the README's "Write a method" code, executed.

``examples/sparsebench-random`` is built from source and installed with pip into a scratch
folder (never into the test environment), then ``harness`` runs its suite with that folder on
``PYTHONPATH``: the method must be found through its ``sparsebench.methods`` entry point and
recorded as ``sparsebench-random==0.1.0``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from harness import prune_weight
from harness.core.method import METHODS
from harness.core.target import Target

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sparsebench-random"
SUITE = "examples/sparsebench-random/suite.yaml"  # relative to the repository, as the README has it
ORIGIN = "sparsebench-random==0.1.0"
# the console script `harness` (pyproject: harness = "harness.cli:main"), under this interpreter
HARNESS = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())"]


def pip_install(src: Path, site: Path) -> str:
    """``pip install --no-deps --target site src``, a build from source; returns pip's output.

    Without build isolation when setuptools is importable here (no network); otherwise pip
    fetches the build backend from the package index, as a user's pip would.
    """
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
           "--target", str(site), str(src)]
    tries = [cmd[:4] + ["--no-build-isolation"] + cmd[4:]] if importlib.util.find_spec("setuptools") else []
    log = ""
    for args in [*tries, cmd]:
        out = subprocess.run(args, capture_output=True, text=True, timeout=300)
        log += f"$ {' '.join(args)}\n{out.stdout}{out.stderr}"
        if out.returncode == 0:
            return log
    pytest.fail(f"pip could not install {src}:\n{log}")


def run_harness(*args: str, site: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "COLUMNS": "250"}  # `ls` prints a table: wide enough that no cell wraps
    return subprocess.run([*HARNESS, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example installed as a user would, from a copy of the checkout (pip builds in the
    source folder, and its build/ and *.egg-info must not land in the repository)."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "sparsebench-random"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip_install(src, tmp / "site")
    assert (tmp / "site" / "sparsebench_random" / "__init__.py").exists()
    return tmp / "site"


def test_example_suite_runs_with_the_installed_plugin(installed):
    db = installed.parent / "db.duckdb"
    out = run_harness("run", SUITE, "--db", str(db), "--offline", site=installed)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr

    from harness.store.index import Store

    rows = Store(db).query("SELECT method, status, run_id FROM runs ORDER BY method")
    assert [(m, s) for m, s, _ in rows] == [("dense", "ok"), ("random", "ok")]
    record = json.loads((db.parent / "runs" / rows[1][2] / "record.json").read_text())
    assert record["status"] == "ok" and record["method"] == "random"
    assert record["environment"]["method_origin"] == ORIGIN
    assert record["spec"]["params"] == {"seed": 0}
    assert record["sparsity"]["global"] == pytest.approx(0.5, abs=1e-3)
    assert all(layer["sparsity"] == 0.5 for layer in record["layers"])  # exactly half of every row


def test_ls_lists_the_plugin_with_its_origin(installed):
    out = run_harness("ls", "methods", site=installed)
    assert out.returncode == 0, out.stderr
    line = next((ln for ln in out.stdout.splitlines() if re.search(r"\brandom\b", ln)), "")
    assert "seed=0" in line and ORIGIN in line, out.stdout


def test_random_method_is_deterministic_per_row_and_nm(installed):
    """The plugin's own contract, through its entry point: exact count per row, N:M groups,
    the same masks for the same seed and layer, different ones otherwise, weight untouched."""
    code = r"""
import torch
from harness import prune_weight
from harness.core.method import METHODS

w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
before = w.clone()
a = prune_weight("random", w, target=0.5)
assert torch.equal(w, before), "the weight was mutated"
assert ((a == 0).sum(1) == 32).all(), "not exactly half of every row"
assert torch.equal(a, prune_weight("random", w, target=0.5)), "not deterministic"
assert not torch.equal(a, prune_weight("random", w, target=0.5, seed=1)), "seed ignored"
from harness.core.target import Target
m = METHODS.get("random")()  # a different layer name draws a different mask
assert not torch.equal(m.prune("a", w, None, Target(0.5)).weight, m.prune("b", w, None, Target(0.5)).weight)
nm = prune_weight("random", w, target="2:4")
assert ((nm == 0).reshape(16, 16, 4).sum(-1) == 2).all(), "breaks 2:4"
assert torch.equal(nm[nm != 0], w[nm != 0]), "kept weights changed"
assert METHODS.entry("random").origin == "sparsebench-random==0.1.0", METHODS.entry("random").origin
print("ok")
"""
    pythonpath = os.pathsep.join(filter(None, [str(installed), os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": pythonpath})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_example_method_module_is_short_and_imports_only_harness_core():
    text = (EXAMPLE / "sparsebench_random" / "__init__.py").read_text()
    assert len(text.splitlines()) <= 30
    imports = re.findall(r"^(?:from|import) ([\w.]+)", text, flags=re.M)
    assert all(m.startswith("harness.core") or m in {"dataclasses", "zlib"} for m in imports), imports


# --- the README's "Write a method" -------------------------------------------------------------------


def readme_block(tag: str) -> str:
    """The fenced code block right after ``<!-- test: TAG -->`` in README.md."""
    text = (REPO / "README.md").read_text()
    found = re.findall(rf"<!-- test: {re.escape(tag)} -->\n```\w*\n(.*?)```", text, flags=re.S)
    assert len(found) == 1, f"README.md: expected one code block marked {tag!r}, found {len(found)}"
    return found[0]


@contextmanager
def readme_module(tag: str, renames: dict[str, str] | None = None) -> Iterator[types.ModuleType]:
    """Run a README snippet as the module file it stands for, with each ``register_method(name)``
    renamed to a test name in ``renames``; unregistered and forgotten afterwards."""
    code = readme_block(tag)
    for name, test_name in (renames or {}).items():
        decorator = f'@register_method("{name}")'
        assert decorator in code, f"README block {tag!r} no longer registers {name!r}"
        code = code.replace(decorator, f'@register_method("{test_name}")')
    module = types.ModuleType(f"tests.{tag.replace('-', '_')}")
    sys.modules[module.__name__] = module  # the Params type hints are resolved in their module
    try:
        exec(compile(code, f"README.md:{tag}", "exec", dont_inherit=True), module.__dict__)
        yield module
    finally:
        sys.modules.pop(module.__name__, None)
        for test_name in (renames or {}).values():
            METHODS.unregister(test_name)


def test_readme_prune_weight_block():
    with readme_module("readme-prune-weight") as snippet:
        w, pruned = snippet.W, snippet.w_pruned
    assert pruned.shape == w.shape and ((pruned == 0).reshape(64, 32, 4).sum(-1) >= 2).all()


@pytest.fixture
def hessian():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=g) * torch.linspace(0.1, 3.0, 32)  # (n, d_in), unequal features
    return torch.randn(8, 32, generator=g), x.T @ x / x.shape[0]


def test_readme_layer_method_block(hessian):
    w, h = hessian
    with readme_module("readme-layer-method", {"my_wanda": "test_readme_my_wanda"}):
        before = w.clone()
        pruned = prune_weight("test_readme_my_wanda", w, hessian=h, target=0.5)
        assert torch.equal(w, before)
        assert ((pruned == 0).sum(1) == 16).all()
        # with power 1 the example is Wanda, exactly
        assert torch.equal(pruned, prune_weight("wanda", w, hessian=h, target=0.5))
        assert torch.equal(prune_weight("test_readme_my_wanda", w, hessian=h, target="2:4"),
                           prune_weight("wanda", w, hessian=h, target="2:4"))
        assert not torch.equal(pruned, prune_weight("test_readme_my_wanda", w, hessian=h, target=0.5, power=0.0))
    assert "test_readme_my_wanda" not in METHODS


def test_readme_model_method_block():
    from conftest import tiny_model

    from harness.drivers.model_level import prune_model_lm
    from harness.plugins import get_method

    with readme_module("readme-model-method", {"my_gradual": "test_readme_my_gradual"}) as snippet:
        cls = get_method("test_readme_my_gradual")
        assert cls is snippet.MyGradual
        model = tiny_model("llama")
        tokens = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
        res = prune_model_lm(model, tokens, cls(), Target(0.5), batch_size=4)
        layers = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
        assert len(res.reports) == len(layers) == 14
        assert all(float((m.weight == 0).float().mean()) == 0.5 for m in layers)
        assert [(s["name"], s["step"]) for s in res.series] == [("my_gradual/loss", 1), ("my_gradual/loss", 2)]


def test_readme_plugin_blocks_match_the_example():
    """The README's entry point is the example's, and its commands are what the tests above run."""
    pyproject = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    readme = tomllib.loads(readme_block("readme-plugin-entry-point"))
    assert readme["project"]["entry-points"] == pyproject["project"]["entry-points"]
    assert f"{pyproject['project']['name']}=={pyproject['project']['version']}" == ORIGIN
    commands = readme_block("readme-plugin-run").splitlines()
    assert commands == ["pip install ./examples/sparsebench-random", f"harness run {SUITE}"]
