"""The ``harness`` command: argparse subcommands and terminal presentation (the only code that prints)."""
from harness.cli.main import main

__all__ = ["main"]
