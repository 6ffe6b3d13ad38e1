"""Speed of ``gla fit --method prompt``: the GLA authors' few-shot prompt learner at ImageNet size.

Random unit features stand in for cached views (``--shots`` images per class, ``--views`` views
each), the class names are ImageNet's (CLIP's 1,000 names shipped with open_clip, so prompts
have their real token lengths), and the model is the architecture with random weights from its
config: the speed of a step depends on the shapes, not on the values. The fit runs the service
of ``gla fit`` (authors' learning rate and batch of 32 per shot, checkpoint every epoch,
validation every epoch) for a few epochs; the report gives seconds per epoch and the projected
time of the authors' 50 epochs.

    python benchmarks/prompt_speed.py --model ViT-B-16 --device cuda --json out.json
    python benchmarks/prompt_speed.py --model tiny --classes 10 --shots 2 --epochs 2 --device cpu
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from extract_throughput import TINY_CONFIG  # this folder is on the path of a script run from it

from glacli.io.rowfile import write_features
from glacli.services.fit_prompt import fit_prompt_head

AUTHORS_EPOCHS = 50


def write_model(model: str, folder: Path) -> tuple[str, str]:
    """``(--model, --pretrained)`` of a random-init model saved in ``folder`` (``tiny``: a config JSON)."""
    import open_clip

    if model == "tiny":
        config = folder / "gla-bench-tiny.json"
        config.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(config)
        model, name = str(config), config.stem
    else:
        name = model
    checkpoint = folder / f"{name}-random.pt"
    torch.save(open_clip.create_model(name).state_dict(), checkpoint)
    return model, str(checkpoint)


def write_views(path: Path, classnames: list[str], per_class: int, views: int, dim: int, attrs: dict,
                seed: int) -> None:
    """Random unit features, ``per_class`` images per class and ``views`` rows each, with view ids."""
    rng = np.random.default_rng(seed)
    n_images = per_class * len(classnames)
    features = rng.standard_normal((n_images * views, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_images) % len(classnames), views)
    ids = [f"img{i}#v{k}" if views > 1 else f"img{i}" for i in range(n_images) for k in range(views)]
    extra = {"augment_views": views} if views > 1 else {}
    write_features(path, features, labels, ids, classnames, attrs={**attrs, **extra})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture, or 'tiny'")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--views", type=int, default=4, help="views per image in the features file")
    parser.add_argument("--val-shots", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", type=Path, help="folder for the files (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = [IMAGENET_CLASSNAMES[k % 1000] + ("" if k < 1000 else f" {k // 1000}") for k in range(args.classes)]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        model, pretrained = write_model(args.model, folder)
        arch = Path(model).stem if model.endswith(".json") else model
        import open_clip
        dim = open_clip.get_model_config(arch)["embed_dim"]
        attrs = {"encoder": "open_clip", "model": arch, "pretrained": pretrained}
        write_views(folder / "train.h5", names, args.shots, args.views, dim, attrs, seed=0)
        write_views(folder / "val.h5", names, args.val_shots, 1, dim, attrs, seed=1)
        setup = time.perf_counter() - started
        if torch.cuda.is_available() and args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        report = fit_prompt_head(folder / "train.h5", folder / "head.h5", val=folder / "val.h5", epochs=args.epochs,
                                 model=model, pretrained=pretrained, device=args.device)
        peak = torch.cuda.max_memory_allocated() / 2**20 if report["device"].startswith("cuda") else None
    per_epoch = report["seconds"]["fit"] / max(1, args.epochs)
    results = {
        "model": args.model, "classes": args.classes, "shots": args.shots, "views": args.views,
        "epochs": args.epochs, "device": report["device"], "batch_size": report["batch_size"], "lr": report["lr"],
        "steps_per_epoch": report["steps_per_epoch"], "seconds_setup": setup, "seconds_load": report["seconds"]["load"],
        "seconds_fit": report["seconds"]["fit"], "seconds_per_epoch": per_epoch,
        "seconds_per_step": per_epoch / report["steps_per_epoch"],
        "projected_minutes_50_epochs": per_epoch * AUTHORS_EPOCHS / 60, "peak_gpu_mb": peak,
        "train_loss": [h["train_loss"] for h in report["history"]],
        "machine": f"{platform.node()}, "
                   + (torch.cuda.get_device_name() if peak is not None else f"{os.cpu_count()} CPU cores"),
    }
    if not all(np.isfinite(results["train_loss"])):
        raise SystemExit(f"prompt learning diverged: training losses {results['train_loss']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return results


def markdown(results: dict) -> str:
    """One line for the GPU check's summary."""
    peak = f", peak GPU {results['peak_gpu_mb']:,.0f} MB" if results["peak_gpu_mb"] is not None else ""
    return (f"prompt learning ({results['model']}, {results['classes']:,} classes x {results['shots']} shots, "
            f"{results['device']}): {results['seconds_per_epoch']:.2f} s/epoch ({results['steps_per_epoch']} steps "
            f"of {results['batch_size']}, {results['seconds_per_step']:.3f} s/step), {AUTHORS_EPOCHS} epochs in about "
            f"{results['projected_minutes_50_epochs']:.1f} min{peak}")


if __name__ == "__main__":
    main()
