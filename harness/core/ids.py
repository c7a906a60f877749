"""Model ids carry a source prefix: ``zoo:tiny-llama``, ``hf:facebook/opt-125m``,
``timm:resnet50.tv_in1k``, ``path:/models/x``, ``synthetic:gaussian``.

One parser handles them all and rejects ambiguous input, as timm's ``parse_model_name`` does.
Light on imports: the suite validator uses it before torch is loaded (whether a ``timm:`` name
exists is checked by ``harness.models.load.timm_name_problem``, which imports timm).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from dataclasses import dataclass

from harness.core.registry import did_you_mean, suggest

SOURCES = {
    "zoo": "small models the project trains itself, offline (harness ls models)",
    "hf": "Hugging Face hub id, loaded with from_pretrained",
    "timm": "a timm model name with an optional pretrained tag (resnet50.tv_in1k); weights from the hub "
            "or a local file given as the model's 'weights:'",
    "synthetic": "a sparse linear-regression problem (gaussian, digit) for iht, topk_iobs, iobs_obc; settings "
                 "in the model's 'problem:' mapping",
    "path": "a local folder (absolute, or relative to the suite): save_pretrained (LM), or a timm "
            "checkpoint folder whose config.json names an 'architecture' (vision)",
}
LM_ZOO_NAMES = ("tiny-llama", "tiny-opt")  # kept in step with harness.models.zoo.ZOO_MODELS (a test checks)
VISION_ZOO_NAMES = ("tiny-resnet", "tiny-vit")  # kept in step with harness.models.zoo.VISION_ZOO_MODELS
ZOO_NAMES = LM_ZOO_NAMES + VISION_ZOO_NAMES
SYNTHETIC_NAMES = ("gaussian", "digit")  # kept in step with harness.core.problems.PROBLEMS (a test checks)
KINDS = ("lm", "vision", "synthetic")  # causal language model, image classifier, sparse-recovery problem
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
_TIMM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9][A-Za-z0-9_\-]*)?$")  # arch[.tag]


class ModelIdError(ValueError):
    """A model id without a known source prefix or with a malformed name."""


@dataclass(frozen=True)
class ModelRef:
    source: str  # one of SOURCES
    name: str  # the part after the prefix

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


def parse_model_id(model_id: object) -> ModelRef:
    """Split ``source:name`` and check the name for that source; raise ModelIdError."""
    if not isinstance(model_id, str) or not model_id.strip():
        raise ModelIdError(f"model id must be a non-empty string like 'hf:facebook/opt-125m', got {model_id!r}")
    source, sep, name = model_id.partition(":")
    if not sep:
        guess = "zoo" if model_id in ZOO_NAMES else "hf"
        raise ModelIdError(
            f"model id '{model_id}' needs a source prefix; did you mean '{guess}:{model_id}'? "
            f"Sources: {', '.join(SOURCES)}"
        )
    if source not in SOURCES:
        close = suggest(source, list(SOURCES))
        hint = f" Did you mean '{close[0]}:{name}'?" if close else ""
        raise ModelIdError(f"unknown model source '{source}' in '{model_id}'.{hint} Sources: {', '.join(SOURCES)}")
    if not name:
        raise ModelIdError(f"model id '{model_id}' has no name after '{source}:'")
    if source == "zoo" and name not in ZOO_NAMES:
        hint = did_you_mean(name, list(ZOO_NAMES), prefix="zoo:")
        raise ModelIdError(f"Unknown zoo model '{name}'.{hint} Available: {', '.join('zoo:' + z for z in ZOO_NAMES)}")
    if source == "synthetic" and name not in SYNTHETIC_NAMES:
        hint = did_you_mean(name, list(SYNTHETIC_NAMES), prefix="synthetic:")
        raise ModelIdError(f"Unknown synthetic problem '{name}'.{hint} Available: "
                           f"{', '.join('synthetic:' + z for z in SYNTHETIC_NAMES)}")
    if source == "hf" and not _HF_ID.match(name):
        raise ModelIdError(f"'{name}' is not a Hugging Face model id (expected 'org/name')")
    if source == "timm" and not _TIMM_NAME.match(name):
        raise ModelIdError(f"'{name}' is not a timm model name (expected 'architecture' or "
                           "'architecture.pretrained_tag', e.g. 'timm:resnet50.tv_in1k'; for a local "
                           "timm checkpoint folder use 'path:')")
    return ModelRef(source, name)


def model_kind(ref: ModelRef) -> str | None:
    """``"lm"``, ``"vision"`` or ``"synthetic"`` for a parsed id; None for a ``path:`` folder that cannot be read here.

    A ``path:`` folder is vision when its ``config.json`` names an ``architecture`` (timm's
    format; transformers writes ``architectures``).
    """
    if ref.source == "zoo":
        return "vision" if ref.name in VISION_ZOO_NAMES else "lm"
    if ref.source == "timm":
        return "vision"
    if ref.source == "synthetic":
        return "synthetic"
    if ref.source == "hf":
        return "lm"
    try:
        config = json.loads((Path(ref.name) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "vision" if isinstance(config, dict) and "architecture" in config else "lm"
