"""A lazy ``torch``: method modules import it at the top, torch loads on first attribute use.

Importing a method module only to read its ``Params`` (``harness validate``, ``harness ls``)
then costs milliseconds instead of the ~2 s of ``import torch``.
"""
from __future__ import annotations

import importlib
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
