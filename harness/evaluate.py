"""Evaluation adapters; each returns flat metric rows ``{"name", "value", "stderr", "n"}``.

Metric names are ``<dataset or task>/<metric>``; perplexity carries its window length,
``wikitext2/ppl@2048``, because numbers at different seqlen are not comparable.
"""
from __future__ import annotations

from typing import Any, Callable

from harness.spec import PerplexitySpec


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
