"""The architecture matrix (README "Architectures"): every decoder family through the one driver.

Tiny random models built from transformers' own config classes (no hub): 2 blocks, hidden 32,
sliding windows shorter than the calibration windows (so sliding and global layers differ),
4 experts with top-2 routing. Per family: dense replays every block exactly; magnitude, wanda
and sparsegpt at 50 % and 2:4 meet the target in every layer and prune nearly every matrix
parameter of the blocks; layers that read one input share one Hessian. Then the layouts that
needed work (GPT-2's Conv1D, fused experts), the MoE rules and a few runs end to end.
"""
from __future__ import annotations

import inspect
import json
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.core.method import LayerMethod, PruneResult, build_params
from harness.core.sparsity import check, measure, prune_smallest
from harness.core.spec import LayerSelection
from harness.core.target import Target
from harness.drivers.hooks import StatsCollector
from harness.drivers.layouts import layer_weight, prunable_view
from harness.drivers.lm import find_blocks, lm_block_share, prunable_layers, prune_sequential
from harness.drivers.moe import moe_summary
from harness.plugins import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=128, max_position_embeddings=64)
GQA = dict(num_key_value_heads=2, intermediate_size=64)
SW = dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"])
MOE = dict(num_experts_per_tok=2, **GQA, **D)


@dataclass(frozen=True)
class Arch:
    """A family of the matrix: its config class (in ``transformers``), tiny settings, the number of
    distinct inputs (Hessians) in its last block, and the README note."""

    config: str
    kwargs: dict
    hessians: int
    note: str = ""
    moe: bool = False


ARCHITECTURES = {
    "opt": Arch("OPTConfig", dict(ffn_dim=64, word_embed_proj_dim=32, dropout=0.0, **D), 4),
    "llama": Arch("LlamaConfig", dict(**GQA, **D), 4),
    "mistral": Arch("MistralConfig", dict(sliding_window=8, **GQA, **D), 4),
    "qwen2": Arch("Qwen2Config", dict(use_sliding_window=True, **SW, **GQA, **D), 4,
                  "sliding and global layers: each block replayed with its own mask"),
    "qwen3": Arch("Qwen3Config", dict(head_dim=8, use_sliding_window=True, **SW, **GQA, **D), 4,
                  "sliding and global layers"),
    "gemma2": Arch("Gemma2Config", dict(head_dim=8, query_pre_attn_scalar=8, **SW, **GQA, **D), 4,
                   "sliding and global layers"),
    "gemma3": Arch("Gemma3TextConfig", dict(head_dim=8, query_pre_attn_scalar=8, **SW, **GQA, **D), 4,
                   "text model; sliding and global layers with their own rotary tables"),
    "phi3": Arch("Phi3Config", dict(pad_token_id=0, **GQA, **D), 4, "fused qkv_proj and gate_up_proj"),
    "gpt2": Arch("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64, vocab_size=128), 4,
                 "Conv1D stores (in, out): pruned as its (out, in) transpose, written back"),
    "gpt_neox": Arch("GPTNeoXConfig", dict(intermediate_size=64, **D), 4, "fused query_key_value"),
    "falcon": Arch("FalconConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=128), 3,
                   "parallel attention: query_key_value and dense_h_to_4h share one Hessian"),
    "bloom": Arch("BloomConfig", dict(hidden_size=32, n_layer=2, n_head=4, vocab_size=128), 4,
                  "ALiBi replayed as a block keyword argument"),
    "gptj": Arch("GPTJConfig", dict(n_embd=32, n_layer=2, n_head=4, n_inner=64, rotary_dim=4, n_positions=64,
                                    vocab_size=128), 3, "parallel attention: q, k, v and fc_in share one Hessian"),
    "olmo2": Arch("Olmo2Config", dict(**GQA, **D), 4),
    "mixtral": Arch("MixtralConfig", dict(num_local_experts=4, **MOE), 10, "fused experts, pruned per expert",
                    moe=True),
    "qwen2_moe": Arch("Qwen2MoeConfig", dict(num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=32,
                                             **MOE), 12, "shared expert pruned, its gate and the router dense", moe=True),
    "qwen3_moe": Arch("Qwen3MoeConfig", dict(num_experts=4, moe_intermediate_size=16, head_dim=8, **MOE), 10,
                      moe=True),
    "olmoe": Arch("OlmoeConfig", dict(num_experts=4, pad_token_id=0, eos_token_id=1, bos_token_id=None, **MOE), 10,
                  moe=True),
    "gpt_oss": Arch("GptOssConfig", dict(num_local_experts=4, head_dim=8, **SW, **MOE), 10,
                    "experts stored transposed, gate/up interleaved, with biases; sliding and global layers",
                    moe=True),
    "deepseek_v3": Arch("DeepseekV3Config", dict(n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=16,
                                                 first_k_dense_replace=1, n_group=1, topk_group=1, kv_lora_rank=16,
                                                 q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                                                 **MOE), 14, "MLA attention; first block dense", moe=True),
}


def tiny(arch: str, seed: int = 0, **overrides):
    import transformers

    spec = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    config = getattr(transformers, spec.config)(**{**spec.kwargs, **overrides})
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def batches(seed=0, n=3, seqlen=16, vocab=128):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (2, seqlen), generator=g) for _ in range(n)]


def method(name, **params):
    cls = get_method(name)
    return cls(build_params(cls, params))


def block_outputs(model, cal):
    """Each block's output hidden states in the model's own forward, concatenated over ``cal``."""
    _, blocks = find_blocks(model)
    seen = {i: [] for i in range(len(blocks))}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: seen[i].append(o[0] if isinstance(o, tuple) else o))
             for i, b in enumerate(blocks)]
    with torch.no_grad():
        for ids in cal:
            model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    return {i: torch.cat(v) for i, v in seen.items()}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dense_replays_every_block_exactly(arch):
    """Every block is replayed with its own arguments (mask, rotary table, ALiBi) and the layouts
    shown as Linear layers compute what the model computes, bit for bit."""
    model, cal = tiny(arch), batches()
    probe = torch.cat(cal)
    with torch.no_grad():
        ref = model(probe, use_cache=False).logits
    expected = block_outputs(model, cal)
    seen = {}
    reports = prune_sequential(model, cal, method("dense"), Target(0.0),
                               on_block_output=lambda i, o: seen.update({i: torch.cat(o)}))
    for i, out in expected.items():
        assert torch.equal(seen[i], out), f"block {i}"
    with torch.no_grad():
        assert torch.equal(model(probe, use_cache=False).logits, ref)
    assert all(r.rel_error == 0.0 for r in reports)
    assert lm_block_share(model, reports).share > 0.97


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("target", ["0.5", "2:4"])
def test_methods_meet_the_target_in_every_layer(arch, name, target):
    model, tgt = tiny(arch), Target.parse(target)
    reports = prune_sequential(model, batches(), method(name), tgt)
    for rep in reports:
        w = layer_weight(model, rep.name)
        assert w.shape == (rep.rows, rep.cols), rep.name
        assert check(measure(w, tgt), tgt, rep.cols) is None, rep.name
        assert rep.rel_error is not None and 0 <= rep.rel_error < 1.5, rep.name
    share = lm_block_share(model, reports)
    assert share.share > 0.97, share.unpruned  # only routers (and gpt-oss' stacked biases) stay dense
    with torch.no_grad():
        assert torch.isfinite(model(batches()[0], use_cache=False).logits).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_hessian_per_shared_input(arch):
    model = tiny(arch)
    path, blocks = find_blocks(model)
    last = len(blocks) - 1
    with prunable_view(path, blocks):
        layers = prunable_layers(blocks[last], f"{path}.{last}", LayerSelection())
        collector = StatsCollector(layers, "hessian")
        with torch.no_grad():
            model(batches()[0], use_cache=False)
        collector.remove()
    groups = [sorted(n.rsplit(".", 1)[-1] for n in g) for g in collector.groups()]
    assert len(collector.acc) == len(groups) == ARCHITECTURES[arch].hessians, groups
    assert sum(map(len, groups)) == len(layers)
    if ARCHITECTURES[arch].moe:  # each expert's gate and up projections read one input
        assert groups.count(["gate_proj", "up_proj"]) >= 4


# ----------------------------------------------------------------------- layouts


def test_conv1d_is_pruned_in_out_in_orientation_and_restored():
    from transformers.pytorch_utils import Conv1D

    model = tiny("gpt2")
    prune_sequential(model, batches(), method("sparsegpt"), Target.parse("2:4"))
    conv = model.get_submodule("transformer.h.0.attn.c_attn")
    assert isinstance(conv, Conv1D) and conv.weight.shape == (32, 96)  # (in, out), as saved
    w = layer_weight(model, "transformer.h.0.attn.c_attn")
    assert w.shape == (96, 32) and w.data_ptr() == conv.weight.data_ptr()  # the transposed view
    groups = (w == 0).reshape(96, 8, 4).sum(-1)  # N:M along the inputs
    assert bool((groups >= 2).all())


def test_experts_are_pruned_per_expert_and_the_router_stays_dense():
    model = tiny("qwen2_moe")
    mlp = model.model.layers[0].mlp
    router, shared_gate = mlp.gate.weight.clone(), mlp.shared_expert_gate.weight.clone()
    reports = prune_sequential(model, batches(), method("sparsegpt"), Target.parse("2:4"))
    names = {r.name for r in reports}
    assert {f"model.layers.0.mlp.experts.{e}.{k}" for e in range(4) for k in ("gate_proj", "up_proj", "down_proj")} <= names
    assert not any("mlp.gate" in n or "shared_expert_gate" in n for n in names)
    assert torch.equal(mlp.gate.weight, router) and torch.equal(mlp.shared_expert_gate.weight, shared_gate)
    fused = mlp.experts.gate_up_proj  # (E, 2I, H), 2:4 along H in every expert
    assert type(mlp.experts).__name__ == "Qwen2MoeExperts"
    assert bool(((fused == 0).reshape(4, 32, 8, 4).sum(-1) >= 2).all())
    assert float((mlp.experts.down_proj == 0).float().mean()) == 0.5


def test_gpt_oss_layout_transposed_interleaved():
    model = tiny("gpt_oss")
    experts = model.model.layers[1].mlp.experts  # gate_up_proj (E, H, 2I), gate/up interleaved
    w = layer_weight(model, "model.layers.1.mlp.experts.2.up_proj")
    assert torch.equal(w, experts.gate_up_proj[2].T[1::2])
    assert torch.equal(layer_weight(model, "model.layers.1.mlp.experts.2.down_proj"), experts.down_proj[2].T)
    prune_sequential(model, batches(), method("wanda"), Target.parse("2:4"))
    for kind in ("gate_proj", "up_proj", "down_proj"):
        w = layer_weight(model, f"model.layers.1.mlp.experts.2.{kind}")
        assert check(measure(w, Target.parse("2:4")), Target.parse("2:4"), w.shape[1]) is None, kind


def test_weights_return_to_the_original_parameters_after_a_device_round_trip():
    """What a GPU run does to a block (``.to(device)`` and back) breaks the views; sync writes back."""
    for arch, name in [("gpt2", "transformer.h.0.mlp.c_fc"), ("mixtral", "model.layers.0.mlp.experts.1.down_proj")]:
        model = tiny(arch)
        original = layer_weight(model, name).detach()  # (d_out, d_in) view of the Conv1D / fused parameter
        path, blocks = find_blocks(model)
        with torch.no_grad(), prunable_view(path, blocks) as view:
            blocks[0].double().float()  # new storage for every parameter of the block
            lin = model.get_submodule(name)
            lin.weight.data[0, :3] = 0.0
            assert float(original[0, :3].abs().sum()) > 0  # not yet in the original
            view.sync(0)
            assert lin.weight.data_ptr() == original.data_ptr()
        assert float(original[0, :3].abs().sum()) == 0.0


@pytest.mark.parametrize("arch", ["gpt2", "mixtral"])
def test_model_level_methods_prune_the_layouts_inside_the_view(arch):
    """Gradients reach the stand-in Linear layers (for harness.drivers.model_level)."""
    from harness.drivers.model_level import prune_model_lm

    model, tgt = tiny(arch), Target.parse("2:4")
    path, blocks = find_blocks(model)
    with prunable_view(path, blocks):
        reports = prune_model_lm(model, torch.cat(batches()), method("woodfisher", num_grads=4, block_size=32), tgt,
                                 batch_size=2).reports
    assert lm_block_share(model, reports).share > 0.99
    for rep in reports:
        assert check(measure(layer_weight(model, rep.name), tgt), tgt, rep.cols) is None, rep.name


# ----------------------------------------------------------------------- mixture of experts


class _Probe(LayerMethod):
    """Records each layer's statistics and leaves the weights unchanged."""

    name = "probe"
    stats = "hessian"

    def __init__(self) -> None:
        super().__init__()
        self.seen = {}

    def prune(self, name, weight, stats, target):
        self.seen[name] = stats
        return PruneResult(weight)


def test_an_experts_hessian_comes_from_the_tokens_routed_to_it():
    model, cal = tiny("mixtral"), batches()
    moe = model.model.layers[0].mlp
    rows, routes = [], []
    def keep(mod, args):  # the experts' inputs (tokens, H) and routing (tokens, top_k)
        rows.append(args[0])
        routes.append(args[1])

    hook = moe.experts.register_forward_pre_hook(keep)
    with torch.no_grad():
        for ids in cal:
            model(ids, use_cache=False)
    hook.remove()
    x, idx = torch.cat(rows), torch.cat(routes)  # (tokens, H), (tokens, top_k)
    probe = _Probe()
    reports = prune_sequential(model, cal, probe, Target(0.5))
    for e in range(4):
        xe = x[(idx == e).any(-1)].float()
        stats = probe.seen[f"model.layers.0.mlp.experts.{e}.gate_proj"]
        assert stats.n == xe.shape[0] > 0
        torch.testing.assert_close(stats.hessian, xe.T @ xe / xe.shape[0])
        assert stats is not probe.seen[f"model.layers.0.mlp.experts.{(e + 1) % 4}.gate_proj"]
    summary = moe_summary(reports)
    tokens = summary["tokens_per_expert"]["model.layers.0.mlp.experts"]
    assert sum(tokens) == 3 * 2 * 16 * 2 and summary["starved"] == {}  # every token goes to its top 2


def test_an_expert_without_enough_tokens_falls_back_to_magnitude():
    model = tiny("mixtral")
    router = model.model.layers[1].mlp.gate  # routes no token to expert 3 of block 1
    router.register_forward_hook(lambda m, a, out: (out[0], out[1], out[2].clamp(max=2)))
    reports = prune_sequential(model, batches(), method("sparsegpt"), Target(0.5), min_expert_tokens=16)
    rep = {r.name: r for r in reports}["model.layers.1.mlp.experts.3.gate_proj"]
    assert rep.info["expert_tokens"] == 0 and "magnitude" in rep.info["expert_fallback"]
    summary = moe_summary(reports, 16)
    assert summary["starved"] == {"model.layers.1.mlp.experts": [3]}
    assert summary["tokens_per_expert"]["model.layers.1.mlp.experts"][3] == 0
    w = layer_weight(model, rep.name)
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.02)  # pruned, not zeroed as "dead"

    model = tiny("mixtral")
    before = layer_weight(model, rep.name).clone()
    model.model.layers[1].mlp.gate.register_forward_hook(lambda m, a, out: (out[0], out[1], out[2].clamp(max=2)))
    prune_sequential(model, batches(), method("wanda"), Target(0.5))
    expected = prune_smallest(before.abs(), before.shape[1] // 2)  # Wanda on identity statistics: |W| per row
    assert torch.equal(layer_weight(model, rep.name) == 0, expected)


def test_cross_statistics_are_refused_for_experts():
    class CrossProbe(_Probe):  # like I-OBS' dense_output objective
        stats = "cross"

        def dense_weights(self):
            return {}

    with pytest.raises(ValueError, match="route tokens to different experts"):
        prune_sequential(tiny("mixtral"), batches(), CrossProbe(), Target(0.5))


# ----------------------------------------------------------------------- pruned share


def test_a_cell_that_prunes_a_minority_of_the_blocks_fails_unless_layers_chose_it():
    from harness.run.families import record_block_share

    model = tiny("qwen2_moe")
    skip_experts = LayerSelection(ignore=(r"mlp\.experts\.",))
    reports = prune_sequential(model, batches(), method("magnitude"), Target(0.5), selection=skip_experts)
    record = {"prune_info": {"seed": 0}}
    with pytest.raises(ValueError, match=r"pruned only 49% of the decoder blocks' matrix parameters") as err:
        record_block_share(SimpleNamespace(layers=LayerSelection()), model, reports, record)
    assert "model.layers.*.mlp.experts.gate_up_proj" in str(err.value) and "\n" not in str(err.value)
    assert record["prune_info"]["seed"] == 0 and record["prune_info"]["block_share"] == pytest.approx(0.49, abs=0.01)
    record_block_share(SimpleNamespace(layers=skip_experts), model, reports, record)  # chosen: recorded only
    assert record["prune_info"]["block_params"]["total"] == 24896


# ----------------------------------------------------------------------- end to end

ZOO_TOKENIZER = Path(__file__).parent.parent / "harness/models/zoo/checkpoints/tiny-llama"
GATE_READS_LAYOUTS = "layer_weight" in inspect.getsource(__import__("harness.run.cell", fromlist=["x"]))


def save_folder(arch: str, folder: Path) -> str:
    """A save_pretrained folder with the zoo's tokenizer (2,048 tokens): a ``path:`` model id."""
    tiny(arch, vocab_size=2048).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ZOO_TOKENIZER / name, folder / name)
    return f"path:{folder}"


def run_end_to_end(tmp_path, archs):
    from harness.run.runner import run_suite
    from harness.store.index import Store
    from harness.suite.loader import load_suite

    models = ", ".join(f'"{save_folder(a, tmp_path / a)}"' for a in archs)
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(f"""
        name: architectures
        models: [{models}]
        methods: [dense, sparsegpt]
        targets: ["2:4"]
        calibration: {{dataset: pydoc, n_samples: 4, seqlen: 32, seed: 0}}
        evals:
          perplexity:
            - {{dataset: pydoc, seqlen: 64, max_windows: 4}}
          lm_eval: {{tasks: [tiny_context], limit: 8}}
        """))
    store = Store(tmp_path / "sb.duckdb")
    results = run_suite(load_suite(suite), store=store, device="cpu")
    assert [(r.spec.method, r.status) for r in results] == [("dense", "ok"), ("sparsegpt", "ok")] * len(archs), \
        [r.error for r in results]
    for r in results:
        assert set(r.metrics) == {"pydoc/ppl@64x4", "tiny_context/acc"}
    return {(r.spec.model.id.rsplit("/", 1)[-1], r.spec.method): store.run_dir(r.spec.run_id) / "record.json"
            for r in results}


def test_end_to_end_through_path_folders(tmp_path):
    """Sliding and global layers, ALiBi; and once the sparsity gate reads ``layer_weight``, Conv1D and experts."""
    records = run_end_to_end(tmp_path, ["gemma2", "bloom"] + (["gpt2", "qwen2_moe"] if GATE_READS_LAYOUTS else []))
    info = json.loads(records["bloom", "sparsegpt"].read_text())["prune_info"]
    assert info["block_share"] == 1.0 and info["block_params"]["total"] == 24576
    if GATE_READS_LAYOUTS:
        moe = json.loads(records["qwen2_moe", "sparsegpt"].read_text())["prune_info"]["moe"]
        assert sum(moe["tokens_per_expert"]["model.layers.0.mlp.experts"]) == 4 * 32 * 2  # samples x seqlen x top-k


@pytest.mark.slow
@pytest.mark.skipif(not GATE_READS_LAYOUTS, reason="the sparsity gate does not read layer_weight yet")
def test_every_family_end_to_end(tmp_path):
    run_end_to_end(tmp_path, list(ARCHITECTURES))
