"""Fine-tuned extraction on one shift set: ``gla extract imagenet-r:DIR --pretrained CHECKPOINT`` with the
weights as a WiSE-FT-style whole pickled model, against the baseline of the same weights as a plain state
dict, in the same run.

Both runs read the same generated ImageNet-R folder (wnid folders of its first classes) with the same
random-init weights; the result gives each run's seconds and images per second, the ratio pickled /
plain (the cost of the safe loader: the checkpoint read, its sha256 and the module-tree walk), and the
largest feature difference between the two (0: the same weights were loaded).

    python benchmarks/finetuned_extract.py --model tiny --images 64 --device cpu --json out.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_throughput import TINY_CONFIG, generate_images  # noqa: E402


class ImageClassifier(torch.nn.Module):
    """A stand-in for WiSE-FT's saved model: the CLIP model under image_encoder.model, plus a head."""

    def __init__(self, clip: torch.nn.Module, n_classes: int):
        super().__init__()
        self.image_encoder = torch.nn.Module()
        self.image_encoder.model = clip
        self.classification_head = torch.nn.Linear(int(clip.visual.output_dim), n_classes)


def run_extract(source: str, output: Path, model: str, checkpoint: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "glacli", "extract", source, "-o", str(output), "--model", model,
               "--pretrained", str(checkpoint), "--device", args.device, "--batch-size", str(args.batch_size),
               "--workers", str(args.workers), "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "gla extract failed")
    summary = json.loads(done.stdout)
    return {"wall_seconds": round(time.perf_counter() - started, 3), "encode_seconds": summary["seconds"],
            "images_per_second": summary["images_per_second"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="open_clip architecture or 'tiny'")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20, help="ImageNet-R classes (folders) to fill")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)

    import open_clip

    from glacli.io.imagenet_classes import imagenet_wnids, subset_indices
    with tempfile.TemporaryDirectory(prefix="gla-bench-ft-") as tmp:
        tmp_path = Path(tmp)
        model = args.model
        if model == "tiny":
            model = str(tmp_path / "gla-bench-tiny.json")
            Path(model).write_text(json.dumps(TINY_CONFIG))
        if model.endswith(".json"):
            open_clip.add_model_config(model)
        clip = open_clip.create_model(Path(model).stem if model.endswith(".json") else model)
        plain, pickled = tmp_path / "plain.pt", tmp_path / "checkpoint_10.pt"
        torch.save(clip.state_dict(), plain)
        torch.save(ImageClassifier(clip, 200), pickled)
        generate_images(tmp_path / "gen", args.images, 320, 240, classes=args.classes)
        shift = tmp_path / "imagenet-r"
        shift.mkdir()
        wnids, classes = imagenet_wnids(), subset_indices("imagenet-r")
        for k, folder in enumerate(sorted((tmp_path / "gen").iterdir())):
            folder.rename(shift / wnids[classes[k]])
        source = f"imagenet-r:{shift}"
        runs = {"plain state dict": run_extract(source, tmp_path / "plain.h5", model, plain, args),
                "pickled model": run_extract(source, tmp_path / "pickled.h5", model, pickled, args)}
        import h5py
        with h5py.File(tmp_path / "plain.h5") as a, h5py.File(tmp_path / "pickled.h5") as b:
            gap = float(np.abs(a["features"][()].astype(np.float32) - b["features"][()].astype(np.float32)).max())
            prefix = str(b.attrs.get("checkpoint_prefix"))
        size = pickled.stat().st_size
    result = {"model": args.model, "images": args.images, "device": args.device, "runs": runs,
              "wall_ratio_pickled_vs_plain": round(runs["pickled model"]["wall_seconds"]
                                                   / runs["plain state dict"]["wall_seconds"], 3),
              "max_feature_difference": gap, "checkpoint_prefix": prefix,
              "checkpoint_bytes": size}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


def markdown(result: dict) -> str:
    lines = ["| checkpoint | wall s | encode s | img/s |", "| --- | ---: | ---: | ---: |"]
    for name, run in result["runs"].items():
        lines.append(f"| {name} | {run['wall_seconds']:.2f} | {run['encode_seconds']:.2f} | "
                     f"{run['images_per_second'] or 0:,.0f} |")
    lines.append(f"\nfine-tuned extraction ({result['model']}, imagenet-r layout, {result['images']} images, "
                 f"{result['device']}): pickled model / plain state dict wall time "
                 f"{result['wall_ratio_pickled_vs_plain']:.2f}x; max feature difference "
                 f"{result['max_feature_difference']:.1e} (prefix {result['checkpoint_prefix']})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
