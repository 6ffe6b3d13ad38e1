"""``interpolate``: WiSE-FT between a zero-shot and a fine-tuned model, over checkpoints or head files.

Two checkpoints (any layout :mod:`glacli.io.checkpoints` reads, keys compared after their prefixes
are stripped) give a ``.safetensors`` state dict per alpha, which ``gla extract --pretrained``
loads; two head files (the zero-shot text head and a fine-tuned head of the same classes) give a
head file per alpha whose logits are ``(1 - alpha) * logits_zs + alpha * logits_ft`` on the same
features: heads of one temperature are interpolated as stored and keep it (alpha 0 and 1 give the
inputs exactly); otherwise each temperature is folded into its head's weights first and the
result has temperature 1. With several alphas, ``OUT`` names the series: ``wise.safetensors`` with
``--alpha 0,0.5,1`` writes ``wise_alpha0.safetensors``, ``wise_alpha0.5.safetensors`` and
``wise_alpha1.safetensors``; one alpha writes ``OUT`` itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import Head, Reporter
from glacli.base.validation import check_same_classnames, check_same_dimension
from glacli.core.interpolation import check_alphas, interpolate
from glacli.io.checkpoints import CHECKPOINT_SUFFIXES, Checkpoint, read_checkpoint, write_safetensors
from glacli.io.h5file import file_kind
from glacli.io.outputs import check_output_path
from glacli.io.paramfile import read_head, write_head

HEAD_SUFFIXES = (".h5", ".hdf5")


def output_paths(output: Path, alphas: list[float]) -> list[Path]:
    """Where each alpha's model goes (see the module docstring)."""
    if len(alphas) == 1:
        return [output]
    return [output.with_name(f"{output.stem}_alpha{alpha:g}{output.suffix}") for alpha in alphas]


def interpolate_files(zero_shot: Path, fine_tuned: Path, alphas: list[float], output: Path, *,
                      model: str | None = None, reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Write the WiSE-FT models of ``alphas`` between ``zero_shot`` and ``fine_tuned``; returns the summary of
    ``gla interpolate --json``. With ``model`` (an open_clip architecture), an endpoint that is not a file
    is an open_clip tag of it (``openai``): its weights as open_clip loads them."""
    try:
        alphas = check_alphas(alphas)
    except ValueError as exc:
        raise GlaInputError(f"--alpha: {exc}") from None
    kinds = [_kind(zero_shot, model), _kind(fine_tuned, model)]
    if kinds[0] != kinds[1]:
        raise GlaInputError(f"is a {kinds[0]}, but {fine_tuned} is a {kinds[1]}: interpolate two checkpoints or two "
                            f"head files", zero_shot)
    wanted_suffix = ".safetensors" if kinds[0] == "checkpoint" else ".h5"
    if output.suffix.lower() != wanted_suffix:
        raise GlaInputError(f"the interpolation of two {kinds[0]}s is written as {wanted_suffix}", output)
    paths = output_paths(output, alphas)
    for path in paths:
        check_output_path(path)
    if kinds[0] == "checkpoint":
        _interpolate_checkpoints(zero_shot, fine_tuned, alphas, paths, model, reporter)
    else:
        _interpolate_heads(zero_shot, fine_tuned, alphas, paths)
    return {"kind": kinds[0], "outputs": [str(p) for p in paths], "alphas": alphas}


def _kind(path: Path, model: str | None) -> str:
    if not path.is_file():
        if model is not None and path.suffix.lower() not in (*CHECKPOINT_SUFFIXES, *HEAD_SUFFIXES):
            return "checkpoint"
        raise GlaInputError("no such file" + ("" if model else " (an open_clip tag needs --model)"), path)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if path.suffix.lower() in HEAD_SUFFIXES:
        kind = file_kind(path)
        if kind != "head":
            raise GlaInputError(f"is a {kind} file; interpolate takes head files or checkpoints", path)
        return "head file"
    raise GlaInputError(f"neither a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) nor a head file (.h5)", path)


def _read(path: Path, model: str | None) -> Checkpoint:
    """A checkpoint file, or (not a file, with ``model``) the open_clip weights of the tag ``path``."""
    if path.is_file():
        return read_checkpoint(path)
    from glacli.io.encoders.openclip import open_clip_weights
    return Checkpoint(str(path), open_clip_weights(str(model), str(path)), sha256="", prefix="",
                      layout=f"open_clip tag of {model}")


def _interpolate_checkpoints(zero_shot: Path, fine_tuned: Path, alphas: list[float], paths: list[Path],
                             model: str | None, reporter: Reporter) -> None:
    import torch

    zs, ft = _read(zero_shot, model), _read(fine_tuned, model)
    only_zs, only_ft = sorted(zs.state_dict.keys() - ft.state_dict.keys()), sorted(ft.state_dict.keys() - zs.state_dict.keys())
    if only_zs or only_ft:
        first, where, other = (only_zs[0], zero_shot, fine_tuned) if only_zs and (not only_ft or only_zs[0] < only_ft[0]) \
            else (only_ft[0], fine_tuned, zero_shot)
        raise GlaInputError(f"key {first!r} is not in {other} ({len(only_zs) + len(only_ft)} keys differ; the keys "
                            f"are compared after their prefixes {zs.prefix or '(none)'!r} and "
                            f"{ft.prefix or '(none)'!r} are stripped)", where)
    for key, a in zs.state_dict.items():
        b = ft.state_dict[key]
        if a.shape != b.shape:
            raise GlaInputError(f"{key} has shape {tuple(a.shape)}, but {tuple(b.shape)} in {fine_tuned}", zero_shot)
        if not (a.is_floating_point() and b.is_floating_point()) and not torch.equal(a, b):
            raise GlaInputError(f"{key} holds integers that differ from {fine_tuned}'s; they cannot be interpolated",
                                zero_shot)
    reporter.start("interpolate", len(alphas))
    for alpha, path in zip(alphas, paths):
        mixed = {}
        for key, a in zs.state_dict.items():
            b = ft.state_dict[key]
            if a.is_floating_point():
                dtype = torch.promote_types(a.dtype, b.dtype)
                mixed[key] = interpolate(a.to(dtype), b.to(dtype), alpha)
            else:
                mixed[key] = a
        write_safetensors(mixed, path, {"gla_interpolated_alpha": f"{alpha:g}", "zero_shot": zs.sha256 or zs.path,
                                        "fine_tuned": ft.sha256 or ft.path})
        reporter.advance(1)


def _interpolate_heads(zero_shot: Path, fine_tuned: Path, alphas: list[float], paths: list[Path]) -> None:
    zs, ft = read_head(zero_shot), read_head(fine_tuned)
    check_same_classnames(ft.classnames, fine_tuned, zs.classnames, zero_shot)
    check_same_dimension(ft.weight.shape[1], fine_tuned, zs.weight.shape[1], zero_shot)
    same_scale = zs.temperature == ft.temperature
    fold = [1.0 if same_scale else h.temperature for h in (zs, ft)]
    weights = [np.asarray(h.weight, np.float64) / t for h, t in zip((zs, ft), fold)]
    biases = [np.asarray(h.bias, np.float64) / t for h, t in zip((zs, ft), fold)]
    for alpha, path in zip(alphas, paths):
        attrs = {"interpolated_alpha": alpha, "zeroshot_head_id": zs.gla_id, "finetuned_head_id": ft.gla_id,
                 "finetuned_head_type": ft.head_type,
                 **{k: zs.attrs[k] for k in ("model", "pretrained", "templates") if k in zs.attrs}}
        head = Head(weight=interpolate(weights[0], weights[1], alpha).astype(np.float32),
                    bias=interpolate(biases[0], biases[1], alpha).astype(np.float32),
                    classnames=list(zs.classnames), head_type="wise-ft",
                    temperature=zs.temperature if same_scale else 1.0, attrs=attrs)
        write_head(path, head, parents=[zs.gla_id, ft.gla_id])
