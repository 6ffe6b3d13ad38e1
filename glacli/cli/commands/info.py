"""``gla info``: what a gla file is and where it came from (kind, shape, scales, method, parents)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from glacli.cli.app import JsonOutput, app, print_fields, print_json
from glacli.services.info import describe_file

SCALE_ATTRS = ("temperature", "logits_temperature", "zs_temperature", "ft_temperature")
"""Attributes that say at which scale the stored values are (see docs/method.md, scale rules)."""
DESCRIBING_ATTRS = ("head_type", "method", "combine_method", "calibration_method", "target", "converged",
                    "max_moment_gap", "iterations", "model", "pretrained", "templates", "head_id",
                    "zeroshot_head_id", "zeroshot_model", "zeroshot_templates", "source_prior", "alpha",
                    "n_rows", "source", "shots", "seed", "checkpoint_sha256", "checkpoint_prefix",
                    "checkpoint_layout", "base_pretrained", "interpolated_alpha", "projected_onto")
"""Attributes shown when present, in this order; ``--json`` prints every attribute."""


@app.command("info")
def info_command(
    path: Annotated[Path, typer.Argument(metavar="FILE.h5", help="Any gla file.", show_default=False)],
    json_output: JsonOutput = False,
) -> None:
    """Show a gla file's kind, shape, temperatures, method and parents.

    Temperatures say at which scale the values are: a logits file stores raw / temperature; a prior
    file's q belongs to logits at raw / logits_temperature, divided by its temperature T_zs.

    Example:

        gla info prior.h5
    """
    report = describe_file(path)
    if json_output:
        print_json(report)
        return
    kind, attrs = report["kind"], report["attributes"]
    fields = [("kind", f"{kind} (gla_format {attrs.get('gla_format')}, gla {attrs.get('gla_version')})"),
              ("shape", " x ".join(map(str, report["shape"]))),
              ("classes", str(report["n_classes"]))]
    if kind == "prior" and "logits_temperature" not in attrs:
        fields.append(("logits_temperature", "1 (not recorded: an older or imported prior)"))
    fields += [(name, _text(attrs[name])) for name in (*SCALE_ATTRS, *DESCRIBING_ATTRS) if name in attrs]
    fields += [("created", str(attrs.get("created"))), ("gla_id", str(attrs.get("gla_id"))),
               ("parents", ", ".join(attrs.get("parents") or []) or "none")]
    print_fields(str(path), fields)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)
