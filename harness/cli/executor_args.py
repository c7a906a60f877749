"""``harness run``'s executor flags and its Ctrl-C handling (kept apart to keep cli.py short).

Imports nothing heavy: ``harness --help`` stays fast.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    """``--executor``, ``--jobs`` and the Slurm flags of ``harness run``."""
    x = parser.add_argument_group(
        "where cells run", "Ctrl-C once: finish the cells in flight, then stop; twice: stop now. "
        "Rerunning the same command runs only what is missing.")
    x.add_argument("--executor", choices=["local", "inline", "slurm"], default="local",
                   help="local (default): worker processes on this machine, so a crash (OOM, segfault, "
                   "CUDA error) fails only its cell; inline: in this process (debugging); slurm: one "
                   "Slurm array task per cell via submitit (pip install 'sparsebench[slurm]')")
    x.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="local: N cells at once, one worker process each; with GPUs, worker i sees only "
                   "GPU i mod #GPUs (default 1)")
    x.add_argument("--partition", help="slurm: partition (default: the cluster's default)")
    x.add_argument("--gpus-per-job", type=int, metavar="N",
                   help="slurm: GPUs per task (default 0: cells run on the CPU unless --device)")
    x.add_argument("--timeout-min", type=int, metavar="MIN", help="slurm: time limit per task (default 60)")
    x.add_argument("--array-parallelism", type=int, metavar="N",
                   help="slurm: tasks of the array running at once (default 32)")


def executor_from_args(args: argparse.Namespace) -> Any:
    """The executor the flags ask for; ValueError for a bad combination."""
    from harness.run.executors import InlineExecutor, LocalExecutor

    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    if args.executor != "slurm":
        given = [f for f in ("partition", "gpus_per_job", "timeout_min", "array_parallelism")
                 if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} is for --executor slurm")
    if args.executor == "inline":
        if args.jobs != 1:
            raise ValueError("--executor inline runs one cell at a time; drop --jobs or use --executor local")
        return InlineExecutor()
    if args.executor == "local":
        return LocalExecutor(jobs=args.jobs)
    from harness.run.slurm import SlurmExecutor

    return SlurmExecutor(
        partition=args.partition, gpus_per_job=args.gpus_per_job or 0, timeout_min=args.timeout_min or 60,
        array_parallelism=args.array_parallelism or 32,
    )


@contextlib.contextmanager
def first_ctrl_c_stops(stop: threading.Event, console: Any) -> Iterator[None]:
    """First Ctrl-C: set ``stop`` (cells in flight finish); the second raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print("[yellow]Ctrl-C: finishing the cell(s) in progress, then stopping "
                      "(Ctrl-C again stops now and loses them). Rerun the same command to resume.[/]")

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
