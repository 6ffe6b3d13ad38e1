"""``combine``: GLA logits, the debiased zero-shot model, or the ensemble baseline, streamed to a file.

The math is :mod:`glacli.core.combine`; this module owns the scale policy around it. The zero-shot
logits are brought to the scale q was fitted on (the prior's ``logits_temperature``) before they
are divided by ``T_zs``; ``log pi_s`` is divided by the fine-tuned file's own temperature, the
scale at which a probe's bias absorbed it. ``log pi_t`` of a test set that is not balanced
(``--target-prior``, a file from ``gla estimate-target`` or proportions) is added last. Files whose ids, labels or class names disagree are
refused before anything is written, and so are inputs that would count a model twice (an output of
``combine`` given again) or a prior of another model; inputs that leak (rows q or the head was fitted on)
or that skipped calibration are warned about.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from glacli import api
from glacli.base import chunking
from glacli.base.errors import GlaInputError
from glacli.base.types import Prior, Reporter
from glacli.base.validation import check_same_classnames, require_choice, require_every_class
from glacli.core.combine import log_label_frequencies, zeroshot_divisor
from glacli.io import formats
from glacli.io import fitted_ids
from glacli.io.crossfile import check_same_rows
from glacli.io.formats.proportions import check_proportions, read_pretraining_prior, read_target_distribution
from glacli.io.h5file import file_kind
from glacli.io.paramfile import read_prior
from glacli.io.rowfile import RowFile, read_rows, write_rows

METHODS = ("gla", "ensemble")
DEFAULT_ALPHA = 0.5
"""The ensemble's weight of the fine-tuned model when ``--alpha`` is not given."""
HEAD_FITTED = "head_fitted_rows"
"""Logits attribute: how many of the file's rows its head was fitted on (``gla logits`` counts them)."""
FITTED_HEADS = ("linear", "anchored")
"""Heads fitted by ``gla fit``: their logits are calibrated only when the head's temperature was fitted."""
HEADS_WITH_ZEROSHOT = ("anchored", "prompt")
"""Fine-tuned heads built from the zero-shot model (anchored at it, or its prompts tuned): adding the
zero-shot logits to theirs counts that model twice."""


def combine_files(zeroshot: Path, output: Path, *, prior: Path | None = None, finetuned: Path | None = None,
                  source_prior: str = "uniform", method: str = "gla", alpha: float | None = None,
                  zs_temperature: str | float = "prior", target_prior: str = "uniform",
                  allow_other_model: bool = False, reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Write ``ft + zs/T_zs - log q - log(pi_s)/T_ft`` (GLA), ``zs/T_zs - log q`` (no ``finetuned``) or
    ``(1 - alpha) zs/T_zs + alpha ft`` (ensemble, alpha 0.5 unless given; ``zs_temperature`` a number or
    the prior's); GLA and the debiased model plus ``log pi_t`` with a ``target_prior`` other than uniform.
    ``allow_other_model`` takes a prior estimated on logits of another model (warned, not refused)."""
    if method == "ensemble" and alpha is None:
        alpha = DEFAULT_ALPHA
    _check_options(method, prior, finetuned, source_prior, alpha, zs_temperature)
    if method == "ensemble" and target_prior != "uniform":
        raise GlaInputError("--target-prior applies to --method gla only: the ensemble's implied prior is not "
                            "uniform, so adding log pi_t to it is not the label-shift correction")
    notes: list[tuple[str, str]] = []
    held = _held(notes)  # notes wait until every check has passed, so that a refusal stays one line
    with contextlib.ExitStack() as stack:
        zs = stack.enter_context(read_rows(zeroshot, "logits"))
        ft = stack.enter_context(read_rows(finetuned, "logits")) if finetuned else None
        _check_not_combined(zs, ft)
        parents = [zs.gla_id]
        divisor, q, prior_fitted = 1.0, None, None
        if prior is not None:
            q = read_pretraining_prior(prior)
            check_same_classnames(q.classnames, prior, zs.classnames, zeroshot)
            _check_same_model(q, prior, zs, allow_other_model, held)
            divisor = _prior_scale(q, prior, zs, held)
            parents.append(q.gla_id)
        if method == "ensemble" and zs_temperature != "prior":
            divisor = float(zs_temperature)
        if ft is not None:
            check_same_classnames(ft.classnames, finetuned, zs.classnames, zeroshot)
            check_same_rows(ft, zs)
            parents.append(ft.gla_id)
            _warn_leaks_and_calibration(ft, method, held)
        log_pi_s = None
        if ft is not None and method == "gla" and ft.attrs.get("head_type") in HEADS_WITH_ZEROSHOT:
            held.warning(f"{ft.path} comes from a '{ft.attrs['head_type']}' head, which already holds the "
                             "zero-shot model: GLA counts it twice (docs/probe.md measures what that costs)")
        if ft is not None and method == "gla":
            log_pi_s, source_id = _log_source_prior(source_prior, zs.classnames)
            parents.append(source_id)
        log_pi_t, target_id = _log_target_prior(target_prior, zs.classnames)
        if target_id:
            parents.append(target_id)
        hashes = fitted_ids.read_hashes(prior) if prior is not None else None
        if hashes is not None:
            prior_fitted = fitted_ids.count_fitted(zs, hashes)
            if prior_fitted:
                held.warning(f"{prior_fitted} of the {zs.n_rows} rows of {zs.path} were used to estimate q "
                             f"({prior}): results on them overstate accuracy; evaluate on other rows")
        head_fitted = [int(f.attrs[HEAD_FITTED]) for f in (zs, ft) if f is not None and HEAD_FITTED in f.attrs]
        labels = np.where(zs.labels >= 0, zs.labels, ft.labels if ft is not None else zs.labels)
        name = ("ensemble" if method == "ensemble" else "gla" if ft is not None else "debiased_zeroshot")
        attrs = {"temperature": 1.0, "combine_method": name, "zs_temperature": divisor * zs.temperature,
                 "alpha": alpha, "source_prior": source_prior if ft is not None and method == "gla" else None,
                 "ft_temperature": ft.temperature if ft is not None else None,
                 "target_prior": str(target_prior) if method == "gla" else None,
                 "prior_fitted_rows": prior_fitted,
                 HEAD_FITTED: max(head_fitted, default=None)}
        pi_s, pi_t = (None if log_pi is None else np.exp(log_pi) for log_pi in (log_pi_s, log_pi_t))
        for kind, note in notes:
            getattr(reporter, kind)(note)
        with write_rows(output, "logits", n_rows=zs.n_rows, n_cols=zs.n_cols, classnames=zs.classnames,
                        attrs=attrs, parents=parents) as sink:
            reporter.start(f"combine ({name})", zs.n_rows)
            for chunk in zs.iter_chunks(chunking.io_rows(zs.n_cols), with_ids=True):
                ft_block = ft.read(chunk.start, chunk.stop) if ft is not None else None
                block = api.combine(chunk.values, q, ft_block, zeroshot_temperature=divisor,
                                    finetuned_temperature=ft.temperature if ft is not None else 1.0,
                                    source_prior=pi_s, target_prior=pi_t, method=method, alpha=alpha)
                sink.write(chunk.start, block, labels[chunk.start:chunk.stop], chunk.ids)
                reporter.advance(chunk.stop - chunk.start)
    return {"output": str(output), "method": name, "n_rows": zs.n_rows, "n_classes": zs.n_cols}


def _held(notes: list[tuple[str, str]]) -> Reporter:
    """A reporter that keeps messages and warnings in ``notes`` (as (kind, text)) instead of printing them."""
    return Reporter(message=lambda text: notes.append(("message", text)),
                    warning=lambda text: notes.append(("warning", text)))


def _check_not_combined(zs: RowFile, ft: RowFile | None) -> None:
    """Refuse an output of ``combine`` (or one calibrated afterwards) given as an input: it already holds
    ``-log q`` (and maybe the fine-tuned model), and a second pass would remove or add them twice."""
    method = zs.attrs.get("combine_method")
    if method:
        calibrated = " (then calibrated)" if zs.attrs.get("calibration_method") else ""
        raise GlaInputError(f"is already an output of gla combine (combine_method {method}{calibrated}): "
                            "q was removed from it once; give the zero-shot logits it was made from", zs.path)
    method = ft.attrs.get("combine_method") if ft is not None else None
    if method:
        raise GlaInputError(f"is an output of gla combine (combine_method {method}), not a fine-tuned model's "
                            "logits: it already holds the zero-shot model; give the probe's logits", ft.path)


def _check_same_model(q: Prior, prior_path: Path, zs: RowFile, allow_other_model: bool,
                      reporter: Reporter) -> None:
    """Refuse a q estimated on logits of another model (architecture or weights), where both files record
    it: q is that model's bias. ``--allow-other-model`` turns the refusal into a warning."""
    differ = [f"{key} {zs.attrs[key]!r} (q: {q.attrs['zeroshot_' + key]!r})" for key in ("model", "pretrained")
              if zs.attrs.get(key) and q.attrs.get("zeroshot_" + key) and zs.attrs[key] != q.attrs["zeroshot_" + key]]
    if not differ:
        if q.attrs.get("zeroshot_model") and not zs.attrs.get("model"):
            reporter.warning(f"{zs.path} records no model, so nothing checks that it comes from "
                             f"{q.attrs['zeroshot_model']!r}, the model q was estimated on ({prior_path})")
        return
    what = f"comes from another model than the logits q was estimated on ({prior_path}): {', '.join(differ)}"
    if not allow_other_model:
        raise GlaInputError(f"{what}; q is one model's bias: estimate it on this model's logits, or give "
                            "--allow-other-model", zs.path)
    reporter.warning(f"{zs.path} {what}; used anyway (--allow-other-model)")


def _warn_leaks_and_calibration(ft: RowFile, method: str, reporter: Reporter) -> None:
    """Fine-tuned logits on rows their head was fitted on, or left at temperature 1 by a fit or an import
    of probabilities that nothing calibrated: GLA adds them to the calibrated zero-shot model as they are."""
    fitted = int(ft.attrs.get(HEAD_FITTED, 0))
    if fitted:
        reporter.warning(f"{fitted} of the {ft.n_rows} rows of {ft.path} were used to fit its head: results on "
                         "them overstate accuracy; evaluate on other rows")
    made = ("made from probabilities" if ft.attrs.get("from_probabilities")
            else f"of an uncalibrated '{ft.attrs['head_type']}' head" if ft.attrs.get("head_type") in FITTED_HEADS
            else None)
    if method == "gla" and made and math.isclose(ft.temperature, 1.0) and not ft.attrs.get("calibration_method"):
        reporter.warning(f"{ft.path} is {made}, at temperature 1 with no calibration record: GLA adds it to the "
                         "calibrated zero-shot model as it is; calibrate it first (gla calibrate FT.h5 --val "
                         "FT_VAL.h5 -o FT_CAL.h5)")


def _check_options(method: str, prior: Path | None, finetuned: Path | None, source_prior: str,
                   alpha: float | None, zs_temperature: str | float) -> None:
    """Refuse option combinations that do not make one of the three models, before any file is read."""
    require_choice(method, METHODS, "--method")
    if method == "ensemble":
        if finetuned is None:
            raise GlaInputError("--method ensemble needs --finetuned")
        if alpha is None or not 0.0 <= alpha <= 1.0:
            raise GlaInputError(f"--method ensemble needs --alpha in [0, 1], got {alpha}")
        if source_prior != "uniform":
            raise GlaInputError("--source-prior applies to --method gla only")
        if zs_temperature == "prior" and prior is None:
            raise GlaInputError("--method ensemble divides the zero-shot logits by the prior's T_zs: give --prior, "
                                "or --zs-temperature 1 to use them as stored")
        return
    if zs_temperature != "prior":
        raise GlaInputError("--zs-temperature applies to --method ensemble only (gla uses the prior's T_zs)")
    if prior is None:
        raise GlaInputError("--method gla needs --prior (estimate it with gla estimate-prior)")
    if alpha is not None:
        raise GlaInputError("--alpha applies to --method ensemble only")
    if finetuned is None and source_prior != "uniform":
        raise GlaInputError("--source-prior needs --finetuned: without it the output is the debiased zero-shot model")


def _prior_scale(q: Prior, prior_path: Path, zs: RowFile, reporter: Reporter) -> float:
    """The divisor that brings the stored zero-shot values to ``raw / (t_q T_zs)``; says so when the
    scales differ, and warns when the logits come from another zero-shot head than q's."""
    divisor = zeroshot_divisor(q.temperature, q.logits_temperature, zs.temperature)
    if not math.isclose(q.logits_temperature, zs.temperature, rel_tol=1e-9):
        reporter.message(f"{zs.path} has temperature {zs.temperature:g} applied, q was fitted on logits with "
                         f"{q.logits_temperature:g}: converted exactly (values x {zs.temperature:g} / "
                         f"{q.logits_temperature:g})")
    head, q_head = zs.attrs.get("head_id"), q.attrs.get("zeroshot_head_id")
    if head and q_head and head != q_head:
        described = ", ".join(f"{q.attrs[k]}" for k in ("zeroshot_model", "zeroshot_templates") if k in q.attrs)
        reporter.warning(f"{zs.path} comes from another zero-shot head than the logits q was estimated on "
                         f"({prior_path}: head {q_head[:8]}{', ' + described if described else ''})")
    return divisor


def _log_source_prior(source: str, classnames: list[str]) -> tuple[np.ndarray, str]:
    """``log pi_s`` and the gla_id of the file it came from ('' for uniform)."""
    n = len(classnames)
    if source == "uniform":
        return np.full(n, -np.log(n)), ""
    kind = file_kind(source)
    if kind == "prior":
        pi = read_prior(source)
        check_same_classnames(pi.classnames, source, classnames, "the zero-shot logits")
        return pi.log_prior, pi.gla_id
    if kind != "features":
        raise GlaInputError(f"is a '{kind}' file; --source-prior takes uniform, a features file or a prior file",
                            source)
    with read_rows(source, "features") as train:
        check_same_classnames(train.classnames, source, classnames, "the zero-shot logits")
        labels = train.require_labels("for --source-prior")
        require_every_class(labels, classnames, source,
                            "log pi_s is undefined: give --source-prior uniform or a prior file")
        return log_label_frequencies(labels, n), train.gla_id


def _log_target_prior(target: str, classnames: list[str]) -> tuple[np.ndarray | None, str]:
    """``log pi_t`` (None for uniform) and the gla_id of the file it came from: a prior file from
    ``gla estimate-target`` (a pre-training ``q`` is refused), or proportions in .json, .npy, .csv."""
    if target == "uniform":
        return None, ""
    path = Path(target)
    if path.suffix.lower() in (".h5", ".hdf5"):
        kind = file_kind(path)
        if kind != "prior":
            raise GlaInputError(f"is a '{kind}' file; --target-prior takes uniform, a prior file from "
                                "gla estimate-target, or class proportions (.json, .npy, .csv)", path)
        pi = read_target_distribution(path)
        check_same_classnames(pi.classnames, path, classnames, "the zero-shot logits")
        return pi.log_prior, pi.gla_id
    names, values, _ = formats.read_prior(path, None)
    return np.log(check_proportions(np.asarray(values).reshape(-1), names, path, classnames,
                                    "the zero-shot logits")), ""
