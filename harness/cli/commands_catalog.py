"""``harness ls`` (the methods, model sources and datasets a suite can name) and ``harness zoo
build`` (train the offline zoo models)."""
from __future__ import annotations

from pathlib import Path

from harness.cli.common import EXIT_OK, make_console


def cmd_ls(args) -> int:
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    if args.what == "methods":
        import dataclasses

        from harness.core.method import METHODS
        from harness.plugins import list_methods

        list_methods()
        table.add_column("method"), table.add_column("params (defaults)"), table.add_column("origin")
        for e in METHODS:
            params = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(e.obj.Params()).items())  # every field
            table.add_row(e.name, params or "-", e.origin)
    elif args.what == "models":
        from harness.core.ids import LM_ZOO_NAMES, SOURCES, VISION_ZOO_NAMES

        table.add_column("model id"), table.add_column("what")
        for z in LM_ZOO_NAMES:
            table.add_row(f"zoo:{z}", "tiny offline LM trained by sparsebench on stdlib English text")
        for z in VISION_ZOO_NAMES:
            table.add_row(f"zoo:{z}", "tiny offline image classifier (timm) trained by sparsebench on sklearn digits")
        from harness.core.problems import PROBLEMS

        for name, what in PROBLEMS.items():
            table.add_row(f"synthetic:{name}", what)
        for src, what in SOURCES.items():
            if src not in ("zoo", "synthetic"):
                table.add_row(f"{src}:...", what)
    else:
        from harness.data.text import DATASETS

        table.add_column("dataset"), table.add_column("what")
        for name, what in sorted(DATASETS.items()):
            table.add_row(name, what)
    make_console().print(table)
    return EXIT_OK


def cmd_zoo(args) -> int:
    from harness.models import zoo
    from harness.cli.report import step_progress

    console = make_console()
    if args.snapshot:
        path = zoo.snapshot_corpus()
        console.print(f"corpus snapshot written: {path}")
    names = [args.name] if args.name else list(zoo.ZOO_MODELS)
    for name in names:
        out = Path(args.out) / name if args.out else zoo.shipped_dir(name)
        with step_progress(console, f"training zoo:{name}") as cb:
            path = zoo.build_model(name, out, steps=args.steps, progress=cb)
        console.print(f"zoo:{name} written to {path} (sha256 {zoo.checkpoint_sha256(path)[:16]})")
    return EXIT_OK
