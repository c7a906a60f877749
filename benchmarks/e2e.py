"""End to end: the sequential driver on a model built from a real config with random weights.

Runs in a child process so that the peak RSS belongs to this measurement alone.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

CONFIGS = {
    # Real shapes; weights are random (no hub here). tie/proj settings as in the published configs.
    "opt-125m": {"family": "opt", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072,
                  "vocab_size": 50272, "max_position_embeddings": 2048, "word_embed_proj_dim": 768},
    "opt-1.3b": {"family": "opt", "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32, "ffn_dim": 8192,
                  "vocab_size": 50272, "max_position_embeddings": 2048, "word_embed_proj_dim": 2048},
    # two blocks, Llama layout: the CPU dry run of gpu_check.sh (SMALL=1)
    "llama-tiny": {"family": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 4, "intermediate_size": 344, "vocab_size": 1000, "max_position_embeddings": 256},
    "llama-2-7b": {"family": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000, "max_position_embeddings": 4096},
}


def build(name: str, dtype: str = "float32", device: str = "cpu"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    spec = dict(CONFIGS[name])
    family = spec.pop("family")
    torch.manual_seed(0)
    with torch.device(device):
        if family == "opt":
            model = OPTForCausalLM(OPTConfig(dropout=0.0, **spec))
        else:
            model = LlamaForCausalLM(LlamaConfig(**spec))
    return model.to(getattr(torch, dtype)).eval()


def _child(name: str, method: str, n: int, seqlen: int, device: str, dtype: str) -> dict[str, Any]:
    import torch
    import transformers  # noqa: F401  (count the libraries' own memory in the baseline)

    from harness.drivers.lm import prune_sequential
    from harness.data.text import perplexity
    from harness.run.env import peak_rss_bytes
    from harness.plugins import get_method
    from harness.core.target import Target

    rss_before = peak_rss_bytes()
    t0 = time.perf_counter()
    # On CUDA the random init runs on the GPU (minutes faster for 7B), then the model goes to the
    # CPU: the driver streams one block at a time to the device, as it does for a real checkpoint.
    model = build(name, dtype, device if device.startswith("cuda") else "cpu").to("cpu")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    t_build = time.perf_counter() - t0
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    rss_after_build = peak_rss_bytes()
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batches = list(torch.randint(0, vocab, (n, seqlen), generator=g).split(1 if device != "cpu" else 4))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    reports = prune_sequential(model, batches, get_method(method)(), Target(0.5), device=device)
    t_prune = time.perf_counter() - t0
    out = {
        "model": name, "method": method, "device": device, "dtype": dtype, "calibration": f"{n}x{seqlen}",
        "params": sum(p.numel() for p in model.parameters()), "model_bytes": size, "build_s": t_build,
        "prune_s": t_prune, "layers": len(reports), "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_model_bytes": rss_before, "rss_after_build_bytes": rss_after_build,
        "peak_rss_x_model": peak_rss_bytes() / size,
        # what the model and the driver add on top of the interpreter and libraries
        "peak_rss_over_baseline_x_model": (peak_rss_bytes() - rss_before) / size,
        "layer_time_by_kind": _by_kind(reports),
        "layer_time_top": sorted(((r.name.split(".", 3)[-1], round(r.time_s, 3)) for r in reports[:8]), key=lambda x: -x[1]),
    }
    if device.startswith("cuda"):
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    # perplexity protocol against a bare forward loop over the same windows
    ids = torch.randint(0, vocab, (1, seqlen * 4), generator=g)
    model.to(device)
    t0 = time.perf_counter()
    perplexity(model, ids, seqlen, device=device, batch_size=1)
    t_ppl = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for w in ids.reshape(4, seqlen):
            model(input_ids=w[None].to(device), use_cache=False)
    t_bare = time.perf_counter() - t0
    out.update(ppl_eval_s=t_ppl, bare_forward_s=t_bare, ppl_x_bare=t_ppl / t_bare)
    return out


def _by_kind(reports) -> dict[str, dict[str, float]]:
    """Per projection kind (q_proj, fc1, ...): layers, total and max prune seconds, mean relative error."""
    kinds: dict[str, dict[str, float]] = {}
    for r in reports:
        k = kinds.setdefault(r.name.rsplit(".", 1)[-1], {"layers": 0, "total_s": 0.0, "max_s": 0.0, "rel_error_sum": 0.0})
        k["layers"] += 1
        k["total_s"] += r.time_s
        k["max_s"] = max(k["max_s"], r.time_s)
        k["rel_error_sum"] += float("nan") if r.rel_error is None else float(r.rel_error)
    for k in kinds.values():
        k["mean_rel_error"] = k.pop("rel_error_sum") / k["layers"]
    return kinds


def run(name: str, method: str = "sparsegpt", n: int = 8, seqlen: int = 128, device: str = "cpu",
        dtype: str = "float32") -> dict[str, Any]:
    """Run one end-to-end measurement in a fresh interpreter and return its JSON."""
    code = (
        "import json, sys; from benchmarks.e2e import _child; "
        f"print('RESULT' + json.dumps(_child({name!r}, {method!r}, {n}, {seqlen}, {device!r}, {dtype!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    raise RuntimeError(f"e2e benchmark failed:\n{proc.stderr[-3000:]}")
