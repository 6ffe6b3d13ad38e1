"""``gla import``: logits, features or a prior written by another tool, as a gla file."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from glacli.base.validation import require_positive
from glacli.base.types import HEAD_TYPES
from glacli.cli.app import JsonOutput, app, out, output_option, print_fields, print_json, reporting
from glacli.io.formats import IMPORT_SUFFIXES
from glacli.io.formats.base import CLASSNAME_KEYS, ID_KEYS, LABEL_KEYS, VALUE_KEYS, ReadOptions
from glacli.io.formats.delimited import ID_COLUMNS, LABEL_COLUMNS
from glacli.io.formats.head import HEAD_KEYS, HEAD_SUFFIXES
from glacli.services.interchange import IMPORT_KINDS, HeadOptions, import_file

Output = output_option("OUT.h5", "The gla file")


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(names)


@app.command("import")
def import_command(
    source: Annotated[Path, typer.Argument(help=f"A file written by another tool ({_names(IMPORT_SUFFIXES)}; "
                                                f"heads: {_names(HEAD_SUFFIXES)}).",
                                           show_default=False)],
    kind: Annotated[str, typer.Option("--kind", help=f"What the file holds: {_names(IMPORT_KINDS)}.",
                                      show_default=False)],
    output: Output,
    key: Annotated[str | None, typer.Option(
        "--key", help=".npz/.pt: the entry holding the values (default, the first present of "
                      f"{'; '.join(f'{kind}: {_names(keys)}' for kind, keys in VALUE_KEYS.items())}; else the only "
                      "other array). Heads: a checkpoint's KEY.weight / KEY.bias after any prefix (module., "
                      f"model., state_dict. ...), or an array entry KEY (default: {_names(HEAD_KEYS)}).")] = None,
    labels_key: Annotated[str | None, typer.Option(
        "--labels-key", help=f".npz/.pt: the entry holding the labels (default: {_names(LABEL_KEYS)}).")] = None,
    label_column: Annotated[str | None, typer.Option(
        "--label-column", help=f"CSV: the label column (default: {_names(LABEL_COLUMNS)}).")] = None,
    id_column: Annotated[str | None, typer.Option(
        "--id-column", help=f"CSV: the sample-id column (default: {_names(ID_COLUMNS)}).")] = None,
    classnames_key: Annotated[str | None, typer.Option(
        "--classnames-key", help=f".npz/.pt: the entry holding the class names (default: {_names(CLASSNAME_KEYS)}); "
                                 "repeated names get their class index, 'missile (744)'.")] = None,
    ids_key: Annotated[str | None, typer.Option(
        "--ids-key", help=f".npz/.pt: the entry holding the sample ids (default: {_names(ID_KEYS)}).")] = None,
    ids_from: Annotated[Path | None, typer.Option(
        "--ids-from", metavar="OTHER.h5",
        help="Take the ids of a gla logits or features file holding the same rows in the same order (another "
             "tool's outputs on the same set), so that combine and evaluate accept both; its row count must match, "
             "labels must agree where both files have one, and its class names are used when the input has "
             "none.")] = None,
    ids_range: Annotated[int | None, typer.Option(
        "--ids-range", metavar="START",
        help="Number the rows START, START+1, ... (as text, as a CSV's integer id column is read: "
             "--ids-range 0 matches ids 0, 1, ...).")] = None,
    classnames: Annotated[Path | None, typer.Option(
        "--classnames", help="Class names, one per line or a JSON list, when the file has none "
                             "(else class_0, class_1, ...).")] = None,
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="A .npy of class indices kept apart from the values.")] = None,
    probabilities: Annotated[bool, typer.Option(
        "--probabilities", help="The values are probabilities: store their log as logits.")] = False,
    logits_anyway: Annotated[bool, typer.Option(
        "--logits-anyway", help="Take the values as logits even though every row is non-negative and sums to 1 "
                                "(refused without this flag or --probabilities).")] = False,
    normalize_rows: Annotated[bool, typer.Option(
        "--normalize-rows", help="Heads: scale each weight row to unit length (a text classifier stored "
                                 "unnormalised).")] = False,
    logit_scale: Annotated[str | None, typer.Option(
        "--logit-scale", metavar="S", help="Heads: multiply weight and bias by S (CLIP's zero-shot heads: 100).")] = None,
    input_normalize: Annotated[bool, typer.Option(
        "--input-normalize", help="Heads: the head L2-normalises its input, as WiSE-FT's ClassificationHead("
                                  "normalize=True). gla's features are already L2-normalised, so such a head gives "
                                  "the model's own logits; without the flag the head is applied to the same "
                                  "normalised features, which equals the model only if it was fitted on "
                                  "normalised features.")] = False,
    head_type: Annotated[str | None, typer.Option(
        "--head-type", help=f"Heads: {_names(HEAD_TYPES)} (default: finetuned for a checkpoint's KEY.weight, "
                            "zeroshot for an array).")] = None,
    temperature: Annotated[str | None, typer.Option(
        "--temperature", help="Priors: the T the zero-shot logits were divided by when q was estimated (default: "
                              "the file's, else 1). An imported prior records no logits_temperature: it is read as "
                              "1, i.e. q belongs to raw (uncalibrated) logits.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Import logits, features, a prior or a classification head written by another tool as a gla file.

    CSV: one column per class (header = class names), a label column and an optional id column; with
    --classnames, named columns are reordered by name (never renamed). Priors are normalised to sum to 1;
    features are L2-normalised and stored as float32. Heads: from a checkpoint (.pt, .pth, .bin, .safetensors)
    or an array (.npy, .npz).

    Two tools' outputs on the same rows: import the second with --ids-from the first (or number both with
    --ids-range), so that combine and evaluate take them as the same rows.

    Examples:

      gla import Clip_CIFAR10_test.csv --kind logits -o zs.h5

      gla import q.pt --kind prior --classnames imagenet.txt -o prior.h5

      gla import wrn.npz --kind logits --probabilities --labels-key ground_truth --ids-from zs.h5 -o ft.h5

      gla import checkpoint_10.pt --kind head --key classification_head --input-normalize --classnames in1k.txt -o ft_head.h5

      gla import cache.npz --kind head --key text_head --normalize-rows --logit-scale 100 -o zs_head.h5
    """
    with reporting() as reporter:
        report = import_file(
            source, kind, output,
            options=ReadOptions(key, labels_key, label_column, id_column, ids_key=ids_key,
                                classnames_key=classnames_key),
            classnames_file=classnames, labels_file=labels, probabilities=probabilities, logits_anyway=logits_anyway,
            temperature=None if temperature is None else require_positive(temperature, "--temperature"),
            ids_from=ids_from, ids_range=ids_range,
            head=HeadOptions(normalize_rows, None if logit_scale is None else require_positive(
                logit_scale, "--logit-scale"), input_normalize, head_type),
            reporter=reporter)
    if json_output:
        print_json(dataclasses.asdict(report))
        return
    fields = [("from", report.source), ("to", report.output), ("kind", report.kind)]
    if report.kind == "head":
        fields += [("classes x dim", f"{report.n_rows} x {report.n_cols}"), ("head type", report.head_type)]
    elif report.kind != "prior":
        fields.append(("rows x columns", f"{report.n_rows} x {report.n_cols}"))
    fields.append(("classes", str(report.n_classes)))
    if report.kind in ("logits", "features"):
        labels = (f"{report.labelled_rows} of {report.n_rows} rows, from {report.labels_from}"
                  if report.labels_from != "none" else "none: no label column or entry was found (name one with "
                                                        "--label-column, --labels-key or --labels)")
        fields += [("labels", labels), ("ids", report.ids_from)]
    fields.append(("class names", report.classnames_from))
    print_fields("gla import", fields)
    for note in report.notes:
        out.print(f"note: {note}", soft_wrap=True)
