"""Fixture stores for the leaderboard and ``harness compare`` tests (and the browser test).

Every number here is FABRICATED for tests: none is a measurement or a published value. The
reproduced Llama-2-7B rows of :func:`build_llama2_fixture_db` exist only to show the gaps to the
shipped published numbers (``leaderboard/reported/wanda_llama2.yaml``); nothing ran a Llama-2 here.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from harness.core.spec import (CalibrationSpec, LmEvalSpec, ModelSpec, PerplexitySpec, RunSpec,
                               SparsityProfile)
from harness.core.variants import variant_name
from harness.store.index import Store

REPO = Path(__file__).resolve().parents[1]
XSS_MODEL = "zoo:llama-<script>alert(1)</script>"
SUITE_TEXT = "name: demo\n# <b>not bold</b> & friends\nmodels: [zoo:tiny-llama]\n"
SUITE_PATH = "/srv/sparsebench/suites/demo.yaml"
PLUGIN_ORIGIN = "sb-random==0.0.1"
OLD_ID = hashlib.sha256(b"the same cell under its version 1 run id").hexdigest()
# A TEST-ONLY reported-numbers file (fabricated values, labelled as such in the file).
REPORTED_FIXTURE = REPO / "tests" / "fixtures" / "leaderboard" / "reported"

# (model, method, target, ppl, arc_easy acc, hellaswag acc_norm); ppl None = failed run.
GRID = [
    ("zoo:tiny-llama", "dense", "0", 20.0, 0.70, 0.50),
    ("zoo:tiny-llama", "magnitude", "0.5", 30.0, 0.60, 0.44),
    ("zoo:tiny-llama", "wanda", "0.5", 25.0, 0.65, 0.46),
    ("zoo:tiny-llama", "sparsegpt", "0.5", 24.0, 0.66, 0.47),
    ("zoo:tiny-llama", "magnitude", "0.7", 300.0, 0.40, 0.30),
    ("zoo:tiny-llama", "wanda", "0.7", 80.0, 0.50, 0.36),
    ("zoo:tiny-llama", "sparsegpt", "0.7", 60.0, 0.52, 0.38),
    ("zoo:tiny-llama", "magnitude", "2:4", None, None, None),
    ("zoo:tiny-llama", "wanda", "2:4", 40.0, 0.55, 0.40),
    ("zoo:tiny-llama", "sparsegpt", "2:4", 36.0, 0.58, 0.41),
    ("hf:facebook/opt-125m", "dense", "0", 27.66, 0.43, 0.29),
    ("hf:facebook/opt-125m", "magnitude", "0.5", 193.0, 0.38, 0.27),
    ("hf:facebook/opt-125m", "sparsegpt", "0.5", 37.0, 0.41, 0.28),
    (XSS_MODEL, "dense", "0", 10.0, None, None),
    (XSS_MODEL, "wanda", "0.5", 12.5, None, None),
]
# A second suite on the same protocol: more seeds, an OWL variant, a third-party method (one of
# its cells failed the sparsity gate). (model, method, target, seed, ppl, acc, acc_norm, profile)
SEEDS = [
    ("zoo:tiny-llama", "dense", "0", 1, 20.0, 0.70, 0.50, False),
    ("zoo:tiny-llama", "wanda", "0.5", 1, 25.6, 0.635, 0.455, False),
    ("zoo:tiny-llama", "wanda", "0.7", 1, 82.0, 0.49, 0.35, False),
    ("zoo:tiny-llama", "sparsegpt", "0.7", 1, 61.0, 0.53, 0.38, False),
    ("zoo:tiny-llama", "wanda", "0.7", 0, 50.0, 0.51, 0.37, True),
    ("zoo:tiny-llama", "wanda", "0.7", 1, 50.4, 0.52, 0.37, True),
    ("zoo:tiny-llama", "random", "0.5", 0, 299.0, 0.30, 0.26, False),
    ("zoo:tiny-llama", "random", "0.5", 1, 323.7, 0.29, 0.25, False),
    ("zoo:tiny-llama", "random", "0.7", 0, None, None, None, False),
]


def make_record(model: str, method: str, target: str, ppl: float | None, acc: float | None,
                acc_norm: float | None, suite: str = "demo", *, seed: int = 0, owl: bool = False,
                calibration: tuple[str, int, int] = ("pydoc", 128, 128), ppl_eval: tuple[str, int] = ("pydoc", 128),
                suite_path: str | None = SUITE_PATH, trial: bool = False) -> dict:
    """A complete, valid record as the runner writes it (run id = hash of the pruned model's spec)."""
    params = {"note": "<img src=x onerror=alert(2)>"} if method == "wanda" else {}
    lm = None if acc is None and ppl is not None else LmEvalSpec(("arc_easy", "hellaswag"), limit=10 if trial else None)
    spec = RunSpec(suite=suite, model=ModelSpec(model), method=method, params=params, target=target,
                   calibration=CalibrationSpec(*calibration), perplexity=(PerplexitySpec(*ppl_eval),),
                   lm_eval=lm, seed=seed, profile=SparsityProfile() if owl else None, suite_path=suite_path)
    refs = spec.evals()
    ok = ppl is not None
    nm = ":" in target
    sparsity = 0.0 if target == "0" else (0.5 if nm else float(target) + 0.0003)
    metrics, evals = [], {}
    for ref, row in zip(refs, spec.evals_dict()):
        evals[ref.eval_id] = {"kind": ref.kind, "spec": row["spec"], "publishable": ref.publishable,
                              "suites": [suite], "status": "ok" if ok else "failed", "error": None}
    if ok:
        metrics.append({"name": f"{ppl_eval[0]}/ppl@{ppl_eval[1]}", "value": ppl, "stderr": None, "n": 80,
                        "eval_id": refs[0].eval_id})
        if acc is not None:  # lm-eval rows; the secondary one is for the run page only
            lm_id = refs[1].eval_id
            metrics += [{"name": "arc_easy/acc", "value": acc, "stderr": 0.01, "n": 2376, "headline": True,
                         "eval_id": lm_id},
                        {"name": "arc_easy/acc_norm", "value": acc - 0.02, "stderr": 0.01, "n": 2376,
                         "headline": False, "eval_id": lm_id},
                        {"name": "hellaswag/acc_norm", "value": acc_norm, "stderr": 0.005, "n": 10042,
                         "headline": True, "eval_id": lm_id}]
    layers = [{"name": f"model.layers.{b}.{p}", "block": b, "rows": 64, "cols": 64,
               "numel": 4096, "zeros": int(4096 * sparsity), "sparsity": sparsity,
               "nm_ok": True if nm else None, "rel_error": 0.0 if method == "dense" else
               0.01 * (b + 1) * (2 if p.startswith("mlp") else 1), "time_s": 0.01,
               "info": {}} for b in range(2) for p in ("self_attn.q_proj", "mlp.down_proj")]
    cuda = model.startswith("hf:")
    origin = PLUGIN_ORIGIN if method == "random" else "builtin"
    return {
        "record_version": 2, "run_id": spec.run_id, "spec": spec.to_dict(),
        "spec_json": spec.canonical_json(), "suite": suite, "suites": [suite], "suite_path": suite_path,
        "suite_text": SUITE_TEXT, "model": model, "method": method,
        "variant": variant_name(method, params, params, spec.profile), "label": None,
        "target": target, "seed": seed, "status": "ok" if ok else "failed", "pruned": ok,
        "error": None if ok else "ValueError: measured sparsity <b>out</b> of tolerance",
        "traceback": None if ok else "Traceback (most recent call last):\nValueError: <b>",
        "started_at": "2025-01-02T03:04:05+00:00", "finished_at": "2025-01-02T03:04:09+00:00",
        "wall_time_s": 4.0, "prune_time_s": 1.5 if method != "dense" else 0.0,
        "peak_rss_bytes": 2**30, "peak_cuda_bytes": 2**31 if cuda else None,
        "device": "cuda" if cuda else "cpu",
        "sparsity": {"global": sparsity if ok else None, "target": sparsity,
                     "nm_compliant": True if nm and ok else None},
        "metrics": metrics, "evals": evals, "layers": layers if ok else [],
        "series": [{"name": "calib/loss", "step": s, "value": 3.0 - 0.1 * s} for s in range(5)]
        if method == "sparsegpt" and model == "zoo:tiny-llama" and seed == 0 else [],
        "model_info": {"sha256": "ab" * 32, "num_params": 812_416 if model.startswith("zoo:") else 125_239_296},
        "publishable": not trial, "artifact": None, "aliases": [],
        "environment": {"python": "3.11.7", "packages": {"torch": "2.14.1"}, "method_origin": origin,
                        "cuda": {"device_name": "NVIDIA H100 80GB HBM3"} if cuda else None},
    }


def build_fixture_db(path: Path, seeds: bool = False) -> Path:
    """A results database of :data:`GRID` (suite demo, 15 runs) and, with ``seeds``, :data:`SEEDS`
    (suite seeds, 9 more)."""
    store = Store(path, wait_s=10)
    for row in GRID:
        record = make_record(*row, trial=row[0] == "hf:facebook/opt-125m" and row[1] == "magnitude")
        if row[:3] == ("zoo:tiny-llama", "sparsegpt", "0.5"):
            record["aliases"] = [OLD_ID]  # stored before the run id left the suite out: a redirect page
        store.save(record)
    for model, method, target, seed, ppl, acc, acc_norm, owl in SEEDS if seeds else ():
        store.save(make_record(model, method, target, ppl, acc, acc_norm, "seeds", seed=seed, owl=owl,
                               suite_path=None))
    return path


def build_llama2_fixture_db(path: Path) -> Path:
    """FABRICATED reproductions of Llama-2-7B (test-only: no Llama-2 ran here), to print their gaps to
    the shipped published numbers: dense and wanda 50 % (two seeds) at the Wanda protocol
    (c4 128×4096, wikitext2 ppl@4096); sparsegpt 50 % failed; magnitude 2:4 under another
    protocol (2048-token windows)."""
    store = Store(path, wait_s=10)
    llama = "hf:meta-llama/Llama-2-7b-hf"
    wanda = dict(calibration=("c4", 128, 4096), ppl_eval=("wikitext2", 4096), suite_path=None)
    for method, target, seed, ppl in (("dense", "0", 0, 5.20), ("wanda", "0.5", 0, 6.50), ("wanda", "0.5", 1, 6.60),
                                      ("magnitude", "0.5", 0, 15.10), ("sparsegpt", "0.5", 0, None)):
        store.save(make_record(llama, method, target, ppl, None, None, "llama2", seed=seed, **wanda))
    store.save(make_record(llama, "magnitude", "2:4", 60.0, None, None, "llama2",
                           calibration=("c4", 128, 2048), ppl_eval=("wikitext2", 2048), suite_path=None))
    return path


WANDA_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def build_wide_fixture_db(path: Path) -> Path:
    """FABRICATED values in the paper protocol's shape (llm_50pct): two perplexity sets, the seven
    zero-shot tasks, three seeds, long model ids and a long variant name: the widest table the
    shipped suites make, for the 1400 px check."""
    import random

    rng = random.Random(0)
    store = Store(path, wait_s=10)
    methods = [("dense", {}, False), ("magnitude", {}, False), ("wanda", {}, False), ("wanda", {}, True),
               ("sparsegpt", {}, False),
               ("iobs", {"objective": "dense_output", "step_size": 0.5, "iterations": 5, "select": "val"}, False)]
    for model in ("hf:facebook/opt-1.3b", "hf:meta-llama/Meta-Llama-3-8B"):
        for method, params, owl in methods:
            for seed in range(3):
                target = "0" if method == "dense" else "0.5"
                spec = RunSpec(suite="llm_50pct", model=ModelSpec(model, dtype="float16"), method=method, params=params,
                               target=target, calibration=CalibrationSpec("c4", 128, 2048), seed=seed,
                               perplexity=(PerplexitySpec("wikitext2", 2048), PerplexitySpec("c4", 2048)),
                               lm_eval=LmEvalSpec(WANDA_TASKS), profile=SparsityProfile() if owl else None)
                refs = spec.evals()
                record = make_record(model, method, target, 10.0, None, None, "llm_50pct", seed=seed)
                metrics = [{"name": f"{p.spec.dataset}/ppl@2048", "value": 10 + 5 * rng.random(), "stderr": None,
                            "n": 100, "eval_id": p.eval_id} for p in refs[:2]]
                metrics += [{"name": f"{t}/acc", "value": 0.4 + 0.3 * rng.random(), "stderr": 0.012, "n": 1000,
                             "headline": True, "eval_id": refs[2].eval_id} for t in WANDA_TASKS]
                record.update(
                    run_id=spec.run_id, spec=spec.to_dict(), spec_json=spec.canonical_json(), metrics=metrics,
                    variant=variant_name(method, params, {}, spec.profile),
                    evals={r.eval_id: {"kind": r.kind, "spec": e["spec"], "publishable": True, "suites": ["llm_50pct"],
                                       "status": "ok", "error": None} for r, e in zip(refs, spec.evals_dict())})
                store.save(record)
    return path
