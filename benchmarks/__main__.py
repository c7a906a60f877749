"""``python -m benchmarks run [--quick] [--big] [--device cuda] [--out FILE]``."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def _table(title: str, rows: list[dict], cols: list[str]):
    from rich.table import Table

    t = Table(title=title, header_style="bold")
    for c in cols:
        t.add_column(c, justify="right" if c not in ("shape", "method", "target", "model") else "left")
    for r in rows:
        t.add_row(*(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="per-layer, stage and end-to-end benchmarks")
    r.add_argument("--quick", action="store_true", help="small shapes, small calibration (a few minutes on 2 cores)")
    r.add_argument("--big", action="store_true", help="also the Llama-2-7B-shaped end-to-end run")
    r.add_argument("--device", default="cpu")
    r.add_argument("--skip-e2e", action="store_true")
    r.add_argument("--out", default=None, help="JSON output (default benchmarks/results/<time>.json)")
    args = p.parse_args(argv)

    import torch
    from rich.console import Console

    from benchmarks import e2e, layers
    from benchmarks._timing import sgemm_gflops

    console = Console(width=160)
    shapes = layers.SHAPES_QUICK if args.quick else layers.SHAPES_FULL
    tokens = 8192 if args.quick else 32768
    repeat = 2 if args.quick else 3
    result = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "sgemm_gflops": sgemm_gflops()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    console.print(f"machine: {result['machine']}")
    result["methods"] = layers.method_rows(shapes, tokens, repeat)
    console.print(_table("per-layer prune time vs plain reference (same masks?)", result["methods"],
                         ["shape", "method", "target", "reference_s", "ours_s", "speedup", "same_mask", "max_rel_diff"]))
    result["stages"] = layers.stage_rows(shapes, tokens, repeat)
    console.print(_table(f"SparseGPT stages vs floors ({tokens} tokens)", result["stages"],
                         ["shape", "hessian_s", "hessian_x_floor", "inverse_s", "inverse_x_floor", "sweep_s",
                          "sweep_gemm_floor_s", "sweep_x_floor"]))
    if not args.skip_e2e:
        runs = [("opt-125m", 8, 128)] if args.quick else [("opt-1.3b", 8, 256)]
        if args.big:
            runs.append(("llama-2-7b", 128, 2048) if args.device.startswith("cuda") else ("llama-2-7b", 2, 128))
        result["e2e"] = [e2e.run(name, "sparsegpt", n, s, args.device, "float16" if args.device.startswith("cuda") else "float32")
                         for name, n, s in runs]
        console.print(_table("end to end (sparsegpt 50%, random weights, real shapes)", result["e2e"],
                             ["model", "device", "calibration", "prune_s", "model_bytes", "peak_rss_bytes",
                              "peak_rss_x_model", "peak_rss_over_baseline_x_model", "ppl_eval_s", "bare_forward_s", "ppl_x_bare"]))
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    console.print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
