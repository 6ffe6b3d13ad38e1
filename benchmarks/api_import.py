"""What ``import glacli as gla`` costs, against importing numpy + h5py in the same run.

Each case runs in a fresh interpreter (so nothing is cached in ``sys.modules``), rounds
interleaved so that load on the machine affects every case alike; the time is that of the import
statements inside the child (interpreter start-up excluded), as wall-clock time and as the
child's CPU time (which other processes on a busy machine inflate less). Cases:

- ``numpy + h5py``: the baseline, what any notebook reading gla files imports anyway;
- ``+ import glacli``: the package root (the API is loaded on first use);
- ``+ gla.estimate_prior``: the root and the whole API (core math, the gla file readers and writers), the cost a user pays.

Reported: the median over rounds per case, its difference to the baseline and the ratio, for
both clocks, and the machine's load average. The target (issue 21) is at most 0.15 s over the
baseline for the whole API.

    .venv/bin/python benchmarks/api_import.py [--rounds 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "numpy + h5py": "import numpy, h5py",
    "+ import glacli": "import numpy, h5py\nimport glacli as gla",
    "+ gla.estimate_prior": "import numpy, h5py\nimport glacli as gla\ngla.estimate_prior",
}
CHILD = """import time
start, cpu = time.perf_counter(), time.process_time()
{body}
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
import sys
assert not {{'torch', 'typer', 'rich'}} & set(sys.modules), 'a heavy module was imported'
print(elapsed, cpu)
"""


def measure(body: str) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD.format(body=body)], env=env, capture_output=True, text=True,
                         check=True).stdout
    wall, cpu = out.split()
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    for body in CASES.values():  # warm the file-system cache once
        measure(body)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, body in CASES.items():
            times[name].append(measure(body))
    medians = {name: [statistics.median(v[i] for v in values) for i in (0, 1)] for name, values in times.items()}
    base = medians["numpy + h5py"]
    print(f"{args.rounds} rounds, python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{load:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| case | wall (s) | over numpy + h5py | ratio | CPU (s) | over numpy + h5py | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (wall, cpu) in medians.items():
        print(f"| {name} | {wall:.3f} | {wall - base[0]:+.3f} | {wall / base[0]:.2f}x "
              f"| {cpu:.3f} | {cpu - base[1]:+.3f} | {cpu / base[1]:.2f}x |")


if __name__ == "__main__":
    main()
