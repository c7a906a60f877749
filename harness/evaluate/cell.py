"""Evaluation adapters; each returns flat metric rows ``{"name", "value", "stderr", "n"}``.

Metric names are ``<dataset or task>/<metric>``; perplexity carries its window length,
``wikitext2/ppl@2048``, because numbers at different seqlen are not comparable. lm-eval
rows (``arc_easy/acc``) come from :mod:`harness.evaluate.lm_eval_adapter` and also carry
``headline``. Image classifiers get ``digits/top1`` and ``imagenet/top1`` (fractions, with a
binomial stderr; ``top5`` rows are not headline). :func:`evaluate_ref` runs one evaluation of a cell (rows tagged with its eval id).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from harness.core.spec import EvalRef, ImageEvalSpec, PerplexitySpec, RunSpec


def evaluate_perplexity(
    model: Any,
    tokenizer: Any,
    specs: tuple[PerplexitySpec, ...],
    *,
    device: Any,
    batch_size: int,
    token_cache: dict,
    cache_key: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Perplexity on each requested dataset; tokenized streams are cached per tokenizer."""
    from harness.data import text as data

    rows = []
    for spec in specs:
        key = (cache_key, spec.dataset, spec.seqlen)
        if key not in token_cache:
            token_cache[key] = data.test_tokens(spec.dataset, tokenizer, spec.seqlen)
        name = spec.metric_name()
        cb = (lambda done, total, _n=name: progress(_n, done, total)) if progress else None
        res = data.perplexity(
            model, token_cache[key], spec.seqlen, device=device, batch_size=batch_size,
            max_windows=spec.max_windows, progress=cb,
        )
        rows.append({"name": name, "value": res.value, "stderr": None, "n": res.tokens})
    return rows


def evaluate_images(
    model: Any,
    data_config: dict[str, Any],
    specs: tuple[ImageEvalSpec, ...],
    *,
    device: Any,
    batch_size: int,
    progress: Callable[[str, int, int], None] | None = None,
    dense_logits: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Top-1 and top-5 accuracy on each requested image set, through the model's data config.

    With ``agreement`` on an eval, ``dense_logits[dataset]`` (the dense model's logits on the
    same images) adds ``<dataset>/agree_top1`` and ``<dataset>/kl_dense``. Top-1 is the headline;
    on unlabelled images (photos) there is no top-1, and agreement is the headline.

    Returns:
        The metric rows and, per dataset, where the images came from and how many were used.
    """
    from harness.data import images

    rows, info = [], {}
    for spec in specs:
        split = images.eval_split(spec.dataset, spec.root, spec.limit)
        name = f"{spec.dataset}/top1"
        cb = (lambda done, total, _n=name: progress(_n, done, total)) if progress else None
        logits = images.predict(model, split, data_config, device=device, batch_size=batch_size, progress=cb)
        n = logits.shape[0]
        if split.labels:
            top1, top5, n = images.accuracy_of(logits, split)
            for measure, value, headline in (("top1", top1, True), ("top5", top5, False)):
                if value is not None:
                    stderr = math.sqrt(value * (1 - value) / n)
                    rows.append({"name": f"{spec.dataset}/{measure}", "value": value, "stderr": stderr, "n": n,
                                 "headline": headline})
        if spec.agreement or not split.labels:
            if dense_logits is None or spec.dataset not in dense_logits:
                raise ValueError(f"{spec.dataset} agreement needs the dense model's logits")
            agree, kl, kl_err = images.agreement(logits, dense_logits[spec.dataset])
            rows += [{"name": f"{spec.dataset}/agree_top1", "value": agree, "n": n, "headline": not split.labels,
                      "stderr": math.sqrt(agree * (1 - agree) / n)},
                     {"name": f"{spec.dataset}/kl_dense", "value": kl, "stderr": kl_err, "n": n, "headline": False}]
        info[spec.dataset] = {"source": split.source, "images": n, "limit": spec.limit}
    return rows, info


def evaluate_ref(
    ref: EvalRef,
    model: Any,
    tokenizer: Any,
    spec: RunSpec,
    *,
    device: Any,
    caches: dict,
    progress: Callable[[str, int, int], None] | None = None,
    data_config: dict[str, Any] | None = None,
    dense_logits: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One evaluation of ``spec`` (a :class:`~harness.core.spec.EvalRef` from ``spec.evals()``) on the
    (pruned) model: a perplexity set, the lm-eval task list, or an image set.

    Args:
        caches: The runner's per-suite caches; ``caches["tokens"]`` holds tokenized
            perplexity streams, ``caches["lm_eval"]`` lm-eval's task index.
        data_config: a vision model's timm data config (its preprocessing); None for LMs.
        dense_logits: vision: dataset -> the dense model's logits, for evals with ``agreement``.

    Returns:
        The metric rows, each naming ``ref.eval_id``, and the evaluation's provenance for the
        record (lm-eval and task versions, image sources).
    """
    info: dict[str, Any] = {}
    if ref.kind == "perplexity":
        rows = evaluate_perplexity(
            model, tokenizer, (ref.spec,), device=device, batch_size=spec.batch_size,
            token_cache=caches.setdefault("tokens", {}), cache_key=spec.model.id, progress=progress,
        )
    elif ref.kind == "lm_eval":
        from harness.evaluate.lm_eval_adapter import evaluate_lm_eval

        if progress:  # lm-eval reports no progress we can forward: mark start and end
            progress("lm_eval", 0, 1)
        rows, info = evaluate_lm_eval(
            model, tokenizer, ref.spec, device=str(device), model_id=spec.model.id,
            cache=caches.setdefault("lm_eval", {}),
        )
        if progress:
            progress("lm_eval", 1, 1)
    else:
        if data_config is None:
            raise ValueError("image evals need the model's data config (is this an image classifier?)")
        rows, by_dataset = evaluate_images(model, data_config, (ref.spec,), device=device,
                                           batch_size=spec.batch_size, progress=progress, dense_logits=dense_logits)
        info = by_dataset[ref.spec.dataset]
    return [{**row, "eval_id": ref.eval_id} for row in rows], info
