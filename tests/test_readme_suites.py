"""Every YAML block in the README validates (issue 14): a block with ``name:`` is a whole suite;
any other block is a fragment, validated inside a minimal suite whose keys it replaces."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from harness.suite.loader import load_suite

README = Path(__file__).resolve().parents[1] / "README.md"
BASE = {"name": "readme_fragment", "models": ["zoo:tiny-llama"], "methods": ["magnitude"], "targets": [0.5]}
# A fragment may name files only the reader has (an ImageNet folder, a checkpoint): those problems,
# and only those, are the reader's to fix.
READERS_FILES = re.compile(r"(does not exist|not found|no such file|is not a folder|cannot be read)", re.I)


def blocks() -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```ya?ml\n(.*?)```", text, re.S)]


def test_the_readme_has_yaml_blocks():
    assert len(blocks()) >= 5


@pytest.mark.parametrize("line,block", blocks(), ids=[f"README.md:{n}" for n, _ in blocks()])
def test_readme_yaml_block_validates(tmp_path, line, block):
    data = yaml.safe_load(block)
    assert isinstance(data, dict), f"README.md:{line}: not a YAML mapping"
    suite = data if "name" in data else {**BASE, **data}
    if "name" not in data and any(str(m).startswith("synthetic:") for m in data.get("models", [])):
        suite.pop("targets")
    path = tmp_path / "block.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    try:
        load_suite(path)
    except Exception as exc:  # SuiteError: one line per problem
        problems = [p for p in str(exc).splitlines() if p.strip() and not READERS_FILES.search(p)]
        assert not problems, f"README.md:{line}: " + "\n".join(problems)
