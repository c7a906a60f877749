"""The machinery of suite checking: ``Checker`` collects every ``SuiteProblem`` of one file.

A check is a function ``(checker, value, path, line) -> checked value``: it reports what is
wrong through the checker and goes on, so one pass finds every problem (HELM's
collect-then-raise). This module holds the checker, the problem and error types, and the
generic checks (integers, strings, numbers, regexes); the suite's own fields are checked in
:mod:`harness.suite.schema`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from harness.core.registry import key_hint, unknown_message
from harness.core.visible import visible
from harness.suite.lines import LineDict, LineList

MAX_MESSAGE = 1000  # characters; a message quotes user input, which may be huge

# Upper bounds of the sizes a suite gives (README "Suite bounds"): far above any published
# protocol, far below what exhausts a machine, so a typo fails validation instead of a worker.
MAX_SAMPLES = 1_000_000  # calibration n_samples
MAX_SEQLEN = 1 << 20  # tokens per window: calibration and perplexity seqlen, lm_eval max_length
MAX_CALIBRATION_TOKENS = 1 << 30  # n_samples x seqlen
MAX_BATCH = 1 << 16  # batch_size, lm_eval batch_size
MAX_SEED = 2**31 - 1  # seeds, calibration.seed
MAX_ITEMS = 10_000_000  # evaluated items: perplexity max_windows, lm_eval limit, image-eval limit
MAX_ROUNDS = 1_000  # calibration augment_rounds
MAX_FEWSHOT = 1_000  # lm_eval num_fewshot
MAX_PARAM_INT = 2**31 - 1  # any integer a method's params take (|value|)


@dataclass(frozen=True)
class SuiteProblem:
    """One thing wrong with a suite: where (file, 1-based line, path in the data) and what."""

    file: str
    line: int | None  # None for whole-file problems (unreadable, too large, binary, empty)
    path: str  # e.g. "methods[1].params"; "" for the document itself
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:" if self.line is not None else f"{self.file}:"
        text = f"{where} {self.path}: {self.message}" if self.path else f"{where} {self.message}"
        text = visible(text)  # one line per problem, no control character reaches the terminal
        return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class SuiteError(Exception):
    """Every problem found in a suite; ``str`` gives one ``file:line: path: message`` line each."""

    def __init__(self, problems: Iterable[SuiteProblem]):
        self.problems = sorted(problems, key=lambda p: p.line or 0)  # stable: same-line order kept
        super().__init__("\n".join(str(p) for p in self.problems))


def describe(value: Any) -> str:
    """What a check got, for "expected X; got Y" messages: a kind for containers, else a short repr."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def unknown_key_message(key: Any, valid: Iterable[str]) -> str:
    """``unknown key 'x' (did you mean 'y'?); valid keys: a, b`` (keys in schema order)."""
    valid = list(valid)
    return f"unknown key '{key}'{key_hint(key, valid)}; valid keys: {', '.join(valid)}"


def key_line(mapping: LineDict, key: str) -> int:
    """The line of ``key`` as written in ``mapping`` (matched by ``str``: ``1:`` is an int key)."""
    return next((ln for k, ln in mapping.key_lines.items() if str(k) == key), mapping.line)


# A check takes (checker, value, path, line), reports what is wrong and returns the checked value.
Check = Callable[["Checker", Any, str, int], Any]


class Checker:
    """Collects the problems (and warnings) of one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[SuiteProblem] = []
        self.warnings: list[SuiteProblem] = []

    def err(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(SuiteProblem(self.file, line, path, message))

    def warn(self, line: int | None, path: str, message: str) -> None:
        self.warnings.append(SuiteProblem(self.file, line, path, message))

    def record(self, value: Any, path: str, line: int, schema: dict[str, Check], required: Iterable[str] = (),
               expected: str = "") -> dict[str, Any] | None:
        """Check a mapping against ``schema``: the checked values of the keys present, or None if
        anything inside it was wrong. Every key is checked, so all of its problems are reported."""
        if not isinstance(value, LineDict):
            expected = expected or f"a mapping with keys {', '.join(schema)}"
            self.err(line, path, f"expected {expected}; got {describe(value)}")
            return None
        before = len(self.problems)
        for key in value:
            if key not in schema:
                self.err(value.key_lines[key], path, unknown_key_message(key, schema))
        for key in required:
            if key not in value:
                self.err(value.line, path, f"missing required key '{key}'")
        out = {key: check(self, value[key], f"{path}.{key}" if path else key, value.key_lines[key])
               for key, check in schema.items() if key in value}
        return out if len(self.problems) == before else None

    def items(self, value: Any, path: str, line: int, what: str, check: Check, allow_empty: bool = False,
              key: Callable[[Any], Any] = lambda v: v) -> list[Any]:
        """Check a list item by item; items equal (by ``key``) to an earlier one are reported."""
        if not isinstance(value, LineList):
            self.err(line, path, f"expected a list of {what}s; got {describe(value)}")
            return []
        if not value and not allow_empty:
            self.err(line, path, f"empty list; at least one {what} is needed")
        out, first = [], {}
        for i, item in enumerate(value):
            before = len(self.problems)
            out.append(check(self, item, f"{path}[{i}]", value.item_lines[i]))
            if len(self.problems) == before:
                j = first.setdefault(key(out[-1]), i)
                if j != i:
                    self.err(value.item_lines[i], f"{path}[{i}]", f"duplicate of {path}[{j}]")
        return out

    def integer(self, value: Any, path: str, line: int, minimum: int, maximum: int | None = None) -> int | None:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.err(line, path, f"expected an integer {bound}; got {describe(value)}")
        elif maximum is not None and value > maximum:
            self.err(line, path, f"expected an integer {bound} and at most {maximum:,} (the limit); "
                                 f"got {describe(value)}")
        return value

    def string(self, value: Any, path: str, line: int) -> str | None:
        if not isinstance(value, str):
            self.err(line, path, f"expected a string; got {describe(value)}")
        return value

    def boolean(self, value: Any, path: str, line: int) -> bool | None:
        if not isinstance(value, bool):
            self.err(line, path, f"expected true or false; got {describe(value)}")
        return value

    def choice(self, value: Any, path: str, line: int, choices: list[str], kind: str) -> str | None:
        if isinstance(self.string(value, path, line), str) and value not in choices:
            self.err(line, path, unknown_message(kind, value, choices))
        return value


# ------------------------------------------------------------------------- generic checks


def int_at_least(minimum: int) -> Check:
    """An integer ``>= minimum``."""
    return lambda ck, value, path, line: ck.integer(value, path, line, minimum)


def int_in(minimum: int, maximum: int) -> Check:
    """An integer in ``[minimum, maximum]``; the message names the limit."""
    return lambda ck, value, path, line: ck.integer(value, path, line, minimum, maximum)


def check_str(ck: Checker, value: Any, path: str, line: int) -> Any:
    return ck.string(value, path, line)


def check_bool(ck: Checker, value: Any, path: str, line: int) -> Any:
    return ck.boolean(value, path, line)


def check_optional_int(ck: Checker, value: Any, path: str, line: int) -> Any:
    """null, or an integer > 0."""
    return None if value is None else ck.integer(value, path, line, 1)


def optional_int_in(maximum: int) -> Check:
    """null, or an integer in ``[1, maximum]``."""
    return lambda ck, value, path, line: None if value is None else ck.integer(value, path, line, 1, maximum)


def number_in(low: float, high: float) -> Check:
    """A number in ``[low, high)``, returned as a float."""
    def check(ck: Checker, value: Any, path: str, line: int) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
            ck.err(line, path, f"expected a number in [{low:g}, {high:g}); got {describe(value)}")
            return None
        return float(value)
    return check


def check_regex(ck: Checker, value: Any, path: str, line: int) -> Any:
    """A string that compiles as a regular expression."""
    if isinstance(ck.string(value, path, line), str):
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError) as exc:  # deep nesting, huge repeat counts
            ck.err(line, path, f"invalid regex '{value}': {exc}")
    return value
