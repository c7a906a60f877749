"""Evaluation adapters; each returns flat metric rows ``{"name", "value", "stderr", "n"}``.

Metric names are ``<dataset or task>/<metric>``; perplexity carries its window length,
``wikitext2/ppl@2048``, because numbers at different seqlen are not comparable. lm-eval
rows (``arc_easy/acc``) come from :mod:`harness.lm_eval_adapter` and also carry
``headline``. :func:`evaluate_all` runs every eval of a cell.
"""
from __future__ import annotations

from typing import Any, Callable

from harness.spec import PerplexitySpec, RunSpec


def ppl_metric_name(spec: PerplexitySpec) -> str:
    suffix = f"@{spec.seqlen}" + (f"x{spec.max_windows}" if spec.max_windows else "")
    return f"{spec.dataset}/ppl{suffix}"


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
    from harness import data

    rows = []
    for spec in specs:
        key = (cache_key, spec.dataset, spec.seqlen)
        if key not in token_cache:
            token_cache[key] = data.test_tokens(spec.dataset, tokenizer, spec.seqlen)
        name = ppl_metric_name(spec)
        cb = (lambda done, total, _n=name: progress(_n, done, total)) if progress else None
        res = data.perplexity(
            model, token_cache[key], spec.seqlen, device=device, batch_size=batch_size,
            max_windows=spec.max_windows, progress=cb,
        )
        rows.append({"name": name, "value": res.value, "stderr": None, "n": res.tokens})
    return rows


def evaluate_all(
    model: Any,
    tokenizer: Any,
    spec: RunSpec,
    *,
    device: Any,
    caches: dict,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every eval of ``spec`` on the (pruned) model: perplexity, then lm-eval tasks.

    Args:
        caches: The runner's per-suite caches; ``caches["tokens"]`` holds tokenized
            perplexity streams, ``caches["lm_eval"]`` lm-eval's task index.

    Returns:
        The metric rows, and ``eval_info`` for the record (``{"lm_eval": ...}`` when run).
    """
    rows = evaluate_perplexity(
        model, tokenizer, spec.perplexity, device=device, batch_size=spec.batch_size,
        token_cache=caches.setdefault("tokens", {}), cache_key=spec.model.id, progress=progress,
    )
    info: dict[str, Any] = {}
    if spec.lm_eval is not None:
        from harness.lm_eval_adapter import evaluate_lm_eval

        if progress:  # lm-eval reports no progress we can forward: mark start and end
            progress("lm_eval", 0, 1)
        lm_rows, info["lm_eval"] = evaluate_lm_eval(
            model, tokenizer, spec.lm_eval, device=str(device), model_id=spec.model.id,
            cache=caches.setdefault("lm_eval", {}),
        )
        rows += lm_rows
        if progress:
            progress("lm_eval", 1, 1)
    return rows, info
