"""``gla project``: logits over ImageNet's 1000 classes restricted or merged onto a shift set's classes."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glacli.cli.app import JsonOutput, app, output_option, print_summary, reporting
from glacli.services.project import NAMED_TARGETS, project_file

Output = output_option("OUT.h5", "The projected logits file")


@app.command("project")
def project_command(
    source: Annotated[Path, typer.Argument(metavar="LOGITS.h5", help="Logits over ImageNet's 1000 classes (any "
                                           "method: zero-shot, fine-tuned, GLA).", show_default=False)],
    onto: Annotated[str, typer.Option(
        "--onto", metavar="|".join(NAMED_TARGETS) + "|CLASSES",
        help="imagenet-r / imagenet-a: keep their 200 classes; objectnet: each ObjectNet class gets the maximum "
             "over its ImageNet classes; CLASSES: a file of class names (one per line: a subset) or a JSON "
             "object {name: [classes]} (the maximum over each group).", show_default=False)],
    output: Output,
    mappings: Annotated[Path | None, typer.Option(
        "--mappings", metavar="DIR", help="With --onto objectnet: ObjectNet's mappings/ folder.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Project logits onto a distribution-shift set's classes (WiSE-FT's project_logits), labels mapped along.

    Combine on the 1000 classes first (the prior q and the heads are ImageNet's), then project;
    gla evaluate works on the result unchanged.

    Example:

        gla project gla_imagenet-r.h5 --onto imagenet-r -o gla_imagenet-r_200.h5

        gla project gla_objectnet.h5 --onto objectnet --mappings data/objectnet-1.0/mappings -o gla_on.h5
    """
    with reporting() as reporter:
        summary = project_file(source, onto, output, mappings=mappings, reporter=reporter)
    print_summary(summary, json_output, "gla project")
