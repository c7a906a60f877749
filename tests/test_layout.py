"""The package layout: layer contracts, no import cycles, no private imports, small modules.

These read the source tree (no model, no GPU) and fail on a layout violation, so the default
``python -m pytest`` catches one. The layers themselves are declared in ``pyproject.toml``
(``[tool.importlinter]``) and checked by ``lint-imports``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "methods", "leaderboard")  # ours: the import-linter root packages
MAX_LINES = 400
SOURCE_SUFFIXES = {".py", ".pyi", ".j2", ".html", ".js", ".css", ".yaml", ".yml", ".toml", ".md", ".rst",
                   ".txt", ".cfg", ".ini", ".sh"}


def _py_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------- contracts


def test_import_contracts_hold():
    """``lint-imports`` (the contracts in pyproject.toml) passes."""
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), f"{lint} is missing: pip install -e '.[dev]' (import-linter)"
    proc = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"lint-imports failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


# --------------------------------------------------------------------------- cycles


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with a cycle (size > 1, or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in edges.get(v, ()):
                    found.append(sorted(comp))
    return found


def _cycle_path(edges: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component: a -> b -> ... -> a."""
    members, start = set(comp), comp[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth first from start, back to start
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def test_no_import_cycles():
    """No cycle among the modules of harness, methods, leaderboard.

    Every import grimp sees is an edge: top-level imports, imports inside functions (deferring
    an import does not remove the dependency) and ``if TYPE_CHECKING:`` imports; a package's
    ``__init__`` re-exporting from its submodules is an edge like any other.
    """
    grimp = pytest.importorskip("grimp")
    for pkg in PACKAGES:  # analyse this checkout, not an installed copy
        origin = Path(find_spec(pkg).origin).resolve()
        assert origin.is_relative_to(ROOT), f"{pkg} resolves to {origin}, outside {ROOT}"
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    report = []
    for comp in _strongly_connected(edges):
        cycle = _cycle_path(edges, comp)
        lines = []
        for a, b in zip(cycle, cycle[1:]):
            details = graph.get_import_details(importer=a, imported=b)
            where = "; ".join(f"l.{d['line_number']} {d['line_contents']}" for d in details)
            lines.append(f"    {a} -> {b}  ({where})")
        report.append(f"  cycle among {len(comp)} modules {comp}:\n" + "\n".join(lines))
    assert not report, "import cycles:\n" + "\n".join(report)


# --------------------------------------------------------------------------- private names


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` reads (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def private_imports(files: list[Path]) -> list[str]:
    """``from <ours> import _name`` where the source is another module (dunders are public)."""
    found = []
    for path in files:
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _resolve_from(node, module, path.name == "__init__.py")
            if source.split(".")[0] not in PACKAGES or source == module:
                continue
            for alias in node.names:
                name = alias.name
                if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                    found.append(f"{_rel(path)}:{node.lineno}: from {source} import {name}")
    return found


def test_no_private_names_imported_across_modules():
    found = private_imports(_py_files(*PACKAGES))
    assert not found, "private names imported from another module:\n  " + "\n  ".join(found)


# --------------------------------------------------------------------------- size


def test_modules_stay_small():
    big = [f"{_rel(p)}: {n} lines" for p in _py_files(*PACKAGES)
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines (split them):\n  " + "\n  ".join(big)


# --------------------------------------------------------------------------- citations


def outside_paths(files: list[Path]) -> list[str]:
    """Lines that cite a path outside the checkout: ``../shared`` or an absolute path to it."""
    needles = {"../shared", "/work/", str(ROOT)}
    if ROOT.parent != Path(ROOT.anchor):
        needles.add(str(ROOT.parent).rstrip("/") + "/")  # a sibling of the checkout
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            hits = sorted(n for n in needles if n in line)
            if hits:
                found.append(f"{_rel(path)}:{i}: {hits[0]!r} in {line.strip()[:100]}")
    return found


def test_sources_cite_nothing_outside_the_repository():
    files = sorted(p for d in (*PACKAGES, "benchmarks") for p in (ROOT / d).rglob("*")
                   if p.is_file() and p.suffix in SOURCE_SUFFIXES and not {"__pycache__", ".venv"} & set(p.parts))
    found = outside_paths(files)
    assert not found, "paths outside the repository (cite the paper or a README section):\n  " + \
        "\n  ".join(found)
