"""The environment a run executed in, stored with its result so the result describes itself.

Capturing it is cheap: package versions come from installed metadata (nothing heavy is
imported), CUDA details are read only when torch is already imported, and git runs with a
short timeout.
"""
from __future__ import annotations

import logging
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Distributions whose versions can change results.
PACKAGES = ("torch", "transformers", "lm_eval", "timm", "duckdb", "tokenizers", "numpy",
            "datasets", "sparsebench")
# Environment variables that change what runs where.
TF32_ENV = "SPARSEBENCH_TF32"  # "1": let CUDA matmuls and convolutions use TF32 (``harness run --tf32``)
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "OMP_NUM_THREADS", "SLURM_JOB_ID", TF32_ENV,
            "SPARSEBENCH_TRUST_REMOTE_CODE")  # set by harness run --trust-remote-code
GIT_TIMEOUT_S = 5.0

_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding harness/


def environment(device: str | None = None) -> dict[str, Any]:
    """Describe this process's environment as JSON-serialisable data.

    Args:
        device: The device the run uses (``"cpu"``, ``"cuda:0"``); picks the GPU described.

    Returns:
        ``python``, ``platform``, ``hostname``, ``cpu_count``, ``cpus_usable`` (affinity, e.g.
        a SLURM allocation), ``packages`` (name -> version, None if not installed),
        ``device``, ``cuda`` (None unless torch is already imported and CUDA is available),
        ``git_commit`` and ``git_dirty`` (None outside a git checkout), and ``env_vars``.
    """
    commit, dirty = git_state()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "packages": {name: _version(name) for name in PACKAGES},
        "device": device,
        "cuda": _cuda(device),
        "git_commit": commit,
        "git_dirty": dirty,
        "env_vars": {name: os.environ.get(name) for name in ENV_VARS},
    }


def apply_precision() -> dict[str, Any]:
    """Set torch's float32 matmul/convolution precision for this process and say what it is.

    Statistics are accumulated in float32 whatever the setting. On Ampere and newer GPUs TF32
    would round the Hessian products' inputs to 10 mantissa bits, so it is off unless
    ``SPARSEBENCH_TF32=1`` (``harness run --tf32``) asks for the speed. torch's own defaults
    differ (cuDNN convolutions use TF32 by default), hence setting both explicitly.
    """
    import torch

    allow = os.environ.get(TF32_ENV, "0") not in ("0", "", "false", "False")
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    return {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "accumulation": "float32"}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process, in bytes.

    This is the peak over the whole process lifetime (``getrusage`` ``ru_maxrss``), not of
    one run: in a process that runs several cells it never goes down. Child processes
    (data loader workers) are not included.
    """
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports KiB


def git_state(root: Path = _SOURCE_ROOT) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the sparsebench source tree; ``(None, None)`` if not a checkout.

    Only a checkout whose top level is ``root`` counts, so an installed copy inside some other
    repository (a venv in a project folder) does not report that repository's commit.
    """
    if not (root / ".git").exists():
        return None, None
    head = _git(root, "rev-parse", "HEAD")  # None in a repository without commits
    status = _git(root, "status", "--porcelain")
    return (head.strip() if head else None), (None if status is None else bool(status.strip()))


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except FileNotFoundError:
        return None  # git is not installed
    except subprocess.TimeoutExpired:
        log.warning("git %s in %s took over %g s; recording no git state", args[0], root,
                    GIT_TIMEOUT_S)
        return None
    return proc.stdout if proc.returncode == 0 else None  # stderr stays captured, unprinted


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cuda(device: str | None) -> dict[str, Any] | None:
    torch = sys.modules.get("torch")  # never import torch just to describe it
    if torch is None or not torch.cuda.is_available():
        return None
    index = None
    if device is not None and device.startswith("cuda"):
        index = torch.device(device).index
    if index is None:
        index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {
        "device_name": torch.cuda.get_device_name(index),
        "capability": f"{major}.{minor}",
        "cuda_version": torch.version.cuda,
        "device_count": torch.cuda.device_count(),
    }
