"""The zoo's model configs: plain data next to the code, one entry per model (timm style).

``ZOO_MODELS`` holds the causal LMs (trained on the stdlib corpus), ``VISION_ZOO_MODELS``
the image classifiers (timm architectures trained on scikit-learn's digits, see ``_vision.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from harness.core.registry import did_you_mean


@dataclass(frozen=True)
class ZooConfig:
    """How one zoo model is built: architecture plus a step-based training schedule.

    The schedule counts optimizer steps, never wall-clock time, so a build is
    byte-reproducible on a given machine and thread count.
    """

    name: str  # zoo name, e.g. "tiny-llama"; also the checkpoint directory name
    model_type: str  # transformers model_type ("llama", "opt"), used with AutoConfig.for_model
    arch: Mapping[str, Any]  # config kwargs besides vocab size and special token ids
    steps: int  # optimizer steps; each sees batch_size * seq_len tokens
    batch_size: int = 16  # random windows per step
    seq_len: int = 128  # tokens per window; also the perplexity window
    lr: float = 3e-3  # peak AdamW learning rate, reached after the warmup
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    weight_decay: float = 0.01  # AdamW weight decay, on all parameters
    warmup_steps: int = 30  # linear warmup from lr / warmup_steps to lr
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm
    seed: int = 0  # weight init (torch.manual_seed) and batch sampling (local Generator)
    vocab_size: int = 2048  # byte-level BPE vocabulary, special tokens included
    notes: str = field(default="", compare=False)  # free text for `harness zoo ls`

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", MappingProxyType(dict(self.arch)))  # read-only


ZOO_MODELS: dict[str, ZooConfig] = {
    "tiny-llama": ZooConfig(
        name="tiny-llama",
        model_type="llama",
        arch=dict(
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        ),
        steps=1200,
        notes="LlamaForCausalLM, 1.07 M params; about 2.5 min on 2 idle CPU cores.",
    ),
    "tiny-opt": ZooConfig(
        name="tiny-opt",
        model_type="opt",
        arch=dict(
            hidden_size=128,
            ffn_dim=512,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=512,
            word_embed_proj_dim=128,
            dropout=0.0,
            attention_dropout=0.0,
        ),
        # OPT learns about 2x slower per step than Llama at the same lr (see the notes).
        # Chosen on validation ppl: 2400 steps gave 33.5, 3000 give 29.6 (tiny-llama: 30.1).
        steps=3000,
        notes="OPTForCausalLM, 1.12 M params; about 5 min on 2 idle CPU cores.",
    ),
}


@dataclass(frozen=True)
class VisionZooConfig:
    """How one vision zoo model is built: a timm architecture plus a step-based schedule.

    Trained on the fixed digits training split (``harness.data.images.digits``), seeded, with a
    fixed thread count, so a build is byte-reproducible on a given machine.
    """

    name: str  # zoo name, e.g. "tiny-resnet"; also the checkpoint directory name
    architecture: str  # timm model name passed to timm.create_model
    model_args: Mapping[str, Any]  # create_model kwargs: in_chans, num_classes, widths, ...
    img_size: int  # digits (8x8) are resized to this many pixels square
    steps: int  # optimizer steps of batch_size random training images
    batch_size: int = 64  # images per step, drawn with replacement
    lr: float = 1e-3  # peak AdamW learning rate, reached after the warmup
    weight_decay: float = 0.05  # AdamW weight decay, on all parameters
    warmup_steps: int = 50  # linear warmup from lr / warmup_steps to lr
    min_lr_ratio: float = 0.0  # cosine decay ends at lr * min_lr_ratio
    seed: int = 0  # weight init (forked torch RNG) and batch sampling (local Generator)
    num_threads: int = 1  # torch threads while training: builds are byte-identical for equal counts
    notes: str = field(default="", compare=False)  # free text for `harness ls models`

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_args", MappingProxyType(dict(self.model_args)))  # read-only


# Widths are capped so that every zoo layer stays cheap for ExactOBS (obc costs d_out * d_in^3 per
# layer): tiny-resnet's widest conv is (32, 32*3*3) = (32, 288), about 6 s for obc on one core,
# while 64 channels, (64, 576), take about 3 min. Measured on the digits (notes in README, Vision):
# widths (16, 32, 64, 64) recover better from magnitude pruning, (4, 8, 16, 32) far worse.
VISION_ZOO_MODELS: dict[str, VisionZooConfig] = {
    "tiny-resnet": VisionZooConfig(
        name="tiny-resnet",
        # resnet18d = resnet18 with the 3-conv "deep" stem, the only stem timm lets us narrow
        # (plain resnet18 ignores stem_width: 64 channels, and a (16, 576) conv after it).
        architecture="resnet18d",
        model_args=dict(in_chans=1, num_classes=10, channels=(16, 32, 32, 32), stem_width=8),
        # 48 px, not 32: at 32 px layer4 sees 1x1 maps, so 8 of 9 taps of its 3x3 convs only ever
        # read padding; sparsegpt and obc zero such dead inputs (as their references do), which
        # leaves layer4 89% sparse whatever the target. At 48 px its maps are 2x2 and no tap is dead.
        img_size=48,
        steps=1000,
        lr=2e-3,
        notes="timm resnet18d (BasicBlock x [2,2,2,2], BatchNorm, deep stem 8-8-16), stage widths "
        "16-32-32-32, 121 K params, digits upsampled to 48x48; about a minute on one core.",
    ),
    "tiny-vit": VisionZooConfig(
        name="tiny-vit",
        architecture="vit_tiny_patch16_224",
        model_args=dict(in_chans=1, num_classes=10, img_size=8, patch_size=2, embed_dim=64, depth=4,
                        num_heads=4, mlp_ratio=2.0, global_pool="avg"),
        img_size=8,
        steps=1500,
        notes="timm VisionTransformer, 4 blocks of width 64, 2x2 patches of the raw 8x8 digits "
        "(16 tokens), mean-pooled, LayerNorm only; 136 K params; about 35 s on one core.",
    ),
}


class UnknownZooModelError(KeyError):
    """An unknown zoo model name; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0])


def _lookup(table: Mapping[str, Any], name: str, kind: str) -> Any:
    try:
        return table[name]
    except KeyError:
        pass
    msg = f"Unknown {kind} {name!r}.{did_you_mean(name, list(table))}"
    raise UnknownZooModelError(f"{msg} Available: {', '.join(sorted(table))}") from None


def get_zoo_config(name: str) -> ZooConfig:
    """Look up a zoo model by name.

    Raises:
        UnknownZooModelError: With a did-you-mean suggestion and the available names.
    """
    return _lookup(ZOO_MODELS, name, "zoo model")


def get_vision_zoo_config(name: str) -> VisionZooConfig:
    """Look up a vision zoo model by name.

    Raises:
        UnknownZooModelError: With a did-you-mean suggestion and the available names.
    """
    return _lookup(VISION_ZOO_MODELS, name, "vision zoo model")
