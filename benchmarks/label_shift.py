"""Label shift on real model outputs: does estimating the test set's class distribution help?

CLIP ViT-B/32 zero-shot logits on CIFAR-10 test (``../shared/fixtures``; skipped with a reason where
absent). Per seed: q is estimated (T by NLL) on 50 images per class; from the remaining images,
long-tailed test subsets are drawn (class k keeps ``rows * imbalance^(-k/9)`` images, the class
order shuffled per seed; imbalance 1 is a balanced subset). On each subset:

- zero-shot: ``argmax z``;
- debiased: ``argmax z/T - log q`` (calibrated for a uniform prior);
- + MLLS: debiased + ``log pi_t``, ``pi_t`` estimated by ``gla``'s MLLS (Dirichlet MAP, one pseudo-count);
- + BBSE: the same with BBSE, its confusion matrix from the 500 q-estimation images;
- + oracle: debiased + ``log`` of the subset's true class proportions.

Reported: top-1 (%) mean and sample std over seeds, and the L1 error of each estimate of ``pi_t``.

    .venv/bin/python benchmarks/label_shift.py [--seeds 5] [--rows 900]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from glacli.core.label_shift import bbse, mlls, probabilities
from glacli.core.prior import class_proportions, estimate_prior

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "clip-zeroshot" / "Clip_CIFAR10_CIFAR10_test.csv"
METHODS = ("zero-shot", "debiased", "+ MLLS", "+ BBSE", "+ oracle")


def load() -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(FIXTURE, delimiter=",", skiprows=1)
    return table[:, :10], table[:, 10].astype(np.int64)


def long_tailed(labels: np.ndarray, pool: np.ndarray, rows: int, imbalance: float, rng: np.random.Generator
                ) -> np.ndarray:
    order = rng.permutation(10)
    counts = np.round(rows * imbalance ** (-np.arange(10) / 9)).astype(int)
    picked = [rng.choice(pool[labels[pool] == k], counts[rank], replace=False) for rank, k in enumerate(order)]
    return np.sort(np.concatenate(picked))


def run(seeds: int, rows: int) -> dict:
    z, y = load()
    results: dict = {}
    for imbalance in (1, 10, 100):
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            estimation = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == k), 50, replace=False)
                                                 for k in range(10)]))
            pool = np.setdiff1d(np.arange(len(y)), estimation)
            fit = estimate_prior(z[estimation].astype(np.float32), class_proportions(y[estimation], 10), "nll",
                                 labels=y[estimation])
            debias = lambda rows_: z[rows_] / fit.temperature - fit.log_prior  # noqa: E731
            test = long_tailed(y, pool, rows, imbalance, rng)
            truth = np.bincount(y[test], minlength=10) / len(test)
            scores = debias(test)
            estimates = {"+ MLLS": mlls(lambda: iter([probabilities(scores)]), 10).prior,
                         "+ BBSE": bbse(scores.argmax(1), debias(estimation).argmax(1), y[estimation], 10).prior,
                         "+ oracle": truth}
            predictions = {"zero-shot": z[test].argmax(1), "debiased": scores.argmax(1)}
            with np.errstate(divide="ignore"):
                predictions.update({name: (scores + np.log(pi)).argmax(1) for name, pi in estimates.items()})
            row = results.setdefault(imbalance, {m: [] for m in (*METHODS, "L1 MLLS", "L1 BBSE")})
            for name, predicted in predictions.items():
                row[name].append(float((predicted == y[test]).mean()) * 100)
            row["L1 MLLS"].append(float(np.abs(estimates["+ MLLS"] - truth).sum()))
            row["L1 BBSE"].append(float(np.abs(estimates["+ BBSE"] - truth).sum()))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=900, help="images of the largest class in each test subset")
    args = parser.parse_args()
    if not FIXTURE.exists():
        print(f"skipped: the real CLIP outputs are not available ({FIXTURE} is absent)")
        sys.exit(0)
    results = run(args.seeds, args.rows)
    print(f"\nCLIP ViT-B/32 zero-shot on CIFAR-10, {args.seeds} seeds; top-1 %, mean ± sample std\n")
    print("| imbalance | " + " | ".join(METHODS) + " | L1 error MLLS | L1 error BBSE |")
    print("| ---: | " + " | ".join("---:" for _ in METHODS) + " | ---: | ---: |")
    for imbalance, row in results.items():
        cells = [f"{np.mean(row[m]):.2f} ± {np.std(row[m], ddof=1):.2f}" for m in METHODS]
        cells += [f"{np.mean(row[k]):.3f}" for k in ("L1 MLLS", "L1 BBSE")]
        print(f"| {imbalance}:1 | " + " | ".join(cells) + " |")
    print(json.dumps({str(k): v for k, v in results.items()}))


if __name__ == "__main__":
    main()
