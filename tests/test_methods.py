"""Per-layer math of the built-in methods: masks, sparsity, reference vectors, OBS formulas."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import prune_weight
from harness.core.obs import obs_remove, obs_saliency
from harness.core.target import Target

METHODS = ["magnitude", "wanda", "sparsegpt"]
ALL_METHODS = METHODS + ["obc"]
TESTVECTORS = Path(__file__).resolve().parents[2] / "shared" / "testvectors"


def rel_error(w, w_new, h):
    dw = w - w_new
    return float(torch.trace(dw @ h @ dw.T) / torch.trace(w @ h @ w.T))


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
def test_nm_every_group_has_exactly_n_zeros(method, nm, correlated_layer):
    w, h = correlated_layer
    n, m = nm
    out = prune_weight(method, w, hessian=h, target=f"{n}:{m}")
    zeros = (out == 0).reshape(w.shape[0], -1, m).sum(-1)
    assert torch.equal(zeros, torch.full_like(zeros, n))


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7, 0.9])
def test_unstructured_sparsity_hits_target(method, sparsity, correlated_layer):
    w, h = correlated_layer
    out = prune_weight(method, w, hessian=h, target=sparsity)
    measured = float((out == 0).float().mean())
    # magnitude/sparsegpt prune int(p*numel) plus one (the reference '<=' rule); wanda int(p*d_in) per row
    per_row = w.shape[1]
    assert abs(measured - sparsity) <= max(2 / w.numel(), 1 / per_row)
    assert out.shape == w.shape and out.dtype == w.dtype


@pytest.mark.parametrize("method", ALL_METHODS)
def test_prune_weight_keeps_dtype_and_does_not_modify_input(method, correlated_layer):
    w, h = correlated_layer
    w16 = w.to(torch.bfloat16)
    before = w16.clone()
    out = prune_weight(method, w16, hessian=h, target=0.5)
    assert out.dtype == torch.bfloat16 and out.shape == w16.shape
    assert torch.equal(w16, before)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.5, 0.7, "2:4", "4:8"])
def test_reconstruction_error_ordering(target, seed):
    """On correlated inputs: SparseGPT <= Wanda <= magnitude (the published ordering)."""
    from conftest import make_correlated_layer

    w, h = make_correlated_layer(seed)
    errs = {m: rel_error(w, prune_weight(m, w, hessian=h, target=target), h) for m in METHODS}
    assert errs["sparsegpt"] <= errs["wanda"] <= errs["magnitude"], errs


def _testvectors():
    meta = TESTVECTORS / "layer_methods.json"
    if not meta.exists():
        return []
    return json.loads(meta.read_text())


@pytest.mark.skipif(not _testvectors(), reason="shared/testvectors not present")
@pytest.mark.parametrize("entry", _testvectors(), ids=lambda e: e["key"])
def test_reference_testvectors(entry):
    """Masks identical to the reference codes' outputs; values within 1e-5 relative."""
    data = np.load(TESTVECTORS / "layer_methods.npz")
    w = torch.from_numpy(data[entry["layer"] + "_W"])
    h = torch.from_numpy(data[entry["layer"] + "_H"])
    ref = torch.from_numpy(data[entry["key"]])
    out = prune_weight(entry["method"], w, hessian=h, target=entry["target"])
    assert torch.equal(out == 0, ref == 0)
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    assert int((out == 0).sum()) == entry["zeros"]
    assert rel_error(w, out, h) == pytest.approx(entry["rel_err"], rel=1e-4)


def _brute_force_remove(w, h, pruned):
    """min_δ ½ δᵀ H δ subject to (w + δ)_P = 0, by solving for the free weights directly."""
    d = w.numel()
    free = [i for i in range(d) if i not in pruned]
    # new row u: u_P = 0, u_free minimises (u - w)ᵀ H (u - w)  =>  H_ff u_f = H_f: w
    u = torch.zeros_like(w)
    u[free] = torch.linalg.solve(h[free][:, free], h[free] @ w)
    delta = u - w
    return u, float(0.5 * delta @ h @ delta)


def test_obs_formulas_match_brute_force_on_every_subset():
    g = torch.Generator().manual_seed(1)
    d = 6
    a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
    h = a @ a.T / (3 * d) + 0.1 * torch.eye(d, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    for size in (1, 2, 3):
        for pruned in itertools.combinations(range(d), size):
            new, loss = obs_remove(w, hinv, list(pruned))
            ref, ref_loss = _brute_force_remove(w, h, list(pruned))
            assert torch.allclose(new, ref, atol=1e-10)
            assert loss == pytest.approx(ref_loss, rel=1e-9)
    sal = obs_saliency(w, hinv)
    for q in range(d):
        assert float(sal[q]) == pytest.approx(_brute_force_remove(w, h, [q])[1], rel=1e-9)


def test_sparsegpt_first_column_prune_is_exact_obs():
    """When the mask holds only column 0, SparseGPT's update is the exact OBS update (all later
    columns compensate), on the damped Hessian it uses."""
    g = torch.Generator().manual_seed(2)
    rows, d = 3, 8
    a = torch.randn(d, 4 * d, generator=g)
    h = a @ a.T / (4 * d)
    w = torch.randn(rows, d, generator=g) + 2.0 * torch.sign(torch.randn(rows, d, generator=g))
    w[:, 0] = torch.tensor([1e-3, -2e-3, 1.5e-3])  # column 0 is by far the least salient
    sparsity = 2.5 / w.numel()  # int(p * numel) = 2 -> '<=' rule prunes the 3 smallest scores
    out = prune_weight("sparsegpt", w, hessian=h, target=sparsity, blocksize=d)
    assert torch.equal(out == 0, torch.zeros_like(w, dtype=torch.bool).index_fill_(1, torch.tensor([0]), True))
    hd = h.double() + 0.01 * h.diagonal().mean().double() * torch.eye(d, dtype=torch.float64)
    for r in range(rows):
        ref, _ = _brute_force_remove(w[r].double(), hd, [0])
        assert torch.allclose(out[r].double(), ref, atol=1e-5)


def test_magnitude_global_scope_uses_one_threshold():
    from harness.core.method import build_params
    from harness.plugins import get_method

    cls = get_method("magnitude")
    m = cls(build_params(cls, {"scope": "global"}))
    small = torch.full((4, 8), 0.1)
    big = torch.full((4, 8), 10.0)
    big[0, 0] = 0.05
    t = Target(0.5)
    m.prepare({"a": small, "b": big}, t)
    out_small = m.prune("a", small, None, t).weight
    out_big = m.prune("b", big, None, t).weight
    assert int((out_small == 0).sum()) == 32  # every small weight falls under the global threshold
    assert int((out_big == 0).sum()) == 1


def test_sparsegpt_escalates_damping_on_singular_hessian():
    w = torch.randn(4, 8)
    h = torch.zeros(8, 8)
    h[0, 0] = 1.0
    h[1, 1] = -1.0  # indefinite: the first Cholesky fails
    out = prune_weight("sparsegpt", w, hessian=h, target=0.5, dampening_frac=0.01)
    assert torch.isfinite(out).all()


def test_methods_that_need_statistics_refuse_without_them():
    with pytest.raises(ValueError, match="hessian"):
        prune_weight("sparsegpt", torch.randn(4, 8), target=0.5)


@pytest.mark.parametrize("bad", ["5:4", "0:4", "2:0", 1.2, -0.1, "abc", True])
def test_bad_targets_raise(bad):
    from harness.core.target import TargetError

    with pytest.raises(TargetError):
        Target.parse(bad)


def test_target_parsing_round_trip():
    assert str(Target.parse("2:4")) == "2:4" and Target.parse("2:4").sparsity == 0.5
    assert Target.parse(0.5) == Target.parse("50%") == Target(0.5)


def test_dead_inputs_overshoot_the_target_and_the_failed_cell_says_why():
    """Inputs that never fire are zeroed whatever the target (as the references do); when they
    fill more of a 128-column block than the target allows, the layer ends above it, and the
    runner's sparsity check names them instead of a bare number."""
    from harness.core.method import LayerReport
    from harness.core.method import build_params
    from harness.plugins import get_method
    from harness.run.cell import record_sparsity
    from methods.sparsegpt import sparsegpt_prune

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g)
    x[:, :40] = 0  # 40 of 64 inputs dead: 62 % of the only block, above a 30 % target
    w = torch.randn(16, 64, generator=g)
    pruned, info = sparsegpt_prune(w, x.T @ x / 512, Target.parse("0.3"))
    assert info["dead_inputs"] == 40 and (pruned[:, :40] == 0).all()
    assert float((pruned == 0).float().mean()) > 0.6

    layer = torch.nn.Linear(64, 16, bias=False)
    layer.weight.data = pruned
    model = torch.nn.Sequential(layer)
    report = LayerReport("0", 0, 16, 64, None, 0.0, info)
    record = {"layers": []}
    with pytest.raises(ValueError) as err:
        cls = get_method("sparsegpt")
        record_sparsity(record, model, [report], cls(build_params(cls, {})), Target.parse("0.3"))
    msg = str(err.value)
    assert "misses target 0.3" in msg and "40 of its 64 inputs were zero on every calibration sample" in msg


# --- the fast paths: partitions instead of sorts, SparseGPT's wide sweep (issue 17) -------------

def _tied_scores(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Scores with many exact ties (small integers), a NaN row and a row of one value."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 6, (rows, cols), generator=g).float()
    s[0, :3] = float("nan")
    s[1] = 2.0
    return s


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("frac", [0.0, 0.3, 0.5, 0.97, 1.0])
def test_prune_smallest_is_the_stable_sorts_mask(seed, frac):
    from harness.core.sparsity import _prune_smallest_sorted, prune_smallest

    s = _tied_scores(12, 40, seed)
    count = int(40 * frac)
    expected = _prune_smallest_sorted(s, count) if 0 < count < 40 else (
        torch.zeros_like(s, dtype=torch.bool) if count == 0 else torch.ones_like(s, dtype=torch.bool))
    got = prune_smallest(s, count)
    assert torch.equal(got, expected)
    assert torch.equal(got.sum(1), torch.full((12,), count))
    s[2] = float("nan")  # a row with fewer numbers than count: the sort's NaN-last order
    if 0 < count < 40:
        assert torch.equal(prune_smallest(s, count), _prune_smallest_sorted(s, count))


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.999])
def test_threshold_mask_uses_the_sorts_threshold(sparsity):
    from harness.core.sparsity import threshold_mask

    s = _tied_scores(16, 32, 3).abs()
    k = int(s.numel() * sparsity)
    expected = s <= torch.sort(s.flatten()).values[min(k, s.numel() - 1)]
    assert torch.equal(threshold_mask(s, sparsity), expected)


@pytest.mark.parametrize("target", [0.5, 0.7, "2:4"])
def test_wanda_and_magnitude_masks_equal_the_plain_references(target):
    from benchmarks import reference

    w, h = make_wide_layer(96, 512, seed=4)
    w = (w * 8).round() / 8  # many tied magnitudes
    t = Target.parse(target)
    ref = reference.wanda_ref(w, h, t.sparsity, t.n, t.m)
    assert torch.equal(prune_weight("wanda", w, hessian=h, target=target) == 0, ref == 0)
    if not t.is_nm:  # (the plain magnitude reference breaks N:M ties by argsort, the papers' code by topk)
        ref = reference.magnitude_ref(w, t.sparsity)
        assert torch.equal(prune_weight("magnitude", w, target=target) == 0, ref == 0)


def make_wide_layer(d_out: int, d_in: int, seed: int = 0, tokens: int = 4096):
    """(d_out, d_in) weight and H from correlated inputs with loud features (benchmarks' recipe)."""
    from benchmarks.layers import correlated_inputs, hessian_of

    w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed + 1))
    return w, hessian_of(correlated_inputs(tokens, d_in, seed))


@pytest.fixture
def one_thread():
    """One torch thread for one test: the wide layers' factorizations crawl on two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sparsegpt_wide_sweep_keeps_the_references_masks(one_thread):
    """d_in >= WIDE_COLS at 50 %: the one-Cholesky sweep gives the float32 reference's masks and
    its weights to 1e-5; exact=True stays bit for bit on the reference's path, N:M included."""
    from benchmarks import reference
    from methods.sparsegpt import WIDE_COLS, sparsegpt_prune

    w, h = make_wide_layer(48, WIDE_COLS, seed=0, tokens=4096)
    ref = reference.sparsegpt_ref(w, h, 0.5)
    wide, info = sparsegpt_prune(w, h, Target(0.5))
    exact, info_exact = sparsegpt_prune(w, h, Target(0.5), exact=True)
    assert torch.equal(wide == 0, ref == 0)
    assert float((wide - ref).norm() / ref.norm()) < 1e-5
    assert info["obs_loss"] == pytest.approx(info_exact["obs_loss"], rel=1e-5)
    assert torch.equal(exact, ref)
    nm = sparsegpt_prune(w[:16], h, Target(0.5, 2, 4), exact=True)[0]
    assert torch.equal(nm, reference.sparsegpt_ref(w[:16], h, 0.5, 2, 4))


def test_sparsegpt_wide_sweep_rounds_closer_to_float64_than_the_reference(one_thread):
    """The documented rounding difference: with as many tokens as inputs (H barely determined)
    the float32 reference and the wide sweep disagree on some weights tied at a block's
    threshold; against the same algorithm in float64 the wide sweep errs less."""
    from benchmarks import reference
    from methods.sparsegpt import WIDE_COLS, sparsegpt_prune

    w, h = make_wide_layer(48, WIDE_COLS, seed=0, tokens=WIDE_COLS)
    truth = reference.sparsegpt_ref(w.double(), h.double(), 0.5, dtype=torch.float64) == 0
    ref = reference.sparsegpt_ref(w, h, 0.5) == 0
    wide = sparsegpt_prune(w, h, Target(0.5))[0] == 0
    assert int((wide != truth).sum()) < int((ref != truth).sum())


def test_sparsegpt_wide_sweep_equals_the_exact_one_on_narrow_layers(one_thread):
    """Forced on a narrow layer, the wide sweep reproduces the exact one's masks (and the
    reference test vectors' layer sizes)."""
    from methods.sparsegpt import sparsegpt_prune

    for seed in range(3):
        w, h = make_wide_layer(64, 256, seed)
        for sparsity in (0.5, 0.7):
            a = sparsegpt_prune(w, h, Target(sparsity), exact=True)[0]
            b = sparsegpt_prune(w, h, Target(sparsity), exact=False)[0]
            assert torch.equal(a == 0, b == 0)
            assert float((a - b).norm() / a.norm()) < 1e-5
