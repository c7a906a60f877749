"""The layer step's own costs: the reconstruction error from the kept input rows, the read-only
check's hashes (no copies; a shared Hessian hashed k + 1 times for a group of k layers)."""
from __future__ import annotations

import hashlib
import tracemalloc

import pytest
import torch
from torch import nn

from harness.core.method import LayerMethod, PruneResult
from harness.core.target import Target
from harness.drivers import hooks, vision
from harness.drivers.hooks import MethodOutputError, StatsCollector, prune_layer, relative_error


class QKV(nn.Module):
    """Three projections reading one tensor: one shared-input group."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(d, d) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x) + self.k(x) + self.v(x)


def gathered(layers: dict[str, nn.Module], inputs: list[torch.Tensor], forward, rows=None) -> StatsCollector:
    collector = StatsCollector(layers, "hessian", rows)
    with torch.no_grad():
        for x in inputs:
            forward(x)
            collector.end_forward()
    collector.remove()
    return collector


def pruned(w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return w.masked_fill(torch.rand(w.shape, generator=g) < 0.5, 0)


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * abs(b)


def test_the_rows_form_equals_the_hessian_form_on_linear_groups_and_convs():
    g = torch.Generator().manual_seed(0)
    qkv = QKV(96)
    collector = gathered(dict(qkv.named_children()), list(torch.randn(2, 40, 96, generator=g)), qkv)  # n = 80
    conv = nn.Conv2d(8, 6, 3, padding=1)  # d_in = 8 * 3 * 3 = 72; 2 images of 5x5 = 50 patches
    convs = gathered({"c": conv}, list(torch.randn(2, 1, 8, 5, 5, generator=g)), conv, {"c": vision.conv_rows(conv)})
    cases = [(collector, n) for n in ("q", "k", "v")] + [(convs, "c")]
    for col, name in cases:
        stats = col.stats(name)
        mod = dict(qkv.named_children()).get(name, conv)
        w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
        assert stats.rows is not None and stats.rows.shape == (stats.n, w.shape[1])
        torch.testing.assert_close(stats.hessian, stats.rows.T @ stats.rows / stats.n, rtol=1e-5, atol=1e-6)
        new = pruned(w, g)
        by_rows, by_h = relative_error(w, new, stats.hessian, rows=stats.rows), relative_error(w, new, stats.hessian)
        assert 0 < by_h < 1 and close(by_rows, by_h), (name, by_rows, by_h)
    assert collector.stats("q") is collector.stats("k") is collector.stats("v")  # one object per group
    with pytest.raises(ValueError, match="Hessian or its input rows"):
        relative_error(w, new)


@pytest.mark.parametrize("tokens, kept", [(64, True), (65, False)])
def test_rows_are_kept_up_to_d_in_and_dropped_past_it(tokens, kept):
    lin = nn.Linear(64, 8)
    col = StatsCollector({"l": lin}, "hessian")
    with torch.no_grad():
        for x in torch.randn(tokens, 64).split(16):
            lin(x)
            col.end_forward()
        stats = col.stats("l")
        assert (stats.rows is not None) == kept and col.kept_rows == [None]
        assert stats.hessian is col.acc[0]  # divided in place: no second (d_in, d_in) tensor
        with pytest.raises(RuntimeError, match="after its statistics were read"):
            lin(torch.randn(1, 64))


def test_diag_mode_keeps_no_rows():
    lin = nn.Linear(16, 4)
    col = StatsCollector({"l": lin}, "diag")
    with torch.no_grad():
        lin(torch.randn(4, 16))
    assert col.kept_rows == [None] and col.stats("l").rows is None


class Recorder(LayerMethod):
    name = "recorder"
    seen: list = []

    def prune(self, name, weight, stats, target):
        self.seen.append(stats)
        return PruneResult(weight.masked_fill(weight.abs() < weight.abs().median(), 0))


def test_methods_are_not_handed_the_rows_and_the_report_uses_them():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(128, 32)
    stats = gathered({"l": lin}, [torch.randn(50, 128, generator=g)], lin).stats("l")
    dense = lin.weight.detach().clone()
    Recorder.seen = []
    with torch.no_grad():
        report = prune_layer(Recorder(), "l", lin, stats, Target.parse("0.5"), 0)
    (handed,) = Recorder.seen
    assert handed.rows is None and handed.hessian is stats.hessian and stats.rows is not None
    assert close(report.rel_error, relative_error(dense, lin.weight.detach(), stats.hessian))


class MutatesLater(LayerMethod):
    """Mutates the Hessian it was handed when pruning ``on`` (through a reference kept from ``keep``)."""

    name = "mutates_later"

    def __init__(self, keep: str, on: str) -> None:
        super().__init__()
        self.keep, self.on, self.kept = keep, on, None

    def prune(self, name, weight, stats, target):
        if name == self.keep:
            self.kept = stats.hessian
        if name == self.on:
            self.kept.mul_(0.5)
        return PruneResult(weight.clone())


@pytest.mark.parametrize("keep, on, fails_at", [("q", "q", "q"), ("k", "k", "k"), ("q", "o", "k")])
def test_a_mutated_shared_hessian_is_caught_before_the_next_layer_uses_it(keep, on, fails_at):
    """The group's Hessian is hashed once before q, then after each layer: a change in q, in k, or
    between two layers of the group (here while pruning o, another group) fails the layer it shows in."""
    g = torch.Generator().manual_seed(2)
    qkv, o = QKV(32), nn.Linear(32, 32)
    layers = {**dict(qkv.named_children()), "o": o}
    col = gathered(layers, [torch.randn(20, 32, generator=g)], lambda x: o(qkv(x)))
    method = MutatesLater(keep, on)
    with pytest.raises(MethodOutputError, match=f"modified the statistics \\(hessian\\) it was handed for layer {fails_at}"), \
         torch.no_grad():
        for name in ("q", "o", "k", "v"):
            prune_layer(method, name, layers[name], col.stats(name), Target.parse("0.5"), 0)


def test_a_shared_hessian_is_hashed_k_plus_one_times(monkeypatch):
    qkv = QKV(16)
    col = gathered(dict(qkv.named_children()), [torch.randn(8, 16)], qkv)
    hashed = []
    real = hooks._fingerprint
    monkeypatch.setattr(hooks, "_fingerprint", lambda t: (hashed.append(t), real(t))[1])
    with torch.no_grad():
        for name, mod in qkv.named_children():
            prune_layer(Recorder(), name, mod, col.stats(name), Target.parse("0.5"), 0)
    assert sum(t is col.stats("q").hessian for t in hashed) == 4  # before q, after q, k, v
    weights = {m.weight.data_ptr() for m in qkv.children()}
    assert sum(isinstance(t, torch.Tensor) and t.data_ptr() in weights for t in hashed) == 6  # before and after


def test_a_fingerprint_reads_the_tensor_in_place():
    t = torch.randn(1024, 1024)  # 4 MiB
    tracemalloc.start()
    digest = hooks._fingerprint(t)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert digest == hashlib.blake2b(t.numpy().tobytes(), digest_size=16).digest()
    assert peak < 64 * 1024  # no copy of the 4 MiB
    assert hooks._fingerprint(t.T) == hashlib.blake2b(t.T.contiguous().numpy().tobytes(), digest_size=16).digest()
