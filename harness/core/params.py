"""Method hyper-parameters: a frozen ``Params`` dataclass built from a suite mapping.

Every problem is collected (unknown keys with a did-you-mean, wrong types, the dataclass's own
``__post_init__``/``validate`` checks) into one :class:`ParamsError` of ``(key, message)`` pairs,
so the suite loader can point at each key's line.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any, Literal

from harness.core.registry import key_hint


class ParamsError(ValueError):
    """A params mapping that does not fit a method's ``Params`` dataclass."""

    def __init__(self, problems: list[tuple[str, str]]):
        # (key or "", message) pairs so the suite loader can point at the right line
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" if k else m for k, m in problems))


def _check_type(value: Any, annotation: Any) -> bool:
    """A small runtime check for the field types Params use (bool/int/float/str/Literal/Optional)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def build_params(cls: type, raw: dict[str, Any] | None) -> Any:
    """Build ``cls.Params`` from a mapping, collecting every problem into one ParamsError."""
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    hints = typing.get_type_hints(cls.Params, vars(sys.modules[cls.Params.__module__]))
    problems: list[tuple[str, str]] = []
    for key in raw:
        if key not in fields:
            valid = ", ".join(fields) or "none"
            problems.append((str(key), f"unknown key '{key}'{key_hint(key, list(fields))}; valid keys: {valid}"))
    for key, value in raw.items():
        if key in fields and not _check_type(value, hints.get(key, Any)):
            problems.append((key, f"expected {_describe(hints.get(key))}, got {value!r}"))
    if problems:
        raise ParamsError(problems)
    try:
        params = cls.Params(**{k: (float(v) if hints.get(k) is float else v) for k, v in raw.items()})
        check = getattr(params, "validate", None)
        if callable(check):
            check()
    except (ValueError, TypeError) as exc:  # __post_init__ or validate() rejected the values
        raise ParamsError([("", str(exc))]) from None
    return params


OMIT_AT_DEFAULT = "sparsebench_omit_at_default"  # dataclass field metadata key, see added_param


def added_param(default: Any) -> Any:
    """A ``Params`` field added after results were stored: left out of the resolved params (and so
    of every run id) while it holds its default, so a stored cell that the default reproduces keeps
    its id; set to anything else, it is an ordinary param (in the id and the variant's name)."""
    return dataclasses.field(default=default, metadata={OMIT_AT_DEFAULT: True})


def params_dict(params: Any) -> dict[str, Any]:
    """The resolved params (defaults filled in) as a plain dict, for specs and records; an
    :func:`added_param` at its default is left out."""
    out = dataclasses.asdict(params)
    for f in dataclasses.fields(params):
        if f.metadata.get(OMIT_AT_DEFAULT) and out[f.name] == f.default:
            del out[f.name]
    return out
