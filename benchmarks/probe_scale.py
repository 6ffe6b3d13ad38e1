"""``gla fit`` at ImageNet scale on the GPU, against the same fit on the CPU, in one script.

Writes CLIP-sized synthetic features shaped like an ImageNet cache (train 1,281,167 x 768,
validation 50,000 x 768, 1,000 classes, float16 as ``gla extract`` stores them), then runs
``gla fit``, each in a fresh process:

  cpu      ``--wd W --max-iter K --device cpu``: the baseline
  device   the same fit with ``--device DEVICE`` (cuda)
  search   ``--val VAL --device DEVICE``: the whole penalty search, refit and temperature

and reports seconds per L-BFGS iteration (fit time over iterations; reading the features is
reported apart), the speed-up over the CPU, peak host memory (RSS) and peak GPU memory.

    python benchmarks/probe_scale.py --budget 400                     # ImageNet scale, --device cuda
    python benchmarks/probe_scale.py --rows 20000 --val-rows 5000 --device cpu --json out.json   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from probe_memory import CLASSES, DIM, run_fit, write_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_281_167)
    parser.add_argument("--val-rows", type=int, default=50_000)
    parser.add_argument("--iterations", type=int, default=5, help="L-BFGS iterations of the timed fixed-penalty fits")
    parser.add_argument("--wd", type=float, default=1e-4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole script: a fit still running when it is spent is stopped")
    parser.add_argument("--workdir", type=Path, help="folder for the feature files (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    started = time.perf_counter()
    results = {"rows": args.rows, "val_rows": args.val_rows, "features": DIM, "classes": CLASSES,
               "iterations": args.iterations, "wd": args.wd, "device": args.device, "runs": {},
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores" + _gpu_name()}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        train, val = Path(tmp) / "train.h5", Path(tmp) / "val.h5"
        write_features(train, args.rows, seed=1)
        write_features(val, args.val_rows, seed=2)
        print(f"wrote {args.rows:,} + {args.val_rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
        fixed = [str(train), "--wd", str(args.wd), "--max-iter", str(args.iterations), "--tol", "1e-12"]
        for name, fit_args in (("cpu", [*fixed, "--device", "cpu"]), ("device", [*fixed, "--device", args.device]),
                               ("search", [str(train), "--val", str(val), "--device", args.device])):
            timeout = None if args.budget is None else args.budget - (time.perf_counter() - started)
            run = run_fit([*fit_args, "-o", str(Path(tmp) / f"{name}.h5")], timeout)
            results["runs"][name] = run
            status = run["error"] if "error" in run else f"done in {run['wall']:.1f} s"
            print(f"{name}: {status}", flush=True)
            if args.json:  # after every run, so that a stopped script leaves what it measured
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def _gpu_name() -> str:
    import torch
    return f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""


def markdown(results: dict) -> str:
    """The results as the tables of docs/performance.md."""
    runs = results["runs"]
    lines = [(f"{results['rows']:,} x {results['features']} train rows, {results['val_rows']:,} validation rows, "
              f"{results['classes']:,} classes; {results['machine']}"), "",
             ("| run | device | iterations | read features (s) | fit (s) | s / iteration | vs cpu | peak RSS (MB) "
              "| peak GPU (MB) |"), "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = runs["cpu"].get("per_iteration")
    for name, run in runs.items():
        if "error" in run:
            lines.append(f"| {name} | | | | | | | | {run['error']} |")
            continue
        report, peaks = run["report"], run["peaks"]
        fixed = name != "search"  # the search is many fits: its time is in the line below the table
        per_iteration = f"{run['per_iteration']:.3f}" if fixed else ""
        speedup = f"{base / run['per_iteration']:.1f}x" if base and fixed else ""
        gpu = f"{peaks['gpu_mb']:,.0f}" if "gpu_mb" in peaks else ""
        lines.append(f"| {name} | {report['device']} | {report['iterations'] if fixed else ''} "
                     f"| {report['seconds']['load']:.1f} | {report['seconds']['fit']:.1f} | {per_iteration} | {speedup} "
                     f"| {peaks['rss_mb']:,.0f} | {gpu} |")
    search = runs.get("search", {})
    if "report" in search:
        report = search["report"]
        lines += ["", (f"search: {len(report['path'])} penalties in {report['seconds']['fit']:.1f} s, chose wd "
                       f"{report['wd']:.3g}, validation top-1 {100 * report['val_accuracy']:.2f}%, temperature "
                       f"{report['temperature']:.3g}, refit {report['iterations']} iterations"
                       f"{'' if report['converged'] else ' (not converged)'}")]
        lines += [f"warning: {warning}" for warning in report["warnings"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
