"""The CLI's rich console: every string it prints is text, never markup, with control characters shown.

Model ids, method names, errors raised by plugins and whatever a results store holds reach the
terminal through tables, progress bars and one-line notes. Read as rich markup, ``path:/m[/x]``
raises ``MarkupError`` and ``[bold]`` vanishes; sent raw, an ESC byte recolours the terminal.
:class:`SafeConsole` turns markup and emoji codes off (a caller may still pass ``markup=True``
for a constant string), and writes every control character as its escape
(:func:`harness.core.visible.visible`): in every string it renders (``render_str``: print
arguments, table cells, titles, captions) and, as a last guard, in every segment it renders
(``Text`` objects built elsewhere). :func:`text` builds a ``Text`` from any value for a table
cell, a progress description or one part of a styled line.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.segment import Segment
from rich.text import Text

from harness.core.visible import visible


class SafeConsole(Console):
    """A ``rich.console.Console`` that shows strings as they are (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        kwargs.setdefault("highlight", False)
        super().__init__(**kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:  # type: ignore[override]
        # keep "\n": the console's own strings break lines on purpose; data goes through text()
        return super().render_str(visible(text, keep="\n"), **kwargs)

    def render(self, renderable: Any, options: Any = None):  # type: ignore[override]
        for segment in super().render(renderable, options):
            if not segment.control and segment.text:
                shown = visible(segment.text, keep="\n")
                if shown != segment.text:
                    segment = Segment(shown, segment.style)
            yield segment


def text(value: Any, style: str = "") -> Text:
    """``value`` as a ``Text`` shown exactly as it is: no markup, control characters (newlines
    too) written as escapes. For every string that comes from a suite, a store or a plugin."""
    return Text(visible(value), style=style)
