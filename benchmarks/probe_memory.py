"""Peak memory of ``gla fit`` streaming features from disk, at growing row counts.

Writes CLIP-sized synthetic features (768-d, 1,000 classes, float16) with N rows, runs
``gla fit --memory 0.05`` (features larger than 50 MB are streamed from the file on every pass,
as they are on a CPU at ImageNet scale) for a few L-BFGS iterations, each N in a fresh process,
and reports peak resident memory and wall time against the smallest N.

    .venv/bin/python benchmarks/probe_memory.py [--rows 50000 200000] [--iterations 3]

Also the shared parts of the ``gla fit`` benchmarks (``probe_scale.py`` imports them): the
synthetic features and :func:`run_fit`, one fit in a child process with its peak memory.
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

from glacli.io.rowfile import write_rows

DIM, CLASSES = 768, 1000


def write_features(path: Path, n: int, seed: int = 1, means_seed: int = 0) -> None:
    """``n`` rows, labels cycling over the classes: a class mean (fixed by ``means_seed``, so train and
    validation sets share it) at a fifth of the noise, L2-normalised, stored as float16 as ``gla extract`` does."""
    means = np.random.default_rng(means_seed).normal(size=(CLASSES, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    with write_rows(path, "features", n_rows=n, n_cols=DIM, classnames=[f"class {k}" for k in range(CLASSES)],
                    dtype=np.float16) as sink:
        for start in range(0, n, 20000):
            y = labels[start:start + 20000]
            x = means[y] * 0.2 + rng.normal(size=(len(y), DIM)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            sink.write(start, x.astype(np.float16), y, [str(i) for i in range(start, start + len(y))])


PEAKS_MARK = "@@peaks "
CHILD = f"""
import json, resource, sys
from glacli.cli.main import main
code = main(sys.argv[1:])
peaks = {{"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}
torch = sys.modules.get("torch")
if torch is not None and torch.cuda.is_initialized():
    peaks["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
print({PEAKS_MARK!r} + json.dumps(peaks))
sys.exit(code)
"""


def run_fit(args: list[str], timeout: float | None) -> dict:
    """``gla fit ... --json`` in a child process: its report, peak memory and wall time (or why it stopped)."""
    if timeout is not None and timeout <= 0:
        return {"error": "not run: the time budget was spent"}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, "fit", *args, "--json"], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after the {timeout:.0f} s limit"}
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    report_text, _, peaks = done.stdout.rpartition(PEAKS_MARK)
    report = json.loads(report_text)
    return {"report": report, "peaks": json.loads(peaks), "wall": wall,
            "per_iteration": report["seconds"]["fit"] / max(report["iterations"], 1)}


def peak_fit(features: Path, head: Path, iterations: int) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one streamed ``gla fit`` on the CPU."""
    run = run_fit([str(features), "--wd", "1e-4", "--max-iter", str(iterations), "--memory", "0.05",
                   "--device", "cpu", "-o", str(head)], timeout=None)
    if "error" in run:
        raise SystemExit(f"gla fit failed: {run['error']}")
    return run["peaks"]["rss_mb"], run["wall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50000, 200000])
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.rows):
            path = Path(tmp) / f"features_{n}.h5"
            write_features(path, n)
            rows.append((n, *peak_fit(path, Path(tmp) / f"head_{n}.h5", args.iterations), n * DIM * 4 / 2**20))
            path.unlink()
    print(f"{DIM}-d features, {CLASSES} classes, "
          f"{args.iterations} L-BFGS iterations, --memory 0.05\n")
    print("| rows | features as float32 (MB) | peak RSS (MB) | vs smallest | wall time (s) | vs smallest |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    base_rss, base_time = rows[0][1], rows[0][2]
    for n, rss, seconds, size in rows:
        print(f"| {n:,} | {size:,.0f} | {rss:,.0f} | {rss / base_rss:.2f}x | {seconds:.1f} | {seconds / base_time:.2f}x |")


if __name__ == "__main__":
    main()
