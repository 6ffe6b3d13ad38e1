"""``gla logits``: a head applied to features, streamed into a logits file."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glacli.cli.app import app, output_option, reporting, say
from glacli.services.logits import logits_file

Output = output_option("LOGITS.h5", "Logits file")


@app.command("logits")
def logits_command(
    features: Annotated[Path, typer.Argument(metavar="FEATURES.h5", help="Features to classify.",
                                             show_default=False)],
    head: Annotated[Path, typer.Argument(metavar="HEAD.h5", help="Zero-shot or linear head.", show_default=False)],
    output: Output,
) -> None:
    """Apply a head to features: logits = (features @ weight.T + bias) / temperature, streamed in chunks.

    Keeps the ids, labels and classnames of FEATURES; records the head's temperature (already applied) and head_type.

    Example:

        gla logits test.h5 linear_head.h5 -o ft_test.h5
    """
    with reporting() as reporter:
        done = logits_file(features, head, output, reporter)
    say(f"wrote {done['n_rows']} x {done['n_classes']} logits to {done['output']}")
