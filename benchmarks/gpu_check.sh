#!/usr/bin/env bash
# GPU check (issue 7): under 8 minutes on one H100, installs nothing, reads nothing from the network.
#   1. a Llama-2-7B-shaped model (random weights, built on the GPU, fp16) pruned to 50 % by SparseGPT
#      and by Wanda with 128 x 2048 random-token calibration: prune time, peak GPU memory, per-layer
#      prune time by projection kind;
#   2. the per-layer benchmark with our implementations on the GPU (references on the CPU, masks compared);
#   3. block streaming (benchmarks/stream.py): a Llama-2-7B-shaped checkpoint of random bf16 weights
#      (~13.5 GB, written once to $STREAM_DIR, default benchmarks/results/stream) pruned by SparseGPT
#      block by block from disk, 4 x 128 calibration tokens: peak RSS and wall time (up to 7 more minutes).
# Usage:  bash benchmarks/gpu_check.sh            (needs CUDA; results in benchmarks/results/gpu_check_*.json)
#         SMALL=1 bash benchmarks/gpu_check.sh    (CPU dry run of every step: 2-block Llama, small shapes)
# PYTHON=/path/to/python overrides the interpreter (default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT_DIR:-benchmarks/results}
mkdir -p "$OUT"

if ! "$PY" -c 'import torch, transformers, rich, harness' 2>/dev/null; then
    echo "gpu_check.sh: $PY cannot import torch, transformers, rich and harness; install sparsebench first (pip install -e .) or set PYTHON" >&2
    exit 2
fi
if [[ "${SMALL:-0}" == 1 ]]; then
    DEVICE=cpu MODEL=llama-tiny CALIB=4x64 SHAPES=128x128,256x128 BIG= LIMIT=300 STREAM_SHAPE=llama-tiny
else
    DEVICE=cuda MODEL=llama-2-7b CALIB=128x2048 SHAPES=768x768,3072x768,768x3072,4096x4096 BIG=11008x4096 LIMIT=160
    STREAM_SHAPE=llama-7b
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_check.sh: no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)')); run it on a GPU machine, or SMALL=1 for the CPU dry run" >&2
        exit 2
    fi
    "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'
fi
# Each step has its own time limit (worst case 8 min in all); a step that fails or runs out of
# time is reported and the next one still runs.
failed=()
step() {  # step LIMIT_S NAME COMMAND...
    local limit=$1 name=$2; shift 2
    timeout "$limit" "$@" || { echo "gpu_check.sh: step '$name' failed or exceeded ${limit} s (exit $?)" >&2; failed+=("$name"); }
}
start=$SECONDS
for method in sparsegpt wanda; do
    echo "== $MODEL $method 50% on $DEVICE, calibration $CALIB ($((SECONDS - start)) s elapsed)"
    step "$LIMIT" "e2e $method" "$PY" -m benchmarks run --only e2e --e2e "$MODEL" --e2e-method "$method" --calib "$CALIB" \
        --device "$DEVICE" --out "$OUT/gpu_check_e2e_$method.json"
done
echo "== per-layer benchmark on $DEVICE ($((SECONDS - start)) s elapsed)"
step 100 "per-layer" "$PY" -m benchmarks run --quick --only methods,iobs,stages --shapes "$SHAPES" --device "$DEVICE" \
    --out "$OUT/gpu_check_layers.json"
if [[ -n "$BIG" ]]; then
    echo "== per-layer benchmark on $DEVICE, $BIG ($((SECONDS - start)) s elapsed)"
    step 60 "per-layer $BIG" "$PY" -m benchmarks run --quick --only methods --shapes "$BIG" --device "$DEVICE" \
        --out "$OUT/gpu_check_layers_big.json"
fi
echo "== $STREAM_SHAPE streamed from disk, sparsegpt 50% on $DEVICE, calibration 4x128 ($((SECONDS - start)) s elapsed)"
step 420 "stream $STREAM_SHAPE" "$PY" -m benchmarks.stream --shape "$STREAM_SHAPE" --modes stream --device "$DEVICE" \
    --dir "${STREAM_DIR:-benchmarks/results/stream}" --out "$OUT/gpu_check_stream.json"
echo "== gpu_check.sh done in $((SECONDS - start)) s; failed steps: ${failed[*]:-none}"
[[ ${#failed[@]} -eq 0 ]]
