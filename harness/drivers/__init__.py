"""Drivers: the one prune loop (:mod:`~harness.drivers.loop`) over a model-family adapter (decoder LMs:
:mod:`~harness.drivers.lm`; timm classifiers: :mod:`~harness.drivers.vision`), the statistics hooks
(:mod:`~harness.drivers.hooks`), the model-level path (:mod:`~harness.drivers.model_level`) and
sparsity profiles such as OWL (:mod:`~harness.drivers.profiles`)."""
