"""Combining zero-shot and fine-tuned logits: GLA and the ensemble baseline (pure numpy, row blocks).

GLA (Zhu et al., NeurIPS 2023) adds the debiased zero-shot model to the fine-tuned one and
removes the downstream training prior, which the fine-tuned model has absorbed:

    gla = ft + zs / T_zs - log q - log(pi_s) / T_ft

``ft`` is taken as stored (a logits file's own temperature ``T_ft`` is already applied), so the
training prior that a plain cross-entropy probe absorbed in its raw bias is removed at the same
scale: ``(raw_ft - log pi_s) / T_ft``. ``zs`` must be at the scale ``q`` was fitted on before it is
divided by ``T_zs`` (:func:`zeroshot_divisor`). Without a fine-tuned model this is the debiased
zero-shot model ``zs / T_zs - log q`` (``pi_s`` is then ignored: nothing was trained on the
downstream set). Both are right for a uniform test label distribution; for a test set with
proportions ``pi_t`` (label shift, :mod:`glacli.core.label_shift`) the Bayes-optimal rule adds ``log pi_t``. Functions take one block of rows, so callers stream files of any length through them.
"""
from __future__ import annotations

import numpy as np


def zeroshot_divisor(prior_temperature: float, prior_logits_temperature: float, zs_temperature: float) -> float:
    """What stored zero-shot values are divided by so that they are ``raw / (t_q T_zs)``.

    A logits file stores ``raw / t_zs``; ``q`` was fitted on ``raw / t_q`` divided by ``T_zs``. So
    ``values / divisor`` with ``divisor = T_zs t_q / t_zs`` is exactly the scale ``q`` belongs to.
    """
    return prior_temperature * prior_logits_temperature / zs_temperature


def gla_logits(zs: np.ndarray, divisor: float, log_prior: np.ndarray, ft: np.ndarray | None = None,
               log_source_prior: np.ndarray | None = None, ft_temperature: float = 1.0,
               log_target_prior: np.ndarray | None = None) -> np.ndarray:
    """GLA logits for a block of rows.

    Args:
        zs: [n, C] zero-shot logits as stored.
        divisor: what ``zs`` is divided by (:func:`zeroshot_divisor`; ``T_zs`` when the scales agree).
        log_prior: [C] ``log q``.
        ft: [n, C] fine-tuned logits as stored, or None for the debiased zero-shot model.
        log_source_prior: [C] ``log pi_s`` of the fine-tuned model's training labels (needs ``ft``).
        ft_temperature: the temperature already applied to ``ft``; ``log pi_s`` is divided by it too.
        log_target_prior: [C] ``log pi_t`` of the test set, added; None for a uniform one.

    Returns:
        [n, C] float32 logits.
    """
    out = zs.astype(np.float64) / divisor - log_prior
    if ft is not None:
        out += ft
        if log_source_prior is not None:
            out -= log_source_prior / ft_temperature
    if log_target_prior is not None:
        out += log_target_prior
    return out.astype(np.float32)


def ensemble_logits(zs: np.ndarray, divisor: float, ft: np.ndarray, alpha: float) -> np.ndarray:
    """The output-space ensemble ``(1 - alpha) zs / divisor + alpha ft`` for a block of rows.

    For two linear heads on the same features this equals the logits of the weight-space
    interpolation ``(1 - alpha) W_zs / divisor + alpha W_ft / T_ft``; it is WiSE-FT's interpolation
    of the two heads only when neither is rescaled (``divisor = T_ft = 1``).
    """
    return ((1.0 - alpha) * zs.astype(np.float64) / divisor + alpha * ft).astype(np.float32)


def log_label_frequencies(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``log pi_s``, float64 [C]: the log label frequencies of training rows (the prior a fine-tuned model
    absorbed, and the adjustment of the probe's balanced loss); -inf where a class has no rows."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.log(counts / counts.sum())
