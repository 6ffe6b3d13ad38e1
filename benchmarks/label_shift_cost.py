"""What adapting to an estimated pi_t costs where it should not help, and what it trades where it does.

Run with ``gla`` commands on the shared fixtures (``../shared/fixtures``; skipped with a reason where
absent), the path docs/label-shift.md shows a user:

- **balanced test set** (CLIP ViT-B/32 zero-shot logits on CIFAR-10 test): per seed, ``gla subset``
  draws 50 images per class, ``gla estimate-prior`` fits q and T on them (``nll``), ``gla combine``
  debiases the other 9,500 (950 a class), ``gla estimate-target`` estimates pi_t on them (MLLS) and
  ``gla combine --target-prior`` adapts. Reported per seed: top-1 and mean per-class accuracy of the
  debiased and the adapted model, and their difference (the cost of adapting to a pi_t that is
  uniform), with the mean over seeds.
- **imbalanced test set** (CLIP ViT-B/32 on DermaMNIST, 7 classes, 67% one class): q from the train
  split, then the test split zero-shot, debiased, adapted to the MLLS estimate, and adapted to the
  test labels' true proportions (oracle): top-1 against mean per-class accuracy.

    .venv/bin/python benchmarks/label_shift_cost.py [--seeds 5]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from glacli.cli.main import main as gla_main

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "clip-zeroshot"
PER_CLASS = 50


def gla(*args: object) -> None:
    """One ``gla`` command, in this process; a failure stops the benchmark with its message."""
    code = gla_main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"gla {' '.join(map(str, args))} failed with status {code}")


def accuracies(work: Path, *files: Path) -> list[tuple[float, float]]:
    """(top-1, mean per-class) in % of each logits file, from ``gla evaluate --json``."""
    out = work / "results.json"
    gla("evaluate", *files, "--json-out", out)
    return [(100 * r["metrics"]["top1"], 100 * r["metrics"]["mean_per_class"])
            for r in json.loads(out.read_text())["results"]]


def balanced(work: Path, seeds: int) -> list[dict[str, float]]:
    zs_all = work / "cifar.h5"
    gla("import", FIXTURES / "Clip_CIFAR10_CIFAR10_test.csv", "--kind", "logits", "-o", zs_all)
    rows = []
    for seed in range(seeds):
        est, test, q, debiased, target, adapted = (work / f"{name}_{seed}.h5" for name in
                                                   ("est", "test", "q", "debiased", "target", "adapted"))
        gla("subset", zs_all, "--shots", PER_CLASS, "--seed", seed, "-o", est, "--rest-out", test)
        gla("estimate-prior", est, "-o", q, "--temperature", "nll")
        gla("combine", "--zeroshot", test, "--prior", q, "-o", debiased)
        gla("estimate-target", debiased, "-o", target)
        gla("combine", "--zeroshot", test, "--prior", q, "--target-prior", target, "-o", adapted)
        (top1_d, mpc_d), (top1_a, mpc_a) = accuracies(work, debiased, adapted)
        rows.append({"seed": seed, "top1 debiased": top1_d, "top1 adapted": top1_a, "cost top1": top1_d - top1_a,
                     "mpc debiased": mpc_d, "mpc adapted": mpc_a, "cost mpc": mpc_d - mpc_a})
    return rows


def imbalanced(work: Path) -> dict[str, tuple[float, float]]:
    for split in ("train", "test"):
        gla("import", FIXTURES / f"Clip_DermaMNIST_DermaMNIST_{split}.csv", "--kind", "logits",
            "-o", work / f"derma_{split}.h5")
    test, q = work / "derma_test.h5", work / "derma_q.h5"
    gla("estimate-prior", work / "derma_train.h5", "-o", q, "--temperature", "nll")
    gla("combine", "--zeroshot", test, "--prior", q, "-o", work / "derma_debiased.h5")
    gla("estimate-target", work / "derma_debiased.h5", "-o", work / "derma_target.h5")
    gla("combine", "--zeroshot", test, "--prior", q, "--target-prior", work / "derma_target.h5",
        "-o", work / "derma_adapted.h5")
    gla("export", test, "-o", work / "derma_test.npz")
    labels = np.load(work / "derma_test.npz")["labels"]
    truth = np.bincount(labels, minlength=7) / len(labels)
    np.save(work / "truth.npy", truth)
    gla("combine", "--zeroshot", test, "--prior", q, "--target-prior", work / "truth.npy",
        "-o", work / "derma_oracle.h5")
    names = ("zero-shot", "debiased", "adapted (MLLS pi_t)", "adapted (true pi_t)")
    files = [test, work / "derma_debiased.h5", work / "derma_adapted.h5", work / "derma_oracle.h5"]
    return dict(zip(names, accuracies(work, *files)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    if not FIXTURES.is_dir():
        print(f"skipped: the real model outputs are absent ({FIXTURES} does not exist)")
        return
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        work = Path(tmp)   # the commands' own tables go nowhere; the tables below follow
        rows = balanced(work, args.seeds)
        derma = imbalanced(work)
    print(f"## CIFAR-10, CLIP ViT-B/32, balanced test set (9,500 images), {args.seeds} seeds: "
          "debiased -> adapted to the MLLS pi_t (%)\n")
    print("| seed | top-1 debiased | top-1 adapted | cost (pp) | mean per-class debiased | adapted | cost (pp) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['seed']} | {r['top1 debiased']:.2f} | {r['top1 adapted']:.2f} | {r['cost top1']:.2f} | "
              f"{r['mpc debiased']:.2f} | {r['mpc adapted']:.2f} | {r['cost mpc']:.2f} |")
    mean = {k: np.mean([r[k] for r in rows]) for k in rows[0] if k != "seed"}
    print(f"| mean | {mean['top1 debiased']:.2f} | {mean['top1 adapted']:.2f} | {mean['cost top1']:.2f} | "
          f"{mean['mpc debiased']:.2f} | {mean['mpc adapted']:.2f} | {mean['cost mpc']:.2f} |")
    print("\n## DermaMNIST, CLIP ViT-B/32: q from the train split, the test split (2,005 images) (%)\n")
    print("| model | top-1 | mean per-class |")
    print("| :-- | ---: | ---: |")
    for name, (top1, mpc) in derma.items():
        print(f"| {name} | {top1:.2f} | {mpc:.2f} |")


if __name__ == "__main__":
    main()
