"""Strings shown to a person: control characters written out as escapes, never sent raw.

A model id, a method's error or a suite name can hold any character. Sent to a terminal as is,
ESC starts an escape sequence (colours, cursor moves, window titles), ``\\r`` overwrites the line,
BEL rings, and bidirectional overrides reorder what is read. :func:`visible` writes each such
character as its Python escape (ESC as ``\\x1b``, CR as ``\\r``, U+202E as ``\\u202e``), so what
is shown is the text as it is, on one line. Pure Python; the CLI's console (``harness.cli.common``)
and every table it prints use it.
"""
from __future__ import annotations

import re

# C0 and C1 controls, DEL, the line and paragraph separators, and the bidirectional formatting
# characters (ALM, LRM, RLM, embeddings/overrides, isolates).
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(char: str) -> str:
    return ascii(char)[1:-1]  # "\x1b" -> \x1b, "\n" -> \n, "\u202e" -> \u202e


def visible(value: object, keep: str = "") -> str:
    """``str(value)`` with every control character (except those in ``keep``) written as its
    escape: ``visible("a\\x1b[31mb")`` is ``a\\x1b[31mb`` with a literal backslash."""
    text = str(value)
    if not CONTROL.search(text):
        return text
    return CONTROL.sub(lambda m: m.group() if m.group() in keep else _escape(m.group()), text)


def has_control(value: str) -> bool:
    """True when ``value`` holds a character :func:`visible` would escape."""
    return CONTROL.search(value) is not None
