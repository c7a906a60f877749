"""lm-eval through the adapter: faithful to lm-eval, re-evaluated after pruning, offline, validated.

The model tests use the shipped zoo Llama and ``limit`` so the file stays fast on two busy
cores; the offline minimal-pair tasks split the same first sentences at different places, so
the cache collision (offline-notes §3, pitfall 2) is exercised even under a limit.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness.evaluate import lm_eval_adapter as adapter
from harness.evaluate.lm_tasks import TASK_DIR, build
from harness.core.spec import LmEvalSpec, ModelSpec, RunSpec, CalibrationSpec
from harness.suite.loader import SuiteError, expand, load_suite

REPO = Path(__file__).parent.parent
LIMIT = 8  # items per task in the model tests


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama():
    from harness.models.load import load_model

    return load_model(ModelSpec("zoo:tiny-llama"))


def run_adapter(loaded, tasks, limit=LIMIT, **kw):
    spec = LmEvalSpec(tasks=tuple(tasks), limit=limit, **kw)
    rows, info = adapter.evaluate_lm_eval(loaded.model, loaded.tokenizer, spec, device="cpu",
                                          model_id="zoo:tiny-llama")
    return {r["name"]: r for r in rows}, info


def run_direct(loaded, tasks, limit=LIMIT, logits_cache=False):
    """lm-eval as offline-notes §3 calls it, with no adapter in between."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=16, device="cpu",
              max_length=128, logits_cache=logits_cache)
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit,
                                   num_fewshot=0, log_samples=False)["results"]


# ------------------------------------------------------------------------ with a model


def test_adapter_gives_lm_eval_numbers(llama):
    tasks = ["tiny_context", "tiny_corrupt", "tiny_wiki"]
    rows, info = run_adapter(llama, tasks)
    direct = run_direct(llama, tasks)
    expected = {f"{t}/{k.split(',')[0]}": v for t in tasks for k, v in direct[t].items()
                if k.endswith(",none") and "_stderr" not in k}
    assert {n: r["value"] for n, r in rows.items()} == expected
    assert rows["tiny_context/acc"]["stderr"] == direct["tiny_context"]["acc_stderr,none"]
    assert rows["tiny_wiki/bits_per_byte"]["stderr"] is None  # lm-eval says "N/A"
    assert rows["tiny_context/acc"]["n"] == LIMIT and rows["tiny_wiki/bits_per_byte"]["n"] == min(LIMIT, 8)
    assert {n for n, r in rows.items() if r["headline"]} == {"tiny_context/acc", "tiny_corrupt/acc",
                                                            "tiny_wiki/bits_per_byte"}
    assert info["lm_eval_version"] and info["task_versions"]["tiny_context"] == "2.0"
    assert info["max_length"] == 128 and info["logits_cache"] is False and info["use_cache"] is None
    assert info["include_defaults"] is False and set(info["offline_data"]["sha256"]) == set(tasks)


def test_tasks_together_equal_tasks_alone(llama):
    # tiny_corrupt and tiny_swap split the same sentences at different places (each item's
    # context is the words before its change): with lm-eval's logits cache on, the shared
    # token sequences corrupt the scores (pitfall 2).
    both, _ = run_adapter(llama, ["tiny_corrupt", "tiny_swap"])
    alone = {**run_adapter(llama, ["tiny_corrupt"])[0], **run_adapter(llama, ["tiny_swap"])[0]}
    assert {n: r["value"] for n, r in both.items()} == {n: r["value"] for n, r in alone.items()}
    cached = run_direct(llama, ["tiny_corrupt", "tiny_swap"], logits_cache=True)
    uncached = run_direct(llama, ["tiny_corrupt", "tiny_swap"])
    assert uncached["tiny_corrupt"]["acc,none"] == both["tiny_corrupt/acc"]["value"]
    assert (cached["tiny_corrupt"]["acc,none"], cached["tiny_swap"]["acc,none"]) != \
        (both["tiny_corrupt/acc"]["value"], both["tiny_swap/acc"]["value"])  # the test can fail


def test_same_model_is_reevaluated_after_pruning():
    import torch

    from harness.drivers.lm import prune_sequential
    from harness.core.method import build_params
    from harness.plugins import get_method
    from harness.models.load import load_model
    from harness.core.target import Target

    loaded = load_model(ModelSpec("zoo:tiny-llama"))  # its own copy: it is pruned in place
    dense = run_adapter(loaded, ["tiny_wiki"], limit=2)[0]["tiny_wiki/bits_per_byte"]["value"]
    cls = get_method("magnitude")
    prune_sequential(loaded.model, [], cls(build_params(cls, {})), Target.parse("0.9"), measure_error=False)
    assert float((loaded.model.model.layers[0].mlp.up_proj.weight == 0).float().mean()) == pytest.approx(0.9, abs=0.01)
    with torch.no_grad():
        pruned = run_adapter(loaded, ["tiny_wiki"], limit=2)[0]["tiny_wiki/bits_per_byte"]["value"]
    assert pruned > dense + 0.3  # about 1.8 -> 3 bits per byte


def test_lm_eval_leaves_global_rng_alone(llama):
    import random

    import torch

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expect = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    run_adapter(llama, ["tiny_swap"], limit=2)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expect


def test_missing_hub_data_fails_in_one_line(llama, monkeypatch):
    import lm_eval

    def offline(**kw):
        raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(lm_eval, "simple_evaluate", offline)
    spec = LmEvalSpec(tasks=("hellaswag", "tiny_context"))
    with pytest.raises(adapter.TaskDataUnavailable, match=r"data for hellaswag is not available .*HF_HOME"):
        adapter.evaluate_lm_eval(llama.model, llama.tokenizer, spec, device="cpu", model_id="zoo:tiny-llama",
                                 cache={True: object()})  # a stand-in for the 5 s built-in task index


def test_run_suite_stores_lm_eval_rows(tmp_path, monkeypatch):
    from harness.run.runner import run_suite
    from harness.store.index import Store
    from harness.store.records import read_record

    monkeypatch.chdir(tmp_path)  # data paths must not depend on the working directory
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""
        name: lm
        models: [zoo:tiny-llama]
        methods: [dense]
        calibration: {dataset: pydoc, n_samples: 4, seqlen: 64}
        evals:
          perplexity: [{dataset: pydoc, seqlen: 128, max_windows: 2}]
          lm_eval: {tasks: [tiny_corrupt, tiny_wiki], limit: 4, metrics: {tiny_corrupt: acc_norm}}
        """))
    store = Store(tmp_path / "r" / "s.duckdb")
    [res] = run_suite(load_suite(path), store=store, device="cpu")
    assert res.status == "ok", res.error
    rows = dict(store.query("SELECT metric, value FROM results WHERE status = 'ok'"))
    assert {"pydoc/ppl@128x2", "tiny_corrupt/acc", "tiny_corrupt/acc_norm", "tiny_wiki/bits_per_byte"} <= set(rows)
    n, stderr = store.query("SELECT n, stderr FROM metrics WHERE metric = 'tiny_wiki/bits_per_byte'")[0]
    assert n == 4 and stderr is None
    record = read_record(store.run_dir(res.spec.run_id) / "record.json")
    assert record["publishable"] is False  # limit set
    assert record["eval_info"]["lm_eval"]["limit"] == 4
    assert [m["name"] for m in record["metrics"] if m.get("headline")] == ["tiny_corrupt/acc_norm",
                                                                          "tiny_wiki/bits_per_byte"]
    (lm,) = [e for e in record["evals"].values() if e["kind"] == "lm_eval"]
    assert lm["spec"]["tasks"] == ["tiny_corrupt", "tiny_wiki"] and lm["publishable"] is False


# -------------------------------------------------------------------------- no model


def test_flatten_results():
    results = {
        "results": {
            "t": {"alias": "t", "name": "t", "sample_len": 5, "acc,none": 0.5, "acc_stderr,none": np.float64(0.1),
                  "bits_per_byte,none": 1.5, "bits_per_byte_stderr,none": "N/A",
                  "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.05},
            "w": {"alias": "w", "word_perplexity,none": 12.0, "word_perplexity_stderr,none": "N/A"},
            "g": {"alias": "g", "acc,none": np.float64(0.4), "acc_stderr,none": np.float64(0.02),
                  "sample_count": {"acc,none": 5}},
        },
        "group_subtasks": {"g": ["t", "w"]},
        "n-samples": {"t": {"original": 9, "effective": 5}, "w": {"original": 3, "effective": 3}},
    }
    rows = adapter.flatten_results(results)
    assert rows == [
        {"name": "t/acc", "value": 0.5, "stderr": 0.1, "n": 5, "headline": False},
        {"name": "t/bits_per_byte", "value": 1.5, "stderr": None, "n": 5, "headline": False},
        {"name": "t/exact_match:strict-match", "value": 0.25, "stderr": 0.05, "n": 5, "headline": False},
        {"name": "w/word_perplexity", "value": 12.0, "stderr": None, "n": 3, "headline": False},
        {"name": "g/acc", "value": 0.4, "stderr": 0.02, "n": 5, "headline": False},
    ]
    assert all(type(r["value"]) is float and type(r["stderr"]) in (float, type(None)) for r in rows)

    adapter.mark_headlines(rows, ("t", "w", "g"), {"t": "bits_per_byte"})
    assert [r["name"] for r in rows if r["headline"]] == ["t/bits_per_byte", "g/acc"]  # w: no acc, none declared
    with pytest.raises(ValueError, match="reported no 'acc_norm'"):
        adapter.mark_headlines(rows, ("t",), {"t": "acc_norm"})


def test_headline_table_follows_the_wanda_protocol():
    assert set(adapter.WANDA_TASKS) <= set(adapter.KNOWN_TASKS)
    assert {adapter.HEADLINE_METRICS[t] for t in adapter.WANDA_TASKS} == {"acc"}  # hellaswag: acc, not acc_norm
    assert adapter.HEADLINE_METRICS["mmlu"] == "acc" and adapter.HEADLINE_METRICS["tiny_wiki"] == "bits_per_byte"


def _yaml_configs():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return {p.name: yaml.load(p.read_text(), Loader=Loader) for p in sorted(TASK_DIR.glob("*.yaml"))}


def test_shipped_task_configs_match_the_table():
    configs = _yaml_configs()
    offline = {name: info for name, info in adapter.KNOWN_TASKS.items() if info.offline}
    names = {c.get("task") if "task" in c and isinstance(c["task"], str) else c["group"] for c in configs.values()}
    assert names == set(offline)
    for c in configs.values():
        if "group" in c:
            assert tuple(c["task"]) == offline[c["group"]].subtasks
        else:
            assert {m["metric"] for m in c["metric_list"]} == set(offline[c["task"]].metrics)
            assert c["custom_dataset"].startswith("utils.load_")  # no data_files: CWD-independent


def test_shipped_data_is_the_deterministic_build():
    fresh = build.render()
    assert {p.name for p in (TASK_DIR / "data").iterdir()} == set(fresh)  # no stale task data
    for name, text in fresh.items():
        shipped = (TASK_DIR / "data" / name).read_text(encoding="utf-8")
        assert shipped == text, f"{name} differs from a fresh build: run python -m harness.evaluate.lm_tasks.build"
    assert build.render(seed=1)["tiny_corrupt.jsonl"] != fresh["tiny_corrupt.jsonl"]


def _truth(item):
    """The text an item's gold answer spells, as it stands in the corpus."""
    if "contexts" in item:
        return item["contexts"][item["label"]] + item["continuation"]
    return " ".join(filter(None, [item["context"], item["choices"][item["label"]]]))


def test_task_data_comes_from_the_held_out_split():
    from harness.models.zoo import corpus_documents

    unseen = build.unseen_filter(corpus_documents("train"))
    test = "\n".join(corpus_documents("test"))
    flat = " ".join(test.split())
    items = build.build()
    for task in build.MC_TASKS:
        assert len(items[task]) >= 420  # 2 choices: acc_stderr < 2 points from 80 % up (the benchmark checks it)
        for item in items[task]:
            options = item.get("contexts") or item["choices"]
            assert len(options) == 2 and len(set(options)) == 2 and item["label"] in (0, 1)
        assert 0.4 < sum(item["label"] for item in items[task]) / len(items[task]) < 0.6
        sample = [_truth(items[task][i]) for i in range(0, 400, 20)]
        assert all(" ".join(s.split()) in flat for s in sample), task
        assert all(unseen(_truth(item)) for item in items[task]), task  # no 8 words in a row from train
    assert not unseen(" ".join(corpus_documents("train")[0].split()[:20]))  # the test can fail
    for item in items["tiny_context"][:50]:  # the true context is the text just before the continuation
        assert item["contexts"][item["label"]] + item["continuation"] in test


def test_minimal_pairs_differ_in_one_word_or_one_adjacent_swap():
    items = build.build()
    for item in items["tiny_corrupt"]:
        a, b = (c.split() for c in item["choices"])
        assert len(a) == len(b) and a[0] != b[0] and a[1:] == b[1:]  # the first word of the choice
    for item in items["tiny_swap"]:
        a, b = (c.split() for c in item["choices"])
        assert a[:2] == b[1::-1] and a[2:] == b[2:]
    assert all(item["context"] for task in ("tiny_corrupt", "tiny_swap") for item in items[task])



def test_average_zero_shot_uses_only_the_declared_tasks():
    from dataclasses import replace

    from harness.core.metrics import AVERAGED_OFFLINE_TASKS, AVERAGED_TASKS, in_zero_shot_average
    from leaderboard.build import build_table, table_metrics
    from leaderboard.data import MetricValue, Run

    # one list: tiny_suite runs exactly the averaged offline tasks (and tiny_wiki)
    suite = adapter.KNOWN_TASKS["tiny_suite"].subtasks
    assert set(AVERAGED_OFFLINE_TASKS) == {t for t in suite if t in build.MC_TASKS}
    assert set(suite) == {*AVERAGED_OFFLINE_TASKS, "tiny_wiki"}
    assert {"tiny_corrupt", "tiny_swap"}.isdisjoint(AVERAGED_TASKS)  # measured: they fail the rule
    assert set(adapter.WANDA_TASKS) <= set(AVERAGED_TASKS)
    assert in_zero_shot_average("tiny_context/acc") and in_zero_shot_average("hellaswag/acc_norm")
    for name in ("tiny_corrupt/acc", "tiny_swap/acc", "tiny_suite/acc", "mmlu/acc", "piqa/acc",
                 "tiny_wiki/bits_per_byte", "arc_easy/acc:some-filter", "pydoc/ppl@128"):
        assert not in_zero_shot_average(name), name

    base = Run("a" * 64, "s", "zoo:tiny-llama", "dense", "0", 0, "ok", None, None, {}, None,
               None, None, None, None, "cpu", 0.0, None, None)
    metrics = {"tiny_context/acc": MetricValue(0.9, 0.01, 1040, True),
               "arc_easy/acc": MetricValue(0.6, 0.01, 2376, True),
               "tiny_corrupt/acc": MetricValue(0.8, 0.02, 512, True),  # shown, not averaged
               "tiny_corrupt/acc_norm": MetricValue(0.1, 0.02, 512, False),
               "tiny_swap/acc": MetricValue(0.95, 0.01, 435, True),
               "tiny_suite/acc": MetricValue(0.9, 0.01, 1040, True),
               "mmlu/acc": MetricValue(0.3, 0.01, 100, True),
               "tiny_wiki/bits_per_byte": MetricValue(1.8, None, 8, True)}
    dense = replace(base, metrics=metrics)
    pruned = replace(base, run_id="b" * 64, method="magnitude", target="0.5",
                     metrics={**metrics, "tiny_context/acc": MetricValue(0.7, 0.01, 1040, True),
                              "tiny_swap/acc": MetricValue(0.99, 0.01, 435, True)})
    infos, averaged = table_metrics([dense, pruned])
    assert averaged == ["arc_easy/acc", "tiny_context/acc"]
    assert {"tiny_corrupt/acc", "tiny_swap/acc", "tiny_suite/acc", "mmlu/acc"} <= {i.name for i in infos}
    t = build_table([pruned, dense], suite="s", family="llama", table_id="t")
    col = t.column("avg")
    assert t.columns[col].title == "mean of: arc_easy/acc, tiny_context/acc"
    by_method = {r.method: r for r in t.rows}
    assert by_method["dense"].cells[col].value == pytest.approx((0.6 + 0.9) / 2)
    assert by_method["magnitude"].cells[col].value == pytest.approx((0.6 + 0.7) / 2)
    assert by_method["magnitude"].cells[t.column("r:avg")].value == pytest.approx(100 * 0.65 / 0.75)



def test_keep_rule_of_the_zero_shot_benchmark():
    from benchmarks.zero_shot_tasks import verdict

    def cells(dense, mag50, mag70, random50, se=0.01):
        accs = {"dense": dense, "mag50": mag50, "mag70": mag70, "sparsegpt50": dense, "random50": random50}
        return {col: {"t": (acc, se, 1000)} for col, acc in accs.items()}

    assert verdict("t", cells(0.88, 0.88, 0.84, 0.71), 0.5) == []
    assert verdict("t", cells(0.88, 0.885, 0.84, 0.50), 0.5) == []  # up less than a stderr; random at chance
    assert verdict("t", cells(0.88, 0.87, 0.86, 0.71), 0.5) == ["mag70 < 3 stderr below dense"]
    assert verdict("t", cells(0.97, 0.96, 0.90, 0.71), 0.5) == ["dense 97.0 outside [chance+20, 95]"]
    assert verdict("t", cells(0.283, 0.274, 0.274, 0.292, se=0.043), 0.25) == [  # the old tiny_cloze
        "stderr 4.3 > 2", "dense 28.3 outside [chance+20, 95]", "mag70 < 3 stderr below dense"]
    assert verdict("t", cells(0.88, 0.88, 0.84, 0.85), 0.5) == [
        "random50 neither at chance nor >= 5 stderr below dense"]
    assert verdict("t", cells(0.80, 0.82, 0.70, 0.5), 0.5) == ["rises with sparsity"]
    assert verdict("t", cells(1.0, 1.0, 0.99, 0.97, se=0.0), 0.25) == ["dense 100.0 outside [chance+20, 95]"]


def test_random_pruning_control_prunes_each_row_by_the_target():
    import torch

    from benchmarks.zero_shot_tasks import register_random
    from harness.core.method import METHODS
    from harness.core.target import Target

    registered = "random" not in METHODS
    register_random()
    try:
        cls = METHODS.get("random")
        w = torch.randn(6, 40)
        out = cls(cls.Params()).prune("l.weight", w, None, Target(0.5)).weight
        assert ((out == 0).sum(dim=1) == 20).all() and torch.equal(out[out != 0], w[out != 0])
        again = cls(cls.Params()).prune("l.weight", w, None, Target(0.5)).weight
        assert torch.equal(out, again)  # seeded by the layer's name
        assert not torch.equal(out, cls(cls.Params()).prune("m.weight", w, None, Target(0.5)).weight)
    finally:
        if registered:  # a benchmark-only method: keep it out of the other tests' registry
            METHODS.unregister("random")


# ------------------------------------------------------------------------- validation


def write(tmp_path, lm_eval_block, name="s.yaml"):
    path = tmp_path / name
    path.write_text("name: s\nmodels: [zoo:tiny-llama]\nmethods: [dense]\nevals:\n  lm_eval:\n"
                    + textwrap.indent(textwrap.dedent(lm_eval_block), "    "))
    return path


def errors(path):
    with pytest.raises(SuiteError) as exc:
        load_suite(path)
    return str(exc.value).splitlines()


def test_validation_rejects_unknown_tasks_and_keys_with_file_line(tmp_path):
    path = write(tmp_path, """\
        tasks: [tiny_context, hellaswg, arc_easy]
        bach_size: 8
        limit: 0
        metrics: {arc_easy: acc_nrm, piqa: acc}
        """)
    lines = errors(path)
    assert len(lines) == 5, lines
    assert lines[0].startswith(f"{path}:6: evals.lm_eval.tasks[1]: Unknown lm-eval task 'hellaswg'. Did you mean: hellaswag?")
    assert "allow_unknown_tasks: true" in lines[0]
    assert lines[1] == (f"{path}:7: evals.lm_eval: unknown key 'bach_size' (did you mean 'batch_size'?); valid keys: "
                        "tasks, num_fewshot, batch_size, limit, max_length, metrics, allow_unknown_tasks")
    assert lines[2].startswith(f"{path}:8: evals.lm_eval.limit: expected null, an integer >= 1")
    assert lines[3].startswith(f"{path}:9: evals.lm_eval.metrics.arc_easy: task 'arc_easy' reports no metric "
                               "'acc_nrm'. Did you mean: acc_norm?")
    assert lines[4].startswith(f"{path}:9: evals.lm_eval.metrics.piqa: 'piqa' is not among the tasks run")


def test_allow_unknown_tasks(tmp_path):
    suite = load_suite(write(tmp_path, "tasks: [lambada_openai, hellaswag]\nallow_unknown_tasks: true\n"
                                       "metrics: {lambada_openai: perplexity}\n"))
    assert suite.lm_eval.tasks == ("lambada_openai", "hellaswag")
    assert adapter.needs_hub(suite.lm_eval)
    assert any("does not look like" in e for e in errors(write(tmp_path, "tasks: ['a b']\nallow_unknown_tasks: true\n")))


def test_spec_identity_and_publishable(tmp_path):
    base = dict(suite="s", model=ModelSpec("zoo:tiny-llama"), method="dense", params={}, target="0",
                calibration=CalibrationSpec())
    plain = RunSpec(**base)
    assert "lm_eval" not in plain.to_dict() and plain.publishable and plain.evals() == []
    spec = RunSpec(**base, lm_eval=LmEvalSpec(tasks=("tiny_suite",)))
    assert spec.run_id == plain.run_id and spec.publishable  # evaluations are not the pruned model's identity
    (lm,) = spec.evals()
    assert RunSpec(**base, lm_eval=LmEvalSpec(tasks=("tiny_suite",), batch_size=2)).evals()[0].eval_id == lm.eval_id
    trial = RunSpec(**base, lm_eval=LmEvalSpec(tasks=("tiny_suite",), limit=5))
    assert trial.evals()[0].eval_id != lm.eval_id and not trial.publishable
    again = RunSpec.from_dict(json.loads(trial.canonical_json()), evals=trial.evals_dict())
    assert again.run_id == trial.run_id and again.evals()[0].eval_id == trial.evals()[0].eval_id

    suite = load_suite(write(tmp_path, "tasks: [tiny_suite]\nlimit: 0.5\n"))
    assert {c.lm_eval for c in expand(suite)} == {LmEvalSpec(tasks=("tiny_suite",), limit=0.5)}


def test_shipped_suites_validate_without_torch_or_lm_eval():
    code = ("import sys; from harness.suite.loader import load_suite; "
            "s = [load_suite(f'suites/{n}.yaml') for n in ('quickstart', 'smoke', 'llm_50pct')]; "
            "assert s[0].lm_eval and s[1].lm_eval and set(s[2].lm_eval.tasks) >= {'boolq', 'winogrande'}; "
            "bad = [m for m in ('torch', 'lm_eval', 'datasets') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
