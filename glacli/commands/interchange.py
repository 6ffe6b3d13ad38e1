"""``gla import`` and ``gla export``: bring outputs of other tools into pipelines and take ours out."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from glacli import interchange
from glacli.app import app, fail, out, parse_positive_float, print_fields, print_json


@app.command("import")
def import_cmd(
    source: Path = typer.Argument(..., help="A .npy, .npz, .csv, .tsv, .pt or .json file written by another tool."),
    kind: str = typer.Option(..., "--kind", help="What the file holds: logits, features or prior."),
    output: Path = typer.Option(..., "-o", "--output", help="The gla HDF5 file to write."),
    key: str | None = typer.Option(None, "--key", help=".npz/.pt: the entry holding the values "
                                      "(default: logits, features, predictions, probs, q, prior, ...)."),
    labels_key: str | None = typer.Option(None, "--labels-key", help=".npz/.pt: the entry holding the labels "
                                             "(default: labels, ground_truth, targets, y)."),
    label_column: str | None = typer.Option(None, "--label-column", help="CSV: the label column "
                                               "(default: label, labels, target, target-0, y)."),
    id_column: str | None = typer.Option(None, "--id-column", help="CSV: the sample-id column "
                                            "(default: id, ids, instance_id)."),
    classnames: Path | None = typer.Option(None, "--classnames", help="Class names, one per line or a JSON "
                                              "list, when the file has none (else class_0, class_1, ...)."),
    labels: Path | None = typer.Option(None, "--labels", help="A .npy of class indices kept apart from the values."),
    probabilities: bool = typer.Option(False, "--probabilities", help="The values are probabilities: store "
                                       "their log as logits."),
    temperature: str | None = typer.Option(None, "--temperature", help="Priors: the T the zero-shot logits "
                                              "were divided by when q was estimated (default: the file's, else 1). "
                                              "An imported prior records no logits_temperature: it is read as 1, "
                                              "i.e. q belongs to raw (uncalibrated) logits."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Import logits, features or a prior written by another tool as a gla file.

    CSV: one column per class (header = class names), a label column and an optional id column.
    Priors are normalised to sum to 1; features are L2-normalised.

    Examples:

      gla import Clip_CIFAR10_test.csv --kind logits -o zs.h5

      gla import q.pt --kind prior --classnames imagenet.txt -o prior.h5

      gla import wrn.npz --kind logits --probabilities --labels-key ground_truth -o ft.h5
    """
    if kind not in interchange.IMPORT_KINDS:
        fail(f"--kind: expected one of {', '.join(interchange.IMPORT_KINDS)}, got {kind!r}")
    if kind == "prior":
        for option, value in (("--labels", labels), ("--labels-key", labels_key), ("--label-column", label_column),
                              ("--id-column", id_column), ("--probabilities", probabilities or None)):
            if value is not None:
                fail(f"{option} does not apply to a prior")
        t = None if temperature is None else parse_positive_float(temperature, "--temperature")
        report = interchange.import_prior(source, output, key=key, classnames_file=classnames, temperature=t)
    else:
        if temperature is not None:
            fail("--temperature applies to priors only")
        report = interchange.import_rows(source, kind, output, key=key, labels_key=labels_key,
                                         label_column=label_column, id_column=id_column,
                                         classnames_file=classnames, labels_file=labels,
                                         probabilities=probabilities)
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    fields = [("from", report.source), ("to", report.output), ("kind", report.kind)]
    if report.kind != "prior":
        fields.append(("rows x columns", f"{report.n_rows} x {report.n_cols}"))
    fields.append(("classes", str(report.n_classes)))
    if report.kind != "prior":
        fields += [("labels", f"{report.labelled_rows} of {report.n_rows} rows, from {report.labels_from}"),
                   ("ids", report.ids_from)]
    fields.append(("class names", report.classnames_from))
    print_fields("gla import", fields)
    for note in report.notes:
        out.print(f"note: {note}", soft_wrap=True)


@app.command("export")
def export_cmd(
    source: Path = typer.Argument(..., help="A gla HDF5 file (prior, logits, features or head)."),
    output: Path = typer.Option(..., "-o", "--output", help="The file to write; its extension picks the format."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Write a gla file out for other tools.

    prior: .json (classnames, prior, attributes), .npy or .csv (class,prior).
    logits/features: .npy (the values), .npz (values, labels, ids, classnames) or .csv (one column
    per class, then label and id). head: .npz or .pt (weight, bias, classnames, temperature).

    Examples:

      gla export prior.h5 -o prior.json

      gla export zs_logits.h5 -o zs_logits.npz
    """
    report = interchange.export_file(source, output)
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    print_fields("gla export", [
        ("from", report.source), ("to", report.output), ("kind", report.kind),
        ("shape", " x ".join(str(n) for n in report.shape)),
        ("entries", ", ".join(report.entries[:12]) + (" ..." if len(report.entries) > 12 else ""))])
