"""Lazy imports: a ``torch`` that loads on first attribute use, and package facades whose names load
on first use.

Importing a method module only to read its ``Params`` (``harness validate``, ``harness ls``)
then costs milliseconds instead of the ~2 s of ``import torch``; importing ``harness.store`` does
not import duckdb.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


torch: Any = _LazyModule("torch")


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``exports[name]`` (the defining module)
    when ``name`` is first read: ``__getattr__ = lazy_exports(__name__, _EXPORTS)``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__
