#!/usr/bin/env bash
# GPU check of gla extract, for a machine with an NVIDIA GPU (one or more). Under 8 minutes on one
# modern GPU: runs the GPU tests (CUDA extraction vs CPU, autocast, --gpu-decode), then the
# throughput benchmark with a ViT-B-16 architecture (random weights from its config) on a few
# thousand generated JPEGs, with CPU and with GPU JPEG decoding, and prints the tables.
# With two or more GPUs it also checks that torchrun (NCCL) writes the single-process file.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, after `make install`
#   IMAGES=5000 WORKERS=16 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
IMAGES=${IMAGES:-3000}
BATCH=${BATCH:-256}
WORKERS=${WORKERS:-$(( $(nproc) < 12 ? $(nproc) : 12 ))}
OUT=${OUT:-$(mktemp -d -t gla-gpu-check-XXXX)}

echo "== machine"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
echo "$(nproc) CPU cores; results in $OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"

echo "== GPU tests"
"$PY" -m pytest -q -rs tests/test_extract.py -k "gpu or device_decoding or features_equal"

echo "== throughput, ViT-B-16, CPU JPEG decoding"
"$PY" benchmarks/extract_throughput.py --model ViT-B-16 --images "$IMAGES" --batch-size "$BATCH" \
    --workers "$WORKERS" --device cuda --repeats 2 --json > "$OUT/cpu_decode.json"
echo "== throughput, ViT-B-16, GPU JPEG decoding"
"$PY" benchmarks/extract_throughput.py --model ViT-B-16 --images "$IMAGES" --batch-size "$BATCH" \
    --workers "$WORKERS" --device cuda --repeats 2 --gpu-decode --json > "$OUT/gpu_decode.json"

GPUS=$(nvidia-smi --list-gpus | wc -l)
if [ "$GPUS" -ge 2 ]; then
    echo "== torchrun over $GPUS GPUs (NCCL) vs one process"
    "$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from extract_throughput import generate_images
generate_images(Path(sys.argv[1]) / "images", 512, 320, 240)
PY
    # One random-init checkpoint, so that every rank loads the same weights.
    "$PY" -c "import open_clip, torch, sys; torch.save(open_clip.create_model('ViT-B-16').state_dict(), sys.argv[1])" \
        "$OUT/vit-b-16-random.pt"
    COMMON=(--model ViT-B-16 --pretrained "$OUT/vit-b-16-random.pt" --batch-size 64 --commit-every 64
            --dtype float32 --autocast off --device cuda)
    "$PY" -m glacli extract "$OUT/images" -o "$OUT/single.h5" "${COMMON[@]}"
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m glacli extract "$OUT/images" \
        -o "$OUT/sharded.h5" "${COMMON[@]}"
fi

echo "== summary"
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from rich.console import Console
from rich.table import Table
out = Path(sys.argv[1])
table = Table(title="gla extract on the GPU (ViT-B-16, random weights)")
for column in ("decoding", "extract img/s", "model img/s", "loading img/s", "bound by", "extract / bound"):
    table.add_column(column, justify="right")
machine = ""
for name in ("cpu_decode", "gpu_decode"):
    r = json.loads((out / f"{name}.json").read_text())
    rate = r["images_per_second"]
    machine = r["machine"]
    table.add_row(name.replace("_decode", ""), f"{rate['extract']:,.0f}", f"{rate['model']:,.0f}",
                  f"{rate['loading']:,.0f}", r["bound_by"], f"{r['extract_vs_bound']:.0%}")
console = Console()
console.print(table)
console.print(f"{r['images']} images, batch {r['batch_size']}, {r['workers']} workers, autocast {r['autocast']}; {machine}")
if (out / "sharded.h5").exists() and (out / "single.h5").exists():
    import h5py, numpy as np
    with h5py.File(out / "single.h5") as a, h5py.File(out / "sharded.h5") as b:
        same = all(np.array_equal(a[k][()], b[k][()]) for k in ("ids", "labels", "classnames"))
        gap = float(np.abs(a["features"][()] - b["features"][()]).max())
    console.print(f"torchrun vs one process: ids/labels/classnames {'identical' if same else 'DIFFER'}, "
                  f"max feature difference {gap:.2e}")
PY
