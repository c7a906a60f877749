"""What every command shares: exit codes, the default database, the console and one-line errors.

Everything the CLI prints goes through :func:`make_console` (a :class:`~harness.cli.console.SafeConsole`:
strings are text, never markup, control characters escaped) or :func:`eprint` (plain lines to
stderr, control characters escaped).
"""
from __future__ import annotations

import os
import sys

from harness.core.visible import CONTROL, visible

EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_DB = "results/sparsebench.duckdb"


def make_console(stderr: bool = False):
    """A rich console that prints every string as text (imported here, not at startup); 160
    columns when not a terminal."""
    from harness.cli.console import SafeConsole

    out = SafeConsole(stderr=stderr)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 160  # logs and pipes: do not squeeze tables into 80 columns
    return out


def eprint(message: object) -> None:
    """``message`` to stderr, each of its lines with control characters written as escapes."""
    for line in str(message).split("\n"):
        print(visible(line), file=sys.stderr)


def stdout_data(data: str, fmt: str) -> str:
    """An export's text for stdout (``--out -``), with no control character left raw. JSON: as
    ``\\u`` escapes, so the data is unchanged; CSV, which has no escapes: as :func:`visible`
    text (``\\x1b``). Newlines stay (they end CSV rows and may be inside quoted values)."""
    if fmt == "json":
        return CONTROL.sub(lambda m: m.group() if m.group() == "\n" else f"\\u{ord(m.group()):04x}", data)
    return visible(data, keep="\n")


def store_problem(err: Exception) -> int:
    """A results database that is busy, of another schema, or not one: one line, exit 2."""
    eprint(err)
    return EXIT_BAD_INPUT


def no_db(db: str) -> int:
    """No results database at ``db``: one line naming the command that makes one, exit 2."""
    eprint(f"no results database at {db}; run a suite first (harness run SUITE --db {db})")
    return EXIT_BAD_INPUT
