"""``python -m benchmarks.peers [--shapes 768x768,...] [--repeat 3] [--threads N] [--e2e MODELS] [--no-setup]``.

    python -m benchmarks.peers --e2e opt-125m,zoo:tiny-llama   # the whole issue-17 comparison

Builds (or reuses) ``benchmarks/peers/.venv`` (:mod:`benchmarks.peers.setup_env`), re-runs itself
there, and prints the issue-17 table: per layer and cell (sparsegpt 50 % and 2:4, wanda 50 %,
magnitude 50 %), each implementation's time over the plain reference's, all of them timed
in one process, one call each in turn (the order rotating every round), best of ``--repeat``;
then this project's time over each peer's and whether the masks are the same as this
project's. A peer that cannot be installed or whose entry point is missing gets one line and the
run goes on. ``--e2e`` adds the end-to-end comparison with llm-compressor's ``oneshot``
(:mod:`benchmarks.peers.oneshot`). Not part of the test command.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

CELLS = [("sparsegpt", "0.5"), ("sparsegpt", "2:4"), ("wanda", "0.5"), ("magnitude", "0.5")]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="768x768,3072x768,768x3072", help="OUTxIN,... (the issue's OPT-125m shapes)")
    ap.add_argument("--tokens", type=int, default=8192, help="calibration tokens behind each Hessian")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each implementation's best round counts")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--e2e", default="", help="comma-separated models for the oneshot comparison: opt-125m, zoo:tiny-llama")
    ap.add_argument("--e2e-targets", default="0.5,2:4")
    ap.add_argument("--e2e-repeat", type=int, default=1, help="rounds of the end-to-end runs (minutes each)")
    ap.add_argument("--no-setup", action="store_true", help="use the peers' venv as it is")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _reexec(args: argparse.Namespace, argv: list[str]) -> int:
    """Build the peers' venv and run this module there (from the repository root)."""
    from benchmarks.peers import setup_env

    py = setup_env.python() if args.no_setup else setup_env.build()
    if not py.exists():
        print(f"peers: no virtual environment at {setup_env.VENV}; run without --no-setup")
        return 1
    root = Path(__file__).resolve().parents[2]
    os.chdir(root)
    os.execv(str(py), [str(py), "-m", "benchmarks.peers", *argv, "--inside"])
    return 0  # not reached


def _implementations(method: str):
    from benchmarks import reference
    from benchmarks.peers.adapters import PEERS
    from harness import prune_weight

    def ref(w, h, t):
        if method == "magnitude":
            return reference.magnitude_ref(w, t.sparsity, t.n, t.m)
        if method == "wanda":
            return reference.wanda_ref(w, h, t.sparsity, t.n, t.m)
        return reference.sparsegpt_ref(w, h, t.sparsity, t.n, t.m)

    def ours(w, h, t):
        return prune_weight(method, w, hessian=h, target=str(t))

    impls = {"reference": ref, "sparsebench": ours}
    impls.update({peer: fns[method] for peer, fns in PEERS.items() if method in fns})
    return impls


def layer_table(shapes: list[tuple[int, int]], tokens: int, repeat: int, log=print) -> list[dict]:
    import torch

    from benchmarks.layers import correlated_inputs, hessian_of
    from benchmarks.peers.adapters import Unavailable
    from harness.core.target import Target

    rows = []
    for d_out, d_in in shapes:
        h = hessian_of(correlated_inputs(tokens, d_in))
        w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(1))
        for method, target in CELLS:
            t = Target.parse(target)
            impls = _implementations(method)
            best = {name: float("inf") for name in impls}
            out, skipped = {}, {}
            for r in range(repeat):
                names = list(impls)
                names = names[r % len(names):] + names[: r % len(names)]  # rotate the order every round
                for name in names:
                    if name in skipped:
                        continue
                    t0 = time.perf_counter()
                    try:
                        res = impls[name](w, h, t)
                    except Unavailable as exc:
                        skipped[name] = str(exc)
                        continue
                    best[name] = min(best[name], time.perf_counter() - t0)
                    out[name] = res.float()
            for name, why in skipped.items():
                log(f"{d_out}x{d_in} {method} {target}: {name} skipped: {why}")
            ours = out["sparsebench"]
            row = {"shape": f"{d_out}x{d_in}", "method": method, "target": target, "reference_s": best["reference"]}
            for name in out:
                row[f"{name}_s"] = best[name]
                row[f"{name}_x_ref"] = best[name] / best["reference"]
                row[f"{name}_same_mask"] = bool(torch.equal(out[name] == 0, ours == 0))
                row[f"{name}_mismatch"] = int(((out[name] == 0) != (ours == 0)).sum())
            rows.append(row)
            log(_line(row, out))
    return rows


def _line(row: dict, out: dict) -> str:
    parts = [f"{row['shape']:>9} {row['method']:<9} {row['target']:<4} ref {row['reference_s']:.3f}s"]
    for name in out:
        if name == "reference":
            continue
        mask = "same mask" if row[f"{name}_same_mask"] else f"{row[f'{name}_mismatch']} mask entries differ"
        parts.append(f"{name} {row[f'{name}_x_ref']:.2f}x ({mask})")
    ours = row["sparsebench_s"]
    for name in out:
        if name not in ("reference", "sparsebench"):
            parts.append(f"ours/{name} {ours / row[f'{name}_s']:.2f}")
    return " | ".join(parts)


def markdown(rows: list[dict]) -> str:
    """The issue's table: time over the plain reference per implementation and shape."""
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    lines = ["| per layer, time vs the plain reference | " + " | ".join(shapes) + " |", "|---|" + "---|" * len(shapes)]
    for method, target in CELLS:
        cell = [r for r in rows if r["method"] == method and r["target"] == target]
        names = [k[:-6] for k in cell[0] if k.endswith("_x_ref") and k != "reference_x_ref"] if cell else []
        for name in names:
            vals = []
            for shape in shapes:
                r = next((r for r in cell if r["shape"] == shape), None)
                vals.append("n/a" if r is None or f"{name}_x_ref" not in r else
                            f"{r[f'{name}_x_ref']:.2f}" + ("" if r[f"{name}_same_mask"] else " (mask differs)"))
            lines.append(f"| {method} {target}: {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if not args.inside:
        return _reexec(args, argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M')} {platform.platform()} torch {torch.__version__} "
          f"threads {torch.get_num_threads()} load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    _versions()
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s]
    rows = layer_table(shapes, args.tokens, args.repeat)
    print(markdown(rows))
    if args.e2e:
        from benchmarks.peers import oneshot

        oneshot.main([m for m in args.e2e.split(",") if m], args.e2e_targets.split(","), args.e2e_repeat)
    load = os.getloadavg()
    print(f"load at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


def _versions() -> None:
    from importlib import metadata

    from benchmarks.peers.setup_env import PEERS

    for spec, _, why in PEERS:
        name = spec.split("==")[0]
        try:
            print(f"peer {name} {metadata.version(name)}: {why}")
        except metadata.PackageNotFoundError:
            print(f"peer {name}: not installed (wanted {spec}); its cells are skipped")


if __name__ == "__main__":
    raise SystemExit(main())
