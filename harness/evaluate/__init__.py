"""Evaluation of a pruned model: perplexity, lm-eval tasks (:mod:`~harness.evaluate.lm_eval_adapter`,
offline task files in :mod:`~harness.evaluate.lm_tasks`) and image metrics, all run by
:func:`harness.evaluate.cell.evaluate_ref`."""
