"""``gla export``: a gla file written out for other tools."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer

from glacli.cli.app import JsonOutput, app, fail, output_option, print_fields, print_json
from glacli.io.formats import WRITERS
from glacli.services.interchange import EXPORT_FORMATS, export_file

Output = output_option("OUT", "The file (its extension picks the format; - for standard output, with --format)")


@app.command("export")
def export_command(
    source: Annotated[Path, typer.Argument(help=f"A gla HDF5 file ({', '.join(WRITERS)}).", show_default=False)],
    output: Output,
    fmt: Annotated[str | None, typer.Option(
        "--format", help=f"{'|'.join(EXPORT_FORMATS)}: the format, needed with -o - (standard output).")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Write a gla file out for other tools.

    prior: .json (classnames, prior, attributes), .npy or .csv (class,prior).
    logits/features: .npy (the values), .npz (values, labels, ids, classnames) or .csv (one column
    per class, then label and id). head: .npz or .pt (weight, bias, classnames, temperature).

    Examples:

      gla export prior.h5 -o prior.json

      gla export zs_logits.h5 -o zs_logits.npz

      gla export zs_logits.h5 -o - --format csv | head
    """
    to_stdout = str(output) == "-"
    if to_stdout and json_output:
        fail("--json prints to standard output, where -o - writes the file; give one")
    report = export_file(source, output, fmt, sys.stdout.buffer if to_stdout else None)
    if to_stdout:
        return
    if json_output:
        print_json(dataclasses.asdict(report))
        return
    print_fields("gla export", [
        ("from", report.source), ("to", report.output), ("kind", report.kind),
        ("shape", " x ".join(str(n) for n in report.shape)),
        ("entries", ", ".join(report.entries[:12]) + (" ..." if len(report.entries) > 12 else ""))])
