"""Time ``gla estimate-prior`` against its floor and against the paper's released prior solver.

All in one run, on the same logits file (default 50,000 x 1,000: 50 images per class, CLIP-like
scale, a Zipf-shaped label bias built in):

- **floor**: what no implementation can avoid: the start-up of the CLI without torch
  (``gla combine --help``), plus, in one process after imports, reading the logits file into
  float32 and one float32 numpy softmax over it.
- **gla estimate-prior**, the whole command as a user runs it (start-up, reading, solving,
  writing), with ``--temperature 1`` and ``--temperature nll``: the best of ``--repeats`` runs,
  and its ratio to the floor.
- **paper solver**: the authors' code re-implemented: q starts uniform and takes 1000 steps of
  constrained SGD on the cross-entropy of ``z / T - log q`` (full batch, learning rate
  1e-5 x shots / 50, q clamped positive after each step, never renormalised), T = 1, in torch.
- **memory** (``--memory-rows``): peak RSS of ``--temperature 1`` as N grows (C fixed), with
  the default ``--memory`` (exp(z) kept in float32 when it fits) and with ``--memory 0.05``
  (every pass streams the file).

    .venv/bin/python benchmarks/prior_solver.py [--rows-per-class 50] [--classes 1000] [--steps 1000]
        [--memory-rows 50000,300000,1281167]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from glacli.io.paramfile import read_prior
from glacli.io.rowfile import write_rows

GLA = [sys.executable, "-m", "glacli"]


def write_file(path: Path, per_class: int, n_classes: int) -> None:
    """CLIP-like logits (about 100 x cosine) with a Zipf-shaped label bias, written a few classes at a
    time, so that 1.28M x 1,000 rows need no array of their size."""
    n = per_class * n_classes
    zipf = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    bias = (np.log(np.random.default_rng(0).permutation(zipf / zipf.sum())) * 0.5).astype(np.float32)
    classes_per_slice = max(1, 2**24 // (n_classes * per_class))
    with write_rows(path, "logits", n_rows=n, n_cols=n_classes,
                    classnames=[f"class {k}" for k in range(n_classes)],
                    attrs={"temperature": 1.0, "head_type": "zeroshot"}) as sink:
        for k0 in range(0, n_classes, classes_per_slice):
            rng = np.random.default_rng(k0)
            labels = np.repeat(np.arange(k0, min(n_classes, k0 + classes_per_slice)), per_class)
            logits = rng.normal(20.0, 1.5, size=(len(labels), n_classes)).astype(np.float32)
            logits[np.arange(len(labels)), labels] += rng.normal(4.0, 1.5, size=len(labels)).astype(np.float32)
            logits += bias
            start = k0 * per_class
            sink.write(start, logits, labels, [str(i) for i in range(start, start + len(labels))])


def timed(args: list[str], tree: str | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (MB) of one command, from GNU time; ``tree``: run gla from that
    source tree instead (a baseline checkout)."""
    env = None if tree is None else {**os.environ, "PYTHONPATH": tree}
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *args], capture_output=True, text=True, check=False,
                          env=env, cwd=tree)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return seconds, int(done.stderr.strip().splitlines()[-1]) // 1024


def floor(path: Path, repeats: int) -> dict:
    startup = min(timed([*GLA, "combine", "--help"])[0] for _ in range(repeats))
    compute = []
    for _ in range(repeats):
        start = time.perf_counter()
        with h5py.File(path, "r") as f:
            z = f["logits"][()].astype(np.float32, copy=False)
        e = np.exp(z - z.max(1, keepdims=True))
        e /= e.sum(1, keepdims=True)
        compute.append(time.perf_counter() - start)
        del z, e
    return {"startup": startup, "read_and_softmax": min(compute), "total": startup + min(compute)}


def paper_solver(path: Path, shots: int, steps: int) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Constrained SGD on q from uniform, as the released code estimates the prior; seconds and q."""
    import torch
    with h5py.File(path, "r") as f:
        z, y = torch.from_numpy(f["logits"][()]), torch.from_numpy(f["labels"][()])
    start = time.perf_counter()
    q = torch.nn.Parameter(torch.full((z.shape[1],), 1.0 / z.shape[1]))
    optimizer = torch.optim.SGD([q], lr=1e-5 * shots / 50)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(z - torch.log(q), y).backward()
        optimizer.step()
        with torch.no_grad():
            q.clamp_(min=1e-12)
    return time.perf_counter() - start, q.detach().double().numpy(), z.numpy(), y.numpy()


def quality(z: np.ndarray, y: np.ndarray, log_q: np.ndarray) -> tuple[float, float]:
    """Cross-entropy of ``z - log q`` (q normalised) and the largest moment gap, float64."""
    f = np.bincount(y, minlength=z.shape[1]) / len(y)
    ce, moments = 0.0, np.zeros(z.shape[1])
    for start in range(0, len(z), 4096):
        s = z[start:start + 4096].astype(np.float64) - log_q
        s -= s.max(1, keepdims=True)
        log_p = s - np.log(np.exp(s).sum(1, keepdims=True))
        ce -= log_p[np.arange(len(s)), y[start:start + 4096]].sum()
        moments += np.exp(log_p).sum(0)
    return ce / len(z), float(np.abs(moments / len(z) - f).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-class", type=int, default=50)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-rows", default="", help="comma-separated N for the memory rows (C fixed)")
    parser.add_argument("--baseline", help="a source tree of gla (e.g. `git archive` of an earlier commit) timed "
                        "alternately with this one, each repeat running both")
    args = parser.parse_args()
    result: dict = {"rows": args.rows_per_class * args.classes, "classes": args.classes}
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "zs.h5", Path(tmp) / "q.h5"
        write_file(path, args.rows_per_class, args.classes)
        result["floor"] = floor(path, args.repeats)
        for mode in ("1", "nll"):
            runs, baseline = [], []
            for _ in range(args.repeats):  # alternately, so both see the same machine load
                command = [*GLA, "estimate-prior", str(path), "-o", str(out), "-t", mode, "--json"]
                runs.append(timed(command))
                if args.baseline:
                    baseline.append(timed(command, args.baseline))
            if baseline:
                result[f"baseline_t_{mode}"] = {"seconds": min(s for s, _ in baseline),
                                                "all": [s for s, _ in baseline], "current": [s for s, _ in runs]}
            if baseline:
                timed(command)  # the prior file of this tree, for the table
            prior = read_prior(out)
            result[f"gla_t_{mode}"] = {"seconds": min(s for s, _ in runs), "peak_rss_mb": max(m for _, m in runs),
                                       "iterations": prior.iterations, "temperature": prior.temperature,
                                       "log_prior": prior.log_prior, "max_moment_gap": prior.max_moment_gap}
        paper_seconds, q_paper, z, y = paper_solver(path, args.rows_per_class, args.steps)
        result["paper"] = {"seconds": paper_seconds, "sum_q": float(q_paper.sum()), "steps": args.steps}
        for name, log_q in (("gla_t_1", result["gla_t_1"]["log_prior"]), ("paper", np.log(q_paper / q_paper.sum()))):
            result[name]["cross_entropy"], result[name]["moment_gap"] = quality(z, y, log_q)
        del z
        memory = []
        for n in filter(None, args.memory_rows.split(",")):
            big = Path(tmp) / f"zs_{n}.h5"
            write_file(big, int(n) // args.classes, args.classes)
            row = {"rows": int(n) // args.classes * args.classes}
            for label, extra in (("kept", []), ("streamed", ["--memory", "0.05"])):
                seconds, rss = timed([*GLA, "estimate-prior", str(big), "-o", str(out), "-t", "1", *extra])
                row[label] = {"seconds": seconds, "peak_rss_mb": rss}
            big.unlink()
            memory.append(row)
        result["memory"] = memory
    report(result)


def report(result: dict) -> None:
    fl = result["floor"]
    print(f"\n{result['rows']:,} x {result['classes']:,} logits\n")
    print(f"floor: {fl['total']:.2f} s = CLI start-up without torch {fl['startup']:.2f} s "
          f"+ read into float32 and one float32 softmax {fl['read_and_softmax']:.2f} s\n")
    print("| run | wall time (s) | x floor | iterations | cross-entropy | max moment gap | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in ("1", "nll"):
        r = result[f"gla_t_{mode}"]
        ce = f"{r['cross_entropy']:.6f}" if "cross_entropy" in r else ""
        print(f"| gla estimate-prior --temperature {mode} (whole command) | {r['seconds']:.2f} | "
              f"{r['seconds'] / fl['total']:.2f} | {r['iterations']} | {ce} | {r['max_moment_gap']:.1e} | "
              f"{r['peak_rss_mb']} |")
    for mode in ("1", "nll"):
        if f"baseline_t_{mode}" in result:
            r = result[f"baseline_t_{mode}"]
            print(f"| baseline estimate-prior --temperature {mode} (whole command) | {r['seconds']:.2f} | "
                  f"{r['seconds'] / fl['total']:.2f} | | | | |")
    p = result["paper"]
    print(f"| paper solver ({p['steps']} SGD steps, solve only; sum of q {p['sum_q']:.3f}) | {p['seconds']:.2f} | "
          f"{p['seconds'] / fl['total']:.1f} | {p['steps']} | {p['cross_entropy']:.6f} | {p['moment_gap']:.1e} | |")
    print(f"\npaper solver / gla --temperature 1: {p['seconds'] / result['gla_t_1']['seconds']:.0f}x")
    if result["memory"]:
        print("\n| rows x classes | kept exp(z): seconds | peak RSS (MB) | streamed (--memory 0.05): seconds | peak RSS (MB) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for row in result["memory"]:
            print(f"| {row['rows']:,} x {result['classes']:,} | {row['kept']['seconds']:.1f} | "
                  f"{row['kept']['peak_rss_mb']} | {row['streamed']['seconds']:.1f} | {row['streamed']['peak_rss_mb']} |")
    for mode in ("1", "nll"):
        result[f"gla_t_{mode}"].pop("log_prior")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
