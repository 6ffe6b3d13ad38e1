"""``gla combine``: GLA logits, the debiased zero-shot model, or the ensemble baseline."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import typer

from glacli import store
from glacli.app import app, err, fail, parse_choice_or_float, progress
from glacli.combine import ensemble_logits, gla_logits, log_label_frequencies, zeroshot_divisor

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
    zs_temperature: str = typer.Option(
        "prior", "--zs-temperature", metavar="prior|FLOAT",
        help="Ensemble only: T_zs that the zero-shot logits are divided by: the prior file's (at q's scale), "
             "or a number (1 = as stored)."),
) -> None:
    """Combine logits: ft + zs/T_zs - log q - log(pi_s)/T_ft (GLA), or the debiased zero-shot model without --finetuned.

    The zero-shot logits are brought to the scale q was fitted on (the prior's logits_temperature) before they
    are divided by T_zs; log pi_s is divided by the fine-tuned file's own temperature T_ft, the scale at which
    a probe's bias absorbed it. Streams rows in chunks; refuses files whose ids, labels or classnames disagree.

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
        ensemble_scale = parse_choice_or_float(zs_temperature, ("prior",), "--zs-temperature")
        if ensemble_scale == "prior" and prior is None:
            fail("--method ensemble divides the zero-shot logits by the prior's T_zs: give --prior, "
                 "or --zs-temperature 1 to use them as stored")
    else:
        if zs_temperature != "prior":
            fail("--zs-temperature applies to --method ensemble only (gla uses the prior's T_zs)")
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
        divisor, log_q = 1.0, None
        if prior is not None:
            q = store.read_prior(prior)
            store.check_same_classnames(q.classnames, prior, zs.classnames, zeroshot)
            divisor, log_q = _prior_scale(q, prior, zs), q.log_prior
            parents.append(q.gla_id)
        if method == "ensemble" and ensemble_scale != "prior":
            divisor = float(ensemble_scale)
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
        attrs = {"temperature": 1.0, "combine_method": name, "zs_temperature": divisor * zs.temperature,
                 "alpha": alpha, "source_prior": source_prior if ft is not None and method == "gla" else None,
                 "ft_temperature": ft.temperature if ft is not None else None}
        rows = store.chunk_rows(zs.n_cols)
        with store.write_rows(output, "logits", n_rows=zs.n_rows, n_cols=zs.n_cols, classnames=zs.classnames,
                              attrs=attrs, parents=parents) as sink, progress(transient=True) as bar:
            task = bar.add_task(f"combine ({name})", total=zs.n_rows)
            for chunk in zs.iter_chunks(rows, with_ids=True):
                ft_block = ft.read(chunk.start, chunk.stop) if ft is not None else None
                if method == "ensemble":
                    block = ensemble_logits(chunk.values, divisor, ft_block, alpha)
                else:
                    block = gla_logits(chunk.values, divisor, log_q, ft_block, log_pi_s,
                                       ft.temperature if ft is not None else 1.0)
                sink.write(chunk.start, block, labels[chunk.start:chunk.stop], chunk.ids)
                bar.advance(task, chunk.stop - chunk.start)
    err.print(f"wrote {output} ({name}, {zs.n_rows} rows x {zs.n_cols} classes)")


def _prior_scale(q: store.Prior, prior_path: Path, zs: store.RowFile) -> float:
    """The divisor that brings the stored zero-shot values to ``raw / (t_q T_zs)``; says so when the
    scales differ, and warns when the logits come from another zero-shot head than q's."""
    divisor = zeroshot_divisor(q.temperature, q.logits_temperature, zs.temperature)
    if not math.isclose(q.logits_temperature, zs.temperature, rel_tol=1e-9):
        err.print(f"{zs.path} has temperature {zs.temperature:g} applied, q was fitted on logits with "
                  f"{q.logits_temperature:g}: converted exactly (values x {zs.temperature:g} / {q.logits_temperature:g})")
    head, q_head = zs.attrs.get("head_id"), q.attrs.get("zeroshot_head_id")
    if head and q_head and head != q_head:
        described = ", ".join(f"{q.attrs[k]}" for k in ("zeroshot_model", "zeroshot_templates") if k in q.attrs)
        err.print(f"[yellow]warning:[/] {zs.path} comes from another zero-shot head than the logits q was "
                  f"estimated on ({prior_path}: head {q_head[:8]}{', ' + described if described else ''})",
                  soft_wrap=True)
    return divisor


def _log_source_prior(source: str, classnames: list[str]) -> tuple[np.ndarray, str]:
    """``log pi_s`` and the gla_id of the file it came from ('' for uniform)."""
    n = len(classnames)
    if source == "uniform":
        return np.full(n, -np.log(n)), ""
    kind = store.file_kind(source)
    if kind == "prior":
        pi = store.read_prior(source)
        store.check_same_classnames(pi.classnames, source, classnames, "the zero-shot logits")
        return pi.log_prior, pi.gla_id
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
