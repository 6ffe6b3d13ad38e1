"""Time ``gla estimate-prior`` against a re-implementation of the paper's released prior solver.

Both run in this process on the same logits (default 50,000 x 1,000: 50 images per class, the
bias of a long-tailed pre-training prior built in). The baseline is what the authors' code does:
q starts uniform and takes 1000 steps of constrained SGD on the cross-entropy of
``z / T - log q`` (full batch, learning rate 1e-5 x shots / 50, q clamped positive after each step,
never renormalised). Both use T = 1. Reported: wall times and their ratio, the cross-entropy each
solution reaches (the objective both minimise), the largest moment gap, and how far q is from
summing to 1.

    .venv/bin/python benchmarks/prior_solver.py [--rows-per-class 50] [--classes 1000] [--steps 1000]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from glacli import store
from glacli.cli import main as gla_main


def make_logits(per_class: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CLIP-like logits (about 100 x cosine) with a Zipf-shaped label bias."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    logits = rng.normal(20.0, 1.5, size=(len(labels), n_classes))
    logits[np.arange(len(labels)), labels] += rng.normal(4.0, 1.5, size=len(labels))
    zipf = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    logits += np.log(rng.permutation(zipf / zipf.sum())) * 0.5
    return logits.astype(np.float32), labels


def cross_entropy(z: torch.Tensor, y: torch.Tensor, q: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(z.double() - q.double().log(), y))


def moment_gap(z: torch.Tensor, y: torch.Tensor, q: torch.Tensor) -> float:
    f = torch.bincount(y, minlength=z.shape[1]).double() / len(y)
    return float((torch.softmax(z.double() - q.double().log(), 1).mean(0) - f).abs().max())


def paper_solver(z: torch.Tensor, y: torch.Tensor, shots: int, steps: int) -> torch.Tensor:
    """Constrained SGD on q from uniform, as the released code estimates the prior."""
    q = torch.nn.Parameter(torch.full((z.shape[1],), 1.0 / z.shape[1]))
    optimizer = torch.optim.SGD([q], lr=1e-5 * shots / 50)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(z - torch.log(q), y).backward()
        optimizer.step()
        with torch.no_grad():
            q.clamp_(min=1e-12)
    return q.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-class", type=int, default=50)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    logits, labels = make_logits(args.rows_per_class, args.classes)
    z, y = torch.from_numpy(logits), torch.from_numpy(labels)
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "zs.h5", Path(tmp) / "q.h5"
        store.write_logits(path, logits, labels, [str(i) for i in range(len(labels))],
                           [f"class {k}" for k in range(args.classes)], attrs={"head_type": "zeroshot"})
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = gla_main(["estimate-prior", str(path), "-o", str(out), "--temperature", "1", "--json"])
        ours_time = time.perf_counter() - start
        assert code == 0
        prior = store.read_prior(out)
    q_ours = torch.from_numpy(prior.prior)

    start = time.perf_counter()
    q_paper = paper_solver(z, y, args.rows_per_class, args.steps)
    paper_time = time.perf_counter() - start

    rows = {
        "gla estimate-prior (Newton, whole command incl. file I/O)": (ours_time, q_ours, prior.iterations),
        f"paper solver ({args.steps} SGD steps, full batch)": (paper_time, q_paper, args.steps),
    }
    result = {"rows": len(labels), "classes": args.classes, "threads": torch.get_num_threads(),
              "speedup": paper_time / ours_time, "methods": {}}
    print(f"\n{len(labels)} x {args.classes} logits, torch threads: {torch.get_num_threads()}\n")
    print("| solver | wall time (s) | iterations | cross-entropy | max moment gap | sum of q |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (seconds, q, iterations) in rows.items():
        ce, gap = cross_entropy(z, y, q / q.sum()), moment_gap(z, y, q)
        result["methods"][name] = {"seconds": seconds, "iterations": iterations, "cross_entropy": ce,
                                   "max_moment_gap": gap, "sum_q": float(q.sum())}
        print(f"| {name} | {seconds:.2f} | {iterations} | {ce:.6f} | {gap:.2e} | {float(q.sum()):.4f} |")
    print(f"\nspeed-up of gla over the paper solver: {paper_time / ours_time:.0f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
