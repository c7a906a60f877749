"""Block streaming (harness.models.stream, harness.drivers.stream, harness.run.streamed): the same
cell streamed from disk and pruned in memory gives identical weights and perplexity; a streamed
cell's sharded artifact is reused, re-evaluated, gated and exported like any other."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from harness.run.runner import run_suite
from harness.store.index import Store
from harness.suite.loader import load_suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ZOO_TOKENIZER = Path(__file__).parent.parent / "harness/models/zoo/checkpoints/tiny-llama"


def _checkpoint(family: str, folder: Path) -> str:
    """A tiny random model with the zoo's tokenizer, saved in several shards: a ``path:`` id."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MixtralConfig, OPTConfig

    common = dict(vocab_size=2048, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=128)
    config = {
        "opt": lambda: OPTConfig(ffn_dim=64, word_embed_proj_dim=32, dropout=0.0, **common),
        "llama": lambda: LlamaConfig(intermediate_size=64, num_key_value_heads=2, **common),
        # Conv1D stores (in, out): pruned as its transpose
        "gpt2": lambda: GPT2Config(vocab_size=2048, n_embd=32, n_layer=3, n_head=4, n_inner=64, n_positions=128),
        # fused 3-D experts (E, 2I, H) and (E, H, I), pruned per expert with routed Hessians
        "mixtral": lambda: MixtralConfig(intermediate_size=64, num_key_value_heads=2, num_local_experts=4,
                                         num_experts_per_tok=2, **common),
    }[family]()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ZOO_TOKENIZER / name, folder / name)
    assert len(list(folder.glob("*.safetensors"))) > 2
    return str(folder)


SUITE = """
name: {name}
models: [{models}]
methods: [dense, magnitude, sparsegpt]
targets: [0.5, "2:4"]
calibration: {{dataset: pydoc, n_samples: 4, seqlen: 32, seed: 0}}
evals:
  perplexity:
    - {{dataset: pydoc, seqlen: 64, max_windows: 6}}
batch_size: 4
keep: all
{extra}
"""


def _run(tmp_path: Path, name: str, models: str, extra: str = "", store: Store | None = None, **kwargs):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(SUITE.format(name=name, models=models, extra=extra)))
    store = store or Store(tmp_path / name / "sb.duckdb")
    results = run_suite(load_suite(path), store=store, device="cpu", **kwargs)
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    return store, {r.spec.run_id: store.read(r.spec.run_id) for r in results}


def _weights(store: Store, record: dict, folder: Path) -> dict[str, torch.Tensor]:
    """The artifact's tensors loaded into a whole model (tied ones under every name)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.run.artifacts import artifact_path, load_artifact

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    load_artifact(model, artifact_path(store.root, record["artifact"]))
    return model.state_dict()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {f: _checkpoint(f, root / f) for f in ("llama", "opt")}


def test_streamed_cells_match_in_memory_ones(tmp_path, checkpoints):
    """sparsegpt 50 % and 2:4, magnitude and dense: identical weights, perplexity and measured
    sparsity; the run ids are the same (``stream`` is not identity) and the artifact is sharded."""
    paths = list(checkpoints.values())
    plain = ", ".join(f'"path:{p}"' for p in paths)
    streamed = ", ".join(f'{{id: "path:{p}", stream: true}}' for p in paths)
    _same_cells(*_run(tmp_path, "mem", plain), *_run(tmp_path, "st", streamed), n_models=2)


@pytest.mark.parametrize("family", ["gpt2", "mixtral"])
def test_conv1d_and_fused_experts_stream_like_in_memory(tmp_path, family):
    """GPT-2 (Conv1D, stored transposed; lm_head tied to wte) and Mixtral (fused 3-D experts, each
    pruned with the Hessian of the tokens routed to it): streamed and in memory give the same
    weights, perplexity and measured sparsity."""
    from safetensors import safe_open

    path = _checkpoint(family, tmp_path / family)
    with safe_open(next(Path(path).glob("*.safetensors")), framework="pt") as f:  # the layout on disk
        names = list(f.keys())
    mem_store, mem = _run(tmp_path, "mem", f'"path:{path}"', extra=f"save: {tmp_path / 'mem-ckpt'}")
    st_store, st = _run(tmp_path, "st", f'{{id: "path:{path}", stream: true}}', extra=f"save: {tmp_path / 'st-ckpt'}")
    _same_cells(mem_store, mem, st_store, st, n_models=1)
    for run_id, a in mem.items():  # the exported checkpoints: the same tensors under the same names
        wa, wb = _saved_tensors(Path(a["saved"]["path"])), _saved_tensors(Path(st[run_id]["saved"]["path"]))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), a["method"]
    pruned = {x["name"] for r in mem.values() if r["method"] == "sparsegpt" for x in r["layers"]}
    if family == "gpt2":
        assert "transformer.h.2.mlp.c_fc" in pruned and "transformer.h.2.attn.c_attn" in pruned
    else:  # saved per expert (transformers' save layout), stacked into (E, 2I, H) and (E, H, I) on load
        assert any(".block_sparse_moe.experts.0.w1.weight" in n for n in names)
        experts = {f"model.layers.2.mlp.experts.{e}.{k}" for e in range(4) for k in ("gate_proj", "up_proj", "down_proj")}
        assert experts <= pruned


def _saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _same_cells(mem_store: Store, mem: dict, st_store: Store, st: dict, *, n_models: int, cells: int = 5) -> None:
    """Every cell of the in-memory run equals the streamed one: weights, metrics, sparsity, layers."""
    assert set(mem) == set(st) and len(mem) == n_models * cells
    for run_id, a in mem.items():
        b = st[run_id]
        assert "shards" not in a["artifact"] and b["artifact"]["shards"][0] == "rest.safetensors"
        assert len(b["artifact"]["shards"]) == 1 + 3 and b["prune_info"]["streamed"] is True
        assert [(m["name"], m["value"]) for m in a["metrics"]] == [(m["name"], m["value"]) for m in b["metrics"]]
        assert a["sparsity"] == b["sparsity"] and a["prune_info"]["block_share"] == b["prune_info"]["block_share"]
        assert [(x["name"], x["zeros"]) for x in a["layers"]] == [(x["name"], x["zeros"]) for x in b["layers"]]
        folder = Path(b["model_info"]["path"])  # the checkpoint folder (an hf: cell loaded whole has none)
        wa, wb = _weights(mem_store, a, folder), _weights(st_store, b, folder)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), a["method"]


def test_a_streamed_cell_is_reused_reevaluated_and_exported(tmp_path, checkpoints):
    """A second suite adds an evaluation: the kept shards are loaded (no pruning), the new
    perplexity streams; save: writes a save_pretrained folder
    that reloads whole through path: to the same perplexity."""
    from harness.run.artifacts import artifact_sha256, artifact_path

    model = f'{{id: "path:{checkpoints["llama"]}", stream: true}}'
    store, first = _run(tmp_path, "one", model)
    (run_id, rec), *_ = [(k, v) for k, v in first.items() if v["method"] == "sparsegpt" and v["target"] == "0.5"]
    folder = artifact_path(store.root, rec["artifact"])
    assert folder.is_dir() and artifact_sha256(folder) == rec["artifact"]["sha256"]
    out = tmp_path / "saved"
    extra = f"save: {out}\nevals:\n  perplexity:\n    - {{dataset: pydoc, seqlen: 32, max_windows: 4}}\n"
    path = tmp_path / "two.yaml"
    path.write_text(textwrap.dedent(SUITE.format(name="two", models=model, extra="")).replace(
        "    - {dataset: pydoc, seqlen: 64, max_windows: 6}",
        "    - {dataset: pydoc, seqlen: 64, max_windows: 6}\n    - {dataset: pydoc, seqlen: 32, max_windows: 4}")
        + f"save: {out}\n")
    results = run_suite(load_suite(path), store=store, device="cpu")
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    again = store.read(run_id)
    assert again["artifact"]["sha256"] == rec["artifact"]["sha256"] and again["prune_time_s"] == rec["prune_time_s"]
    assert {m["name"] for m in again["metrics"]} == {"pydoc/ppl@64x6", "pydoc/ppl@32x4"}
    saved = Path(again["saved"]["path"])
    index = json.loads((saved / "model.safetensors.index.json").read_text())
    assert "model.layers.2.mlp.down_proj.weight" in index["weight_map"] and (saved / "tokenizer.json").is_file()
    reload = tmp_path / "reload.yaml"
    reload.write_text(textwrap.dedent(SUITE.format(name="reload", models=f'"path:{saved}"', extra="")).replace(
        "methods: [dense, magnitude, sparsegpt]", "methods: [dense]").replace('targets: [0.5, "2:4"]', "targets: [0.5]"))
    (dense,) = run_suite(load_suite(reload), store=store, device="cpu")
    metrics = {m["name"]: m["value"] for m in store.read(dense.spec.run_id)["metrics"]}
    assert metrics["pydoc/ppl@64x6"] == {m["name"]: m["value"] for m in again["metrics"]}["pydoc/ppl@64x6"]
    assert store.read(dense.spec.run_id)["sparsity"]["global"] == again["sparsity"]["global"]


def test_force_prunes_a_stored_streamed_cell_again_and_checks_the_weights(tmp_path, checkpoints):
    """``--force`` on a stored streamed cell prunes it again block by block (a new prune, not the
    kept shards) and records that the weights hash the same."""
    model = f'{{id: "path:{checkpoints["opt"]}", stream: true}}'
    store, first = _run(tmp_path, "one", model, only="*/sparsegpt/0.5")
    (run_id, rec), = first.items()
    assert "reproduced" not in rec["artifact"]
    _, again = _run(tmp_path, "one", model, store=store, only="*/sparsegpt/0.5", force=True)
    forced = again[run_id]
    assert forced["started_at"] != rec["started_at"] and forced["prune_time_s"] != rec["prune_time_s"]
    assert forced["prune_info"]["streamed"] is True and forced["artifact"]["shards"] == rec["artifact"]["shards"]
    assert forced["artifact"]["sha256"] == rec["artifact"]["sha256"] and forced["artifact"]["reproduced"] is True
    assert forced["metrics"] == rec["metrics"]


def test_a_streamed_cells_failed_export_keeps_its_results(tmp_path, checkpoints):
    out = tmp_path / "ckpt"
    out.write_text("a file where the checkpoints' folder should be")
    model = f'{{id: "path:{checkpoints["llama"]}", stream: true}}'
    _, records = _run(tmp_path, "one", model, extra=f"save: {out}", only="*/magnitude/2:4")  # asserts ok
    (rec,) = records.values()
    assert rec["metrics"] and rec["sparsity"]["nm_compliant"] is True
    assert rec["saved"]["error"].startswith("FileExistsError: ") and rec["saved"]["dir"] == str(out)


def test_an_hf_model_streams_from_the_local_cache(tmp_path, checkpoints, monkeypatch):
    """``hf:`` with ``stream: true`` resolves the repository in the Hugging Face cache (offline here:
    a cache built by the test in the hub's layout) and streams it like ``path:``; the same cells
    loaded whole from the cache give the same weights and perplexity."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--sparsebench--tiny-llama"
    shutil.copytree(checkpoints["llama"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    mem_store, mem = _run(tmp_path, "mem", '"hf:sparsebench/tiny-llama"', only="*/sparsegpt/*")
    st_store, st = _run(tmp_path, "st", '{id: "hf:sparsebench/tiny-llama", stream: true}', only="*/sparsegpt/*")
    _same_cells(mem_store, mem, st_store, st, n_models=1, cells=2)
    info = next(iter(st.values()))["model_info"]
    assert info["source"] == "hf" and info["streamed"] is True and Path(info["path"]).name == commit
    assert info["commit"] == commit
    assert next(iter(mem.values()))["model_info"]["commit"] == commit  # loaded whole: the same provenance
    missing = tmp_path / "missing.yaml"
    absent = '{id: "hf:sparsebench/absent", stream: true}'
    missing.write_text(textwrap.dedent(SUITE.format(name="missing", models=absent, extra="")))
    res = run_suite(load_suite(missing), store=st_store, device="cpu", only="*/dense/*")
    assert [r.status for r in res] == ["error"] and "\n" not in res[0].error
    assert "'hf:sparsebench/absent' is not available locally and the hub is unreachable (offline mode)" in res[0].error


def test_stream_key_is_checked_and_not_identity(tmp_path, checkpoints):
    from harness.core.spec import ModelSpec
    from harness.suite.checker import SuiteError

    assert ModelSpec("path:/x", stream=True).identity() == ModelSpec("path:/x").identity()
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(SUITE.format(name="bad", models="{id: zoo:tiny-llama, stream: true}", extra="")))
    with pytest.raises(SuiteError, match=r"models\[0\]\.stream: 'stream' reads a path: or hf: causal LM"):
        load_suite(bad)


def test_methods_that_need_the_whole_model_are_refused(tmp_path, checkpoints):
    from harness.drivers.stream import stream_problem
    from harness.plugins import get_method

    mag = get_method("magnitude")
    glob = mag(mag.Params(scope="global"))
    assert "global threshold" in stream_problem(glob)
    assert stream_problem(mag(mag.Params())) is None
