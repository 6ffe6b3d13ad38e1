"""What skipping ``gla calibrate`` on an imported fine-tuned model costs GLA, with ``gla`` commands.

CLIP ViT-B/32 zero-shot logits and a supervised WideResNet-16-4's softmax outputs on CIFAR-10 test
(``../shared/fixtures``; skipped with a reason where absent). Per seed, the protocol of
``benchmarks/real_outputs.py``: ``gla subset`` draws 50 images per class, q and T_zs are estimated on
them (``nll``); the WRN is imported with ``--probabilities`` and combined with the other 9,500 rows
once as imported (temperature 1) and once after ``gla calibrate`` on its rows of the 500. Reported:
top-1 (%) of the two GLA outputs per seed and their mean.

    .venv/bin/python benchmarks/calibration_step.py [--seeds 5]
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

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
PER_CLASS = 50


def gla(*args: object) -> None:
    """One ``gla`` command, in this process; a failure stops the benchmark with its message."""
    code = gla_main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"gla {' '.join(map(str, args))} failed with status {code}")


def run(work: Path, seeds: int) -> list[tuple[float, float]]:
    zs_all, ft_all = work / "zs.h5", work / "wrn.h5"
    gla("import", FIXTURES / "clip-zeroshot" / "Clip_CIFAR10_CIFAR10_test.csv", "--kind", "logits", "-o", zs_all)
    gla("import", FIXTURES / "supervised" / "wideresnet-16-4-cifar-10.npz", "--kind", "logits", "--probabilities",
        "--labels-key", "ground_truth", "--ids-from", zs_all, "-o", ft_all)
    top1 = []
    for seed in range(seeds):
        zs_est, zs_test, q, ft_est, ft_test, ft_cal, raw, cal = (
            work / f"{name}_{seed}.h5" for name in ("zs_est", "zs_test", "q", "ft_est", "ft_test", "ft_cal",
                                                    "gla_raw", "gla_cal"))
        gla("subset", zs_all, "--shots", PER_CLASS, "--seed", seed, "-o", zs_est, "--rest-out", zs_test)
        gla("subset", ft_all, "--shots", PER_CLASS, "--seed", seed, "-o", ft_est, "--rest-out", ft_test)
        gla("estimate-prior", zs_est, "-o", q, "--temperature", "nll")
        gla("calibrate", ft_test, "--val", ft_est, "-o", ft_cal)
        gla("combine", "--zeroshot", zs_test, "--prior", q, "--finetuned", ft_test, "-o", raw)
        gla("combine", "--zeroshot", zs_test, "--prior", q, "--finetuned", ft_cal, "-o", cal)
        gla("evaluate", raw, cal, "--json-out", work / "results.json")
        results = json.loads((work / "results.json").read_text())["results"]
        top1.append((100 * results[0]["metrics"]["top1"], 100 * results[1]["metrics"]["top1"]))
    return top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    if not FIXTURES.is_dir():
        print(f"skipped: the real model outputs are absent ({FIXTURES} does not exist)")
        return
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        top1 = run(Path(tmp), args.seeds)   # the commands' own tables go nowhere; the table below follows
    print("| seed | GLA, WRN as imported | GLA, WRN calibrated | difference (pp) |")
    print("| ---: | ---: | ---: | ---: |")
    for seed, (raw, cal) in enumerate(top1):
        print(f"| {seed} | {raw:.2f} | {cal:.2f} | {cal - raw:+.2f} |")
    raw, cal = np.mean(top1, axis=0)
    print(f"| mean | {raw:.2f} | {cal:.2f} | {cal - raw:+.2f} |")


if __name__ == "__main__":
    main()
