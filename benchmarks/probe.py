"""``gla fit --val`` against scikit-learn's LogisticRegression on the same features, in one run.

Both choose the L2 penalty on the same validation set and are scored on the same test set:

  gla       ``gla fit TRAIN --val VAL -o HEAD`` (in-process: read files, penalty search with warm
            starts and refinement, refit, temperature), then ``gla logits TEST HEAD``.
  sklearn   what a user does by hand: ``LogisticRegression(solver="lbfgs", C=C, max_iter=1000)``
            fitted afresh for every C of a grid (by default the C equivalents of gla's coarse
            grid, one per decade: C = 1 / (wd N) for wd = 1 .. 1e-7), the C with the best
            validation accuracy kept. Timed from reading the same files.

Reported: test top-1 of each, wall and CPU time of each (CPU time: all threads of this process,
steadier than wall time on a shared machine), and the ratios sklearn / gla.

No real CLIP features are available offline, so by default the script generates a realistic
synthetic problem: 512-d L2-normalised rows around a shared direction (as CLIP image
embeddings are), 100 classes whose means cluster in 10 superclasses, Gaussian noise; 20,000
training, 5,000 validation and 10,000 test rows, stored as float16 as ``gla extract`` writes
them. Give ``--train/--val/--test`` features files to run on real ones.

    .venv/bin/python benchmarks/probe.py
    .venv/bin/python benchmarks/probe.py --train train.h5 --val val.h5 --test test.h5 --device cuda
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from glacli.cli.main import main as gla
from glacli.core.probe import COARSE_STRIDE, WD_GRID, wd_to_c
from glacli.io.rowfile import read_rows, write_features


def synthetic_features(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CLIP-like rows: shared direction + clustered class means + noise, L2-normalised (means fixed by dim/classes)."""
    structure = np.random.default_rng(12345)
    shared = structure.normal(size=dim)
    superclasses = structure.normal(size=(max(1, classes // 10), dim))
    means = superclasses[np.arange(classes) % len(superclasses)] + 0.8 * structure.normal(size=(classes, dim))
    shared /= np.linalg.norm(shared)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = 1.0 * shared + 0.18 * means[labels] + 0.9 * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels.astype(np.int64)


def write_synthetic(folder: Path, rows: dict[str, int], classes: int, dim: int) -> dict[str, Path]:
    paths = {}
    for seed, (split, n) in enumerate(rows.items()):
        x, y = synthetic_features(n, classes, dim, seed)
        paths[split] = folder / f"{split}.h5"
        write_features(paths[split], x, y, [f"{split}/{i}" for i in range(n)],
                       [f"class {k}" for k in range(classes)], attrs={"source": "synthetic"})
    return paths


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with read_rows(path, "features") as f:
        return f.read(dtype=np.float32), f.labels


def run_gla(paths: dict[str, Path], folder: Path, device: str) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        code = gla(["fit", str(paths["train"]), "--val", str(paths["val"]), "-o", str(folder / "head.h5"),
                    "--device", device, "--json"])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if code != 0:
        raise SystemExit(f"gla fit failed with status {code}")
    report = json.loads(captured.getvalue())
    if gla(["logits", str(paths["test"]), str(folder / "head.h5"), "-o", str(folder / "test_logits.h5")]) != 0:
        raise SystemExit("gla logits failed")
    with read_rows(folder / "test_logits.h5", "logits") as f:
        accuracy = float((f.read().argmax(1) == f.labels).mean())
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "test_accuracy": accuracy, "wd": report["wd"],
            "c_equivalent": report["c_equivalent"], "val_accuracy": report["val_accuracy"],
            "fits": len(report["path"]) + 1}


def run_sklearn(paths: dict[str, Path], c_grid: list[float], max_iter: int) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    start, cpu_start = time.perf_counter(), time.process_time()
    x, y = load(paths["train"])
    xv, yv = load(paths["val"])
    best_accuracy, best_model, not_converged = -1.0, None, 0
    for c in c_grid:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter).fit(x, y)
        not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        accuracy = model.score(xv, yv)
        if accuracy > best_accuracy:
            best_accuracy, best_model = accuracy, model
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    xt, yt = load(paths["test"])
    assert best_model is not None
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "test_accuracy": float(best_model.score(xt, yt)),
            "c": float(best_model.C),
            "val_accuracy": float(best_accuracy), "fits": len(c_grid), "not_converged": not_converged}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, help="Training features file (with --val and --test).")
    parser.add_argument("--val", type=Path)
    parser.add_argument("--test", type=Path)
    parser.add_argument("--rows", type=int, default=20000, help="Synthetic training rows.")
    parser.add_argument("--val-rows", type=int, default=5000)
    parser.add_argument("--test-rows", type=int, default=10000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cpu", help="Device for gla (scikit-learn runs on the CPU).")
    parser.add_argument("--max-iter", type=int, default=1000, help="scikit-learn's max_iter per fit.")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()
    given = [args.train, args.val, args.test]
    if any(given) and not all(given):
        parser.error("give all of --train, --val and --test, or none")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if all(given):
            paths = {"train": args.train, "val": args.val, "test": args.test}
        else:
            paths = write_synthetic(folder, {"train": args.rows, "val": args.val_rows, "test": args.test_rows},
                                    args.classes, args.dim)
        with read_rows(paths["train"], "features") as f:
            n_train, dim, classes = f.n_rows, f.n_cols, f.n_classes
        c_grid = [wd_to_c(float(wd), n_train) for wd in WD_GRID[::COARSE_STRIDE]]
        ours = run_gla(paths, folder, args.device)
        theirs = run_sklearn(paths, c_grid, args.max_iter)
    result = {
        "problem": {"train": n_train, "dim": dim, "classes": classes,
                    "source": "files" if all(given) else "synthetic"},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "gla_device": args.device},
        "gla": ours, "sklearn": theirs,
        "speedup": theirs["seconds"] / ours["seconds"],
        "cpu_speedup": theirs["cpu_seconds"] / ours["cpu_seconds"],
        "accuracy_gap_pp": 100 * (ours["test_accuracy"] - theirs["test_accuracy"]),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{n_train} x {dim} features, {classes} classes; gla on {args.device}, {torch.get_num_threads()} threads\n")
    print("| method | penalty chosen | fits | val top-1 % | test top-1 % | wall time s | CPU time s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| gla fit --val | wd {ours['wd']:.3g} (C {ours['c_equivalent']:.3g}) | {ours['fits']} | "
          f"{100 * ours['val_accuracy']:.2f} | {100 * ours['test_accuracy']:.2f} | {ours['seconds']:.1f} | "
          f"{ours['cpu_seconds']:.1f} |")
    print(f"| sklearn lbfgs, C grid | C {theirs['c']:.3g} | {theirs['fits']} | {100 * theirs['val_accuracy']:.2f} | "
          f"{100 * theirs['test_accuracy']:.2f} | {theirs['seconds']:.1f} | {theirs['cpu_seconds']:.1f} |")
    print(f"\nspeed-up (sklearn time / gla time): wall {result['speedup']:.2f}x, CPU {result['cpu_speedup']:.2f}x; "
          f"test accuracy gla - sklearn: {result['accuracy_gap_pp']:+.2f} pp"
          + (f"; sklearn fits not converged at max_iter: {theirs['not_converged']}" if theirs["not_converged"] else ""))


if __name__ == "__main__":
    main()
