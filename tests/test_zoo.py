"""Tests for the offline model zoo (harness.models.zoo); about 20 s on 2 CPU cores."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import platform
from pathlib import Path

import pytest

import harness.models.zoo as zoo
from harness.data import corpus as _corpus
from harness.models.zoo import _cache, _checkpoint

SHIPPED = {name: _checkpoint.SHIPPED_DIR / name for name in zoo.ZOO_MODELS}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Run on one thread: these tiny models gain nothing from more, and on a busy
    2-core machine two threads make a 5-step build about 3x slower (18 s against 6 s).
    Byte-identity is only compared between builds at the same thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- corpus ---------------------------------------------------------------------------


def test_splits_are_nonempty_and_disjoint():
    docs = {split: zoo.corpus_documents(split) for split in zoo.SPLITS}
    assert all(docs.values()), {s: len(d) for s, d in docs.items()}
    assert len(docs["test"]) == 8 and len(docs["validation"]) == 8  # keys[::10], keys[5::10]
    for a, b in itertools.combinations(zoo.SPLITS, 2):
        assert not set(docs[a]) & set(docs[b]), f"{a} and {b} share documents"
    assert 50_000 <= sum(map(len, docs["calibration"])) <= 100_000  # chars


def test_unknown_split_lists_valid_ones():
    with pytest.raises(ValueError, match="Valid splits: train, calibration, validation, test"):
        zoo.corpus_documents("dev")


def test_snapshot_is_deterministic_and_matches_manifests(tmp_path):
    sha = zoo.corpus_sha256()
    for path in SHIPPED.values():
        assert zoo.read_manifest(path)["corpus_sha256"] == sha
    snap = zoo.snapshot_corpus(tmp_path / "corpus.jsonl.gz")
    assert snap.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime is zero: byte-reproducible
    assert zoo.corpus_documents("test", path=snap)
    built_with = zoo.read_manifest(SHIPPED["tiny-llama"])["versions"]["python"]
    if platform.python_version() == built_with:  # the stdlib text differs between versions
        assert zoo.corpus_sha256(snap) == sha
    with gzip.open(snap, "rt", encoding="utf-8") as f:
        assert f.readline().startswith('{"id": "topic:')


# --- tokenizer ------------------------------------------------------------------------


def test_tokenizer_round_trips_and_matches_shipped(tmp_path):
    tok = zoo.train_tokenizer(zoo.corpus_documents("train"))
    assert len(tok) == 2048
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<pad>"]) == [0, 1]
    for text in [zoo.corpus_documents("test")[0], "naïve café → ∑ 😀\n\tdef f(x): return x"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    shipped = (SHIPPED["tiny-llama"] / "tokenizer.json").read_bytes()
    assert (tmp_path / "tokenizer.json").read_bytes() == shipped  # training is deterministic


# --- building -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory):
    """Two 5-step builds of tiny-llama into separate directories, with their progress calls."""
    calls: list[tuple[int, int, float]] = []
    root = tmp_path_factory.mktemp("zoo")
    dirs = [
        zoo.build_model("tiny-llama", root / "a", steps=5, progress=lambda *a: calls.append(a)),
        zoo.build_model("tiny-llama", root / "b", steps=5),
    ]
    return dirs, calls


def test_build_is_loadable(tiny_builds):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (path, _), calls = tiny_builds
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("The assert statement", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))
    assert [c[:2] for c in calls] == [(s, 5) for s in range(1, 6)]
    manifest = zoo.read_manifest(path)
    assert manifest["steps"] == 5 and manifest["model_sha256"] == zoo.checkpoint_sha256(path)


def test_build_is_byte_identical(tiny_builds):
    (a, b), _ = tiny_builds
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "zoo.json").read_bytes() == (b / "zoo.json").read_bytes()


def test_ensure_model_builds_into_cache_once(tmp_path, monkeypatch):
    cfg = zoo.ZOO_MODELS["tiny-opt"]
    # 3 steps: the shipped checkpoint (more steps) no longer counts as complete.
    monkeypatch.setitem(zoo.ZOO_MODELS, "tiny-opt", dataclasses.replace(cfg, steps=3))
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path))
    steps: list[int] = []
    path = zoo.ensure_model("tiny-opt", progress=lambda step, total, loss: steps.append(step))
    assert path == tmp_path / "zoo" / "tiny-opt" == _cache.cache_dir("tiny-opt")
    assert steps == [1, 2, 3]
    assert zoo.ensure_model("tiny-opt", progress=lambda *a: steps.append(-1)) == path
    assert steps == [1, 2, 3]  # second call reused the cache
    assert [p.name for p in tmp_path.joinpath("zoo").iterdir()] == ["tiny-opt"]  # no temp dir left


# --- shipped checkpoints --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(zoo.ZOO_MODELS))
def test_shipped_checkpoint_is_complete_and_loads(name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = SHIPPED[name]
    cfg = zoo.ZOO_MODELS[name]
    assert _checkpoint.checkpoint_problem(path, cfg, zoo.corpus_sha256()) is None
    assert zoo.ensure_model(name) == path
    manifest = zoo.read_manifest(path)
    assert manifest["model_sha256"] == zoo.checkpoint_sha256(path)
    assert (path / "model.safetensors").stat().st_size < 6_000_000
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == cfg.model_type
    ppl, _ = zoo.perplexity(model, tok, zoo.corpus_documents("test"), cfg.seq_len)
    assert ppl == pytest.approx(manifest["test_ppl"], rel=1e-3)
    assert ppl < 100  # trained, not random (random init: about 2000)


# --- names ----------------------------------------------------------------------------


def test_unknown_name_suggests_close_one():
    with pytest.raises(zoo.UnknownZooModelError) as info:
        zoo.get_zoo_config("tiny-lama")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == (
        "Unknown zoo model 'tiny-lama'. Did you mean: tiny-llama? Available: tiny-llama, tiny-opt"
    )
    with pytest.raises(zoo.UnknownZooModelError, match="Did you mean: tiny-opt"):
        zoo.ensure_model("tiny-op")
    with pytest.raises(zoo.UnknownZooModelError, match="Available"):
        zoo.build_model("gpt2", Path("unused"), steps=1)


def test_importing_the_zoo_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, harness.models.zoo; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_ensure_checkpoint_builds_into_the_cache_atomically(tmp_path, monkeypatch):
    """Shipped copy unusable -> build beside the cache target and rename; a failed build leaves nothing."""
    import pytest

    from harness.models.zoo._cache import ensure_checkpoint

    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path))
    problem = lambda path: None if (path / "done").is_file() else "missing done"  # noqa: E731

    def failing(out):
        (out / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        ensure_checkpoint("no-such-model", problem, failing, cost="test")
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []

    def build(out):
        (out / "done").write_text("ok")
        return out

    path = ensure_checkpoint("no-such-model", problem, build, cost="test")
    assert (path / "done").read_text() == "ok" and tmp_path in path.parents
    assert ensure_checkpoint("no-such-model", problem, failing, cost="test") == path  # reused, not rebuilt
