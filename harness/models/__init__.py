"""Models: loading by source prefix (``hf:``, ``path:``, ``zoo:``, ``timm:``, ``package:`` weights) in
:mod:`~harness.models.load`, and the offline zoo the project trains itself (:mod:`~harness.models.zoo`)."""
