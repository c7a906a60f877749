"""A streamed cell: :func:`harness.run.cell.run_cell` for a causal LM read block by block from disk.

Chosen by :func:`harness.models.stream.wants_stream` (``stream: true`` on the model, or a large
``path:`` checkpoint). The invariant of every cell holds: the pruned weights are written once as an
artifact, here block by block (:class:`~harness.run.artifacts.ShardWriter`: ``rest`` then one shard
per block), and the sparsity gate and every evaluation run on a *freshly built* skeleton that
reads exactly those shards, one block at a time (:mod:`harness.drivers.stream`). Perplexity
streams; lm-eval loads the whole artifact into the fresh model (the model's size in memory);
``save:`` copies the shards into a ``save_pretrained`` folder.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from harness.core.spec import RunSpec
from harness.run.reporter import Reporter


def prune_and_evaluate_streamed(spec: RunSpec, record: dict, method: Any, target: Any, *, device: str,
                                caches: dict, reporter: Reporter, root: Path | None, stored: Path | None,
                                evaluate: Callable[..., None], gate: Callable[..., None]) -> None:
    """Prune (or reuse the ``stored`` artifact), gate and evaluate one streamed cell; fills ``record``.
    ``evaluate`` and ``gate`` are :mod:`harness.run.cell`'s ``evaluate_cell`` and ``record_sparsity``."""
    from harness.drivers.stream import open_skeleton, stream_problem
    from harness.models.stream import open_streamed, release
    from harness.run.env import apply_precision

    if why := stream_problem(method, spec.profile):
        raise ValueError(f"cannot stream model '{spec.model.id}': {why}; set 'stream: false' on the model "
                         f"to load it whole")
    loaded = open_streamed(spec.model, device=device)
    open_skeleton(loaded.model, loaded.source)
    scratch = None
    try:
        if stored is None:
            record["environment"] = {**record["environment"], "precision": apply_precision(),
                                     "method_origin": type(method).origin, "method_category": type(method).category}
            record["model_info"] = loaded.info
            if root is None:  # no store (a direct call): the shards go to a scratch folder, deleted after
                scratch = Path(tempfile.mkdtemp(prefix="sparsebench-stream-"))
            stored, fresh = _prune(spec, loaded, method, target, record, root or scratch, store=root is not None,
                                   gate=gate, device=device, caches=caches, reporter=reporter)
        else:
            fresh = fresh_model(loaded, stored)
        release(loaded.model)  # the checkpoint's embeddings and head: the fresh model has the artifact's
        evaluate(spec, record, fresh, fresh.model, device=device, caches=caches, reporter=reporter,
                 dense_logits=None, evaluate=_Evaluator(fresh))
        if spec.save and record["status"] == "ok":
            from harness.run.export import save_or_error

            # a failed export keeps the cell ok
            record["saved"] = save_or_error(spec, record, fresh, artifact_dir=stored)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if device.startswith("cuda"):
        import torch

        record["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())


def fresh_model(loaded: Any, artifact_dir: Path) -> Any:
    """A freshly built skeleton whose every tensor is read from the artifact's shards (the rest now)."""
    import torch

    from harness.drivers.stream import open_skeleton
    from harness.models.load import LoadedModel
    from harness.models.stream import TensorSource, skeleton
    from harness.run.artifacts import INDEX

    model = skeleton(copy.deepcopy(loaded.model.config), getattr(torch, loaded.info["dtype"]))
    source = TensorSource.from_folder(artifact_dir, INDEX)
    open_skeleton(model, source)
    return LoadedModel(model, loaded.tokenizer, loaded.info, source=source)


def _prune(spec: RunSpec, loaded: Any, method: Any, target: Any, record: dict, root: Path, *, store: bool,
           gate: Callable[..., None], device: str, caches: dict, reporter: Reporter) -> tuple[Path, Any]:
    """Prune block by block into a sharded artifact and gate it in a fresh skeleton; returns the
    shard folder and that fresh model."""
    import torch

    from harness.drivers.stream import BlockWeights, prune_streamed, rest_state
    from harness.models.blocks import find_blocks
    from harness.run.artifacts import ShardWriter, leftovers
    from harness.run.families import lm_tokens, record_block_share

    before = record.get("artifact") if store else None
    tokens = lm_tokens(spec, loaded, caches) if method.modifies_weights else None  # (n_samples, seqlen)
    batches = list(tokens.split(spec.batch_size)) if tokens is not None else []
    hooks_before = set(leftovers(loaded.model))
    torch.manual_seed(spec.seed)  # methods that draw from the global generator vary with the cell seed
    record["prune_info"] = {"seed": spec.seed, "seeded": "method.seed and torch.manual_seed(seed)", "streamed": True}
    writer = ShardWriter(root, spec.run_id)
    path, _ = find_blocks(loaded.model)

    def sink(index: int, prefix: str, block: Any) -> None:
        left = [x for x in leftovers(loaded.model) if x not in hooks_before]
        if left:
            more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
            raise ValueError(f"{method.name} left {left[0]}{more} on the pruned model; the stored weights are "
                             f"evaluated in a freshly built model, so a method must not change the forward")
        writer.write(f"block-{index:05d}", {f"{prefix}.{k}": v for k, v in block.state_dict().items()})

    t0 = time.perf_counter()
    try:
        writer.write("rest", rest_state(loaded.model, path))
        reports = prune_streamed(loaded.model, loaded.source, sink, batches, method, target, device=device,
                                 selection=spec.layers, progress=lambda d, n: reporter.progress("prune", d, n))
        record["prune_time_s"] = time.perf_counter() - t0
        if not reports:
            raise ValueError("no prunable layers matched (check the suite's layers: targets/ignore)")
        record_block_share(spec, loaded.model, reports, record, enforce=method.modifies_weights)
    except BaseException:
        writer.abort()
        raise
    t1 = time.perf_counter()
    artifact = writer.finish()
    if before and before.get("sha256") != artifact["sha256"]:
        if bool(before.get("shards")) == bool(artifact.get("shards")):  # pruned again and the weights differ
            artifact["replaced"] = before["sha256"]
            record["evals"], record["metrics"], record["eval_info"] = {}, [], {}  # they scored other weights
        else:  # the same weights in the other form (in memory vs streamed): not compared by hash
            artifact["previous"] = before["sha256"]
    elif before:
        artifact["reproduced"] = True
    folder = Path(root) / artifact["path"]
    fresh = fresh_model(loaded, folder)
    weights = BlockWeights(fresh.model, fresh.source)
    record["layers"] = []
    try:
        gate(record, fresh.model, reports, method, target, weight_of=weights)
    finally:
        weights.close()
        artifact["write_load_s"] = time.perf_counter() - t1
        if store:  # a scratch artifact (no store) is not recorded, as an in-memory cell without a store writes none
            record["artifact"] = artifact
    record["pruned"] = True
    return folder, fresh


class _Evaluator:
    """``evaluate_ref`` for a streamed cell: perplexity block by block; lm-eval on the whole fresh model."""

    def __init__(self, fresh: Any) -> None:
        self.fresh = fresh

    def __call__(self, ref: Any, model: Any, tokenizer: Any, spec: RunSpec, *, device: Any, caches: dict,
                 progress: Any = None, **_: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from harness.data import text as data
        from harness.drivers.stream import streamed_perplexity
        from harness.evaluate.cell import evaluate_ref
        from harness.models.stream import load_tensors, release

        if ref.kind != "perplexity":  # lm-eval: every block in memory at once
            load_tensors(model, self.fresh.source)
            try:
                return evaluate_ref(ref, model.to(device), tokenizer, spec, device=device, caches=caches,
                                    progress=progress)
            finally:
                from harness.models.blocks import find_blocks

                model.to("cpu")
                for block in find_blocks(model)[1]:
                    release(block)
        ppl = ref.spec
        key = (spec.model.id, ppl.dataset, ppl.seqlen)
        tokens = caches.setdefault("tokens", {})
        if key not in tokens:
            tokens[key] = data.test_tokens(ppl.dataset, tokenizer, ppl.seqlen)
        name = ppl.metric_name()
        cb = (lambda done, total: progress(name, done, total)) if progress else None
        res = streamed_perplexity(model, self.fresh.source, tokens[key], ppl.seqlen, device=device,
                                  batch_size=spec.batch_size, max_windows=ppl.max_windows, progress=cb)
        return [{"name": name, "value": res.value, "stderr": None, "n": res.tokens, "eval_id": ref.eval_id}], {}
