"""The contract every other layer builds on; it imports nothing else of ours.

- :mod:`~harness.core.method`: the method kinds (``LayerMethod``, ``ModelMethod``), ``LayerStats``,
  ``PruneResult``, ``LayerReport``, the one ``METHODS`` registry and ``register_method``;
  :mod:`~harness.core.recovery`: the ``RecoveryMethod`` kind of the synthetic bench;
  :mod:`~harness.core.context`: ``ModelContext``, what a model-level method gets.
- :mod:`~harness.core.params`: ``Params`` dataclasses built from suite mappings.
- :mod:`~harness.core.target`, :mod:`~harness.core.sparsity`: targets (fraction or N:M), masks and
  the measured-sparsity check; :mod:`~harness.core.obs`: the closed-form OBS step.
- :mod:`~harness.core.spec`, :mod:`~harness.core.ids`, :mod:`~harness.core.problems`: cells
  (``RunSpec``) and their ids, model ids, ``synthetic:`` problems.
- :mod:`~harness.core.metrics`: each metric's direction and format, declared once.
- :mod:`~harness.core.registry`: the generic registry and its one did-you-mean message.
"""
from harness.core.method import (
    METHODS,
    LayerMethod,
    LayerReport,
    LayerStats,
    ModelMethod,
    PruneResult,
    register_method,
)
from harness.core.target import Target

__all__ = ["METHODS", "LayerMethod", "LayerReport", "LayerStats", "ModelMethod", "PruneResult", "Target",
           "register_method"]
