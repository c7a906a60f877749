"""Method discovery: the built-in ``methods`` package, then every installed plugin.

Plugins register through the entry-point group ``sparsebench.methods`` (see the README's
"Write a method"). This module sits above ``harness.core`` and ``methods``: the contract
never imports an implementation.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

from harness.core.method import METHODS, MethodBase, check_method_class

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sparsebench.methods"

_discovered = False


def discover() -> None:
    """Import the built-in methods, then every ``sparsebench.methods`` entry point.

    A plugin that fails to import raises: a silently missing method would make a suite
    look valid on one machine and not on another.
    """
    global _discovered
    if _discovered:
        return
    importlib.import_module("methods")
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = f"{ep.dist.name}=={ep.dist.version}" if ep.dist else "unknown"
        if ep.name in METHODS and METHODS.entry(ep.name).origin == dist:
            continue
        cls = ep.load()
        if ep.name not in METHODS:  # a plugin module may already register itself on import
            check_method_class(cls, ep.name)
            METHODS.register(ep.name, cls, origin=dist)
            cls.name, cls.origin = ep.name, dist  # the record stores cls.origin
        log.debug("plugin method %s from %s", ep.name, dist)
    _discovered = True


def get_method(name: str) -> type[MethodBase]:
    """The registered method class ``name`` (built-ins and plugins); did-you-mean on a miss."""
    discover()
    return METHODS.get(name)


def list_methods() -> list[str]:
    """Every registered method name, sorted."""
    discover()
    return METHODS.names()


def method_defaults(name: str) -> dict[str, Any] | None:
    """The default params of method ``name`` as a dict; None when it is not installed."""
    from harness.core.method import build_params, params_dict

    try:
        cls = get_method(name)
    except KeyError:
        return None
    return params_dict(build_params(cls, {}))
