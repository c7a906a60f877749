"""What every command shares: exit codes, the default database, the console and one-line errors."""
from __future__ import annotations

import os
import sys

EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_DB = "results/sparsebench.duckdb"


def make_console(stderr: bool = False):
    """A rich console (imported here, not at startup); 160 columns when not a terminal."""
    from rich.console import Console

    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 160  # logs and pipes: do not squeeze tables into 80 columns
    return out


def store_problem(err: Exception) -> int:
    """A results database that is busy, of another schema, or not one: one line, exit 2."""
    print(err, file=sys.stderr)
    return EXIT_BAD_INPUT


def no_db(db: str) -> int:
    """No results database at ``db``: one line naming the command that makes one, exit 2."""
    print(f"no results database at {db}; run a suite first (harness run SUITE --db {db})",
          file=sys.stderr)
    return EXIT_BAD_INPUT
