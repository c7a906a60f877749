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

from harness.core.spec import DEFAULT_TIMEOUT_MIN, MAX_TIMEOUT_MIN


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    """``--executor``, ``--jobs`` and the Slurm flags of ``harness run``."""
    x = parser.add_argument_group(
        "where cells run", "Ctrl-C once: finish the cells in flight (each within its time limit), then "
        "stop; twice: stop now. Rerunning the same command runs only what is missing, and cells stored as "
        "error (the machine's fault, not a result).")
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
    x.add_argument("--timeout-min", type=_minutes, metavar="MIN",
                   help=f"a cell's time limit in minutes (default: the suite's timeout_min, else "
                   f"{DEFAULT_TIMEOUT_MIN} = 24 h); a cell past it is killed and stored as failed and the suite "
                   "goes on (local, slurm: the tasks' time limit; inline cannot stop its own cell)")
    x.add_argument("--array-parallelism", type=int, metavar="N",
                   help="slurm: tasks of the array running at once (default 32)")


def _minutes(text: str) -> float:
    """``--timeout-min``: minutes, more than 0 and at most 7 days (as the suite key)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes, e.g. 90 or 0.5; got {text!r}") from None
    if not 0 < value <= MAX_TIMEOUT_MIN:
        raise argparse.ArgumentTypeError(f"expected more than 0 and at most {MAX_TIMEOUT_MIN} minutes (7 days); "
                                         f"got {text}")
    return value


def executor_from_args(args: argparse.Namespace) -> Any:
    """The executor the flags ask for; ValueError for a bad combination or a missing Slurm."""
    from harness.run.executors import InlineExecutor, LocalExecutor

    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    if args.executor != "slurm":
        given = [f for f in ("partition", "gpus_per_job", "array_parallelism") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} is for --executor slurm")
    if args.executor == "inline":
        if args.jobs != 1:
            raise ValueError("--executor inline runs one cell at a time; drop --jobs or use --executor local")
        if args.timeout_min is not None:
            raise ValueError("--timeout-min needs worker processes (--executor local or slurm): "
                             "--executor inline cannot stop its own cell")
        return InlineExecutor()
    if args.executor == "local":
        return LocalExecutor(jobs=args.jobs)
    from harness.run.slurm import SlurmExecutor, slurm_missing

    if why := slurm_missing():
        raise ValueError(why)
    return SlurmExecutor(  # its time limit: --timeout-min, else the suite's, else the default
        partition=args.partition, gpus_per_job=args.gpus_per_job or 0, array_parallelism=args.array_parallelism or 32,
    )


@contextlib.contextmanager
def first_ctrl_c_stops(stop: threading.Event, console: Any, limit_min: float | None = None) -> Iterator[None]:
    """First Ctrl-C: set ``stop`` (cells in flight finish, within ``limit_min``, a cell's time limit,
    when the executor has one); the second raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        within = f" (at most {limit_min:g} min each, their time limit)" if limit_min else ""
        console.print(f"Ctrl-C: finishing the cell(s) in progress{within}, then stopping "
                      "(Ctrl-C again stops now and loses them). Rerun the same command to resume.", style="yellow")

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
