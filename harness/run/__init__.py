"""Running a suite: which cells to run (:mod:`~harness.run.runner`), one cell from load to record
(:mod:`~harness.run.cell`, per model family :mod:`~harness.run.families`), where cells run
(:mod:`~harness.run.executors`, its worker processes :mod:`~harness.run.worker`,
:mod:`~harness.run.slurm`), why a cell has no result of its own (:mod:`~harness.run.faults`:
``failed`` or ``error``) and the environment they record (:mod:`~harness.run.env`)."""
