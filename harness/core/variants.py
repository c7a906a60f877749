"""A method *variant*: the method entry's name plus everything that distinguishes it.

Two entries of one method with other params, or with a sparsity profile (OWL), are different
variants: tables, ``compare``, ``harness results`` and exports key rows by (model, variant,
target) and never average across them. The name is derived (:func:`variant_name`) unless the
suite gives the entry a ``label:``:

- ``wanda``: the method with its default params, uniform sparsity;
- ``sparsegpt(blocksize=64)``: params that differ from the method's defaults, sorted by key;
- ``wanda+owl`` / ``wanda+owl(owl.m=7)``: a sparsity profile, and its settings that differ from
  the profile's defaults.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from harness.core.spec import SparsityProfile


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if v is not None else "null"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def variant_name(method: str, params: dict[str, Any], defaults: dict[str, Any] | None,
                 profile: SparsityProfile | dict[str, Any] | None = None, label: str | None = None) -> str:
    """The variant's display name (see the module doc); ``label`` wins when given.

    Args:
        defaults: the method's default params; None when unknown (e.g. a plugin no longer
            installed): then every param is shown.
    """
    if label:
        return label
    changed = {k: v for k, v in sorted(params.items()) if defaults is None or k not in defaults or defaults[k] != v}
    parts = [f"{k}={_value(v)}" for k, v in changed.items()]
    name = method
    if profile is not None:
        prof = asdict(profile) if isinstance(profile, SparsityProfile) else dict(profile)
        kind = prof.pop("name", "owl")
        base = asdict(SparsityProfile(name=kind))
        base.pop("name")
        name += f"+{kind}"
        parts += [f"{kind}.{k}={_value(v)}" for k, v in sorted(prof.items()) if base.get(k) != v]
    return f"{name}({', '.join(parts)})" if parts else name
