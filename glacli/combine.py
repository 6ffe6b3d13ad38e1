"""Combining zero-shot and fine-tuned logits: GLA and the ensemble baseline (pure numpy, row blocks).

GLA (Zhu et al., NeurIPS 2023) adds the debiased zero-shot model to the fine-tuned one and
removes the downstream training prior, which the fine-tuned model has absorbed:

    gla = ft + zs / T_zs - log q - log pi_s

``ft`` is taken as stored (a logits file's own temperature is already applied). Without a
fine-tuned model this is the debiased zero-shot model ``zs / T_zs - log q`` (``pi_s`` is then
ignored: nothing was trained on the downstream set). Functions take one block of rows, so
callers stream files of any length through them.
"""
from __future__ import annotations

import numpy as np


def gla_logits(zs: np.ndarray, temperature: float, log_prior: np.ndarray, ft: np.ndarray | None = None,
               log_source_prior: np.ndarray | None = None) -> np.ndarray:
    """GLA logits for a block of rows.

    Args:
        zs: [n, C] zero-shot logits.
        temperature: ``T_zs``, the temperature ``q`` was estimated at.
        log_prior: [C] ``log q``.
        ft: [n, C] fine-tuned logits, or None for the debiased zero-shot model.
        log_source_prior: [C] ``log pi_s`` of the fine-tuned model's training labels (needs ``ft``).

    Returns:
        [n, C] float32 logits.
    """
    out = zs.astype(np.float64) / temperature - log_prior
    if ft is not None:
        out += ft
        if log_source_prior is not None:
            out -= log_source_prior
    return out.astype(np.float32)


def ensemble_logits(zs: np.ndarray, temperature: float, ft: np.ndarray, alpha: float) -> np.ndarray:
    """The output-space ensemble ``(1 - alpha) zs / T_zs + alpha ft`` for a block of rows.

    For two linear heads on the same features this equals the logits of the weight-space
    interpolation ``(1 - alpha) W_zs / T_zs + alpha W_ft`` (WiSE-FT restricted to the head).
    """
    return ((1.0 - alpha) * zs.astype(np.float64) / temperature + alpha * ft).astype(np.float32)


def log_label_frequencies(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``log pi_s`` from training labels; -inf where a class has no samples (callers refuse that)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.log(counts / counts.sum())
