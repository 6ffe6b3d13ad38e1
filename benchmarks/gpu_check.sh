#!/usr/bin/env bash
# The GPU checks of gla in one run, for a machine with an NVIDIA GPU; sized for about 7 minutes on one
# H200 (an estimate until it has run there), stopping within BUDGET seconds:
#   1. the CUDA tests (tests/test_cuda.py: extraction on the GPU with autocast and --gpu-decode against
#      the CPU; zeroshot, fit, estimate-prior and evaluate on the GPU against the CPU)
#   2. extract throughput, ViT-B-16 (random weights from its config) on generated JPEGs, with CPU
#      and with GPU JPEG decoding (benchmarks/extract_throughput.py)
#   3. gla fit --method prompt at ImageNet size, ViT-B-16 (random weights), 1,000 classes x 16 shots of
#      cached views, a few epochs: seconds per epoch and the projected 50 epochs (benchmarks/prompt_speed.py)
#   4. gla fit at ImageNet scale, 1,281,167 x 768 features and 1,000 classes, on the GPU against the
#      same fit on the CPU, then the whole --val penalty search on the GPU (benchmarks/probe_scale.py)
#   5. fine-tuned extraction of one shift set (ImageNet-R layout, generated images) with the weights as a
#      WiSE-FT-style pickled model against the same weights as a plain state dict
#      (benchmarks/finetuned_extract.py)
#   6. with two or more GPUs: torchrun over all of them (NCCL) against one process
# Every step runs even when an earlier one failed; the exit status says whether all passed. The log,
# the JSON of each step and summary.md go to $RESULTS (default: $OUT where that is set, else a new
# temporary folder); scratch files go to a temporary folder that is removed at the end.
#
# Python: $PYTHON, else .venv/bin/python (after `make install`), else python3 with the wheels that
# `make device-wheels` puts in .whl/ installed into a temporary folder: that is how it runs on a
# machine that has torch but reaches no package registry.
#
#   bash benchmarks/gpu_check.sh
#   IMAGES=5000 WORKERS=16 BUDGET=900 bash benchmarks/gpu_check.sh
#   SMOKE=1 bash benchmarks/gpu_check.sh     # the same steps on the CPU, small: checks this script
#   make gpu-check-smoke                     # the same, as a test (benchmarks/test_gpu_check.py)
set -uo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu MODEL=tiny IMAGES=${IMAGES:-64} BATCH=${BATCH:-32} FIT_ROWS=${FIT_ROWS:-20000}
    VAL_ROWS=${VAL_ROWS:-5000} PROMPT_CLASSES=${PROMPT_CLASSES:-10} PROMPT_SHOTS=${PROMPT_SHOTS:-2}
    PROMPT_EPOCHS=${PROMPT_EPOCHS:-2} BUDGET=${BUDGET:-300}
else
    DEVICE=cuda MODEL=ViT-B-16 IMAGES=${IMAGES:-3000} BATCH=${BATCH:-256} FIT_ROWS=${FIT_ROWS:-1281167}
    VAL_ROWS=${VAL_ROWS:-50000} PROMPT_CLASSES=${PROMPT_CLASSES:-1000} PROMPT_SHOTS=${PROMPT_SHOTS:-16}
    PROMPT_EPOCHS=${PROMPT_EPOCHS:-3} BUDGET=${BUDGET:-540}
fi
WORKERS=${WORKERS:-$(( $(nproc) < 12 ? $(nproc) : 12 ))}
RESULTS=${RESULTS:-${OUT:-$(mktemp -d -t gla-gpu-check-XXXX)}}
SCRATCH=$(mktemp -d -t gla-gpu-scratch-XXXX)
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/gpu_check.log") 2>&1

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
    if compgen -G ".whl/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SCRATCH/site" .whl/*.whl \
            || exit 1
        export PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import glacli.cli.main, open_clip, h5py, typer, rich, torch" \
    || { echo "gla or its dependencies are missing: run make install, or carry the wheels of make device-wheels in .whl/"; exit 1; }

failed=()
remaining() { echo $(( BUDGET - (SECONDS - started) )); }
# step NAME CAP COMMAND...: runs COMMAND with at most CAP seconds (and no more than the budget left).
step() {
    local name=$1 cap=$2 left
    shift 2
    left=$(remaining)
    (( left < cap )) && cap=$left
    echo "== $name (at most ${cap} s)"
    if (( cap <= 0 )); then echo "skipped: the ${BUDGET} s budget is spent"; failed+=("$name"); return; fi
    timeout --kill-after=10 "$cap" "$@"
    local status=$?
    (( status == 0 )) || { echo "$name: failed (exit $status)"; failed+=("$name"); }
}

echo "== machine"
if [ "$SMOKE" = 1 ]; then echo "SMOKE=1: CPU only"; else nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader; fi
"$PY" -c "import sys, torch, torchvision, open_clip, typer; print(f'python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, open_clip {open_clip.__version__}, typer {typer.__version__}')"
echo "$(nproc) CPU cores; results in $RESULTS"
if [ "$SMOKE" != 1 ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')" || exit 1
fi

step "CUDA tests" 180 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py
THROUGHPUT=(benchmarks/extract_throughput.py --model "$MODEL" --images "$IMAGES" --batch-size "$BATCH"
            --workers "$WORKERS" --device "$DEVICE" --repeats 2 --json)
step "throughput, $MODEL, CPU JPEG decoding" 120 \
    bash -c '"$@" > "$0"' "$RESULTS/cpu_decode.json" "$PY" "${THROUGHPUT[@]}"
step "throughput, $MODEL, GPU JPEG decoding" 120 \
    bash -c '"$@" > "$0"' "$RESULTS/gpu_decode.json" "$PY" "${THROUGHPUT[@]}" --gpu-decode
step "prompt learning, $MODEL, $PROMPT_CLASSES classes x $PROMPT_SHOTS shots, $PROMPT_EPOCHS epochs" 90 \
    "$PY" benchmarks/prompt_speed.py --model "$MODEL" --classes "$PROMPT_CLASSES" --shots "$PROMPT_SHOTS" \
    --epochs "$PROMPT_EPOCHS" --device "$DEVICE" --workdir "$SCRATCH" --json "$RESULTS/prompt_speed.json"
step "fine-tuned extraction, $MODEL, imagenet-r layout: pickled model against plain state dict" 90 \
    "$PY" benchmarks/finetuned_extract.py --model "$MODEL" --images "$IMAGES" --batch-size "$BATCH" \
    --workers "$WORKERS" --device "$DEVICE" --json "$RESULTS/finetuned_extract.json"
left=$(remaining)
step "gla fit at $FIT_ROWS rows: $DEVICE against cpu, then the --val search" "$left" \
    "$PY" benchmarks/probe_scale.py --rows "$FIT_ROWS" --val-rows "$VAL_ROWS" --device "$DEVICE" \
    --workdir "$SCRATCH" --budget $(( left - 20 )) --json "$RESULTS/probe_scale.json"

GPUS=0
[ "$SMOKE" = 1 ] || GPUS=$(nvidia-smi --list-gpus | wc -l)
if [ "$GPUS" -ge 2 ]; then
    "$PY" - "$SCRATCH" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from extract_throughput import generate_images
generate_images(Path(sys.argv[1]) / "images", 512, 320, 240)
PY
    # One random-init checkpoint, so that every rank loads the same weights.
    "$PY" -c "import open_clip, torch, sys; torch.save(open_clip.create_model('ViT-B-16').state_dict(), sys.argv[1])" \
        "$SCRATCH/vit-b-16-random.pt"
    COMMON=(--model ViT-B-16 --pretrained "$SCRATCH/vit-b-16-random.pt" --batch-size 64 --commit-every 64
            --dtype float32 --autocast off --device cuda)
    step "one process" 120 "$PY" -m glacli extract "$SCRATCH/images" -o "$SCRATCH/single.h5" "${COMMON[@]}"
    step "torchrun over $GPUS GPUs (NCCL)" 120 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" \
        -m glacli extract "$SCRATCH/images" -o "$SCRATCH/sharded.h5" "${COMMON[@]}"
fi

echo "== summary"
"$PY" - "$RESULTS" "$SCRATCH" <<'PY' | tee "$RESULTS/summary.md"
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from probe_scale import markdown
results, scratch = Path(sys.argv[1]), Path(sys.argv[2])
print("| decoding | extract img/s | model img/s | loading img/s | bound by | extract / bound |")
print("| --- | ---: | ---: | ---: | --- | ---: |")
last = None
for name in ("cpu_decode", "gpu_decode"):
    path = results / f"{name}.json"
    if not path.exists() or not path.stat().st_size:
        print(f"| {name.replace('_decode', '')} | not measured | | | | |")
        continue
    last = json.loads(path.read_text())
    rate = last["images_per_second"]
    print(f"| {name.replace('_decode', '')} | {rate['extract']:,.0f} | {rate['model']:,.0f} | {rate['loading']:,.0f} "
          f"| {last['bound_by']} | {last['extract_vs_bound']:.0%} |")
if last:
    print(f"\n{last['model']}, {last['images']} images, batch {last['batch_size']}, {last['workers']} workers, "
          f"autocast {last['autocast']}; {last['machine']}")
if (results / "prompt_speed.json").exists():
    from prompt_speed import markdown as prompt_markdown
    print("\n" + prompt_markdown(json.loads((results / "prompt_speed.json").read_text())))
if (results / "finetuned_extract.json").exists():
    from finetuned_extract import markdown as finetuned_markdown
    print("\n" + finetuned_markdown(json.loads((results / "finetuned_extract.json").read_text())))
if (results / "probe_scale.json").exists():
    print("\n" + markdown(json.loads((results / "probe_scale.json").read_text())))
if (scratch / "sharded.h5").exists() and (scratch / "single.h5").exists():
    import h5py, numpy as np
    with h5py.File(scratch / "single.h5") as a, h5py.File(scratch / "sharded.h5") as b:
        same = all(np.array_equal(a[k][()], b[k][()]) for k in ("ids", "labels", "classnames"))
        gap = float(np.abs(a["features"][()] - b["features"][()]).max())
    print(f"\ntorchrun vs one process: ids/labels/classnames {'identical' if same else 'DIFFER'}, "
          f"max feature difference {gap:.2e}")
PY
echo "== done in $(( SECONDS - started )) s; ${#failed[@]} step(s) failed${failed[*]:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
