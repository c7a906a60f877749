"""The frozen table model the templates lay out: :class:`Cell`, :class:`Column`, :class:`Row`,
:class:`Table`, and the small formatting helpers every page shares.

Every number is decided before rendering: what a cell holds (``value``), what it shows
(``display``, ``note``) and how it sorts (``sort_key``), so the HTML cannot compute anything wrong
(HELM's ``presentation/table.py``, coverage.py's ``html.py``).
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Literal

# Model-family keywords, searched in the model name; the earliest match wins.
FAMILIES = ("llama", "opt", "mistral", "mixtral", "qwen", "phi", "gemma", "gpt2", "gpt-neox",
            "gptj", "pythia", "bloom", "falcon", "olmo", "resnet", "vit", "deit", "convnext",
            "efficientnet", "mobilenet", "swin", "bert")
_SIZE_SUFFIX = re.compile(r"[-_.]?\d+(\.\d+)?[bmk]\b.*$", re.IGNORECASE)

SortKey = float | str | None


@dataclass(frozen=True)
class Link:
    text: str
    href: str  # relative to the site root
    title: str = ""


@dataclass(frozen=True)
class Cell:
    """One table cell.

    Attributes:
        value: The raw value (a float, a string or None), for tests and data export.
        display: The text shown.
        sort_key: What the column sorts by; None sorts last in either direction.
        title: Tooltip text (per-seed values, stderr, error message, the test behind a mark).
        href: A relative link, or None.
        css: Extra CSS classes (``"failed"``, ``"best"``, ``"lead"``).
        note: Small text after the display (``n=3``, ``+2.1 %``, a parameter count).
        badge: A tag after the display (a third-party method's ``dist version``, ``reported``).
        links: Several links instead of ``href`` (one per seed's run).
    """

    value: float | str | None
    display: str
    sort_key: SortKey
    title: str = ""
    href: str | None = None
    css: str = ""
    note: str = ""
    badge: str = ""
    links: tuple[Link, ...] = ()


@dataclass(frozen=True)
class Column:
    """A column header.

    Attributes:
        key: Stable identifier, used in ``data-col``.
        label: Header text.
        kind: ``"num"`` sorts numerically, ``"text"`` alphabetically.
        better: ``"asc"`` / ``"desc"``: the first click sorts best first; ``""`` for text.
        title: Header tooltip.
        secondary: Folded away until the reader asks for every column (the table fits 1400 px).
    """

    key: str
    label: str
    kind: Literal["num", "text"] = "text"
    better: Literal["asc", "desc", ""] = ""
    title: str = ""
    secondary: bool = False


@dataclass(frozen=True)
class Row:
    """A row: ``kind`` is ``"run"`` (reproduced here, seeds aggregated), ``"reported"`` (a paper's
    number) or ``"missing"`` (the empty reproduced slot beside a reported number)."""

    id: str  # the first run id, or the reported row's source
    model: str
    method: str  # the method's registered name (the filter)
    variant: str
    target: str
    status: str
    kind: Literal["run", "reported", "missing"]
    suites: tuple[str, ...]
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class StandingRow:
    variant: str
    cells: int  # (model, target) cells where the variant has a row
    failed: int  # of those, cells with a failed seed
    mean_rank: float | None  # over cells, failures ranked last; 1 = best
    recovery: tuple[float | None, ...]  # mean recovery % per recovery metric of the table, ok cells only
    wins: int  # cells where it holds a significant best mark on the ranked metric


@dataclass(frozen=True)
class Standing:
    """A method's overall standing in one table: one number per variant (mean rank)."""

    metric: str  # the ranked metric's label
    recovery_labels: tuple[str, ...]
    rows: tuple[StandingRow, ...]
    cells: int  # (model, target) cells ranked


@dataclass(frozen=True)
class Table:
    id: str  # HTML id, unique within the page
    title: str
    family: str
    protocol: str  # the protocol's label
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    methods: tuple[str, ...]  # filter choices, sorted
    standing: Standing | None = None
    overview: str | None = None  # the recovery-vs-sparsity plot's file
    runs: int = 0  # reproduced runs in the table (0: published numbers only)
    key: str = ""  # the protocol's key ("" for published numbers without runs)

    def column(self, key: str) -> int:
        """Index of the column with ``key``."""
        return next(i for i, c in enumerate(self.columns) if c.key == key)

    @property
    def suites(self) -> tuple[str, ...]:
        return tuple(sorted({s for r in self.rows for s in r.suites}))

    @property
    def reported(self) -> int:
        return sum(r.kind == "reported" for r in self.rows)


# ---------------------------------------------------------------------------- helpers


def slug(text: str, *, hashed: bool = True) -> str:
    """A file-name-safe slug; with ``hashed``, a short hash keeps distinct names distinct."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "x"
    if not hashed:
        return base
    return f"{base}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def model_family(model_id: str) -> str:
    """``hf:meta-llama/Llama-2-7b-hf`` -> ``llama``; unknown names lose their size suffix."""
    name = model_id.split(":", 1)[-1].rsplit("/", 1)[-1].lower()
    hits = [(name.find(f), -len(f), f) for f in FAMILIES if f in name]
    if hits:
        return min(hits)[2]
    return _SIZE_SUFFIX.sub("", name) or name


def model_href(model: str) -> str:
    return f"models/{slug(model)}.html"


def run_href(run_id: str) -> str:
    return f"runs/{run_id}.html"


def num_sort(v: float | None) -> SortKey:
    # One key cannot put a NaN (a diverged run) at the bad end in both sort directions, so
    # it sorts last, like a missing value; its cell still shows "nan".
    return None if v is None or not math.isfinite(v) else v


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def fmt_count(n: int | None) -> str:
    """A parameter count: ``812k``, ``125M``, ``6.74B``."""
    if n is None:
        return ""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.3g}{unit}"
    return str(n)


def origin_badge(origin: str | None) -> str:
    """``sb-random==0.0.1`` -> ``sb-random 0.0.1``; built-in methods get none."""
    if not origin or origin == "builtin":
        return ""
    return origin.replace("==", " ")
