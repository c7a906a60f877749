"""The sparse-recovery bench: ``synthetic:`` problems generated and solved by recovery methods
(:mod:`~harness.synthetic.bench`)."""
