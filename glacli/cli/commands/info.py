"""``gla info``: what gla files are and where they came from (kind, shape, scales, method, parents)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from glacli.cli.app import JsonFileOutput, JsonOutput, app, emit_json, print_fields
from glacli.services.info import describe_file

SCALE_ATTRS = ("temperature", "logits_temperature", "zs_temperature", "ft_temperature")
"""Attributes that say at which scale the stored values are (see docs/method.md, scale rules)."""
DESCRIBING_ATTRS = ("head_type", "method", "combine_method", "calibration_method", "target", "converged",
                    "max_moment_gap", "iterations", "model", "pretrained", "templates", "head_id",
                    "zeroshot_head_id", "zeroshot_model", "zeroshot_templates", "source_prior", "target_prior",
                    "alpha", "n_rows", "source", "shots", "seed", "checkpoint_sha256", "checkpoint_prefix",
                    "checkpoint_layout", "base_pretrained", "interpolated_alpha", "projected_onto")
"""Attributes shown first when present, in this order; every other attribute follows by name."""
PROVENANCE_ATTRS = ("gla_kind", "gla_format", "gla_version", "gla_complete", "created", "gla_id", "parents")
"""Shown apart: in the kind line and at the end."""
SOLVER_ATTRS = ("converged", "max_moment_gap", "iterations")
"""The estimator's record of a prior; an imported prior has none (its file says what it summed to)."""


@app.command("info")
def info_command(
    paths: Annotated[list[Path], typer.Argument(metavar="FILE.h5...", help="Any gla files.", show_default=False)],
    json_output: JsonOutput = False,
    json_out: JsonFileOutput = None,
) -> None:
    """Show gla files' kind, shape, temperatures, method, every provenance attribute and parents; for a
    prior, its most and least likely classes.

    Temperatures say at which scale the values are: a logits file stores raw / temperature; a prior
    file's q belongs to logits at raw / logits_temperature, divided by its temperature T_zs.
    An imported prior has no solver record: it shows imported_sum, what the file summed to before
    it was normalised (0.804 for the authors' ImageNet q).

    Example:

        gla info prior.h5 zs_logits.h5
    """
    reports = [describe_file(path) for path in paths]  # every file checked before anything is printed
    if emit_json(reports[0] if len(reports) == 1 else reports, json_output, json_out):
        return
    for report in reports:
        print_fields(report["path"], _fields(report))


def _fields(report: dict[str, Any]) -> list[tuple[str, str]]:
    kind, attrs = report["kind"], dict(report["attributes"])
    fields = [("kind", f"{kind} (gla_format {attrs.get('gla_format')}, gla {attrs.get('gla_version')})"),
              ("shape", " x ".join(map(str, report["shape"]))),
              ("classes", str(report["n_classes"]))]
    if kind == "prior" and "logits_temperature" not in attrs:
        fields.append(("logits_temperature", "1 (not recorded: an older or imported prior)"))
    if kind == "prior" and "imported_from" in attrs:
        for name in SOLVER_ATTRS:
            attrs.pop(name, None)
        fields.append(("solver", "none (imported)"))
    shown = [name for name in (*SCALE_ATTRS, *DESCRIBING_ATTRS) if name in attrs]
    shown += sorted(name for name in attrs if name not in shown and name not in PROVENANCE_ATTRS)
    fields += [(name, _text(attrs[name])) for name in shown]
    if "most_likely" in report:
        fields += [("most likely q", _classes(report["most_likely"])),
                   ("least likely q", _classes(report["least_likely"]))]
    fields += [("created", str(attrs.get("created"))), ("gla_id", str(attrs.get("gla_id"))),
               ("parents", ", ".join(attrs.get("parents") or []) or "none")]
    return fields


def _classes(pairs: list[list[Any]]) -> str:
    return ", ".join(f"{name} {q:.4g}" for name, q in pairs)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)
