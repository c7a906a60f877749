"""Train a zoo model on the corpus snapshot and save it as a Hugging Face checkpoint.

The recipe is the one measured in the offline notes (section 2): batches of random
128-token windows from the train token stream, AdamW with warmup and cosine decay,
and a fixed number of steps. Everything random is seeded, so a build on the same
machine, library versions and ``torch.get_num_threads()`` is byte-reproducible.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from harness.models.zoo._checkpoint import checkpoint_sha256, write_manifest
from harness.models.zoo._config import ZooConfig, get_zoo_config
from harness.data.corpus import corpus_documents, corpus_sha256
from harness.models.zoo._tokenizer import EOS_TOKEN, PAD_TOKEN, train_tokenizer

if TYPE_CHECKING:  # torch and transformers are imported lazily: `import harness.models.zoo` stays fast
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]  # (step, total steps, training loss)
_LOG_EVERY = 100  # steps between INFO log lines


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars (library code must not print), then restore them."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def lr_at(step: int, total: int, cfg: ZooConfig) -> float:
    """Learning rate of 0-based ``step``: linear warmup, then cosine from lr to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - 1 - cfg.warmup_steps)  # 0 -> 1
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))  # 1 -> 0
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def token_stream(tokenizer: PreTrainedTokenizerFast, docs: list[str]) -> torch.Tensor:
    """Token ids of ``docs``, each followed by the EOS token, as one 1-D long tensor."""
    import torch

    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    ids: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    seq_len: int = 128,
    batch_size: int = 16,
) -> tuple[float, int]:
    """Token-level perplexity over non-overlapping windows (sparsegpt's ``opt_eval`` protocol).

    The texts are joined with blank lines and tokenized once; the tail shorter than a
    window is dropped. Each window predicts its own tokens 1..seq_len-1.

    Returns:
        ``(ppl, n_windows)`` with ppl = exp(mean token NLL).
    """
    import torch
    import torch.nn.functional as F

    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    n = len(ids) // seq_len
    windows = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for chunk in windows.split(batch_size):  # (b, seq_len)
            logits = model(input_ids=chunk).logits[:, :-1]  # (b, seq_len-1, vocab)
            target = chunk[:, 1:]
            nll += F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum").item()
            count += target.numel()
    model.train(was_training)
    return math.exp(nll / count), n


def _new_model(cfg: ZooConfig, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A freshly initialized model, seeded without disturbing the caller's global RNG."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    hf_config = AutoConfig.for_model(
        cfg.model_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        bos_token_id=eos,
        eos_token_id=eos,
        **cfg.arch,
    )
    # HF initializes weights from the global RNG; fork it so seeding stays local.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return AutoModelForCausalLM.from_config(hf_config)


def _train(
    model: PreTrainedModel, stream: torch.Tensor, cfg: ZooConfig, steps: int, progress: Progress | None
) -> float:
    """Run ``steps`` optimizer steps on random windows of ``stream``; returns the last loss."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(cfg.seed)  # batch sampling only
    offsets = torch.arange(cfg.seq_len + 1)  # a window holds inputs plus one shifted target
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg)
        starts = torch.randint(0, len(stream) - cfg.seq_len, (cfg.batch_size,), generator=gen)
        batch = stream[starts[:, None] + offsets]  # (batch, seq_len+1)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(input_ids=x).logits  # (batch, seq_len, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_value = loss.item()
        if progress is not None:
            progress(step + 1, steps, loss_value)
        if (step + 1) % _LOG_EVERY == 0 or step + 1 == steps:
            logger.info("%s: step %d/%d loss %.4f", cfg.name, step + 1, steps, loss_value)
    return loss_value


def build_model(
    name: str,
    out_dir: Path,
    *,
    steps: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Train zoo model ``name`` from scratch and save it as a checkpoint directory.

    ``out_dir`` receives ``config.json``, ``model.safetensors``, the tokenizer files
    and a ``zoo.json`` manifest (corpus and weights sha256, held-out test perplexity,
    library versions). The shared tokenizer is retrained here (well under a second)
    rather than cached, so every checkpoint is self-contained.

    Args:
        name: A key of ``ZOO_MODELS``.
        out_dir: The checkpoint directory to write (created if missing).
        steps: Override the configured number of optimizer steps (e.g. 5 in tests).
        progress: Called after every step as ``progress(step, total, loss)``.

    Returns:
        ``out_dir``.

    Raises:
        UnknownZooModelError: If ``name`` is not a zoo model.
    """
    import torch

    cfg = get_zoo_config(name)
    steps = cfg.steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()

    corpus_sha = corpus_sha256()
    tokenizer = train_tokenizer(corpus_documents("train"), vocab_size=cfg.vocab_size)
    stream = token_stream(tokenizer, corpus_documents("train"))  # (n_tokens,)
    model = _new_model(cfg, tokenizer)
    logger.info(
        "%s: %d params, %d train tokens, %d steps, %d threads",
        name, model.num_parameters(), len(stream), steps, torch.get_num_threads(),
    )
    final_loss = _train(model, stream, cfg, steps, progress)
    test_ppl, test_windows = perplexity(model, tokenizer, corpus_documents("test"), cfg.seq_len)
    val_ppl, _ = perplexity(model, tokenizer, corpus_documents("validation"), cfg.seq_len)

    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_progress_bars():
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    manifest = _manifest(name, cfg, model, steps, corpus_sha, len(stream), final_loss, test_ppl, test_windows,
                         val_ppl, out_dir)
    write_manifest(out_dir, manifest)
    logger.info(
        "%s: built in %.1f s, test ppl %.2f -> %s", name, time.perf_counter() - t0, test_ppl, out_dir
    )
    return out_dir


def _manifest(name: str, cfg: ZooConfig, model: Any, steps: int, corpus_sha: str, train_tokens: int,
              final_loss: float, test_ppl: float, test_windows: int, val_ppl: float, out_dir: Path) -> dict[str, Any]:
    """The checkpoint's ``zoo.json``: what was trained on what, and how well."""
    import tokenizers
    import torch
    import transformers

    return {
        "name": name,
        "model_type": cfg.model_type,
        "steps": steps,
        "seed": cfg.seed,
        "num_parameters": model.num_parameters(),
        "corpus_sha256": corpus_sha,
        "train_tokens": train_tokens,
        "final_train_loss": round(final_loss, 6),
        "test_ppl": round(test_ppl, 4),
        "test_ppl_protocol": f"non-overlapping {cfg.seq_len}-token windows over the test "
        'split joined with "\\n\\n"; ppl = exp(mean token NLL)',
        "test_windows": test_windows,
        "validation_ppl": round(val_ppl, 4),  # for tuning, so the test split stays unseen
        "model_sha256": checkpoint_sha256(out_dir),
        # Wall time is logged, not stored, so that equal builds give equal manifests.
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "num_threads": torch.get_num_threads(),  # CPU results depend on it
    }
