"""``gla combine``: GLA logits, the debiased zero-shot model, or the ensemble baseline."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import typer

from glacli import store
from glacli.app import app, err, fail, progress
from glacli.combine import ensemble_logits, gla_logits, log_label_frequencies

METHODS = ("gla", "ensemble")


@app.command("combine")
def combine_cmd(
    zeroshot: Path = typer.Option(..., "--zeroshot", metavar="ZS.h5", help="Zero-shot logits."),
    output: Path = typer.Option(..., "-o", "--output", metavar="OUT.h5", help="Logits file to write."),
    prior: Path | None = typer.Option(None, "--prior", metavar="PRIOR.h5",
                                      help="Estimated prior q and its temperature T_zs (required by gla)."),
    finetuned: Path | None = typer.Option(None, "--finetuned", metavar="FT.h5",
                                          help="Fine-tuned (e.g. linear-probe) logits of the same rows."),
    source_prior: str = typer.Option(
        "uniform", "--source-prior", metavar="uniform|FEATURES.h5|PRIOR.h5",
        help="pi_s, the fine-tuned model's training label distribution: uniform, the label frequencies "
             "of a training features file, or a prior file."),
    method: str = typer.Option("gla", "--method", help="gla, or ensemble: (1-A) zs/T_zs + A ft."),
    alpha: float | None = typer.Option(None, "--alpha", help="Ensemble weight A of the fine-tuned model, in [0, 1]."),
) -> None:
    """Combine logits: ft + zs/T_zs - log q - log pi_s (GLA), or the debiased zero-shot model without --finetuned.

    Streams rows in chunks; refuses files whose ids, labels or classnames disagree.

    Example:

        gla combine --zeroshot zs_test.h5 --prior prior.h5 --finetuned probe_test.h5 -o gla_test.h5

        gla combine --zeroshot zs_test.h5 --prior prior.h5 -o debiased_test.h5

        gla combine --zeroshot zs_test.h5 --prior prior.h5 --finetuned probe_test.h5 --method ensemble --alpha 0.5 -o ens.h5
    """
    if method not in METHODS:
        fail(f"--method: expected gla or ensemble, got {method!r}")
    if method == "ensemble":
        if finetuned is None:
            fail("--method ensemble needs --finetuned")
        if alpha is None or not 0.0 <= alpha <= 1.0:
            fail(f"--method ensemble needs --alpha in [0, 1], got {alpha}")
        if source_prior != "uniform":
            fail("--source-prior applies to --method gla only")
    else:
        if prior is None:
            fail("--method gla needs --prior (estimate it with gla estimate-prior)")
        if alpha is not None:
            fail("--alpha applies to --method ensemble only")
        if finetuned is None and source_prior != "uniform":
            fail("--source-prior needs --finetuned: without it the output is the debiased zero-shot model")

    with contextlib.ExitStack() as stack:
        zs = stack.enter_context(store.read_rows(zeroshot, "logits"))
        ft = stack.enter_context(store.read_rows(finetuned, "logits")) if finetuned else None
        parents = [zs.gla_id]
        temperature, log_q = 1.0, None
        if prior is not None:
            q = store.read_prior(prior)
            store.check_same_classnames(q.classnames, prior, zs.classnames, zeroshot)
            temperature, log_q = q.temperature, np.log(q.prior)
            parents.append(q.gla_id)
        if ft is not None:
            store.check_same_classnames(ft.classnames, finetuned, zs.classnames, zeroshot)
            store.check_same_rows(ft, zs)
            parents.append(ft.gla_id)
        log_pi_s = None
        if ft is not None and method == "gla":
            log_pi_s, source_id = _log_source_prior(source_prior, zs.classnames)
            parents.append(source_id)
        labels = np.where(zs.labels >= 0, zs.labels, ft.labels if ft is not None else zs.labels)
        name = ("ensemble" if method == "ensemble" else "gla" if ft is not None else "debiased_zeroshot")
        attrs = {"temperature": 1.0, "combine_method": name, "zs_temperature": temperature,
                 "alpha": alpha, "source_prior": source_prior if ft is not None and method == "gla" else None}
        rows = store.chunk_rows(zs.n_cols)
        with store.write_rows(output, "logits", n_rows=zs.n_rows, n_cols=zs.n_cols, classnames=zs.classnames,
                              attrs=attrs, parents=parents) as sink, progress(transient=True) as bar:
            task = bar.add_task(f"combine ({name})", total=zs.n_rows)
            for chunk in zs.iter_chunks(rows, with_ids=True):
                ft_block = ft.read(chunk.start, chunk.stop) if ft is not None else None
                if method == "ensemble":
                    block = ensemble_logits(chunk.values, temperature, ft_block, alpha)
                else:
                    block = gla_logits(chunk.values, temperature, log_q, ft_block, log_pi_s)
                sink.write(chunk.start, block, labels[chunk.start:chunk.stop], chunk.ids)
                bar.advance(task, chunk.stop - chunk.start)
    err.print(f"wrote {output} ({name}, {zs.n_rows} rows x {zs.n_cols} classes)")


def _log_source_prior(source: str, classnames: list[str]) -> tuple[np.ndarray, str]:
    """``log pi_s`` and the gla_id of the file it came from ('' for uniform)."""
    n = len(classnames)
    if source == "uniform":
        return np.full(n, -np.log(n)), ""
    kind = store.file_kind(source)
    if kind == "prior":
        pi = store.read_prior(source)
        store.check_same_classnames(pi.classnames, source, classnames, "the zero-shot logits")
        return np.log(pi.prior), pi.gla_id
    if kind != "features":
        fail(f"is a '{kind}' file; --source-prior takes uniform, a features file or a prior file", source)
    with store.read_rows(source, "features") as train:
        store.check_same_classnames(train.classnames, source, classnames, "the zero-shot logits")
        log_pi = log_label_frequencies(train.require_labels("for --source-prior"), n)
        if np.isinf(log_pi).any():
            k = int(np.argmax(np.isinf(log_pi)))
            fail(f"class {classnames[k]!r} has no training samples, so log pi_s is undefined; "
                 "give --source-prior uniform or a prior file", source)
        return log_pi, train.gla_id
