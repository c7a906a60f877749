"""The zoo's English corpus: a shipped, deterministic snapshot of stdlib prose.

The text comes from CPython itself, so it is available offline everywhere:

* every entry of ``pydoc_data.topics.topics`` (the language reference topics that
  ``help()`` shows), in sorted key order, and
* every module, class and function docstring longer than 200 characters in the
  stdlib ``.py`` files, found with :mod:`ast` (nothing is imported), in sorted
  path order and then source order.

Both texts change between CPython versions, so :func:`snapshot_corpus` writes them
once into ``data/corpus.jsonl.gz`` and every consumer reads that file instead of
the live stdlib. Splits are by whole document and fixed by position, so they never
depend on a seed:

===============  ==============================================================
``test``         topics ``keys[::10]`` (8 topics, the notes' held-out set)
``validation``   topics ``keys[5::10]``
``calibration``  topics ``keys[7::10]`` plus every 20th docstring (about 75 KB)
``train``        everything else
===============  ==============================================================

A document whose text repeats an earlier one is dropped ("if" repeats the test
topic "else" in CPython 3.11), so no text is in two splits.
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import io
import json
import logging
import sysconfig
from pathlib import Path

logger = logging.getLogger(__name__)

SNAPSHOT_PATH = Path(__file__).resolve().parent / "snapshots" / "corpus.jsonl.gz"
SPLITS = ("train", "calibration", "validation", "test")

MIN_DOCSTRING_CHARS = 200
# Directories of the stdlib whose files are not collected: installed packages, test
# suites (code, not prose) and GUI/legacy tools, as in the tested recipe.
SKIP_DIRS = frozenset(
    {"site-packages", "test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "__pycache__"}
)
_DOCSTRING_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Statements that hold nested statements; expressions never contain docstrings.
_BLOCK_NODES = (ast.stmt, ast.excepthandler, ast.match_case)


def _topic_split(index: int) -> str:
    """Split of the ``index``-th topic in sorted key order."""
    if index % 10 == 0:
        return "test"
    if index % 10 == 5:
        return "validation"
    if index % 10 == 7:
        return "calibration"
    return "train"


def _docstring_split(index: int) -> str:
    """Split of the ``index``-th (deduplicated) docstring; docstrings never go to eval."""
    return "calibration" if index % 20 == 10 else "train"


def _iter_docstrings(path: Path, rel: str):
    """Yield ``(qualname, docstring)`` for every documented node of one file, in source order."""
    try:
        tree = ast.parse(path.read_bytes(), filename=rel)  # bytes: honours coding cookies
    except (SyntaxError, ValueError) as exc:  # a few stdlib files are Python-2 or data
        logger.warning("skipping %s: %s", rel, exc)
        return

    def walk(node: ast.AST, prefix: str):
        if isinstance(node, _DOCSTRING_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield prefix or "<module>", doc
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _DOCSTRING_NODES):
                yield from walk(child, f"{prefix}.{child.name}" if prefix else child.name)
            elif isinstance(child, _BLOCK_NODES):  # if/try/with bodies can hold definitions
                yield from walk(child, prefix)

    yield from walk(tree, "")


def collect_documents(stdlib: Path | None = None) -> list[dict[str, str]]:
    """Collect the corpus documents from the live stdlib, with their splits.

    Args:
        stdlib: The stdlib directory to scan; defaults to the running interpreter's.

    Returns:
        Records ``{"id", "split", "text"}``: all topics first (sorted keys), then the
        docstrings. An exact repeat of an earlier text is dropped, so no text is in two
        splits.
    """
    import pydoc_data.topics  # a plain dict literal of the reference topics

    topics = pydoc_data.topics.topics
    records: list[dict[str, str]] = []
    seen: set[str] = set()  # texts kept so far; a repeat would leak across splits
    for i, key in enumerate(sorted(topics)):  # split by position in the full sorted key list
        if topics[key] in seen:  # e.g. "if" repeats "else" (a test topic) in 3.11
            logger.info("dropping topic %r: same text as an earlier topic", key)
            continue
        seen.add(topics[key])
        records.append({"id": f"topic:{key}", "split": _topic_split(i), "text": topics[key]})

    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    )
    n_docstrings = 0
    ids: dict[str, int] = {}  # occurrences of each id, to keep ids unique
    for path in files:
        rel = path.relative_to(root).as_posix()
        for qualname, doc in _iter_docstrings(path, rel):
            if len(doc) <= MIN_DOCSTRING_CHARS or doc in seen:
                continue
            seen.add(doc)
            doc_id = f"docstring:{rel}:{qualname}"
            ids[doc_id] = ids.get(doc_id, 0) + 1
            if ids[doc_id] > 1:  # e.g. a property's getter and setter, or a conditional def
                doc_id += f"#{ids[doc_id]}"
            split = _docstring_split(n_docstrings)
            records.append({"id": doc_id, "split": split, "text": doc})
            n_docstrings += 1
    n_topics = len(records) - n_docstrings
    logger.info("collected %d topics and %d docstrings from %s", n_topics, n_docstrings, root)
    return records


def snapshot_corpus(path: Path | None = None) -> Path:
    """(Re)build the corpus snapshot from the live stdlib.

    The file is gzip-compressed JSON Lines with a zero mtime and no file name in the
    gzip header, so the same interpreter always writes the same bytes.

    Args:
        path: Where to write; defaults to the shipped ``data/corpus.jsonl.gz``.

    Returns:
        The path written.
    """
    path = Path(path) if path is not None else SNAPSHOT_PATH
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in collect_documents()]
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write("".join(lines).encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)  # atomic: readers never see a half-written snapshot
    _read_snapshot.cache_clear()
    logger.info("wrote corpus snapshot %s (%d documents)", path, len(lines))
    return path


@functools.lru_cache(maxsize=2)
def _read_snapshot(path: Path) -> tuple[dict[str, str], ...]:
    """Parse a snapshot file once per process (about 20 ms, then free)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Corpus snapshot {path} is missing; rebuild it with harness.models.zoo.snapshot_corpus()."
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


def corpus_documents(split: str, path: Path | None = None) -> list[str]:
    """Texts of one split of the shipped snapshot, in snapshot order.

    Args:
        split: One of ``train``, ``calibration``, ``validation``, ``test``.
        path: A snapshot file other than the shipped one (for tests).

    Returns:
        The documents' texts.

    Raises:
        ValueError: If ``split`` is not a known split.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown corpus split {split!r}. Valid splits: {', '.join(SPLITS)}")
    records = _read_snapshot(Path(path) if path is not None else SNAPSHOT_PATH)
    return [r["text"] for r in records if r["split"] == split]


def corpus_sha256(path: Path | None = None) -> str:
    """SHA-256 (hex) of the snapshot file's bytes; it identifies the corpus in manifests."""
    return hashlib.sha256(Path(path or SNAPSHOT_PATH).read_bytes()).hexdigest()
