"""``gla interpolate``: WiSE-FT's weight-space ensemble of a zero-shot and a fine-tuned model."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glacli.base.errors import GlaInputError
from glacli.cli.app import JsonOutput, app, output_option, print_summary, reporting
from glacli.services.interpolate import interpolate_files

Output = output_option("OUT", "The interpolated checkpoint (.safetensors) or head file (.h5)")


@app.command("interpolate")
def interpolate_command(
    zero_shot: Annotated[Path, typer.Argument(metavar="ZS", help="The zero-shot checkpoint or head file.",
                                              show_default=False)],
    fine_tuned: Annotated[Path, typer.Argument(metavar="FT", help="The fine-tuned checkpoint or head file.",
                                               show_default=False)],
    alpha: Annotated[str, typer.Option(
        "--alpha", metavar="A[,A...]",
        help="Weight of the fine-tuned model, in [0, 1]; a list writes one file per value, named "
             "OUT's stem + _alpha<A> (wise.safetensors -> wise_alpha0.5.safetensors).", show_default=False)],
    output: Output,
    model: Annotated[str | None, typer.Option(
        "--model", help="open_clip architecture (or model-config .json) when ZS or FT is an open_clip tag such as "
                        "openai rather than a file.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """WiSE-FT: (1 - A) * zero-shot + A * fine-tuned, parameter by parameter.

    Two checkpoints (state dicts of any layout gla extract reads; the keys must match after their
    prefixes are stripped) give a .safetensors state dict for gla extract --pretrained; two head files
    of the same classes give a head file for gla logits.

    Example:

        gla interpolate zeroshot.pt checkpoint_10.pt --alpha 0.5 -o wiseft.safetensors

        gla interpolate openai flyp_ft.pt --model ViT-B-16 --alpha 0,0.5,1 -o wise.safetensors

        gla interpolate zs_head.h5 ft_head.h5 --alpha 0,0.25,0.5,0.75,1 -o wise_head.h5
    """
    try:
        alphas = [float(a) for a in alpha.split(",") if a.strip()]
    except ValueError:
        raise GlaInputError(f"--alpha: expected numbers separated by commas, got {alpha!r}") from None
    with reporting() as reporter:
        summary = interpolate_files(zero_shot, fine_tuned, alphas, output, model=model, reporter=reporter)
    print_summary(summary, json_output, "gla interpolate")
