"""Find a zoo checkpoint: the shipped one if complete, else a build in the user cache."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from harness.models.zoo._checkpoint import SHIPPED_DIR, checkpoint_problem
from harness.models.zoo._config import get_zoo_config
from harness.data.corpus import corpus_sha256
from harness.models.zoo._train import Progress, build_model

logger = logging.getLogger(__name__)

CACHE_ENV = "SPARSEBENCH_CACHE"  # replaces ~/.cache/sparsebench


def cache_dir(name: str) -> Path:
    """Where ``ensure_model`` builds ``name``: ``$SPARSEBENCH_CACHE/zoo/<name>``.

    Without ``SPARSEBENCH_CACHE`` the root is ``~/.cache/sparsebench``.
    """
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sparsebench"
    return Path(root) / "zoo" / name


def ensure_model(name: str, *, progress: Progress | None = None) -> Path:
    """Return a complete checkpoint directory of zoo model ``name``, building it if needed.

    The shipped ``checkpoints/<name>`` is used when it is complete and was trained on
    the shipped corpus snapshot. Otherwise the model is built once into the user cache
    (minutes on a CPU) and that directory is reused by later calls.

    Args:
        name: A key of ``ZOO_MODELS``.
        progress: Passed to :func:`build_model` if a build is needed.

    Returns:
        The checkpoint directory, loadable with ``from_pretrained``.

    Raises:
        UnknownZooModelError: If ``name`` is not a zoo model.
    """
    cfg = get_zoo_config(name)
    corpus = corpus_sha256()
    return ensure_checkpoint(
        name, lambda path: checkpoint_problem(path, cfg, corpus),
        lambda out: build_model(name, out, progress=progress), cost="minutes on a CPU",
    )


def ensure_checkpoint(name: str, problem_of: Callable[[Path], str | None], build: Callable[[Path], Path],
                      *, cost: str) -> Path:
    """The shipped ``checkpoints/<name>`` if ``problem_of`` finds nothing wrong with it, else the
    user-cache copy, building it there first when it is missing or stale.

    The build writes beside the target and is renamed into place, so an interrupted build
    never looks complete.
    """
    shipped = SHIPPED_DIR / name
    problem = problem_of(shipped)
    if problem is None:
        return shipped
    logger.warning("shipped checkpoint %s is not usable (%s); using the cache", shipped, problem)
    target = cache_dir(name)
    if problem_of(target) is None:
        return target
    logger.warning("building zoo model %s into %s (%s)", name, target, cost)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        if target.exists():  # stale or broken: replace it
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target
