"""Shared fixtures. Tests never touch the network: the hub is off for every test."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def tiny_config(family: str):
    """Tiny random decoder configs for OPT, Llama and Mistral (sliding window exercised)."""
    from transformers import LlamaConfig, MistralConfig, OPTConfig

    common = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64)
    if family == "opt":
        return OPTConfig(ffn_dim=64, word_embed_proj_dim=32, dropout=0.0, **common)
    if family == "llama":
        return LlamaConfig(intermediate_size=64, num_key_value_heads=2, **common)
    if family == "mistral":
        return MistralConfig(intermediate_size=64, num_key_value_heads=2, sliding_window=8, **common)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    return model.eval()


def make_correlated_layer(seed: int = 0):
    """A (32, 64) layer and H = XᵀX/n from strongly correlated inputs with a few loud features,
    the regime of LLM activations (with i.i.d. inputs H ≈ I and all methods tie)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    d_in, d_out, n = 64, 32, 2048
    mix = 3.0 * torch.randn(d_in, d_in, generator=g) / d_in**0.5 + torch.eye(d_in)
    x = torch.randn(n, d_in, generator=g) @ mix
    x[:, :4] *= 8.0  # outlier features
    w = torch.randn(d_out, d_in, generator=g)
    return w, x.T @ x / n


@pytest.fixture
def correlated_layer():
    return make_correlated_layer(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (restored after): on two shared cores, torch's two-thread
    kernels wait on each other's time slices, and small forwards run up to 5x slower. Modules
    that use it compare no speeds: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
