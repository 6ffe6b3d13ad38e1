"""Time ``gla evaluate --bootstrap`` against the plain ``gla evaluate`` on the same files.

All in one run, on the same generated logits (default: two files of 50,000 x 1,000, 50 images
per class, CLIP-like scale, a Zipf-shaped label bias in the first, removed in the second, and
the prior q for head / medium / tail groups):

- **baseline**: ``gla evaluate A.h5 B.h5 --prior q.h5 --json-out R.json`` (start-up, reading and measuring
  both files, writing the document);
- **bootstrap**: the same command with ``--bootstrap N --baseline A`` (N = 1,000 by default):
  intervals of every metric of both files and of their paired difference.

Each command runs ``--repeats`` times in a fresh process, interleaved; the best wall time counts,
and the peak resident memory of each process is reported (the bootstrap must hold per-row values
and one block of resample counts, not copies of the logits).

    .venv/bin/python benchmarks/bootstrap.py [--rows-per-class 50] [--classes 1000] [--resamples 1000] [--repeats 2]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from glacli.base.types import Prior
from glacli.io.paramfile import write_prior
from glacli.io.rowfile import write_rows

PEAK = "import resource, sys; from glacli.cli.main import main; code = main(sys.argv[1:]); " \
       "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)"


def write_files(folder: Path, per_class: int, n_classes: int) -> list[Path]:
    """Biased and debiased CLIP-like logits of the same rows, and their prior, written a few classes
    at a time."""
    n = per_class * n_classes
    zipf = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    q = np.random.default_rng(0).permutation(zipf / zipf.sum())
    bias = (np.log(q) * 0.5).astype(np.float32)
    names = [f"class {k}" for k in range(n_classes)]
    paths = [folder / "biased.h5", folder / "debiased.h5"]
    classes_per_slice = max(1, 2**24 // (n_classes * per_class))
    sinks = [write_rows(p, "logits", n_rows=n, n_cols=n_classes, classnames=names,
                        attrs={"temperature": 1.0}) for p in paths]
    with sinks[0] as biased, sinks[1] as debiased:
        for k0 in range(0, n_classes, classes_per_slice):
            rng = np.random.default_rng(k0)
            labels = np.repeat(np.arange(k0, min(n_classes, k0 + classes_per_slice)), per_class)
            logits = rng.normal(20.0, 1.5, size=(len(labels), n_classes)).astype(np.float32)
            logits[np.arange(len(labels)), labels] += rng.normal(4.0, 1.5, size=len(labels)).astype(np.float32)
            start = k0 * per_class
            ids = [str(i) for i in range(start, start + len(labels))]
            biased.write(start, logits + bias, labels, ids)
            debiased.write(start, logits, labels, ids)
    write_prior(folder / "q.h5", Prior(q, names, 1.0, "benchmark"))
    return [*paths, folder / "q.h5"]


def timed(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident KiB of one ``gla`` process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"gla {' '.join(args)} failed:\n{done.stderr}")
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak_kib"))
    return took, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows-per-class", type=int, default=50)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        biased, debiased, prior = write_files(folder, options.rows_per_class, options.classes)
        common = ["evaluate", str(biased), str(debiased), "--prior", str(prior), "--name", "biased",
                  "--name", "debiased", "--device", "cpu"]
        runs = {"baseline: gla evaluate (2 files)": common + ["--json-out", str(folder / "plain.json")],
                f"gla evaluate --bootstrap {options.resamples} --baseline biased":
                    common + ["--bootstrap", str(options.resamples), "--baseline", "biased",
                              "--json-out", str(folder / "boot.json")]}
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
        for _ in range(options.repeats):
            for name, args in runs.items():
                results[name].append(timed(args))
    n = options.rows_per_class * options.classes
    print(f"{n:,} rows x {options.classes:,} classes, 2 files, best of {options.repeats}\n")
    print("| command | wall time (s) | vs baseline | peak memory (MiB) |")
    print("| --- | ---: | ---: | ---: |")
    base = min(t for t, _ in next(iter(results.values())))
    for name, measured in results.items():
        best = min(t for t, _ in measured)
        peak = max(p for _, p in measured) / 1024
        print(f"| {name} | {best:.2f} | {best / base:.2f}x | {peak:.0f} |")


if __name__ == "__main__":
    main()
