"""GLA's whole chain, run with ``gla`` commands, on real model outputs, with paired bootstrap intervals.

The outputs are the shared fixtures (``../shared/fixtures``, see its README; skipped with a reason
where absent, never copied into the project):

- **debiasing**: zero-shot logits of CLIP ViT-B/32, SigLIP and SigLIP2 on CIFAR-10 test. Per seed,
  ``gla subset`` draws 50 images per class, ``gla estimate-prior`` fits q and T on them (``nll``),
  and ``gla combine`` debiases the other 9,500; ``gla evaluate`` compares zero-shot and debiased
  on those 9,500 with a paired bootstrap (the zero-shot model is the baseline).
- **GLA with a supervised model**: CLIP ViT-B/32 zero-shot plus a supervised WideResNet-16-4
  (its softmax outputs on the same images, imported with ``--ids-from`` so the rows align). Per
  seed, the same 50-per-class split: q and T_zs from the zero-shot logits, the WRN's temperature
  by ``gla calibrate`` on its logits of those rows; then the ensemble (alpha 0.5 of the two
  calibrated models) and GLA, compared with the ensemble as the baseline.

``gla report --baseline`` then gives each method's mean ± sample std over seeds and, for the
paired difference to the baseline, its mean ± std and in how many seeds the 95% interval
excludes 0.

    .venv/bin/python benchmarks/real_outputs.py [--seeds 5] [--bootstrap 1000] [--out runs/real-outputs]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

from glacli.cli.main import main as gla_main

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
ZERO_SHOT = {"CLIP ViT-B/32": "Clip", "SigLIP": "SigLIP", "SigLIP2": "SigLIP2"}
WIDERESNET = FIXTURES / "supervised" / "wideresnet-16-4-cifar-10.npz"
PER_CLASS = 50


def gla(*args: object) -> None:
    """One ``gla`` command, in this process; a failure stops the benchmark with its message."""
    code = gla_main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"gla {' '.join(map(str, args))} failed with status {code}")


def debiasing(work: Path, model: str, prefix: str, seeds: int, bootstrap: int) -> list[Path]:
    zs_all = work / f"{prefix}.h5"
    gla("import", FIXTURES / "clip-zeroshot" / f"{prefix}_CIFAR10_CIFAR10_test.csv", "--kind", "logits",
        "-o", zs_all)
    results = []
    for seed in range(seeds):
        est, test, q = (work / f"{prefix}_{name}_{seed}.h5" for name in ("est", "test", "q"))
        gla("subset", zs_all, "--shots", PER_CLASS, "--seed", seed, "-o", est, "--rest-out", test)
        gla("estimate-prior", est, "-o", q, "--temperature", "nll")
        debiased = work / f"{prefix}_debiased_{seed}.h5"
        gla("combine", "--zeroshot", test, "--prior", q, "-o", debiased)
        out = work / f"{prefix}_results_{seed}.json"
        gla("evaluate", test, debiased, "--name", "zero-shot", "--name", "debiased", "--baseline", "zero-shot",
            "--bootstrap", bootstrap, "--bootstrap-seed", seed, "--tag", f"model={model}", "--tag", f"seed={seed}",
            "--json-out", out)
        results.append(out)
    return results


def with_supervised(work: Path, seeds: int, bootstrap: int) -> list[Path]:
    zs_all, ft_all = work / "Clip.h5", work / "wrn.h5"
    gla("import", WIDERESNET, "--kind", "logits", "--probabilities", "--labels-key", "ground_truth",
        "--ids-from", zs_all, "-o", ft_all)
    results = []
    for seed in range(seeds):
        zs_est, zs_test, q = (work / f"Clip_{name}_{seed}.h5" for name in ("est", "test", "q"))
        ft_est, ft_test, ft_cal = (work / f"wrn_{name}_{seed}.h5" for name in ("est", "test", "cal"))
        gla("subset", ft_all, "--shots", PER_CLASS, "--seed", seed, "-o", ft_est, "--rest-out", ft_test)
        gla("calibrate", ft_test, "--val", ft_est, "-o", ft_cal)
        ensemble, combined = work / f"ensemble_{seed}.h5", work / f"gla_{seed}.h5"
        gla("combine", "--zeroshot", zs_test, "--prior", q, "--finetuned", ft_cal, "--method", "ensemble",
            "--alpha", "0.5", "-o", ensemble)
        gla("combine", "--zeroshot", zs_test, "--prior", q, "--finetuned", ft_cal, "-o", combined)
        out = work / f"gla_results_{seed}.json"
        gla("evaluate", zs_test, work / f"Clip_debiased_{seed}.h5", ft_cal, ensemble, combined,
            "--name", "zero-shot", "--name", "debiased", "--name", "WRN (calibrated)", "--name", "ensemble",
            "--name", "GLA", "--baseline", "ensemble", "--bootstrap", bootstrap, "--bootstrap-seed", seed,
            "--tag", "model=CLIP + WRN", "--tag", f"seed={seed}", "--json-out", out)
        results.append(out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="keep the files and results here")
    args = parser.parse_args()
    if not FIXTURES.is_dir():
        print(f"skipped: the real model outputs are absent ({FIXTURES} does not exist)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the commands' own tables; the reports follow
            debiased = [f for model, prefix in ZERO_SHOT.items()
                        for f in debiasing(work, model, prefix, args.seeds, args.bootstrap)]
            combined = with_supervised(work, args.seeds, args.bootstrap)
            gla("report", *debiased, "--cols", "model", "--baseline", "zero-shot", "-o", work / "debiasing.md")
            gla("report", *combined, "--cols", "model", "--baseline", "ensemble", "-o", work / "gla.md")
        print(f"## Debiasing: q and T from {PER_CLASS} images per class, {args.seeds} splits, "
              f"{args.bootstrap} bootstrap resamples\n")
        print((work / "debiasing.md").read_text())
        print("## CLIP ViT-B/32 + WideResNet-16-4 (baseline: the ensemble)\n")
        print((work / "gla.md").read_text())


if __name__ == "__main__":
    main()
