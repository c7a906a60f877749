"""Comparisons a researcher can publish (issue 14): identity is what was run, a suite is a tag, the
stored weights are what is evaluated and gated, and no method can cheat the gate.

Every test runs real cells of the zoo Llama inline (small calibration, few perplexity windows).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.core.lazy import torch
from harness.core.method import METHODS, LayerMethod, ModelMethod, PruneResult, register_method
from harness.core.sparsity import prune_smallest
from harness.run.runner import run_suite
from harness.store.index import Store
from harness.suite.loader import load_suite

CAL = "calibration: {dataset: pydoc, n_samples: 8, seqlen: 64}\n"
PPL = "    - {dataset: pydoc, seqlen: 128, max_windows: 8}\n"


def suite(tmp_path: Path, name: str, methods: str, extra_eval: str = "", targets: str = "[0.5]",
          seeds: str = "[0]") -> object:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodels: [zoo:tiny-llama]\nmethods: {methods}\ntargets: {targets}\n"
                    f"seeds: {seeds}\n{CAL}evals:\n  perplexity:\n{PPL}{extra_eval}")
    return load_suite(path)


@dataclass(frozen=True)
class _NoParams:
    pass


class _Stochastic(LayerMethod):
    """Prunes a random half of each row, drawn from the cell's generator (test-only control)."""

    Params = _NoParams
    stats = "none"

    def prune(self, name, weight, stats, target):
        scores = torch.rand(weight.shape, generator=self.generator())
        return PruneResult(weight.masked_fill(prune_smallest(scores, int(target.sparsity * weight.shape[1])), 0))


class _ClaimsDense(LayerMethod):
    """Sets modifies_weights = False and prunes nothing, at target 0.5."""

    Params = _NoParams
    stats = "none"
    modifies_weights = False

    def prune(self, name, weight, stats, target):
        return PruneResult(weight.clone())


class _HooksBack(ModelMethod):
    """Prunes to the target, then hooks every layer so that each forward sees the dense weight."""

    Params = _NoParams

    def prune_model(self, ctx, target):
        from harness.core.method import LayerReport

        reports = []
        for name, mod in ctx.layers.items():
            w = ctx.weight(name)
            dense = w.clone()
            ctx.set_weight(name, w.masked_fill(prune_smallest(w.abs(), int(target.sparsity * w.shape[1])), 0))
            mod.register_forward_pre_hook(lambda m, args, d=dense: m.weight.data.copy_(d.reshape(m.weight.shape)))
            reports.append(LayerReport(name, ctx.blocks[name], *w.shape, None, 0.0))
        return reports


class _Transposed(LayerMethod):
    Params = _NoParams
    stats = "none"

    def prune(self, name, weight, stats, target):
        return PruneResult(weight.t().contiguous())


class _MutatesHessian(LayerMethod):
    """Magnitude pruning that zeroes the Hessian it was handed (its layers' errors would read 0)."""

    Params = _NoParams
    stats = "hessian"

    def prune(self, name, weight, stats, target):
        stats.hessian.zero_()
        return PruneResult(weight.masked_fill(prune_smallest(weight.abs(), int(target.sparsity * weight.shape[1])), 0))


class _MutatesWeight(LayerMethod):
    """Prunes the weight view it was handed in place and returns it (its errors would read 0)."""

    Params = _NoParams
    stats = "hessian"

    def prune(self, name, weight, stats, target):
        weight.masked_fill_(prune_smallest(weight.abs(), int(target.sparsity * weight.shape[1])), 0)
        return PruneResult(weight)


HOSTILE = {"claims_dense": (_ClaimsDense, "measured sparsity out of tolerance"),
           "hooks_back": (_HooksBack, "1 forward pre hook(s) (and 27 more) on the pruned model"),
           "transposed": (_Transposed, "returned a weight of shape"),
           "mutates_hessian": (_MutatesHessian, "modified the statistics (hessian) it was handed"),
           "mutates_weight": (_MutatesWeight, "modified the weight it was handed")}


@pytest.fixture(scope="module")
def plugins():
    names = {"stochastic": _Stochastic, **{k: v[0] for k, v in HOSTILE.items()}}
    for name, cls in names.items():
        register_method(name)(cls)
    yield
    for name in names:
        METHODS.unregister(name)


def test_suite_b_reuses_suite_a_and_runs_only_what_is_missing(tmp_path, plugins):
    store = Store(tmp_path / "db" / "s.duckdb")
    a = run_suite(suite(tmp_path, "suite_a", "[dense, magnitude, wanda, sparsegpt]"), store=store, device="cpu")
    assert [r.status for r in a] == ["ok"] * 4
    before = {r.spec.run_id: store.read(r.spec.run_id) for r in a}
    extra = "    - {dataset: pydoc, seqlen: 64, max_windows: 8}\n"
    b_suite = suite(tmp_path, "suite_b", "[stochastic, dense, magnitude, wanda, sparsegpt]", extra)
    b = run_suite(b_suite, store=store, device="cpu")
    assert [r.status for r in b] == ["ok"] * 5
    assert {r.spec.run_id for r in a} <= {r.spec.run_id for r in b}  # the same pruned models, whatever suite
    for run_id, old in before.items():
        new = store.read(run_id)
        assert new["artifact"]["sha256"] == old["artifact"]["sha256"]  # not pruned again...
        assert new["prune_time_s"] == old["prune_time_s"] and new["layers"] == old["layers"]
        assert new["suites"] == ["suite_a", "suite_b"] and len(new["evals"]) == 2  # ...only evaluated
        kept = [m for m in old["metrics"]]
        assert all(m in new["metrics"] for m in kept)  # A's numbers stay as they were
    # one row per (cell, metric) with its variant and seed; no suite makes a baseline its own
    rows = store.query("SELECT model, variant, target, seed, metric, eval_id, count(*) FROM results "
                       "GROUP BY ALL HAVING count(*) > 1")
    assert rows == []
    variants = {v for (v,) in store.query("SELECT DISTINCT variant FROM results")}
    assert variants == {"dense", "magnitude", "wanda", "sparsegpt", "stochastic"}
    assert store.query("SELECT count(*) FROM results WHERE metric = 'pydoc/ppl@64x8'") == [(5,)]
    from leaderboard.compare import compare
    from leaderboard.data import load_runs

    result = compare(load_runs(store), "stochastic")  # finds suite A's baselines on this store
    assert {d.baseline for d in result.deltas} == {"magnitude", "wanda", "sparsegpt"}
    assert {d.metric for d in result.deltas} == {"pydoc/ppl@128x8", "pydoc/ppl@64x8"}


def test_a_rerun_of_the_same_suite_runs_nothing_and_force_prunes_again(tmp_path):
    store = Store(tmp_path / "db" / "s.duckdb")
    s = suite(tmp_path, "one", "[magnitude]")
    (first,) = run_suite(s, store=store, device="cpu")
    (again,) = run_suite(s, store=store, device="cpu")
    assert again.status == "skipped"
    (forced,) = run_suite(s, store=store, device="cpu", force=True)
    record = store.read(first.spec.run_id)
    assert forced.status == "ok" and record["artifact"].get("reproduced") is True  # the same weights again


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory, plugins):
    """One store: magnitude and every hostile plugin on the zoo Llama at 50 %."""
    tmp = tmp_path_factory.mktemp("hostile")
    store = Store(tmp / "db" / "s.duckdb")
    res = run_suite(suite(tmp, "hostile", f"[magnitude, {', '.join(sorted(HOSTILE))}]"), store=store, device="cpu")
    return store, {r.spec.method: r for r in res}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_plugin_fails_with_one_line(hostile_store, name):
    store, results = hostile_store
    res = results[name]
    assert res.status == "failed", res.error
    assert HOSTILE[name][1] in res.error and "\n" not in res.error
    assert store.query("SELECT status, pruned FROM runs WHERE method = ?", [name]) == [("failed", False)]


def test_hostile_plugins_are_never_best_and_fail_the_compare_gate(hostile_store, tmp_path):
    import subprocess
    import sys

    store, results = hostile_store
    assert results["magnitude"].status == "ok"
    from leaderboard.compare import compare
    from leaderboard.data import load_runs

    for name in HOSTILE:
        result = compare(load_runs(store), name, ["magnitude"])
        assert result.worse and all(d.label == "failed (baseline ok)" for d in result.worse), name
    out = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "harness.cli", "leaderboard", "build", "--db", str(store.db_path),
                    "--out", str(out)], check=True, capture_output=True)
    html = (out / "index.html").read_text(encoding="utf-8")
    for name in HOSTILE:  # a failed row carries no best or lead mark
        rows = [r for r in html.split("<tr") if f'data-method="{name}"' in r]
        assert rows and all('class="failed"' in r.split(">")[0] for r in rows), name  # shown as failed...
        assert not any(re.search(r'class="[^"]*\b(best|lead)\b', r) for r in rows), name  # ...and never marked


def test_leftovers_name_hooks_and_a_patched_forward():
    """What a method may not leave on the model it pruned (the cell fails naming the first)."""
    from harness.run.artifacts import leftovers

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert leftovers(model) == []
    model[0].register_forward_pre_hook(lambda m, a: None)
    model.forward = lambda x: x
    assert leftovers(model) == ["the model: forward replaced on the instance", "0: 1 forward pre hook(s)"]


def test_methods_get_the_cell_seed(tmp_path, plugins):
    store = Store(tmp_path / "db" / "s.duckdb")
    res = run_suite(suite(tmp_path, "seeded", "[stochastic]", seeds="[0, 1]"), store=store, device="cpu")
    ppl = {r.spec.seed: r.metrics["pydoc/ppl@128x8"] for r in res}
    assert ppl[0] != ppl[1]  # the cell seed reaches the method
    record = store.read(res[1].spec.run_id)
    assert record["prune_info"]["seed"] == 1
    again = run_suite(suite(tmp_path, "seeded_again", "[stochastic]", seeds="[1]"), store=store, device="cpu",
                      force=True)
    assert again[0].metrics["pydoc/ppl@128x8"] == ppl[1]  # and each seed reproduces


def test_variants_and_seeds_are_never_mixed(tmp_path):
    store = Store(tmp_path / "db" / "s.duckdb")
    methods = "[wanda, {name: wanda, sparsity_profile: owl}, {name: sparsegpt, params: {blocksize: 64}, label: sg64}]"
    res = run_suite(suite(tmp_path, "variants", methods, seeds="[0, 1]"), store=store, device="cpu")
    assert all(r.status == "ok" for r in res) and len(res) == 6
    rows = store.query("SELECT variant, seed, count(*) FROM results WHERE metric = 'pydoc/ppl@128x8' "
                       "GROUP BY ALL ORDER BY ALL")
    assert rows == [("sg64", 0, 1), ("sg64", 1, 1), ("wanda", 0, 1), ("wanda", 1, 1),
                    ("wanda+owl", 0, 1), ("wanda+owl", 1, 1)]
    params = store.query("SELECT DISTINCT params FROM results WHERE variant = 'sg64'")
    assert json.loads(params[0][0])["blocksize"] == 64


def test_variant_names():
    from harness.core.spec import SparsityProfile
    from harness.core.variants import variant_name

    assert variant_name("wanda", {}, {}) == "wanda"
    assert variant_name("sparsegpt", {"blocksize": 64, "dampening_frac": 0.01},
                        {"blocksize": 128, "dampening_frac": 0.01}) == "sparsegpt(blocksize=64)"
    assert variant_name("wanda", {}, {}, SparsityProfile()) == "wanda+owl"
    assert variant_name("wanda", {}, {}, SparsityProfile(m=7.0)) == "wanda+owl(owl.m=7.0)"
    assert variant_name("wanda", {}, {}, SparsityProfile(), label="mine") == "mine"


def test_keep_none_drops_the_weights_and_a_new_evaluation_prunes_again(tmp_path):
    store = Store(tmp_path / "db" / "s.duckdb")
    path = tmp_path / "k.yaml"
    path.write_text(f"name: k\nmodels: [zoo:tiny-llama]\nmethods: [magnitude]\ntargets: [0.5]\nkeep: none\n{CAL}"
                    f"evals:\n  perplexity:\n{PPL}")
    (first,) = run_suite(load_suite(path), store=store, device="cpu")
    record = store.read(first.spec.run_id)
    assert record["artifact"]["kept"] is False and not list((store.root / "artifacts").glob("*.safetensors"))
    (again,) = run_suite(suite(tmp_path, "k2", "[magnitude]", "    - {dataset: pydoc, seqlen: 64, max_windows: 8}\n"),
                         store=store, device="cpu")
    record = store.read(first.spec.run_id)
    assert again.status == "ok" and record["artifact"]["reproduced"] is True  # pruned again: the same weights
    assert record["metrics"][0] == store.read(first.spec.run_id)["metrics"][0] and len(record["evals"]) == 2


def _v1_record(suite_name: str, perplexity: list[dict], value: float) -> dict:
    """A record as sparsebench wrote it before the identity changed (record and spec version 1)."""
    import hashlib

    from harness.core.spec import CalibrationSpec, ModelSpec, RunSpec, canonical_json

    spec = RunSpec(suite=suite_name, model=ModelSpec("zoo:tiny-llama"), method="sparsegpt",
                   params={"blocksize": 128, "dampening_frac": 0.01}, target="0.5", calibration=CalibrationSpec())
    old = {**spec.to_dict(), "suite": suite_name, "perplexity": perplexity, "version": 1}
    spec_json = canonical_json(old)
    names = [f"{p['dataset']}/ppl@{p['seqlen']}" for p in perplexity]
    return {"record_version": 1, "run_id": hashlib.sha256(spec_json.encode()).hexdigest(), "spec": old,
            "spec_json": spec_json, "suite": suite_name, "suite_text": f"name: {suite_name}\n",
            "model": "zoo:tiny-llama", "method": "sparsegpt", "target": "0.5", "seed": 0, "status": "ok",
            "started_at": "2026-01-02T03:04:05+00:00", "finished_at": "2026-01-02T03:04:06+00:00",
            "sparsity": {"global": 0.5, "nm_compliant": None}, "environment": {}, "eval_info": {},
            "metrics": [{"name": n, "value": value, "stderr": None, "n": 10} for n in names]}


def test_a_version_1_store_migrates_and_old_ids_resolve(tmp_path):
    from harness.plugins import method_defaults
    from harness.store.migrate import set_method_defaults

    set_method_defaults(method_defaults)
    store = Store(tmp_path / "db" / "s.duckdb")
    a = _v1_record("suite_a", [{"dataset": "pydoc", "seqlen": 128, "max_windows": None}], 54.8)
    b = _v1_record("suite_b", [{"dataset": "pydoc", "seqlen": 128, "max_windows": None},
                               {"dataset": "pydoc", "seqlen": 64, "max_windows": None}], 54.8)
    for rec in (a, b):
        (store.runs_dir / rec["run_id"]).mkdir(parents=True)
        (store.runs_dir / rec["run_id"] / "record.json").write_text(json.dumps(rec))
    assert store.reindex() == 1  # two suites' records of one pruned model: one record now
    (run_id, variant, suites, aliases), = store.query("SELECT run_id, variant, suites_json, aliases_json FROM runs")
    assert variant == "sparsegpt" and json.loads(suites) == ["suite_a", "suite_b"]
    assert sorted(json.loads(aliases)) == sorted([a["run_id"], b["run_id"]])
    assert store.aliases(a["run_id"][:10]) == [run_id]
    rows = store.query("SELECT metric, value, eval_id IS NOT NULL FROM results ORDER BY metric")
    assert rows == [("pydoc/ppl@128", 54.8, True), ("pydoc/ppl@64", 54.8, True)]
    assert sorted(p.name for p in (store.root / "migrated").iterdir()) == sorted([a["run_id"], b["run_id"]])
