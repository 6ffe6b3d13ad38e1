"""``gla combine``: GLA logits, the debiased zero-shot model, or the ensemble baseline."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glacli.cli.app import app, output_option, parse_choice_or_float, reporting, say
from glacli.services.combine import METHODS, combine_files

Output = output_option("OUT.h5", "Logits file")


@app.command("combine")
def combine_command(
    zeroshot: Annotated[Path, typer.Option("--zeroshot", metavar="ZS.h5", help="Zero-shot logits.",
                                           show_default=False)],
    output: Output,
    prior: Annotated[Path | None, typer.Option(
        "--prior", metavar="PRIOR.h5", help="Estimated prior q and its temperature T_zs (required by gla).")] = None,
    finetuned: Annotated[Path | None, typer.Option(
        "--finetuned", metavar="FT.h5", help="Fine-tuned (e.g. linear-probe) logits of the same rows.")] = None,
    source_prior: Annotated[str, typer.Option(
        "--source-prior", metavar="uniform|FEATURES.h5|PRIOR.h5",
        help="pi_s, the fine-tuned model's training label distribution: uniform, the label frequencies "
             "of a training features file, or a prior file.")] = "uniform",
    method: Annotated[str, typer.Option("--method", help=f"{' or '.join(METHODS)}: (1-A) zs/T_zs + A ft.")] = "gla",
    alpha: Annotated[float | None, typer.Option(
        "--alpha", help="Ensemble weight A of the fine-tuned model, in [0, 1] (default 0.5, recorded).")] = None,
    zs_temperature: Annotated[str, typer.Option(
        "--zs-temperature", metavar="prior|FLOAT",
        help="Ensemble only: T_zs that the zero-shot logits are divided by: the prior file's (at q's scale), "
             "or a number (1 = as stored).")] = "prior",
    target_prior: Annotated[str, typer.Option(
        "--target-prior", metavar="uniform|TARGET.h5|FILE",
        help="pi_t, the test set's label distribution, added as log pi_t (gla and the debiased model): uniform, "
             "a file from gla estimate-target, or class proportions (.json, .npy, .csv). A pre-training q "
             "is refused here, and a pi_t file by --prior.")] = "uniform",
    allow_other_model: Annotated[bool, typer.Option(
        "--allow-other-model", help="Take a prior estimated on logits of another model (model or pretrained "
                                    "weights differ) with a warning instead of refusing it.")] = False,
) -> None:
    """Combine logits: ft + zs/T_zs - log q - log(pi_s)/T_ft (GLA), or the debiased zero-shot model without --finetuned.

    The zero-shot logits are brought to the scale q was fitted on (the prior's logits_temperature) before they
    are divided by T_zs; log pi_s is divided by the fine-tuned file's own temperature T_ft, the scale at which
    a probe's bias absorbed it. Streams rows in chunks; refuses files whose ids, labels or classnames disagree,
    an output of combine given again as an input, and a prior of another model (--allow-other-model to force);
    warns about rows q or the head was fitted on, and about fine-tuned logits nothing calibrated.

    With --target-prior the output is right for a test set with those class proportions (label shift,
    docs/label-shift.md) instead of a balanced one.

    Example:

        gla combine --zeroshot zs_test.h5 --prior prior.h5 --finetuned probe_test.h5 -o gla_test.h5

        gla combine --zeroshot zs_test.h5 --prior prior.h5 --target-prior target.h5 -o adapted_test.h5

        gla combine --zeroshot zs_test.h5 --prior prior.h5 -o debiased_test.h5

        gla combine --zeroshot zs_test.h5 --prior prior.h5 --finetuned probe_test.h5 --method ensemble --alpha 0.5 -o ens.h5
    """
    scale = parse_choice_or_float(zs_temperature, ("prior",), "--zs-temperature")
    with reporting() as reporter:
        done = combine_files(zeroshot, output, prior=prior, finetuned=finetuned, source_prior=source_prior,
                             method=method, alpha=alpha, zs_temperature=scale, target_prior=target_prior,
                             allow_other_model=allow_other_model, reporter=reporter)
    say(f"wrote {done['output']} ({done['method']}, {done['n_rows']} rows x {done['n_classes']} classes)")
