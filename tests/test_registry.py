"""Registry: did-you-mean, duplicates, Params validation, third-party entry points."""
from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

import pytest

from harness import plugins
from harness.core.method import METHODS, ParamsError, PruneResult, PruningMethod, build_params, register_method
from harness.plugins import get_method, list_methods
from harness.core.registry import DuplicateNameError, UnknownNameError


def test_builtin_methods_registered():
    assert {"dense", "magnitude", "wanda", "sparsegpt"} <= set(list_methods())


def test_unknown_method_suggests_close_names():
    with pytest.raises(UnknownNameError) as err:
        get_method("sparsgpt")
    msg = str(err.value)
    assert msg.startswith("Unknown method 'sparsgpt'. Did you mean: sparsegpt")  # sparse_ft may follow
    assert "Available: " in msg and "wanda" in msg


def test_duplicate_registration_raises():
    with pytest.raises(DuplicateNameError, match="already registered"):

        @register_method("wanda")
        class Again(PruningMethod):
            @dataclass(frozen=True)
            class Params:
                pass

            def prune(self, name, weight, stats, target):
                return PruneResult(weight)


def test_register_requires_a_method_with_dataclass_params():
    with pytest.raises(TypeError):
        register_method("not-a-method")(object)


def test_params_unknown_key_and_type_errors_are_collected():
    cls = get_method("sparsegpt")
    with pytest.raises(ParamsError) as err:
        build_params(cls, {"blocksiz": 64, "dampening_frac": "big"})
    keys = [k for k, _ in err.value.problems]
    assert keys == ["blocksiz", "dampening_frac"]
    assert "did you mean 'blocksize'?" in str(err.value)
    p = build_params(cls, {"blocksize": 64, "dampening_frac": 1})
    assert p.blocksize == 64 and isinstance(p.dampening_frac, float)


def test_params_validate_hook():
    with pytest.raises(ParamsError, match="blocksize must be positive"):
        build_params(get_method("sparsegpt"), {"blocksize": 0})


def test_params_are_frozen():
    p = build_params(get_method("magnitude"), {"scope": "global"})
    with pytest.raises(Exception):
        p.scope = "layer"


def test_third_party_entry_point_registers(tmp_path, monkeypatch):
    """A distribution declaring the 'sparsebench.methods' entry-point group is discovered."""
    pkg = tmp_path / "acme_prune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from harness.core.method import PruningMethod, PruneResult

        class Keep(PruningMethod):
            @dataclass(frozen=True)
            class Params:
                alpha: float = 1.0  # unused
            stats = "none"
            def prune(self, name, weight, stats, target):
                return PruneResult(weight)
    '''))
    dist = tmp_path / "acme_prune-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-prune\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[sparsebench.methods]\nacme_keep = acme_prune:Keep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_discovered", False)
    try:
        plugins.discover()
        assert "acme_keep" in METHODS
        assert METHODS.entry("acme_keep").origin == "acme-prune==1.2.3"
        assert get_method("acme_keep").name == "acme_keep"
        assert get_method("acme_keep").origin == "acme-prune==1.2.3"  # what a cell's record stores
    finally:
        METHODS.unregister("acme_keep")
        sys.modules.pop("acme_prune", None)
