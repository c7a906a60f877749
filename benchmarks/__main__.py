"""``python -m benchmarks run [--quick] [--big] [--device cuda] [--only PARTS] [--e2e MODELS] [--calib NxS] [--out FILE]``."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any


def _table(title: str, rows: list[dict], cols: list[str]):
    from rich.table import Table

    t = Table(title=title, header_style="bold")
    for c in cols:
        t.add_column(c, justify="right" if c not in ("shape", "method", "target", "model", "kind") else "left")
    for r in rows:
        t.add_row(*(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    return t


PARTS = ("methods", "obc", "iobs", "woodfisher", "stages", "e2e")
LAYER_COLS = ["shape", "method", "target", "reference_s", "ours_s", "speedup", "same_mask", "mask_mismatch",
              "max_rel_diff"]


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {bad or [text]}; choose from {', '.join(PARTS)}")
    return parts


def _calib(text: str) -> tuple[int, int]:
    try:
        n, seqlen = (int(v) for v in text.lower().split("x"))
        assert n > 0 and seqlen > 0
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f"calibration must be NxSEQLEN with positive numbers (e.g. 4x128), got {text!r}")
    return n, seqlen


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part.strip()]
        assert shapes and all(len(sh) == 2 and min(sh) > 0 for sh in shapes)
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f"shapes must be OUTxIN[,OUTxIN...] with positive numbers, got {text!r}")
    return shapes


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked (unknown e2e models, CUDA asked for where there is none)."""
    from benchmarks.e2e import CONFIGS

    p = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="per-layer, stage and end-to-end benchmarks")
    r.add_argument("--quick", action="store_true", help="small shapes, small calibration (a few minutes on 2 cores)")
    r.add_argument("--big", action="store_true", help="also the Llama-2-7B-shaped end-to-end run")
    r.add_argument("--device", default="cpu", help="device for our implementations and e2e (references stay on CPU)")
    r.add_argument("--skip-e2e", action="store_true", help="same as leaving e2e out of --only")
    r.add_argument("--only", type=_parts, default=list(PARTS), metavar="PARTS",
                   help=f"comma-separated subset of {','.join(PARTS)} (default all)")
    r.add_argument("--e2e", dest="e2e_models", default=None, metavar="MODELS",
                   help=f"comma-separated e2e models from {','.join(CONFIGS)} (default opt-125m with --quick, else opt-1.3b)")
    r.add_argument("--e2e-method", default="sparsegpt", help="registered method for the e2e runs (sparsegpt, wanda, ...)")
    r.add_argument("--calib", type=_calib, default=None, metavar="NxSEQLEN",
                   help="e2e calibration, e.g. 4x128 (default 8x128 quick, 8x256 full, 128x2048 for Llama on CUDA)")
    r.add_argument("--shapes", type=_shapes, default=None, metavar="OUTxIN,...",
                   help="per-layer shapes, e.g. 768x768,4096x4096 (default: 3 OPT-125m shapes with --quick, + Llama-7B ones)")
    r.add_argument("--out", default=None, help="JSON output (default benchmarks/results/<time>.json)")
    args = p.parse_args(argv)
    if args.e2e_models is not None:
        unknown = [m for m in args.e2e_models.split(",") if m not in CONFIGS]
        if unknown:
            p.error(f"unknown e2e model(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    return args


def _e2e(args: argparse.Namespace, result: dict, console: Any) -> None:
    """The end-to-end runs (random weights, real shapes) and their tables."""
    from benchmarks import e2e

    cuda = args.device.startswith("cuda")
    names = args.e2e_models.split(",") if args.e2e_models else (["opt-125m"] if args.quick else ["opt-1.3b"])
    if args.big and "llama-2-7b" not in names:
        names.append("llama-2-7b")
    runs = []
    for name in names:
        default = (128, 2048) if (name == "llama-2-7b" and cuda) else (2, 128) if name == "llama-2-7b" else (
            (8, 128) if args.quick else (8, 256))
        runs.append((name, *(args.calib or default)))
    result["e2e"] = [e2e.run(name, args.e2e_method, n, s, args.device, "float16" if cuda else "float32")
                     for name, n, s in runs]
    console.print(_table(f"end to end ({args.e2e_method} 50%, random weights, real shapes)", result["e2e"],
                         ["model", "device", "calibration", "prune_s", "model_bytes", "peak_rss_bytes",
                          "peak_rss_x_model", "peak_rss_over_baseline_x_model", "ppl_eval_s", "bare_forward_s", "ppl_x_bare"]))
    for res in result["e2e"]:
        kinds = [{"kind": k, **v} for k, v in res["layer_time_by_kind"].items()]
        console.print(_table(f"{res['model']} {res['method']}: per-layer prune time by kind", kinds,
                             ["kind", "layers", "total_s", "max_s", "mean_rel_error"]))
    if cuda:
        console.print(_table("end to end on CUDA", result["e2e"], ["model", "method", "calibration", "prune_s",
                                                                 "model_bytes", "peak_cuda_bytes"]))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch
    from rich.console import Console

    from benchmarks import layers
    from benchmarks._timing import sgemm_gflops

    console = Console(width=160)
    only = set(args.only) - ({"e2e"} if args.skip_e2e else set())
    shapes = args.shapes or (layers.SHAPES_QUICK if args.quick else layers.SHAPES_FULL)
    tokens = 8192 if args.quick else 32768
    repeat = 2 if args.quick else 3
    result = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "sgemm_gflops": sgemm_gflops(), "device": args.device},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    console.print(f"machine: {result['machine']}")
    rows = []
    if "methods" in only:
        rows += layers.method_rows(shapes, tokens, repeat, args.device)
    if "obc" in only:
        rows += layers.obc_rows(layers.OBC_SHAPES[:2] if args.quick else layers.OBC_SHAPES, 1 if args.quick else 2)
    if "iobs" in only:
        rows += layers.iobs_rows(shapes[:2] if args.quick and not args.shapes else shapes, tokens, repeat, args.device)
    if "woodfisher" in only:
        rows += layers.woodfisher_rows(layers.WOODFISHER_SHAPES[:1] if args.quick else layers.WOODFISHER_SHAPES,
                                       1 if args.quick else 2)
    if rows:
        result["methods"] = rows
        console.print(_table(f"per-layer prune time vs plain reference, ours on {args.device} (same masks?)", rows, LAYER_COLS))
    if "stages" in only:
        result["stages"] = layers.stage_rows(shapes, tokens, repeat, args.device)
        console.print(_table(f"SparseGPT stages vs floors ({tokens} tokens, {args.device})", result["stages"],
                             ["shape", "hessian_s", "hessian_x_floor", "inverse_s", "inverse_x_floor", "sweep_s",
                              "sweep_gemm_floor_s", "sweep_x_floor"]))
    if "e2e" in only:
        _e2e(args, result, console)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    console.print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
