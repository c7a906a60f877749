"""Do the offline zero-shot tasks measure the model? The keep-or-drop rule, measured.

``python -m benchmarks.zero_shot_tasks [--models M,...] [--tasks T,...] [--draws 3] [--suite-time] [--json FILE]``

Each zoo LM is evaluated dense, magnitude 50 % and 70 %, sparsegpt 50 % and a random-pruning
control at 50 % (``random``, registered here only: a uniformly random fraction of each row,
from a seeded ``torch.Generator``), in process and through the harness's own path: the model
from :func:`harness.models.load.load_model`, pruned by :func:`harness.drivers.lm.prune_sequential`
with the quickstart's calibration (``pydoc``, 128 windows of 128 tokens, seed 0), scored by
:func:`harness.evaluate.lm_eval_adapter.evaluate_lm_eval` (the call a suite cell makes).

A task is kept (it runs in ``tiny_suite`` and counts in the leaderboard's "avg zero-shot") when,
on every model and every item draw,

0. it is sized: dense ``acc_stderr`` is at most 2 points;
1. dense accuracy is at least chance + 20 points and at most 95 %;
2. magnitude 70 % is at least 3 stderr below dense, and the random control lands within
   2 stderr of chance or at least 5 stderr below dense ("far below");
3. accuracy does not rise along dense -> magnitude 50 % -> magnitude 70 % (a step up of less
   than one stderr is noise, not a rise).

"stderr" is the dense run's ``acc_stderr`` as lm-eval reports it. An item draw is the task data
built with another seed (``build.write(seed=s)``: other distractors, replaced words, answer
order); draw 0 is the shipped data. The effects on the zoo models are a few points, about the
size of the stderr, so a verdict that one draw of items gives and another does not is luck:
``--draws 3`` (the default) asks for a pass on seeds 0, 1 and 2.

Prints, per model, the shipped draw's table (task, chance, dense, mag50, mag70, sparsegpt50,
random50 in %, stderr, draws passed, keep?), then the tasks kept on every model against the
shipped list, :data:`harness.core.metrics.AVERAGED_OFFLINE_TASKS` (exit status 1 if they
differ). ``--suite-time`` also times ``tiny_suite`` (what a quickstart cell runs) on the dense
and the magnitude-70 % model. 2.5 minutes for both models on 2 quiet CPU cores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELS = ("zoo:tiny-llama", "zoo:tiny-opt")
# (column, method, target); "dense" is the unpruned model
CELLS = (("dense", "dense", None), ("mag50", "magnitude", "0.5"), ("mag70", "magnitude", "0.7"),
         ("sparsegpt50", "sparsegpt", "0.5"), ("random50", "random", "0.5"))
CALIBRATION = ("pydoc", 128, 128, 0)  # dataset, n_samples, seqlen, seed: the quickstart's
BATCH_SIZE = 8  # the suites' default calibration batch size


def register_random() -> None:
    """Register ``random``: prune a uniformly random ``target`` fraction of every row (a control)."""
    import torch

    from harness.core.method import METHODS, LayerMethod, PruneResult, register_method

    if "random" in METHODS:
        return

    @register_method("random")
    class RandomPrune(LayerMethod):
        """Benchmark-only control: the methods' sparsity, with no idea which weights matter."""

        @dataclass(frozen=True)
        class Params:
            seed: int = 0

        stats = "none"

        def prune(self, name, weight, stats, target):
            if target.is_nm:
                raise ValueError("random: unstructured targets only")
            # one generator per layer, seeded from its name: the mask does not depend on the order
            g = torch.Generator().manual_seed(self.params.seed * 1_000_003 + zlib.crc32(name.encode()))
            rows, cols = weight.shape
            k = int(round(target.sparsity * cols))
            idx = torch.rand(rows, cols, generator=g).argsort(dim=1)[:, :k]
            mask = torch.zeros(rows, cols, dtype=torch.bool).scatter_(1, idx, True)
            return PruneResult(weight.masked_fill(mask.to(weight.device), 0))


def prune(loaded: Any, method_name: str, target: str, calibration: Any) -> None:
    """Prune ``loaded.model`` in place, as a suite cell does."""
    from harness.core.params import build_params
    from harness.core.target import Target
    from harness.drivers.lm import prune_sequential
    from harness.plugins import get_method

    cls = get_method(method_name)
    method = cls(build_params(cls, {}))
    prune_sequential(loaded.model, list(calibration.split(BATCH_SIZE)), method, Target.parse(target),
                     device="cpu", measure_error=False)


def chance_of(task: str) -> float | None:
    """1 / options of an offline multiple-choice task (from its shipped data), None for others."""
    from harness.evaluate.lm_tasks import TASK_DIR

    path = TASK_DIR / "data" / f"{task}.jsonl"
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        first = json.loads(f.readline())
    options = first.get("choices") or first.get("contexts")
    return None if options is None else 1.0 / len(options)


def task_managers(draws: int, root: Path) -> dict[int, Any]:
    """Draw -> an lm-eval TaskManager over the offline tasks built with that seed (0: the shipped
    folder; others: a copy of its configs under ``root`` with freshly built data)."""
    from lm_eval.tasks import TaskManager

    from harness.evaluate.lm_tasks import TASK_DIR, build

    out = {}
    for seed in range(draws):
        folder = TASK_DIR
        if seed:
            folder = root / f"seed{seed}"
            folder.mkdir()
            for path in [*TASK_DIR.glob("*.yaml"), TASK_DIR / "utils.py"]:
                shutil.copy(path, folder / path.name)
            build.write(folder / "data", seed=seed)
        out[seed] = TaskManager(include_path=str(folder), include_defaults=False)
    return out


def measure_model(model_id: str, tasks: tuple[str, ...], managers: dict[int, Any], suite_time: bool = False,
                  log=print) -> dict[str, Any]:
    """Every cell of :data:`CELLS` on one model, for every draw:
    ``{"cells": {column: {draw: {task: (acc, stderr, n)}}}, "ppl": ..., "lm_eval_s": ..., ...}``."""
    import torch

    from harness.core.spec import LmEvalSpec, ModelSpec
    from harness.data import text as data
    from harness.evaluate.lm_eval_adapter import evaluate_lm_eval
    from harness.models.load import load_model

    register_random()
    loaded = load_model(ModelSpec(model_id))
    dense_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    calibration = data.calibration_tokens(CALIBRATION[0], loaded.tokenizer, *CALIBRATION[1:])
    test_ids = data.test_tokens("pydoc", loaded.tokenizer, 128)
    spec = LmEvalSpec(tasks=tasks)
    out: dict[str, Any] = {"model": model_id, "cells": {}, "ppl": {}, "lm_eval_s": {}, "suite_s": {}}
    for column, method, target in CELLS:
        loaded.model.load_state_dict(dense_state)
        if target is not None:
            prune(loaded, method, target, calibration)
        with torch.no_grad():
            out["ppl"][column] = data.perplexity(loaded.model, test_ids, 128, batch_size=BATCH_SIZE).value
        out["cells"][column] = {}
        for draw, tm in managers.items():
            # the adapter takes the TaskManager from its cache: {include_defaults: manager}
            rows, info = evaluate_lm_eval(loaded.model, loaded.tokenizer, spec, device="cpu", model_id=model_id,
                                          cache={False: tm})
            out["cells"][column][draw] = {r["name"].split("/")[0]: (r["value"], r["stderr"], r["n"]) for r in rows
                                          if r["name"].endswith("/acc")}
            if draw == 0:
                out["lm_eval_s"][column] = info["time_s"]
        note = ""
        if suite_time and column in ("dense", "mag70"):  # what a quickstart cell runs
            t0, c0 = time.perf_counter(), time.process_time()
            evaluate_lm_eval(loaded.model, loaded.tokenizer, LmEvalSpec(tasks=("tiny_suite",)), device="cpu",
                             model_id=model_id, cache={False: managers[0]})
            out["suite_s"][column] = (time.perf_counter() - t0, time.process_time() - c0)
            note = f", tiny_suite {out['suite_s'][column][0]:.1f} s wall / {out['suite_s'][column][1]:.1f} s CPU"
        log(f"{model_id} {column}: ppl {out['ppl'][column]:.2f}, lm-eval {out['lm_eval_s'][column]:.1f} s{note}")
    return out


def verdict(task: str, cells: dict[str, dict[str, tuple]], chance: float) -> list[str]:
    """The rule (module docstring) for one task, model and draw: why it fails (empty: it passes).
    ``cells``: column -> task -> (acc, stderr, n)."""
    acc = {col: cells[col][task][0] for col in cells}
    se = cells["dense"][task][1]
    why = []
    if se > 0.02:
        why.append(f"stderr {100 * se:.1f} > 2")
    if not chance + 0.20 <= acc["dense"] <= 0.95:
        why.append(f"dense {100 * acc['dense']:.1f} outside [chance+20, 95]")
    if acc["dense"] - acc["mag70"] < 3 * se:
        why.append("mag70 < 3 stderr below dense")
    if not (abs(acc["random50"] - chance) <= 2 * se or acc["dense"] - acc["random50"] >= 5 * se):
        why.append("random50 neither at chance nor >= 5 stderr below dense")
    rise = max(acc["mag50"] - acc["dense"], acc["mag70"] - acc["mag50"])
    if rise > 0 and rise >= se:
        why.append("rises with sparsity")
    return why


def table(result: dict[str, Any], tasks: list[str]) -> tuple[list[dict[str, Any]], str]:
    """Rows and a Markdown table (the shipped draw's numbers) for one model."""
    cells = result["cells"]
    draws = sorted(cells["dense"])
    head = "| task | chance | " + " | ".join(c for c, _, _ in CELLS) + " | stderr | draws passed | keep? |"
    lines = [f"{result['model']} (pydoc ppl: " + ", ".join(f"{c} {result['ppl'][c]:.1f}" for c, _, _ in CELLS)
             + ")", "", head, "|" + "---|" * (len(CELLS) + 5)]
    rows = []
    for task in tasks:
        chance = chance_of(task)
        if chance is None or task not in cells["dense"][0]:
            continue
        whys = {d: verdict(task, {c: cells[c][d] for c in cells}, chance) for d in draws}
        keep = not any(whys.values())
        accs = {c: 100 * cells[c][0][task][0] for c, _, _ in CELLS}
        se = 100 * cells["dense"][0][task][1]
        passed = sum(not w for w in whys.values())
        reasons = sorted({r for w in whys.values() for r in w})
        rows.append({"model": result["model"], "task": task, "chance": 100 * chance, **accs, "stderr": se,
                     "n": cells["dense"][0][task][2], "draws_passed": passed, "draws": len(draws), "keep": keep,
                     "why": {d: w for d, w in whys.items() if w},
                     "draw_accs": {d: {c: cells[c][d][task][0] for c in cells} for d in draws}})
        lines.append(f"| `{task}` | {100 * chance:.0f} | " + " | ".join(f"{accs[c]:.1f}" for c, _, _ in CELLS)
                     + f" | {se:.1f} | {passed}/{len(draws)} | {'yes' if keep else 'no: ' + '; '.join(reasons)} |")
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from harness.core.metrics import AVERAGED_OFFLINE_TASKS
    from harness.evaluate.lm_eval_adapter import KNOWN_TASKS

    ap = argparse.ArgumentParser(prog="python -m benchmarks.zero_shot_tasks", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    offline = [t for t, info in KNOWN_TASKS.items() if info.offline and not info.subtasks and chance_of(t)]
    ap.add_argument("--tasks", default=",".join(offline), help="offline multiple-choice tasks (default: all)")
    ap.add_argument("--draws", type=int, default=3, help="item draws (build seeds 0..N-1); 0 is the shipped data")
    ap.add_argument("--suite-time", action="store_true", help="also time tiny_suite on dense and mag70")
    ap.add_argument("--json", help="also write the rows and timings here")
    args = ap.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    results, all_rows, texts = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        managers = task_managers(args.draws, Path(tmp))
        for model_id in [m for m in args.models.split(",") if m]:
            result = measure_model(model_id, tuple(tasks), managers, suite_time=args.suite_time)
            rows, text = table(result, tasks)
            results.append(result)
            all_rows += rows
            texts.append(text)
    print("\n\n".join(texts))
    kept = [t for t in tasks if all(r["keep"] for r in all_rows if r["task"] == t)]
    print(f"\nkept on every model: {', '.join(kept) or 'none'}")
    print(f"shipped AVERAGED_OFFLINE_TASKS: {', '.join(AVERAGED_OFFLINE_TASKS) or 'none'}")
    for r in results:
        per_cell = sum(r["lm_eval_s"].values()) / len(r["lm_eval_s"])
        print(f"{r['model']}: lm-eval of the {len(tasks)} tasks {per_cell:.1f} s per cell (mean of {len(CELLS)})"
              + "".join(f"; tiny_suite on {c}: {w:.1f} s wall, {cpu:.1f} s CPU" for c, (w, cpu) in r["suite_s"].items()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": all_rows, "results": results, "kept": kept}, f, indent=1)
    return 0 if set(kept) == set(AVERAGED_OFFLINE_TASKS) & set(tasks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
