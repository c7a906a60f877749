"""Where a whole-model prune spends its time: ``python -m benchmarks.stages [options]``.

One decoder LM is loaded, pruned by ``harness.drivers.lm.prune_sequential`` (the one loop over
the LM adapter, what a suite cell runs) and evaluated; every stage is timed from outside, by
wrapping the adapter's and the method's calls:

- ``load``: build (random weights, real shapes) or load the model;
- ``capture``: block 0's inputs for every calibration batch (``Adapter.begin``);
- ``statistics``: the calibration replay through each block with hooks on (``Adapter.gather``),
  split into ``stats_hooks`` (the accumulation inside the hooks) and the block forwards;
- ``solves``: the method's own ``prune`` calls (the algorithm);
- ``error``: the reconstruction error tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) of every layer;
- ``fingerprints``: the hashes of the weight and statistics around each method call (the
  check that a method left its inputs unchanged);
- ``layer_rest``: the rest of each layer step (output checks, write-back);
- ``propagation``: the pruned block re-run for the next block's inputs (``Adapter.leave``);
- ``loop_rest``: whatever the loop spends outside all of these;
- ``eval``: perplexity (``harness.data.text.perplexity``) over ``--eval-windows`` windows, and
  ``bare_forward`` over the same windows in the same batches (``ppl_x_bare`` is their ratio,
  each the best of ``--eval-repeat`` runs taken alternately).

Models: ``opt-125m`` (an ``OPTConfig`` with OPT-125m's shapes, random weights, random token ids) and
``zoo:tiny-llama`` (the zoo's trained Llama, ``pydoc`` calibration windows as a suite draws them).

    python -m benchmarks.stages --models opt-125m --calib 32x128
    python -m benchmarks.stages --models zoo:tiny-llama --calib 128x128 --method sparsegpt --target 2:4
    python -m benchmarks.stages --layer 4096x11008 --tokens 512   # one layer step's overhead

Timings are wall-clock on whatever else the machine runs: compare runs made side by side.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable

STAGES = ("load", "capture", "statistics", "stats_hooks", "solves", "error", "fingerprints", "layer_rest", "propagation",
          "loop_rest", "prune_total", "eval", "bare_forward")


class Clock:
    """Seconds per stage; ``wrap`` times every call of a function under a stage name."""

    def __init__(self) -> None:
        self.s: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.s[stage] += time.perf_counter() - t0

        return timed

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.s[name] += time.perf_counter() - t0


@contextmanager
def _patched(obj: Any, name: str, value: Any):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def load(model_id: str, n: int, seqlen: int, eval_windows: int, seed: int = 0):
    """(model, calibration ids (n, seqlen), evaluation stream (1, tokens)) for one model id."""
    import torch

    if model_id.startswith("zoo:"):
        from harness.core.spec import ModelSpec
        from harness.data import text as data
        from harness.models.load import load_model

        loaded = load_model(ModelSpec(model_id))
        calib = data.calibration_tokens("pydoc", loaded.tokenizer, n, seqlen, seed)
        test = data.test_tokens("pydoc", loaded.tokenizer, seqlen)[:, : eval_windows * seqlen]
        return loaded.model, calib, test
    from benchmarks.e2e import build

    model = build(model_id)
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    return model, torch.randint(0, vocab, (n, seqlen), generator=g), torch.randint(
        0, vocab, (1, eval_windows * seqlen), generator=g)


def prune_timed(model: Any, batches: list, method: Any, target: Any, clock: Clock) -> list:
    """``prune_sequential`` (what a suite cell calls) with every stage timed; return the layer reports.

    The LM adapter's methods are wrapped on the class, the method's ``prune`` on the instance,
    for the duration of the call, so the adapter is built exactly as the driver builds it.
    """
    from harness.drivers import hooks, lm, loop

    method.prune = clock.wrap("solves", method.prune)
    make_hook = hooks.StatsCollector._hook

    def timed_hook(self, name):
        return clock.wrap("stats_hooks", make_hook(self, name))

    # prune_layer looks relative_error up in its module; the loop imported prune_layer by name
    with _patched(lm.LMAdapter, "begin", clock.wrap("capture", lm.LMAdapter.begin)), \
         _patched(lm.LMAdapter, "gather", clock.wrap("statistics", lm.LMAdapter.gather)), \
         _patched(lm.LMAdapter, "leave", clock.wrap("propagation", lm.LMAdapter.leave)), \
         _patched(hooks, "relative_error", clock.wrap("error", hooks.relative_error)), \
         _patched(hooks, "_fingerprints", clock.wrap("fingerprints", hooks._fingerprints)), \
         _patched(loop, "prune_layer", clock.wrap("layer_step", loop.prune_layer)), \
         _patched(hooks.StatsCollector, "_hook", timed_hook):
        with clock.stage("prune_total"):
            reports = lm.prune_sequential(model, batches, method, target)
    s = clock.s
    step = s.pop("layer_step", 0.0)  # every prune_layer call: solves + error + fingerprints + the rest
    s["layer_rest"] = step - s["solves"] - s["error"] - s["fingerprints"]
    s["loop_rest"] = s["prune_total"] - s["capture"] - s["statistics"] - s["propagation"] - step
    return reports


def eval_timed(model: Any, test: Any, seqlen: int, batch_size: int, repeat: int, clock: Clock) -> float:
    """Perplexity and a bare forward loop over the same windows, alternately; best of ``repeat`` each."""
    import torch

    from harness.data.text import perplexity

    windows = test[0, : (test.shape[1] // seqlen) * seqlen].reshape(-1, seqlen)

    def bare() -> None:
        with torch.no_grad():
            for start in range(0, windows.shape[0], batch_size):
                model(input_ids=windows[start : start + batch_size], use_cache=False)

    best = {"eval": float("inf"), "bare_forward": float("inf")}
    value = float("nan")
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = perplexity(model, test, seqlen, batch_size=batch_size).value
        best["eval"] = min(best["eval"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        bare()
        best["bare_forward"] = min(best["bare_forward"], time.perf_counter() - t0)
    clock.s.update(best)
    return value


def run(model_id: str, method_name: str, target_text: str, n: int, seqlen: int, batch_size: int,
        eval_windows: int, eval_repeat: int) -> dict[str, Any]:
    """One model: every stage's seconds, the layer count, perplexity and the eval/bare ratio."""
    import torch

    from harness.core.method import build_params
    from harness.core.target import Target
    from harness.plugins import get_method

    clock = Clock()
    with clock.stage("load"):
        model, calib, test = load(model_id, n, seqlen, eval_windows)
    cls = get_method(method_name)
    method = cls(build_params(cls, {}))
    reports = prune_timed(model, list(calib.split(batch_size)), method, Target.parse(target_text), clock)
    ppl = eval_timed(model, test, seqlen, batch_size, eval_repeat, clock)
    return {"model": model_id, "method": method_name, "target": target_text, "calibration": f"{n}x{seqlen}",
            "batch_size": batch_size, "layers": len(reports), "threads": torch.get_num_threads(),
            "ppl": ppl, "ppl_x_bare": clock.s["eval"] / clock.s["bare_forward"],
            **{k: clock.s.get(k, 0.0) for k in STAGES}}


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size in MiB from /proc/self/status (Linux)."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status", encoding="ascii") if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:  # "5": reset VmHWM to VmRSS
        f.write("5")


def layer_overhead(d_out: int, d_in: int, tokens: int, repeat: int = 2, seed: int = 0) -> dict[str, Any]:
    """What one layer step costs besides the method: ``collector.stats`` plus ``prune_layer`` on a
    random Linear (d_out, d_in) with ``tokens`` calibration rows, around a method that only applies a
    fixed 50 % mask. Seconds are the best of ``repeat`` steps (statistics gathered afresh and the dense
    weight restored before each); ``step_peak_mib`` is the step's peak RSS above the RSS it started at
    (Linux only); ``rel_error_h`` is the same error from H, untimed.
    """
    import torch
    from torch import nn

    from harness.core.method import LayerMethod, PruneResult
    from harness.core.target import Target
    from harness.drivers import hooks

    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(d_out, d_in, generator=g) < 0.5  # (d_out, d_in)

    class FixedMask(LayerMethod):
        name = "fixed-mask"

        def prune(self, name, weight, stats, target):
            return PruneResult(weight.masked_fill(mask, 0))

    layer = nn.Linear(d_in, d_out, bias=False)
    dense = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    inputs = torch.randn(tokens, d_in, generator=g)  # (tokens, d_in)
    best: dict[str, float] = {}
    for _ in range(repeat):
        collector = hooks.StatsCollector({"layer": layer}, "hessian")  # fresh: no hash is remembered
        clock, method = Clock(), FixedMask()
        method.prune = clock.wrap("solves", method.prune)
        with torch.no_grad():
            layer.weight.copy_(dense)
            for x in inputs.split(128):
                layer(x)
                collector.end_forward()
            collector.remove()
            rss, _ = _rss_mib()
            _reset_peak()
            with _patched(hooks, "relative_error", clock.wrap("error", hooks.relative_error)), \
                 _patched(hooks, "_fingerprints", clock.wrap("fingerprints", hooks._fingerprints)), \
                 clock.stage("step"):
                report = hooks.prune_layer(method, "layer", layer, collector.stats("layer"), Target.parse("0.5"), 0)
            _, peak = _rss_mib()
        clock.s["rest"] = clock.s["step"] - clock.s["solves"] - clock.s["error"] - clock.s["fingerprints"]
        clock.s["step_peak_mib"] = peak - rss
        best = {k: min(v, best.get(k, float("inf"))) for k, v in clock.s.items()}
    with torch.no_grad():  # the H form on the same layer, untimed: the two forms agree
        by_hessian = hooks.relative_error(dense, layer.weight, collector.stats("layer").hessian)
    return {"layer": f"{d_out}x{d_in}", "tokens": tokens, "rel_error": report.rel_error, "rel_error_h": by_hessian,
            "threads": torch.get_num_threads(), **best}


def render(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one column per run, one row per stage (seconds, share of the prune)."""
    head = "| stage | " + " | ".join(f"{r['model']} {r['method']} {r['target']} {r['calibration']}" for r in rows) + " |"
    lines = [head, "|---|" + "---|" * len(rows)]
    for st in STAGES:
        cells = []
        for r in rows:
            share = f" ({100 * r[st] / r['prune_total']:.0f} %)" if st not in ("load", "eval", "bare_forward",
                                                                           "prune_total") and r["prune_total"] else ""
            cells.append(f"{r[st]:.2f} s{share}")
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    lines.append("| eval / bare forward | " + " | ".join(f"{r['ppl_x_bare']:.3f}" for r in rows) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="opt-125m,zoo:tiny-llama", help="comma-separated: opt-125m, zoo:tiny-llama, ...")
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--target", default="0.5", help="0.5, 2:4, ...")
    ap.add_argument("--calib", default=None, help="NxSEQLEN (default 32x128 for opt-125m, 128x128 for the zoo)")
    ap.add_argument("--batch-size", type=int, default=8, help="calibration and eval batch size (a suite's default)")
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--layer", default=None, metavar="DOUTxDIN",
                    help="instead of models: one layer step's overhead on a random layer, e.g. 4096x11008")
    ap.add_argument("--tokens", type=int, default=512, help="calibration rows for --layer")
    args = ap.parse_args(argv)
    if args.layer:
        d_out, d_in = (int(v) for v in args.layer.lower().split("x"))
        row = layer_overhead(d_out, d_in, args.tokens)
        print(json.dumps(row))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(row, f, indent=1)
        return 0
    rows = []
    for model_id in [m for m in args.models.split(",") if m]:
        calib = args.calib or ("128x128" if model_id.startswith("zoo:") else "32x128")
        n, seqlen = (int(v) for v in calib.lower().split("x"))
        rows.append(run(model_id, args.method, args.target, n, seqlen, args.batch_size, args.eval_windows,
                        args.eval_repeat))
        print(json.dumps(rows[-1]), flush=True)
    print(render(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
