"""End to end: this project's prune loop against llm-compressor's ``oneshot`` with ``SparseGPTModifier``.

Both prune the same model (OPT-125m shapes with random weights, or the zoo Llama) on the same
calibration windows (random ids for OPT, the zoo's ``pydoc`` windows for the Llama), each in a
fresh interpreter of the peers' venv, alternately, ``repeat`` rounds; the prune time (the call
alone) and the child's wall time are the best round's. The masks of every pruned Linear are
compared at the end.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CALIB = {"opt-125m": (32, 128), "zoo:tiny-llama": (128, 128)}


def _model_and_ids(model_id: str, scratch: Path):
    """(model, (n, seqlen) calibration ids, a tokenizer) as both sides get them.

    OPT-125m shapes come with random weights and random ids; oneshot insists on a processor
    even for tokenized data, so it gets the zoo OPT's tokenizer (the ids never pass through it).
    """
    import torch

    from harness.core.spec import ModelSpec
    from harness.models.load import load_model

    n, seqlen = CALIB[model_id]
    if model_id.startswith("zoo:"):
        from harness.data import text as data

        loaded = load_model(ModelSpec(model_id))
        return loaded.model, data.calibration_tokens("pydoc", loaded.tokenizer, n, seqlen, 0), loaded.tokenizer
    from transformers import AutoModelForCausalLM

    from benchmarks.e2e import build

    model = build(model_id)
    ids = torch.randint(0, model.config.vocab_size, (n, seqlen), generator=torch.Generator().manual_seed(0))
    tokenizer = load_model(ModelSpec("zoo:tiny-opt")).tokenizer
    # a Hugging Face folder, as the issue compared: oneshot resolves files from the model's path
    folder = scratch / f"{model_id}-hf"  # inside the parent's temporary directory
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval(), ids, tokenizer


def _masks(model: Any) -> dict[str, Any]:
    """Pruned-or-not of every Linear but the head, by name."""
    import torch

    return {name: (mod.weight == 0).clone() for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head")}


def child(side: str, model_id: str, target: str, out: str) -> dict[str, Any]:
    """One side's run in this interpreter; writes the masks to ``out`` and returns the timings."""
    import torch

    model, ids, tokenizer = _model_and_ids(model_id, Path(out).parent)
    t0 = time.perf_counter()
    if side == "sparsebench":
        from harness.core.target import Target
        from harness.drivers.lm import prune_sequential
        from harness.plugins import get_method

        prune_sequential(model, list(ids.split(8)), get_method("sparsegpt")(), Target.parse(target))
    else:
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier

        ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
        structure = "0:0" if ":" not in target else target
        recipe = SparseGPTModifier(sparsity=0.5 if ":" in target else float(target), mask_structure=structure,
                                   ignore=["lm_head"])
        oneshot(model=model, tokenizer=tokenizer, dataset=ds, recipe=recipe, num_calibration_samples=ids.shape[0],
                max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
    prune_s = time.perf_counter() - t0
    torch.save(_masks(model), out)
    return {"side": side, "prune_s": prune_s}


def _run(side: str, model_id: str, target: str, out: str) -> dict[str, Any]:
    code = ("import json; from benchmarks.peers.oneshot import child; "
            f"print('RESULT' + json.dumps(child({side!r}, {model_id!r}, {target!r}, {out!r})))")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return {**json.loads(line[6:]), "wall_s": wall}
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"side": side, "error": last[:200]}


def main(models: list[str], targets: list[str], repeat: int, log=print) -> list[dict[str, Any]]:
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_id in models:
            if model_id not in CALIB:
                log(f"oneshot: unknown model {model_id!r}; choose from {', '.join(CALIB)}")
                continue
            for target in targets:
                best: dict[str, dict] = {}
                sides = ["sparsebench", "llm-compressor"]
                for r in range(repeat):
                    for side in sides[r % 2:] + sides[: r % 2]:
                        res = _run(side, model_id, target, str(Path(tmp) / f"{side}.pt"))
                        if "error" in res:
                            log(f"oneshot {model_id} {target}: {side} failed: {res['error']}")
                            continue
                        if side not in best or res["prune_s"] < best[side]["prune_s"]:
                            best[side] = res
                if len(best) < 2:
                    continue
                a, b = (torch.load(Path(tmp) / f"{s}.pt") for s in sides)
                same = sum(torch.equal(a[k], b[k]) for k in a if k in b)
                row = {"model": model_id, "calibration": "x".join(map(str, CALIB[model_id])), "target": target,
                       **{f"{s}_{k}": best[s][k] for s in sides for k in ("prune_s", "wall_s")},
                       "layers": len(a), "same_mask_layers": same}
                row["prune_ratio"] = row["sparsebench_prune_s"] / row["llm-compressor_prune_s"]
                rows.append(row)
                log(f"oneshot {model_id} {row['calibration']} {target}: sparsebench prune {row['sparsebench_prune_s']:.1f} s "
                    f"(child {row['sparsebench_wall_s']:.1f} s), llm-compressor oneshot {row['llm-compressor_prune_s']:.1f} s "
                    f"(child {row['llm-compressor_wall_s']:.1f} s), ratio {row['prune_ratio']:.2f}; "
                    f"masks identical in {same} of {len(a)} layers")
    return rows
