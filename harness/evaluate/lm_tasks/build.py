"""Build the offline lm-eval tasks' data from the zoo's held-out text, deterministically.

Every item comes from the ``test`` split of the shipped corpus snapshot (the 8 held-out
pydoc topics, never the training split), so the zoo models have not seen any of it:

=============  ==================================================================
``tiny_cloze``  a sentence minus its last 6 words; the true ending against the
                endings of 3 other sentences (chance 0.25)
``tiny_order``  the first 2 words; the rest in the true order against 3 shuffles
``tiny_swap``   the whole sentence against 3 variants that each swap one adjacent
                pair of words (BLiMP-like minimal pairs, empty context)
``tiny_wiki``   each held-out document as one page, scored by rolling
                loglikelihood (word/byte perplexity and bits per byte)
=============  ==================================================================

Items keep the order of the sentences in the corpus, so the first ``limit`` items of
``tiny_cloze``, ``tiny_order`` and ``tiny_swap`` are built from the same sentences (the
cross-task cache pitfall in ``offline-notes.md`` §3 then shows up even under ``limit``).
Randomness (distractors, shuffles, answer positions) comes from one local
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
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
MC_TASKS = ("tiny_cloze", "tiny_order", "tiny_swap")
TASKS = (*MC_TASKS, "tiny_wiki")
SEED = 0
N_CHOICES = 4  # the true answer and 3 distractors
CLOZE_WORDS = 6  # words in a cloze ending
ORDER_PREFIX = 2  # words of tiny_order's context
MIN_WORDS, MAX_WORDS = 8, 40  # sentences kept: long enough to cut, short enough to read

# reST headings are underlined with a run of one punctuation character
_UNDERLINE = re.compile(r"[*=\-^~#]{3,}")
# A sentence ends at . ! ? or : followed by a space and a capital, a quote, '*' or '('.
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z\"*(])")
_FOOTNOTE = re.compile(r"\s*\[\d+\]")  # " [3]" footnote markers


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


def _place(rng: random.Random, truth: str, distractors: list[str]) -> tuple[list[str], int]:
    """The choices with the truth at a random position; returns (choices, label)."""
    label = rng.randrange(N_CHOICES)
    choices = list(distractors)
    choices.insert(label, truth)
    return choices, label


def cloze_items(sents: list[str], seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}:tiny_cloze")
    endings = [" ".join(s.split()[-CLOZE_WORDS:]) for s in sents]
    items = []
    for i, sent in enumerate(sents):
        words = sent.split()
        truth = endings[i]
        pool = sorted({e for e in endings if e != truth})  # sorted: set order is not stable
        choices, label = _place(rng, truth, rng.sample(pool, N_CHOICES - 1))
        items.append({"id": i, "context": " ".join(words[:-CLOZE_WORDS]), "choices": choices, "label": label})
    return items


def order_items(sents: list[str], seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}:tiny_order")
    items = []
    for i, sent in enumerate(sents):
        words = sent.split()
        head, rest = words[:ORDER_PREFIX], words[ORDER_PREFIX:]
        truth, wrong = " ".join(rest), []
        while len(wrong) < N_CHOICES - 1:  # rest has >= 6 words: 720+ orders, this ends fast
            shuffled = rest[:]
            rng.shuffle(shuffled)
            text = " ".join(shuffled)
            if text != truth and text not in wrong:
                wrong.append(text)
        choices, label = _place(rng, truth, wrong)
        items.append({"id": i, "context": " ".join(head), "choices": choices, "label": label})
    return items


def swap_items(sents: list[str], seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}:tiny_swap")
    items = []
    for i, sent in enumerate(sents):
        words = sent.split()
        # pairs whose swap changes the sentence (two equal words would swap into the truth)
        spots = [j for j in range(len(words) - 1) if words[j] != words[j + 1]]
        wrong = []
        for j in sorted(rng.sample(spots, N_CHOICES - 1)):
            w = words[:]
            w[j], w[j + 1] = w[j + 1], w[j]
            wrong.append(" ".join(w))
        choices, label = _place(rng, sent, wrong)
        items.append({"id": i, "context": "", "choices": choices, "label": label})
    return items


def wiki_items(documents: list[str]) -> list[dict[str, Any]]:
    return [{"id": i, "page": doc} for i, doc in enumerate(documents)]


def build(seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """Every task's items, built from the corpus snapshot's ``test`` split."""
    from harness.data.corpus import corpus_documents

    docs = corpus_documents("test")
    sents = sentences(docs)
    return {"tiny_cloze": cloze_items(sents, seed), "tiny_order": order_items(sents, seed),
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
    """(Re)write the data files into ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render(seed).items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(p)  # a maintainer's script, not library code
