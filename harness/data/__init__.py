"""Data: the text corpora and calibration-window samplers (:mod:`~harness.data.text`, the shipped
``pydoc`` snapshot in :mod:`~harness.data.corpus`) and the image sets (:mod:`~harness.data.images`)."""
