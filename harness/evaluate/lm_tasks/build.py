"""Build the offline lm-eval tasks' data from the zoo's held-out text, deterministically.

Every item comes from the ``test`` split of the shipped corpus snapshot (the 8 held-out
pydoc topics, never the training split). Some pydoc topics quote each other (the "if"
statement is part of the compound-statements topic, membership tests of "in"), so about a
fifth of the test sentences also stand in the training text: an item is made only from text
that shares no run of ``SEEN_WORDS`` words with the training split, so the zoo models have
seen none of it. Each multiple-choice item has two choices (chance 0.5):

================  ==================================================================
``tiny_context``  which passage does this text follow? The 4 words that follow a point
                  of a held-out document, after the 4 words that precede them there vs
                  after 4 words from elsewhere in the same document (lm-eval's
                  multiple-input form, as Winogrande: one continuation, two contexts);
                  one item every 4 words
``tiny_corrupt``  a sentence vs the same sentence with one word replaced by a random
                  word of the held-out text (frequency-weighted); up to 6 per sentence
``tiny_swap``     a sentence vs the same sentence with one adjacent pair of words
                  swapped (BLiMP-like); up to 5 per sentence
``tiny_wiki``     each held-out document as one page, scored by rolling
                  loglikelihood (word/byte perplexity and bits per byte)
================  ==================================================================

A minimal pair is scored as lm-eval scores any choice: the words before the first
changed word are the context (identical in both choices), the rest of the sentence the
choice, so the comparison is that of the two whole sentences. Items keep the order of
the sentences in the corpus, and one sentence is split at several places (one per item),
so the cross-task cache pitfall in ``offline-notes.md`` §3 shows up even under ``limit``.

Which tasks count in the leaderboard's "avg zero-shot" (and run in ``tiny_suite``) is
measured, not assumed: ``AVERAGED_OFFLINE_TASKS`` in :mod:`harness.core.metrics`, decided by
``benchmarks/zero_shot_tasks.py``. ``tiny_corrupt`` and ``tiny_swap`` are built and shipped,
but fail that rule on the zoo models (README "Zero-shot evaluation (lm-eval)").

Randomness (distractors, replacements, positions, answer order) comes from one local
``random.Random`` per task, seeded with ``f"{seed}:{task}"``; string seeds hash with
SHA-512, so the files are the same on every machine and Python run.

Rebuild the shipped files with ``python -m harness.evaluate.lm_tasks.build``; a test checks that
the shipped files equal a fresh build.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any, Callable

DATA_DIR = Path(__file__).resolve().parent / "data"
MC_TASKS = ("tiny_context", "tiny_corrupt", "tiny_swap")
TASKS = (*MC_TASKS, "tiny_wiki")
SEED = 0
N_CHOICES = 2  # the truth and one distractor
CONTEXT_WORDS = 4  # tiny_context: words of context before ...
CONTINUATION_WORDS = 4  # ... the continuation; one item every CONTINUATION_WORDS words
CORRUPT_PER_SENTENCE = 6  # tiny_corrupt: items (replaced positions) per sentence, at most
SWAP_PER_SENTENCE = 5  # tiny_swap: items (swapped pairs) per sentence, at most
MIN_WORDS, MAX_WORDS = 8, 40  # sentences kept: long enough to cut, short enough to read
SEEN_WORDS = 8  # text sharing a run of this many words with the training split makes no item

# reST headings are underlined with a run of one punctuation character
_UNDERLINE = re.compile(r"[*=\-^~#]{3,}")
# A sentence ends at . ! ? or : followed by a space and a capital, a quote, '*' or '('.
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z\"*(])")
_FOOTNOTE = re.compile(r"\s*\[\d+\]")  # " [3]" footnote markers
_PLAIN = re.compile(r"[a-z]+")  # a plain lower-case word: what tiny_corrupt replaces and inserts
_WORD = re.compile(r"\S+")


def sentences(documents: list[str]) -> list[str]:
    """Prose sentences of ``documents``, in order, each once.

    Paragraphs whose first line is indented (code, grammar rules) and headings are
    skipped; a paragraph's lines are joined and split into sentences; bullets lose
    their ``* ``. Kept: ``MIN_WORDS`` to ``MAX_WORDS`` words, ending in ``.`` or ``:``.
    """
    out: list[str] = []
    seen: set[str] = set()
    for doc in documents:
        for para in re.split(r"\n\s*\n", doc):
            lines = para.split("\n")
            if not lines[0] or lines[0][0].isspace():
                continue
            if any(_UNDERLINE.fullmatch(line.strip()) for line in lines):
                continue
            text = re.sub(r"\s+", " ", " ".join(line.strip() for line in lines)).strip()
            for sent in _SENTENCE_END.split(_FOOTNOTE.sub("", text)):
                sent = sent.removeprefix("* ").strip()
                if MIN_WORDS <= len(sent.split()) <= MAX_WORDS and sent[-1] in ".:" and sent not in seen:
                    seen.add(sent)
                    out.append(sent)
    return out


def unseen_filter(train_documents: list[str]) -> Callable[[str], bool]:
    """A test: does a text share no run of ``SEEN_WORDS`` words (whitespace-split) with these documents?"""
    seen: set[tuple[str, ...]] = set()
    for doc in train_documents:
        words = doc.split()
        seen.update(tuple(words[i:i + SEEN_WORDS]) for i in range(len(words) - SEEN_WORDS + 1))

    def unseen(text: str) -> bool:
        words = text.split()
        return not any(tuple(words[i:i + SEEN_WORDS]) in seen for i in range(len(words) - SEEN_WORDS + 1))

    return unseen


def _place(rng: random.Random, truth: Any, distractor: Any) -> tuple[list[Any], int]:
    """The two choices with the truth at a random position; returns (choices, label)."""
    label = rng.randrange(N_CHOICES)
    choices = [distractor]
    choices.insert(label, truth)
    return choices, label


def _pair_item(rng: random.Random, i: int, words: list[str], changed: list[str]) -> dict[str, Any]:
    """A minimal pair as an lm-eval item: the common prefix is the context, the rests the choices."""
    j = next(k for k, (a, b) in enumerate(zip(words, changed)) if a != b)
    choices, label = _place(rng, " ".join(words[j:]), " ".join(changed[j:]))
    return {"id": i, "context": " ".join(words[:j]), "choices": choices, "label": label}


def context_items(documents: list[str], seed: int = SEED,
                  unseen: Callable[[str], bool] = lambda text: True) -> list[dict[str, Any]]:
    """``tiny_context``: one item every ``CONTINUATION_WORDS`` words of every document (where
    the context and continuation together are ``unseen``).

    The continuation keeps the document's own whitespace (newlines, indentation) and starts
    with the whitespace before its first word; each context ends at a word. The distractor
    context is the context of another item of the same document whose words do not overlap
    this item's (and whose text differs from the true context).
    """
    rng = random.Random(f"{seed}:tiny_context")
    items: list[dict[str, Any]] = []
    reach = -(-(CONTEXT_WORDS + CONTINUATION_WORDS) // CONTINUATION_WORDS)  # items apart: no shared word
    for doc in documents:
        spans = [m.span() for m in _WORD.finditer(doc)]
        cuts = range(CONTEXT_WORDS, len(spans) - CONTINUATION_WORDS + 1, CONTINUATION_WORDS)
        contexts = [doc[spans[c - CONTEXT_WORDS][0]:spans[c - 1][1]] for c in cuts]
        for k, cut in enumerate(cuts):
            continuation = doc[spans[cut - 1][1]:spans[cut + CONTINUATION_WORDS - 1][1]]
            if not unseen(contexts[k] + continuation):
                continue
            others = [ctx for m, ctx in enumerate(contexts) if abs(m - k) >= reach and ctx != contexts[k]]
            choices, label = _place(rng, contexts[k], rng.choice(others))
            items.append({"id": len(items), "contexts": choices, "label": label, "continuation": continuation})
    return items


def corrupt_items(sents: list[str], seed: int = SEED) -> list[dict[str, Any]]:
    """``tiny_corrupt``: a plain word (not the first) replaced by another plain word drawn from
    every plain word of ``sents`` (so frequent words are drawn often)."""
    rng = random.Random(f"{seed}:tiny_corrupt")
    pool = [w for sent in sents for w in sent.split() if _PLAIN.fullmatch(w)]
    items: list[dict[str, Any]] = []
    for sent in sents:
        words = sent.split()
        spots = [j for j in range(1, len(words)) if _PLAIN.fullmatch(words[j])]
        for j in sorted(rng.sample(spots, min(CORRUPT_PER_SENTENCE, len(spots)))):
            new = words[j]
            while new == words[j]:
                new = rng.choice(pool)
            changed = words[:]
            changed[j] = new
            items.append(_pair_item(rng, len(items), words, changed))
    return items


def swap_items(sents: list[str], seed: int = SEED) -> list[dict[str, Any]]:
    """``tiny_swap``: one adjacent pair of words swapped (not the first word; never two equal words)."""
    rng = random.Random(f"{seed}:tiny_swap")
    items: list[dict[str, Any]] = []
    for sent in sents:
        words = sent.split()
        spots = [j for j in range(1, len(words) - 1) if words[j] != words[j + 1]]
        for j in sorted(rng.sample(spots, min(SWAP_PER_SENTENCE, len(spots)))):
            changed = words[:]
            changed[j], changed[j + 1] = changed[j + 1], changed[j]
            items.append(_pair_item(rng, len(items), words, changed))
    return items


def wiki_items(documents: list[str]) -> list[dict[str, Any]]:
    return [{"id": i, "page": doc} for i, doc in enumerate(documents)]


def build(seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """Every task's items, built from the corpus snapshot's ``test`` split."""
    from harness.data.corpus import corpus_documents

    docs = corpus_documents("test")
    unseen = unseen_filter(corpus_documents("train"))
    sents = [sent for sent in sentences(docs) if unseen(sent)]
    return {"tiny_context": context_items(docs, seed, unseen), "tiny_corrupt": corrupt_items(sents, seed),
            "tiny_swap": swap_items(sents, seed), "tiny_wiki": wiki_items(docs)}


def jsonl(items: list[dict[str, Any]]) -> str:
    """One compact JSON object per line; stable bytes for the same items."""
    return "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items)


def manifest(files: dict[str, str], seed: int = SEED) -> str:
    """Provenance of the data files: corpus hash, seed, item counts and file hashes."""
    from harness.data.corpus import corpus_sha256

    body = {
        "corpus_sha256": corpus_sha256(), "split": "test", "seed": seed,
        "tasks": {name: {"items": text.count("\n"), "sha256": hashlib.sha256(text.encode()).hexdigest()}
                  for name, text in files.items()},
    }
    return json.dumps(body, indent=1, sort_keys=True) + "\n"


def render(seed: int = SEED) -> dict[str, str]:
    """File name -> text of every data file, the manifest included."""
    files = {name: jsonl(items) for name, items in build(seed).items()}
    return {**{f"{name}.jsonl": text for name, text in files.items()}, "manifest.json": manifest(files, seed)}


def write(out_dir: Path = DATA_DIR, seed: int = SEED) -> list[Path]:
    """(Re)write the data files into ``out_dir``, removing data of tasks no longer built;
    returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = render(seed)
    for stale in sorted(out_dir.glob("*.jsonl")):
        if stale.name not in files:
            stale.unlink()
    paths = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(p)  # a maintainer's script, not library code
