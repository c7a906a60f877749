"""Peak memory of pruning a large checkpoint in memory vs block by block from disk (not a test).

``python -m benchmarks.stream --shape llama-0.8b --modes memory,stream [--dir DIR] [--device cpu]``

1. Writes a checkpoint of random bf16 weights in ``--shard-mb`` safetensors shards (a
   ``save_pretrained`` folder with the zoo's tokenizer), tensor by tensor from a meta-device
   skeleton, so writing it needs no model in memory. Kept in ``--dir`` and reused.
2. For each mode, one child process prunes it with sparsegpt at 50 % (``--calib`` random token
   windows, default 4 x 128) as a cell's prune phase does: ``memory`` loads the whole model
   (``load_model``), runs ``prune_sequential`` and writes the artifact file; ``stream`` builds the
   skeleton, runs ``prune_streamed`` and writes the sharded artifact block by block.
3. Prints per mode: peak RSS of the child (``ru_maxrss``), its RSS after imports (baseline), the
   difference as a multiple of the checkpoint's size, and wall times (load, prune, total).

Shapes: ``llama-0.8b`` (13 blocks, hidden 2048, 1.6 GB), ``opt-1.3b`` (OPT-1.3B's config, 2.6 GB),
``llama-7b`` (Llama-2-7B's config, 13.5 GB; ``memory`` needs ~2x that, so run ``--modes stream``),
``llama-13b`` (Llama-2-13B's config, 26 GB, larger than this machine's RAM; ``--modes stream``). The
streamed artifact is as large as the checkpoint: both must fit on the disk of ``--dir``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.run.env import peak_rss_bytes

ZOO_TOKENIZER = Path(__file__).resolve().parent.parent / "harness/models/zoo/checkpoints/tiny-llama"
LLAMA = dict(vocab_size=32000, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
SHAPES = {
    "llama-0.8b": ("LlamaConfig", dict(LLAMA, hidden_size=2048, intermediate_size=5504, num_hidden_layers=13,
                                       num_attention_heads=16, num_key_value_heads=16)),
    "opt-1.3b": ("OPTConfig", dict(vocab_size=50272, hidden_size=2048, ffn_dim=8192, num_hidden_layers=24,
                                   num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=2048,
                                   do_layer_norm_before=True, dropout=0.0)),
    "llama-tiny": ("LlamaConfig", dict(LLAMA, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=4)),  # dry runs
    "llama-7b": ("LlamaConfig", dict(LLAMA, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32)),
    "llama-13b": ("LlamaConfig", dict(LLAMA, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                      num_attention_heads=40, num_key_value_heads=40)),
}


def write_checkpoint(shape: str, folder: Path, shard_mb: int = 200, seed: int = 0) -> Path:
    """A save_pretrained folder of random bf16 weights (norms 1, biases 0), tensor by tensor."""
    import torch
    import transformers
    from safetensors.torch import save_file

    from harness.models.stream import skeleton

    if (folder / "model.safetensors.index.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    cls, kwargs = SHAPES[shape]
    config = getattr(transformers, cls)(**kwargs)
    model = skeleton(config, torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    names = [k for k in state if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:  # shards of about shard_mb, in state-dict order
        nbytes = state[name].numel() * 2
        if groups[-1] and size + nbytes > shard_mb << 20:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    weight_map = {}
    for i, group in enumerate(groups):  # one shard in memory at a time
        part = {}
        for name in group:
            t = state[name]
            if t.dim() >= 2:
                part[name] = (torch.randn(t.shape, generator=g) * 0.02).to(torch.bfloat16)
            else:
                part[name] = (torch.ones if name.endswith("weight") else torch.zeros)(t.shape, dtype=torch.bfloat16)
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
        del part
    total = sum((folder / f).stat().st_size for f in set(weight_map.values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}, indent=1))
    config.dtype = torch.bfloat16
    config.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ZOO_TOKENIZER / name, folder / name)
    return folder


def _progress(done: int, total: int, start: float) -> None:
    """One stderr line per 1/8 of the layers: elapsed time and peak RSS so far (a long run can be
    read while it runs, and a cut one still says how far it got)."""
    if done == total or done % max(total // 8, 1) == 0:
        peak = peak_rss_bytes()
        print(f"  {done}/{total} layers, {time.perf_counter() - start:.0f} s, peak RSS {peak / 1e9:.2f} GB",
              file=sys.stderr, flush=True)


def child(mode: str, folder: Path, out: Path, calib: str, device: str) -> dict:
    """One prune phase in this process; returns its measurements."""
    import psutil
    import torch

    from harness.core.spec import ModelSpec
    from harness.core.target import Target
    from harness.plugins import get_method

    torch.set_num_threads(2)
    baseline = psutil.Process().memory_info().rss
    n, seqlen = (int(x) for x in calib.split("x"))
    batches = list(torch.randint(0, 2048, (n, seqlen), generator=torch.Generator().manual_seed(0)).split(4))
    cls = get_method("sparsegpt")
    method, target = cls(cls.Params()), Target.parse("0.5")
    spec = ModelSpec(f"path:{folder}", dtype="bfloat16", stream=mode == "stream")
    t0 = time.perf_counter()
    if mode == "memory":
        from harness.drivers.lm import prune_sequential
        from harness.models.load import load_model
        from harness.run.artifacts import write_artifact

        loaded = load_model(spec, device=device)
        t1 = time.perf_counter()
        reports = prune_sequential(loaded.model, batches, method, target, device=device)
        t2 = time.perf_counter()
        loaded.model.to("cpu")
        write_artifact(loaded.model, out, "bench")
    else:
        from harness.drivers.stream import open_skeleton, prune_streamed, rest_state
        from harness.models.stream import open_streamed
        from harness.run.artifacts import ShardWriter

        loaded = open_streamed(spec, device=device)
        path = open_skeleton(loaded.model, loaded.source)
        t1 = time.perf_counter()
        writer = ShardWriter(out, "bench")
        writer.write("rest", rest_state(loaded.model, path))
        sink = lambda i, prefix, block: writer.write(  # noqa: E731
            f"block-{i:05d}", {f"{prefix}.{k}": v for k, v in block.state_dict().items()})
        reports = prune_streamed(loaded.model, loaded.source, sink, batches, method, target, device=device,
                                 progress=lambda done, n: _progress(done, n, t1))
        t2 = time.perf_counter()
        writer.finish()
    t3 = time.perf_counter()
    return {"mode": mode, "layers": len(reports), "baseline_rss": baseline,
            "peak_rss": peak_rss_bytes(),
            "load_s": t1 - t0, "prune_s": t2 - t1, "total_s": t3 - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-0.8b")
    p.add_argument("--modes", default="memory,stream", help="comma-separated: memory, stream")
    p.add_argument("--dir", type=Path, default=Path("benchmarks/results/stream"))
    p.add_argument("--shard-mb", type=int, default=200)
    p.add_argument("--calib", default="4x128", help="calibration windows NxSEQLEN (random tokens)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    folder = args.dir / args.shape
    if args.child:  # a measured run: print one JSON line
        out = args.dir / f"artifacts-{args.child}"
        shutil.rmtree(out, ignore_errors=True)
        try:
            print(json.dumps(child(args.child, folder, out, args.calib, args.device)))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return 0
    t0 = time.perf_counter()
    write_checkpoint(args.shape, folder, args.shard_mb)
    ckpt = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    print(f"{args.shape}: {ckpt / 1e9:.2f} GB in {len(list(folder.glob('*.safetensors')))} shards "
          f"({time.perf_counter() - t0:.0f} s to write or find)")
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        cmd = [sys.executable, "-m", "benchmarks.stream", "--shape", args.shape, "--dir", str(args.dir),
               "--calib", args.calib, "--device", args.device, "--child", mode]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # the child's progress goes to stderr
        if proc.returncode != 0:
            print(f"{mode}: failed (rc {proc.returncode}); its error is above")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(checkpoint_bytes=ckpt, above_baseline=(row["peak_rss"] - row["baseline_rss"]) / ckpt)
        rows.append(row)
        print(f"{mode:>6}: peak RSS {row['peak_rss'] / 1e9:.2f} GB (baseline {row['baseline_rss'] / 1e9:.2f} GB; "
              f"+{row['above_baseline']:.2f}x the checkpoint), load {row['load_s']:.0f} s, prune {row['prune_s']:.0f} s, "
              f"total {row['total_s']:.0f} s, {row['layers']} layers")
    if args.out:
        args.out.write_text(json.dumps({"shape": args.shape, "calib": args.calib, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
