"""Write a small generated GLA example as CSV files, as another tool would export its logits.

Each sample gives two independent noisy views of its class. A 'zero-shot' model scores the
first view through a label bias (a Zipf-shaped prior q, as web-scale pre-training gives) and
with an arbitrary scale; a weaker 'fine-tuned' model scores the second view without bias, as
calibrated log-likelihoods. GLA removes q, calibrates the zero-shot scale and adds the two.

    python examples/synthetic_example.py OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CLASSES, VAL_PER_CLASS, TEST_PER_CLASS, NOISE = 50, 20, 100, 1.2


def noisy_view(rng: np.random.Generator, labels: np.ndarray, signal: float) -> np.ndarray:
    """Gaussian scores per class with the true class shifted up by ``signal``."""
    view = rng.normal(size=(len(labels), CLASSES)) * NOISE
    view[np.arange(len(labels)), labels] += signal
    return view


def write_csv(path: Path, logits: np.ndarray, labels: np.ndarray, names: list[str], prefix: str) -> None:
    ids = [f"{prefix}/{i:05d}" for i in range(len(labels))]
    with path.open("w") as f:
        f.write(",".join(names + ["label", "id"]) + "\n")
        for row, label, sample in zip(logits, labels, ids):
            f.write(",".join(f"{v:.5f}" for v in row) + f",{label},{sample}\n")


def main(out: Path) -> None:
    rng = np.random.default_rng(2023)
    names = [f"concept {k:02d}" for k in range(CLASSES)]
    zipf = 1.0 / np.arange(1, CLASSES + 1)
    log_q = np.log(rng.permutation(zipf / zipf.sum()))
    for split, per_class in (("val", VAL_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = np.repeat(np.arange(CLASSES), per_class)
        zeroshot = 20.0 + noisy_view(rng, labels, signal=2.5) + log_q
        finetuned = noisy_view(rng, labels, signal=2.0) * 2.0 / NOISE**2
        write_csv(out / f"zs_{split}.csv", zeroshot, labels, names, split)
        if split == "test":
            write_csv(out / f"ft_{split}.csv", finetuned, labels, names, split)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    main(target)
