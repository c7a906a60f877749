"""Running a suite: which cells to run (:mod:`~harness.run.runner`), one cell from load to record
(:mod:`~harness.run.cell`, per model family :mod:`~harness.run.families`), where cells run
(:mod:`~harness.run.executors`, :mod:`~harness.run.slurm`) and the environment they record
(:mod:`~harness.run.env`)."""
