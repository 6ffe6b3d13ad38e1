"""Throughput of ``gla extract`` against its two parts, to show which one bounds a run.

Three measurements on the same generated JPEGs, same batch size, workers and device:

  extract   the full pipeline of ``gla extract`` (loader workers, transfer, model, chunked writes)
  model     the model alone on preprocessed tensors already on the device
  loading   the data loading alone: read, decode, preprocess, collate, transfer (no model)

The pipeline cannot beat the slower of the two parts; ``extract / min(model, loading)`` is how
close it gets, and the slower part is the bound to work on (more --workers or --gpu-decode for
loading; a bigger GPU or autocast for the model).

    python benchmarks/extract_throughput.py --model tiny --images 512 --workers 2 --device cpu
    python benchmarks/extract_throughput.py --model ViT-B-16 --images 3000 --batch-size 256 --workers 12 --device cuda

Each is run ``--repeats`` times, interleaved, and the best run counts.
``--pretrained`` defaults to none (random weights from the architecture's config): throughput
does not depend on the weights. ``--model tiny`` is a 2-layer ViT at 32 px defined here.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from glacli.io import extraction
from glacli.io.encoders import load_encoder
from glacli.io.sources import open_source

TINY_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _write_image(job: tuple[Path, int, int, int]) -> None:
    """A smooth random photo-like JPEG (low-frequency noise upsampled), so file sizes are realistic."""
    from PIL import Image
    path, seed, width, height = job
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    noise = rng.integers(-12, 13, (height, width, 3))
    big = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.int64)
    Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def generate_images(root: Path, n: int, width: int, height: int, classes: int = 10) -> None:
    jobs = []
    for k in range(n):
        folder = root / f"class_{k % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{k:06d}.jpg", k, width, height))
    with multiprocessing.Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_write_image, jobs, chunksize=64)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loading(rows, encoder, options: extraction.ExtractOptions) -> tuple[float, list[torch.Tensor]]:
    """Read, decode, preprocess, collate and move every batch to the device; keep the inputs."""
    batches = [list(range(s, min(s + options.batch_size, len(rows)))) for s in range(0, len(rows), options.batch_size)]
    on_device = options.decode_on_device and encoder.device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        extraction.RowDataset(rows.locators, encoder.loader(on_device)), batch_sampler=batches,
        num_workers=options.workers, collate_fn=extraction.Collate(not on_device),
        pin_memory=encoder.device.type == "cuda", prefetch_factor=4 if options.workers else None)
    kept = []
    start = time.perf_counter()
    for item in loader:
        inputs, _ = encoder.prepare(item["inputs"], on_device)
        kept.append(inputs)
    synchronize(encoder.device)
    return time.perf_counter() - start, kept


def time_model(encoder, inputs: list[torch.Tensor]) -> float:
    encoder.encode_batch(inputs[0])  # warm-up (CUDA kernels, autotuning)
    synchronize(encoder.device)
    start = time.perf_counter()
    for batch in inputs:
        encoder.encode_batch(batch).to("cpu")
    synchronize(encoder.device)
    return time.perf_counter() - start


def time_extract(rows, encoder, options: extraction.ExtractOptions, folder: Path) -> float:
    out = folder / f"features-{time.monotonic_ns()}.h5"
    start = time.perf_counter()
    extraction.extract(rows, encoder, out, options)
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="open_clip architecture, model-config .json, or 'tiny'")
    parser.add_argument("--pretrained", default=None, help="weights (default: random init)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--folder", type=Path, help="use this image folder instead of generated images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--autocast", default="fp16")
    parser.add_argument("--gpu-decode", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="report the best of this many runs of each")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="gla-bench-") as tmp:
        tmp_path = Path(tmp)
        model = args.model
        if model == "tiny":
            model = str(tmp_path / "gla-bench-tiny.json")
            Path(model).write_text(json.dumps(TINY_CONFIG))
        folder = args.folder
        if folder is None:
            folder = tmp_path / "images"
            started = time.perf_counter()
            generate_images(folder, args.images, *args.size)
            print(f"generated {args.images} JPEGs of {args.size[0]}x{args.size[1]} in "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        rows = open_source(str(folder))
        encoder = load_encoder("open_clip", model, args.pretrained, args.device, autocast=args.autocast)
        options = extraction.ExtractOptions(batch_size=args.batch_size, workers=args.workers, dtype="float16",
                                            commit_rows=4096, decode_on_device=args.gpu_decode)
        n = len(rows)
        seconds: dict[str, list[float]] = {"extract": [], "model": [], "loading": []}
        for _ in range(args.repeats):  # interleaved, so that load from other processes hits all three alike
            loading_s, inputs = time_loading(rows, encoder, options)
            seconds["loading"].append(loading_s)
            seconds["model"].append(time_model(encoder, inputs))
            del inputs
            seconds["extract"].append(time_extract(rows, encoder, options, tmp_path))

    rates = {name: n / min(times) for name, times in seconds.items()}
    bound = "model" if rates["model"] < rates["loading"] else "loading"
    result = {
        "model": args.model, "device": str(encoder.device), "images": n, "batch_size": args.batch_size,
        "workers": args.workers, "repeats": args.repeats, "gpu_decode": args.gpu_decode, "autocast": args.autocast if encoder.device.type ==
        "cuda" else "off", "images_per_second": {k: round(v, 1) for k, v in rates.items()},
        "bound_by": bound, "extract_vs_bound": round(rates["extract"] / rates[bound], 3),
        "machine": _machine(encoder.device),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return result


def _machine(device: torch.device) -> str:
    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {cpu}"
    return f"{cpu}, no GPU used"


def _print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    rates = result["images_per_second"]
    table = Table(title=f"gla extract throughput: {result['model']} on {result['device']}, {result['images']} images, "
                        f"batch {result['batch_size']}, {result['workers']} workers"
                        + (", GPU decoding" if result["gpu_decode"] else ""))
    table.add_column("what")
    table.add_column("images/s", justify="right")
    table.add_column("vs extract", justify="right")
    for name, label in (("extract", "gla extract (full pipeline)"), ("model", "model alone (preloaded tensors)"),
                        ("loading", "data loading alone")):
        table.add_row(label, f"{rates[name]:,.1f}", f"{rates[name] / rates['extract']:.2f}x")
    console = Console()
    console.print(table)
    console.print(f"bound by {result['bound_by']}; extract runs at "
                  f"{result['extract_vs_bound']:.0%} of that bound. Machine: {result['machine']}")


if __name__ == "__main__":
    main()
