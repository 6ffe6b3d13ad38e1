"""GLA at ImageNet's 1,000 classes on real CLIP ViT-B/32 outputs, every step a ``gla`` command.

The data are the shared fixtures (``../shared/fixtures``, see its README; skipped with a reason
where absent, never copied into the project): CLIP ViT-B/32 image features of 7,000 ImageNet
train images (7 per class) and its zero-shot text classifier, brought in by ``gla import``; the
GLA authors' ViT-B/16 q; LAION-400M / 2B concept frequencies of the 1,000 classes.

Three experiments, each over seeded splits (``gla subset``), each compared with a paired
bootstrap (``gla evaluate --bootstrap --baseline``) and summarised by ``gla report --baseline``:

- **q's sample size**: per seed, 4 rows per class are the estimation pool and the other 3 the
  test rows; q is estimated (``gla estimate-prior``) from k = 1, 2, 3, 4 labelled rows per class
  (nested), with ``--temperature 1`` and ``nll``, and without labels (``--target uniform``,
  transductive) from the test rows themselves and from all 7,000 rows; ``gla combine`` debiases
  the test rows' zero-shot logits, and the gain over zero-shot is evaluated. (With T fixed, the
  labels of a balanced set do not change q: ``--target uniform`` on the k = 4 rows gives the same q.)
- **few shots**: per seed, 1 validation row per class, 1, 2 or 4 training rows (nested) and the
  same 2 test rows per class for every shot count. q (``nll``) from the training rows' zero-shot
  logits; a linear probe and an anchored probe (``gla fit --val``, ``--anchor``); the ensemble
  ``(1-a) zs/T + a probe`` at a = 0.5 and at the a of a grid that is best on the validation
  row; GLA over each probe. GLA is compared with each ensemble of the same probe.
- **what q is**: Spearman correlations of the estimated q's (``gla export``) with the authors'
  q (``gla import --kind prior``) and with the LAION frequencies.

    .venv/bin/python benchmarks/imagenet_outputs.py [--seeds 5] [--few-shot-seeds N] [--bootstrap 1000] [--out runs/imagenet]
        [--plot docs/results/imagenet_q_sample_size.png]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from glacli.cli.main import main as gla_main

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
IMAGENET = FIXTURES / "clip-imagenet" / "in1k_clip_vitb32_fewshot7k.npz"
LAION = FIXTURES / "clip-imagenet" / "in1k_laion_concept_freq_neglectedtails.npz"
AUTHORS_Q = FIXTURES / "gla-official" / "q.pt"
LOGIT_SCALE = 100  # CLIP's learned logit scale: the zero-shot logits are 100 x cosine similarity

POOL_SHOTS = 4  # q's sample size: rows per class that q may be estimated from; the other 3 are test rows
Q_SHOTS = (1, 2, 3, 4)
TRAIN_SHOTS = (1, 2, 4)  # few shots: training rows per class; 1 validation row; the last 2 are test rows
ALPHAS = tuple(round(a / 10, 1) for a in range(11))  # the ensemble weights searched on the validation row
TEST_UNLABELLED = "the 3 test rows, no labels"
ALL_UNLABELLED = "all 7 rows, no labels"
PROBES = {"linear": "linear probe", "anchored": "anchored probe"}


def gla(*args: object) -> None:
    """One ``gla`` command, in this process (its notes on stderr are dropped); a failure stops the
    benchmark with its message."""
    notes = io.StringIO()
    with contextlib.redirect_stderr(notes):
        code = gla_main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"gla {' '.join(map(str, args))} failed with status {code}: {notes.getvalue().strip()}")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The commands' own tables are not shown; the reports follow at the end."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def gla_json(*args: object) -> dict:
    """One ``gla`` command with ``--json``: its machine-readable output."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        gla(*args, "--json")
    return json.loads(buffer.getvalue())


def import_fixture(work: Path) -> tuple[Path, Path, Path]:
    """The fixture's features and text classifier as gla files, and the zero-shot logits of all rows."""
    features, head, zeroshot = work / "features.h5", work / "zeroshot_head.h5", work / "zeroshot.h5"
    gla("import", IMAGENET, "--kind", "features", "--key", "features", "--labels-key", "labels",
        "--classnames-key", "classnames", "-o", features)
    gla("import", IMAGENET, "--kind", "head", "--key", "text_head", "--normalize-rows", "--logit-scale",
        LOGIT_SCALE, "--classnames-key", "classnames", "-o", head)
    gla("logits", features, head, "-o", zeroshot)
    return features, head, zeroshot


# --------------------------------------------------------------------------- q's sample size


def q_sample_size(work: Path, zeroshot: Path, seeds: int, bootstrap: int) -> tuple[list[Path], dict]:
    """Debiased zero-shot on each seed's 3 test rows per class, with q from k labelled rows per class
    (both temperatures) or from unlabelled rows; returns the evaluate results and the prior files."""
    results, priors = [], {}
    unlabelled_all = work / "q_all_unlabelled.h5"
    gla("estimate-prior", zeroshot, "--target", "uniform", "--temperature", 1, "-o", unlabelled_all)
    priors[(ALL_UNLABELLED, "T = 1", 0)] = unlabelled_all
    for seed in range(seeds):
        test = work / f"qs_test_{seed}.h5"
        pools = {k: work / f"qs_est{k}_{seed}.h5" for k in Q_SHOTS}
        gla("subset", zeroshot, "--shots", POOL_SHOTS, "--seed", seed, "-o", pools[POOL_SHOTS], "--rest-out", test)
        for k in Q_SHOTS[:-1]:  # nested in the pool: the first k rows of each class in the seed's order
            gla("subset", zeroshot, "--shots", k, "--seed", seed, "-o", pools[k])
        settings: dict[str, list[tuple[str, Path]]] = {}
        for k, pool in pools.items():
            for name, temperature in (("T = 1", "1"), ("nll", "nll")):
                priors[(k, name, seed)] = work / f"qs_q{k}_{temperature}_{seed}.h5"
                gla("estimate-prior", pool, "--temperature", temperature, "-o", priors[(k, name, seed)])
            settings[str(k)] = [(name, priors[(k, name, seed)]) for name in ("T = 1", "nll")]
        unlabelled_test = work / f"qs_q_test_unlabelled_{seed}.h5"  # transductive: the test rows themselves
        gla("estimate-prior", test, "--target", "uniform", "--temperature", 1, "-o", unlabelled_test)
        priors[(TEST_UNLABELLED, "T = 1", seed)] = unlabelled_test
        settings[TEST_UNLABELLED] = [("T = 1", unlabelled_test)]
        settings[ALL_UNLABELLED] = [("T = 1", unlabelled_all)]
        for setting, fits in settings.items():
            debiased = []
            for name, prior in fits:
                debiased.append(prior.with_name(prior.stem + "_debiased.h5"))
                gla("combine", "--zeroshot", test, "--prior", prior, "-o", debiased[-1])
            out = work / f"qs_results_{seed}_{setting.replace(' ', '_').replace(',', '')}.json"
            names = [arg for name, _ in fits for arg in ("--name", name)]
            gla("evaluate", test, *debiased, "--name", "zero-shot", *names, "--baseline", "zero-shot",
                "--bootstrap", bootstrap, "--bootstrap-seed", seed, "--tag", f"k={setting}", "--tag", f"seed={seed}",
                "--json-out", out)
            results.append(out)
    return results, priors


# --------------------------------------------------------------------------- few shots


def few_shots(work: Path, features: Path, head: Path, zeroshot: Path, seeds: int, bootstrap: int,
              log: Callable[[str], None]) -> tuple[list[Path], list[Path]]:
    """Probes, ensembles and GLA at 1, 2, 4 shots; returns the evaluate results of every method and
    those of the GLA-against-ensemble comparisons."""
    methods, comparisons = [], []
    for seed in range(seeds):
        split = {}
        for shots in TRAIN_SHOTS:  # the validation row comes first, so it is the same for every shot count
            for kind, source in (("feat", features), ("zs", zeroshot)):
                split[kind, shots] = work / f"fs_{kind}_train{shots}_{seed}.h5"
                gla("subset", source, "--shots", shots, "--val-shots", 1, "--seed", seed, "-o", split[kind, shots],
                    "--val-out", work / f"fs_{kind}_val_{seed}.h5", "--rest-out", work / f"fs_{kind}_rest{shots}_{seed}.h5")
        val, zs_val = work / f"fs_feat_val_{seed}.h5", work / f"fs_zs_val_{seed}.h5"
        test = work / f"fs_feat_rest{max(TRAIN_SHOTS)}_{seed}.h5"  # the same test rows for every shot count
        zs_test = work / f"fs_zs_rest{max(TRAIN_SHOTS)}_{seed}.h5"
        for shots in TRAIN_SHOTS:
            started = time.perf_counter()
            tag = f"{shots}_{seed}"
            prior, debiased = work / f"fs_q_{tag}.h5", work / f"fs_debiased_{tag}.h5"
            gla("estimate-prior", split["zs", shots], "--temperature", "nll", "-o", prior)
            gla("combine", "--zeroshot", zs_test, "--prior", prior, "-o", debiased)
            files = [(zs_test, "zero-shot"), (debiased, "debiased zero-shot")]
            for probe, label in PROBES.items():
                probe_head = work / f"fs_{probe}_head_{tag}.h5"
                anchor = ("--anchor", head) if probe == "anchored" else ()
                gla("fit", split["feat", shots], "--val", val, *anchor, "--device", "cpu", "-o", probe_head)
                probe_test, probe_val = work / f"fs_{probe}_test_{tag}.h5", work / f"fs_{probe}_val_{tag}.h5"
                gla("logits", test, probe_head, "-o", probe_test)
                gla("logits", val, probe_head, "-o", probe_val)
                alpha = best_alpha(work, zs_val, prior, probe_val, f"{probe}_{tag}")
                ensembles = {}
                for name, a in ((f"ensemble a=0.5 ({label})", 0.5), (f"ensemble a=val ({label})", alpha)):
                    ensembles[name] = work / f"fs_{probe}_ensemble_{a}_{tag}.h5"
                    gla("combine", "--zeroshot", zs_test, "--prior", prior, "--finetuned", probe_test,
                        "--method", "ensemble", "--alpha", a, "-o", ensembles[name])
                combined = work / f"fs_{probe}_gla_{tag}.h5"
                gla("combine", "--zeroshot", zs_test, "--prior", prior, "--finetuned", probe_test, "-o", combined)
                files += [(probe_test, label), *((f, n) for n, f in ensembles.items()), (combined, f"GLA ({label})")]
                for name, ensemble in ensembles.items():
                    out = work / f"fs_vs_{probe}_{'val' if 'val' in name else 'half'}_{tag}.json"
                    gla("evaluate", ensemble, combined, "--name", "ensemble", "--name", "GLA", "--baseline",
                        "ensemble", "--bootstrap", bootstrap, "--bootstrap-seed", seed, "--tag", f"shots={shots}",
                        "--tag", f"seed={seed}", "--tag", f"against={name.removeprefix('ensemble ')}", "--json-out", out)
                    comparisons.append(out)
                log(f"  seed {seed}, {shots} shots, {label}: ensemble a chosen on the validation row = {alpha}")
            out = work / f"fs_results_{tag}.json"
            names = [arg for _, name in files for arg in ("--name", name)]
            gla("evaluate", *(f for f, _ in files), *names, "--baseline", "zero-shot", "--bootstrap", bootstrap,
                "--bootstrap-seed", seed, "--tag", f"shots={shots}", "--tag", f"seed={seed}", "--json-out", out)
            methods.append(out)
            log(f"  seed {seed}, {shots} shots: {time.perf_counter() - started:.0f} s")
    return methods, comparisons


def best_alpha(work: Path, zs_val: Path, prior: Path, probe_val: Path, tag: str) -> float:
    """The ensemble weight of ``ALPHAS`` with the best top-1 on the validation rows (ties: lower NLL)."""
    grid = [work / f"fs_alpha_{tag}_{a}.h5" for a in ALPHAS]
    for a, path in zip(ALPHAS, grid):
        gla("combine", "--zeroshot", zs_val, "--prior", prior, "--finetuned", probe_val, "--method", "ensemble",
            "--alpha", a, "-o", path)
    out = work / f"fs_alpha_{tag}.json"
    gla("evaluate", *grid, *(arg for a in ALPHAS for arg in ("--name", str(a))), "--json-out", out)
    scores = {float(r["name"]): (-r["metrics"]["top1"], r["metrics"]["nll"])
              for r in json.loads(out.read_text())["results"]}
    for path in grid:
        path.unlink()
    return min(scores, key=scores.get)


# --------------------------------------------------------------------------- what q is


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def what_q_is(work: Path, zeroshot: Path, priors: dict) -> list[str]:
    """Spearman correlations of the estimated q's with the authors' q and the LAION frequencies."""
    authors = work / "q_authors.h5"
    gla("import", AUTHORS_Q, "--kind", "prior", "-o", authors)
    labelled_all = work / "q_all_labelled_nll.h5"
    gla("estimate-prior", zeroshot, "--temperature", "nll", "-o", labelled_all)

    def values(path: Path) -> np.ndarray:
        out = path.with_suffix(".npy")
        with quiet():
            gla("export", path, "-o", out)
        return np.load(out)

    laion = np.load(LAION)
    references = {"authors' q (ViT-B/16)": values(authors),
                  "LAION-400M": laion["LAION400M_relevant_total"], "LAION-2B": laion["LAION2B_relevant_total"]}
    rows = {}
    for (k, name, seed), path in priors.items():
        rows.setdefault(f"{k} per class, {name}" if isinstance(k, int) else f"{k}, {name}", []).append(values(path))
    rows["all 7 per class, labelled, nll"] = [values(labelled_all)]
    rows["authors' q (ViT-B/16)"] = [references["authors' q (ViT-B/16)"]]
    lines = ["| q | " + " | ".join(references) + " |", "| :-- |" + " --: |" * len(references)]
    for row, qs in rows.items():
        cells = []
        for ref in references.values():
            rho = np.array([spearman(q, ref) for q in qs])
            cells.append(f"{rho.mean():+.2f}" + (f" ± {rho.std(ddof=1):.2f}" if len(rho) > 1 else ""))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------- reporting


def report(results: list[Path], out: Path, **options: object) -> dict:
    """``gla report`` of ``results`` (Markdown to ``out``) and its JSON."""
    args = [arg for key, value in options.items() for arg in (f"--{key}", value)]
    return gla_json("report", *results, "-o", out, *args)


def plot_gain(table: dict, path: Path) -> None:
    """The debiasing gain against k, one line per temperature, error bars of one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {(c["row"], str(c["col"])): c for c in table["differences"]["cells"]}
    fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    ks = [str(k) for k in Q_SHOTS]
    for name, marker in (("T = 1", "o"), ("nll", "s")):
        means = [100 * cells[name, k]["mean"] for k in ks]
        stds = [100 * (cells[name, k]["std"] or 0.0) for k in ks]  # none for a single seed
        ax.errorbar(Q_SHOTS, means, yerr=stds, marker=marker, capsize=3, label=f"q from k labelled rows, {name}")
    for setting, style in ((TEST_UNLABELLED, ":"), (ALL_UNLABELLED, "--")):
        ax.axhline(100 * cells["T = 1", setting]["mean"], color="grey", linestyle=style,
                   label=f"q from {setting.removesuffix(', no labels')} per class, no labels, T = 1")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(Q_SHOTS)
    ax.set_xlabel("labelled rows per class used to estimate q (k)")
    ax.set_ylabel("top-1 gain over zero-shot (pp)")
    ax.set_title("CLIP ViT-B/32, ImageNet (1,000 classes): z/T - log q", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="keep the files and results here")
    parser.add_argument("--plot", type=Path, default=None, help="write the plot of q's sample size here")
    parser.add_argument("--few-shot-seeds", type=int, default=None,
                        help="splits of the few-shot experiment (default: --seeds; its probe fits are the slow part)")
    parser.add_argument("--skip-few-shots", action="store_true", help="only q's sample size and what q is")
    args = parser.parse_args()
    missing = [p for p in (IMAGENET, LAION, AUTHORS_Q) if not p.is_file()]
    if missing:
        print(f"skipped: the real model outputs are absent ({', '.join(map(str, missing))} not found)")
        return
    few_shot_seeds = args.seeds if args.few_shot_seeds is None else args.few_shot_seeds
    started = time.perf_counter()
    log = lambda text: print(f"[{time.perf_counter() - started:5.0f} s] {text}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        with quiet():
            features, head, zeroshot = import_fixture(work)
            gla("evaluate", zeroshot, "--name", "zero-shot", "--json-out", work / "zeroshot_all.json")
        overall = json.loads((work / "zeroshot_all.json").read_text())["results"][0]["metrics"]["top1"]
        log(f"imported: zero-shot top-1 on all {len(np.load(IMAGENET)['labels']):,} rows {100 * overall:.2f}%")
        with quiet():
            q_results, priors = q_sample_size(work, zeroshot, args.seeds, args.bootstrap)
        q_table = report(q_results, work / "q_sample_size.md", rows="method", cols="k", baseline="zero-shot")
        log("q's sample size done")
        if args.plot is not None:
            plot_gain(q_table, args.plot)
        with quiet():
            spearman_lines = what_q_is(work, zeroshot, priors)
        log("what q is:\n" + "\n".join(spearman_lines))
        if not args.skip_few_shots:
            with quiet():
                methods, comparisons = few_shots(work, features, head, zeroshot, few_shot_seeds, args.bootstrap, log)
            report(methods, work / "few_shots.md", cols="shots", baseline="zero-shot")
            report(comparisons, work / "gla_vs_ensemble.md", rows="against", cols="shots", baseline="ensemble")
        log("done")
        print(f"\n## q's sample size ({args.seeds} splits, {args.bootstrap} bootstrap resamples)\n")
        print((work / "q_sample_size.md").read_text())
        print("## What q is: Spearman correlations\n")
        print("\n".join(spearman_lines) + "\n")
        if not args.skip_few_shots:
            print(f"## Few shots at 1,000 classes ({few_shot_seeds} splits)\n")
            print((work / "few_shots.md").read_text())
            print("## GLA minus the ensemble of the same probe\n")
            print((work / "gla_vs_ensemble.md").read_text())
        print(f"total: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
