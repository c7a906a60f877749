"""Named datasets: calibration samplers and perplexity test streams (images: ``harness.data.images``).

``pydoc`` is the zoo's held-out English text (offline, shipped snapshot). ``wikitext2`` and
``c4`` follow the SparseGPT/Wanda loaders (their ``datautils.py``): the whole test
split joined and tokenized once; calibration windows drawn with ``random.Random(seed)``.
Seeding uses local generators only; the global RNG is never touched.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)

DATASETS = {
    "pydoc": "the zoo's held-out English text from the Python stdlib (offline, shipped snapshot)",
    "wikitext2": "wikitext-2-raw-v1 via datasets: test joined with '\\n\\n'; calibration from train",
    "c4": "allenai/c4 en: calibration from train shard 0, eval on 1100 validation documents (256 x seqlen tokens)",
    "digits": "images: scikit-learn's bundled 8x8 digits (offline); 1,297 training images for calibration, "
              "500 held out for evals.digits",
    "photos": "images: crops of scikit-learn's two bundled photos (offline, unlabelled): 256 from their left "
              "halves for calibration, 256 from their right halves for evals.photos (agreement with dense only)",
    "imagenet": "images: ImageNet-1k ImageFolders, calibration from train/, evals.imagenet from val/ "
                "(the suite's root or $SPARSEBENCH_IMAGENET)",
}
IMAGE_DATASETS = ("digits", "photos", "imagenet")  # read by harness.data.images; the rest are text
LOCAL_DATASETS = ("pydoc", *IMAGE_DATASETS)  # never fetched from the Hugging Face hub


class DatasetUnavailable(RuntimeError):
    """A hub dataset that is not cached while offline; the message is one line."""


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def text_dataset_names() -> list[str]:
    return sorted(set(DATASETS) - set(IMAGE_DATASETS))


def _hub(loader: Callable[[], Any], what: str) -> Any:
    try:
        return loader()
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        raise DatasetUnavailable(
            f"dataset {what} is not in the local cache and could not be fetched ({type(exc).__name__}); "
            "load it once where the hub is reachable (datasets.load_dataset) and copy that Hugging Face "
            "cache here (set HF_HOME to it), or use the offline 'pydoc' dataset"
        ) from exc


def _wikitext(split: str) -> str:
    from datasets import load_dataset

    ds = _hub(lambda: load_dataset("wikitext", "wikitext-2-raw-v1", split=split), "'wikitext2' (wikitext-2-raw-v1)")
    return "\n\n".join(ds["text"])


def _c4(split: str) -> Any:
    from datasets import load_dataset

    files = {
        "train": "en/c4-train.00000-of-01024.json.gz",
        "validation": "en/c4-validation.00000-of-00008.json.gz",
    }
    return _hub(
        lambda: load_dataset("allenai/c4", data_files={split: files[split]}, split=split),
        f"'c4' (allenai/c4 {files[split]})",
    )


def _pydoc(split: str) -> str:
    from harness.data.corpus import corpus_documents

    return "\n\n".join(corpus_documents(split))


def _encode(tokenizer: Any, text: str) -> Any:
    """Tokenize a long text once, silencing the 'longer than max length' warning."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return tokenizer(text, return_tensors="pt").input_ids  # (1, tokens)
    finally:
        transformers.logging.set_verbosity(verbosity)


def test_tokens(name: str, tokenizer: Any, seqlen: int) -> Any:
    """The evaluation stream for perplexity, (1, tokens)."""
    if name == "pydoc":
        return _encode(tokenizer, _pydoc("test"))
    if name == "wikitext2":
        return _encode(tokenizer, _wikitext("test"))
    if name == "c4":
        docs = _c4("validation")
        ids = _encode(tokenizer, " ".join(docs[:1100]["text"]))
        return ids[:, : 256 * seqlen]
    raise KeyError(name)


def _windows(ids: Any, n: int, seqlen: int, rng: random.Random, what: str) -> Any:
    import torch

    total = ids.shape[1]
    if total <= seqlen:
        raise ValueError(f"{what} has {total} tokens, too few for calibration windows of {seqlen}")
    starts = [rng.randint(0, total - seqlen - 1) for _ in range(n)]
    return torch.stack([ids[0, s : s + seqlen] for s in starts])


def calibration_tokens(name: str, tokenizer: Any, n_samples: int, seqlen: int, seed: int) -> Any:
    """(n_samples, seqlen) token ids of random windows, reproducible from ``seed``."""
    import torch

    rng = random.Random(seed)
    if name == "pydoc":
        return _windows(_encode(tokenizer, _pydoc("calibration")), n_samples, seqlen, rng, "pydoc calibration")
    if name == "wikitext2":
        return _windows(_encode(tokenizer, _wikitext("train")), n_samples, seqlen, rng, "wikitext2 train")
    if name == "c4":  # SparseGPT's sampler: a random document longer than seqlen, a random window
        docs = _c4("train")
        out = []
        while len(out) < n_samples:
            doc = docs[rng.randint(0, len(docs) - 1)]["text"]
            ids = tokenizer(doc, return_tensors="pt").input_ids
            if ids.shape[1] <= seqlen:
                continue
            s = rng.randint(0, ids.shape[1] - seqlen - 1)
            out.append(ids[0, s : s + seqlen])
        return torch.stack(out)
    raise KeyError(name)


def validation_tokens(name: str, tokenizer: Any, n_calibration: int, n_samples: int, seqlen: int, seed: int) -> Any:
    """(n_samples, seqlen) held-out windows of the calibration text that overlap none of the
    ``calibration_tokens(name, tokenizer, n_calibration, seqlen, seed)`` windows.

    Drawn from the same seeded stream after the calibration windows, so adding validation
    leaves the calibration windows exactly as they were.
    """
    import torch

    if name == "c4":  # SparseGPT's sampler goes on drawing documents: the next windows are held out
        return calibration_tokens(name, tokenizer, n_calibration + n_samples, seqlen, seed)[n_calibration:]
    ids = _encode(tokenizer, _pydoc("calibration") if name == "pydoc" else _wikitext("train"))
    total = ids.shape[1]
    rng = random.Random(seed)
    taken = [rng.randint(0, total - seqlen - 1) for _ in range(n_calibration)]  # the calibration starts
    out: list[int] = []
    for _ in range(1000 * n_samples):
        if len(out) == n_samples:
            break
        s = rng.randint(0, total - seqlen - 1)
        if all(abs(s - t) >= seqlen for t in taken + out):
            out.append(s)
    if len(out) < n_samples:
        raise ValueError(f"{name}: not enough text for {n_samples} validation windows of {seqlen} tokens "
                         f"beside {n_calibration} calibration windows")
    return torch.stack([ids[0, s : s + seqlen] for s in out])


@dataclass(frozen=True)
class Perplexity:
    value: float
    windows: int
    tokens: int


def perplexity(model: Any, ids: Any, seqlen: int, *, device: Any = "cpu", batch_size: int = 8,
               max_windows: int | None = None, progress: Callable[[int, int], None] | None = None) -> Perplexity:
    """The papers' protocol: non-overlapping ``seqlen`` windows, tail dropped, exp(mean NLL).

    Each window's loss is the mean cross-entropy over its seqlen-1 shifted targets, scaled by
    seqlen, as SparseGPT's ``opt_eval`` does.
    """
    import torch

    windows = eval_windows(ids, seqlen, max_windows)
    n = windows.shape[0]
    nll = 0.0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = windows[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits  # (b, seqlen, vocab)
            nll += window_nll(logits, batch)
            del logits
            if progress is not None:
                progress(min(start + batch_size, n), n)
    return perplexity_of(nll, n, seqlen)


def eval_windows(ids: Any, seqlen: int, max_windows: int | None = None) -> Any:
    """The non-overlapping ``seqlen`` windows of a test stream (1, tokens), tail dropped: (n, seqlen)."""
    n = ids.shape[1] // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"test stream of {ids.shape[1]} tokens is shorter than seqlen {seqlen}")
    return ids[0, : n * seqlen].reshape(n, seqlen)


def window_nll(logits: Any, batch: Any) -> float:
    """Summed NLL of a batch of windows: each window's mean over its seqlen-1 targets, times seqlen."""
    seqlen = batch.shape[1]
    loss = _token_nll(logits, batch)[:, :-1]  # (b, seqlen - 1): the shifted targets
    return float(loss.mean(dim=1).sum()) * seqlen


def perplexity_of(nll: float, n: int, seqlen: int) -> Perplexity:
    import math

    return Perplexity(math.exp(nll / (n * seqlen)), n, n * seqlen)


CE_CHUNK_BYTES = 4 << 20  # rows of logits per cross-entropy call: about 4 MB, held in cache


def _token_nll(logits: Any, batch: Any) -> Any:
    """-log p(next token) at every position, (b, seqlen); the last position's is 0 (no target).

    The same per-row float32 cross-entropy as one call over ``logits[:, :-1]``, taken a few rows
    at a time: no copy of the shifted logits and no log-softmax the size of all the logits
    (hundreds of MB for a 50k vocabulary), whose fresh pages cost as much as the arithmetic.
    """
    import torch
    import torch.nn.functional as F

    b, seqlen, vocab = logits.shape
    flat = logits.reshape(b * seqlen, vocab)  # a view: model logits are contiguous
    targets = torch.full_like(batch, -100)  # ignore_index for the last position
    targets[:, :-1] = batch[:, 1:]
    targets = targets.reshape(-1)
    out = torch.empty(b * seqlen, dtype=torch.float32, device=logits.device)
    rows = max(1, CE_CHUNK_BYTES // (4 * vocab))
    for r0 in range(0, b * seqlen, rows):
        out[r0 : r0 + rows] = F.cross_entropy(flat[r0 : r0 + rows].float(), targets[r0 : r0 + rows],
                                              reduction="none")
    return out.reshape(b, seqlen)
