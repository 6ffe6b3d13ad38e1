"""Estimating the label prior ``q`` of a zero-shot model (pure torch, no I/O).

The estimator of GLA. On an estimation set whose class proportions are ``f``, the zero-shot model
with its pre-training prior ``q`` replaced by ``f`` is ``softmax(beta * z_i - log q + log f)``, with
``beta = 1 / T``. Its likelihood depends on ``q`` only through the bias ``b = log q - log f``:

    L(beta, b) = mean_i logsumexp(beta * z_i - b) + sum_k f_k b_k - beta * mean_i z_{i, y_i}

(the mean cross-entropy when ``f`` are the label proportions). ``L`` is convex in ``(beta, b)``,
invariant to ``b -> b + c``, and its gradient in ``b`` is ``f - mean_i softmax(beta * z_i - b)``:
at the optimum the mean predicted distribution equals the class proportions (the *moment*
condition). The maximum-likelihood prior is then ``log q = b + log f``, normalised; on a
balanced set ``log f`` is a constant and ``q = softmax(b)``. Only ``f`` enters, so a set of
known proportions needs no labels at all when ``beta`` is fixed.

The solver is Newton's method with a line search, started by one fixed-point step computed in
log space (so a class whose probability underflows still gets a finite first step). Each
iteration makes one streamed pass
over the rows (softmax, moments, the exact Hessian diagonal and, when ``beta`` is free, its
exact ``beta`` row); the dense ``b``-block of the Hessian comes from a fixed subsample of
rows, with its diagonal raised to the exact one. That keeps an iteration at the price of one
pass while converging in a handful of iterations. Early iterations on large inputs run in
float32; the final ones always run in float64 until the largest moment gap is below ``tol``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from glacli.calibration import fit_temperature_confidence, fit_temperature_nll

DEFAULT_TOL = 1e-8
HESSIAN_ROWS = 8192
FLOAT32_UNTIL_GAP = 1e-6
REUSE_HESSIAN_BELOW_GAP = 1e-4
PASS_ELEMENTS = 2**22
MAX_RIDGE_RETRIES = 30
"""Each retry multiplies the ridge by 100: from 1e-12 to far beyond any finite Hessian's scale."""


@dataclass
class PriorEstimate:
    """The fitted prior and how the solver got there."""

    log_prior: torch.Tensor
    """``log q``, float64 [C], normalised so that ``q`` sums to 1 (finite even where ``q`` underflows)."""
    temperature: float
    iterations: int
    max_moment_gap: float
    """``max_k |f_k - mean_i softmax(z_i / T - log q + log f)_k|`` at the solution."""
    converged: bool
    objective: float | None
    """Mean cross-entropy of ``softmax(z / T - log q + log f)`` on the labels; None without labels."""
    temperature_gradient: float | None = None
    """``dL/dbeta`` at the solution when T was fitted (``nll``), else None."""
    moment_gaps: torch.Tensor | None = None
    """``f_k - mean_i p_ik`` per class, float64 [C]: where a fit that did not converge falls short."""

    @property
    def prior(self) -> torch.Tensor:
        return self.log_prior.exp()


@dataclass
class _Pass:
    """What one pass over the rows yields at ``(beta, b)``."""

    objective: float
    moments: torch.Tensor          # mean_i p_i                     [C]
    hess_diag: torch.Tensor        # mean_i p_i (1 - p_i)            [C]
    grad_beta: float = 0.0         # mean_i E_p[z_i] - mean_i z_{i,y_i}
    hess_beta: float = 0.0         # mean_i Var_p(z_i)
    hess_beta_b: torch.Tensor | None = None   # -mean_i p_i (z_i - E_p z_i)   [C]


@dataclass
class _Rows:
    """The logits the solver passes over, with per-class constants ``shift`` taken out in each block.

    ``beta * z - b`` is unchanged when ``b`` absorbs ``beta * shift``, so the shift only conditions the
    problem (a class far below the rest would make the beta curvature huge). It is subtracted block by
    block in the pass's dtype, so float64 passes see the stored values exactly.
    """

    z: torch.Tensor
    shift: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.z.shape)

    @property
    def device(self) -> torch.device:
        return self.z.device

    def blocks(self, dtype: torch.dtype, step: int = 1):
        """Row blocks of ``PASS_ELEMENTS`` values (every ``step``-th row), as ``dtype``."""
        n, c = self.z.shape
        rows = max(1, PASS_ELEMENTS // c)
        for start in range(0, n, rows * step):
            block = self.z[start:start + rows * step:step].to(dtype)
            yield block if self.shift is None else block - self.shift.to(dtype)


def _pass(z: _Rows, beta: float, b: torch.Tensor, target: torch.Tensor, mean_true_logit: float,
          fit_beta: bool, dtype: torch.dtype) -> _Pass:
    """Stream over row blocks of ``z`` and accumulate the objective, gradient and Hessian parts (float64)."""
    n, c = z.shape
    acc = torch.float64
    b_work = b.to(dtype)
    lse_sum = torch.zeros((), dtype=acc, device=z.device)
    m = torch.zeros(c, dtype=acc, device=z.device)
    p2 = torch.zeros(c, dtype=acc, device=z.device)
    ez_sum = torch.zeros((), dtype=acc, device=z.device)
    var_sum = torch.zeros((), dtype=acc, device=z.device)
    cross = torch.zeros(c, dtype=acc, device=z.device)
    for zc in z.blocks(dtype):
        s = zc * beta - b_work
        p = torch.softmax(s, dim=1)
        p_max, k_max = p.max(dim=1)
        s_max = s.gather(1, k_max[:, None]).squeeze(1)
        lse_sum += (s_max - p_max.log()).sum(dtype=acc)
        m += p.sum(0, dtype=acc)
        p2 += (p * p).sum(0, dtype=acc)
        if fit_beta:
            pz = p * zc
            ez = pz.sum(1)
            ez_sum += ez.sum(dtype=acc)
            var_sum += ((pz * zc).sum(1) - ez * ez).clamp_min(0).sum(dtype=acc)
            cross -= (pz - p * ez[:, None]).sum(0, dtype=acc)
    m /= n
    objective = float(lse_sum / n + (target * b).sum() - beta * mean_true_logit)
    out = _Pass(objective, m, m - p2 / n)
    if fit_beta:
        out.grad_beta = float(ez_sum / n) - mean_true_logit
        out.hess_beta = float(var_sum / n)
        out.hess_beta_b = cross / n
    return out


def _log_moments(z: _Rows, beta: float, b: torch.Tensor) -> torch.Tensor:
    """``log mean_i softmax(beta * z_i - b)``, float64 [C], in log space: finite for classes whose
    probability underflows on every row (e.g. logits far below the others)."""
    n, c = z.shape
    top = torch.full((c,), -math.inf, dtype=torch.float64, device=z.device)
    total = torch.zeros(c, dtype=torch.float64, device=z.device)
    for block in z.blocks(torch.float64):
        log_p = torch.log_softmax(block * beta - b, dim=1)
        block_top = log_p.max(0).values
        new_top = torch.maximum(top, block_top)
        total = total * (top - new_top).exp() + (log_p - new_top).exp().sum(0)
        top = new_top
    return total.log() + top - math.log(n)


def _subsample_hessian(z: _Rows, step: int, beta: float, b: torch.Tensor) -> torch.Tensor:
    """``mean_i diag(p_i) - p_i p_i^T`` over a fixed subsample of rows, float64 [C, C].

    Computed in float32: it only shapes the step, the line search and the float64 moments decide.
    """
    c = z.shape[1]
    moments = torch.zeros(c, dtype=torch.float32, device=z.device)
    outer = torch.zeros(c, c, dtype=torch.float32, device=z.device)
    rows = 0
    for block in z.blocks(torch.float32, step):
        p = torch.softmax(block * beta - b.to(torch.float32), dim=1)
        moments += p.sum(0)
        outer += p.T @ p
        rows += len(p)
    return (torch.diag(moments) - outer).to(torch.float64) / rows


def _newton_system(st: _Pass, h_sub: torch.Tensor, fit_beta: bool) -> torch.Tensor:
    """The Hessian used for the step: subsample b-block with the exact diagonal, plus the beta row.

    The b-block is made PSD-safe by only raising its diagonal (``max(exact - subsample, 0)``), and
    the gauge direction ``b -> b + c`` (zero curvature, zero gradient) is fixed by adding ``1 1^T / C``.
    """
    c = h_sub.shape[0]
    h_bb = h_sub + torch.diag((st.hess_diag - h_sub.diagonal()).clamp_min(0))
    h_bb = h_bb + 1.0 / c
    if not fit_beta:
        return h_bb
    h = torch.empty(c + 1, c + 1, dtype=torch.float64, device=h_bb.device)
    h[0, 0] = st.hess_beta
    h[0, 1:] = st.hess_beta_b
    h[1:, 0] = st.hess_beta_b
    h[1:, 1:] = h_bb
    return h


def _factorize(h: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of ``h``, with the smallest ridge that makes it positive definite."""
    ridge = 1e-12 * float(h.diagonal().abs().max().clamp_min(1e-300))
    eye = torch.eye(len(h), dtype=h.dtype, device=h.device)
    for _ in range(MAX_RIDGE_RETRIES):
        chol, info = torch.linalg.cholesky_ex(h + ridge * eye)
        if int(info) == 0:
            return chol
        ridge *= 100
    raise ValueError("the Newton system is not positive definite at any ridge (non-finite curvature)")


def _fixed_point_step(z: _Rows, beta: float, b: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``b + log(m / f)``: moves every class's mean probability ``m_k`` to ``f_k`` at once (exact when
    the rows' other classes did not change), which lands close to the optimum from any start."""
    b = b + _log_moments(z, beta, b) - target.log()
    return b - b.max()


def _fit(z: _Rows, target: torch.Tensor, beta: float, fit_beta: bool, mean_true_logit: float,
         tol: float, max_iter: int, b: torch.Tensor
         ) -> tuple[float, torch.Tensor, int, torch.Tensor, bool, float, float]:
    """Minimise ``L`` over ``b`` (and ``beta`` when ``fit_beta``) from ``(beta, b)``; returns ``beta``,
    ``b``, iterations, the moment gap, convergence, ``L`` and ``dL/dbeta`` at the end."""
    n, c = z.shape
    step = max(1, math.ceil(n / HESSIAN_ROWS))
    dtype = torch.float32 if n * c >= 2**20 else torch.float64
    b = _fixed_point_step(z, beta, b, target)
    st = _pass(z, beta, b, target, mean_true_logit, fit_beta, dtype)
    chol: torch.Tensor | None = None

    def gradient(state: _Pass) -> torch.Tensor:
        g_b = target - state.moments
        return torch.cat([g_b.new_tensor([state.grad_beta]), g_b]) if fit_beta else g_b

    iterations = 0
    while True:
        g = gradient(st)
        gap = float(g.abs().max())
        if dtype == torch.float32 and gap < FLOAT32_UNTIL_GAP:
            dtype = torch.float64
            st = _pass(z, beta, b, target, mean_true_logit, fit_beta, dtype)
            continue
        if (gap < tol and dtype == torch.float64) or iterations >= max_iter:
            break
        if chol is None or gap > REUSE_HESSIAN_BELOW_GAP:
            chol = _factorize(_newton_system(st, _subsample_hessian(z, step, beta, b), fit_beta))
        direction = -torch.cholesky_solve(g[:, None], chol).squeeze(1)
        slope = float(g @ direction)
        g_norm = float(g.norm())
        t, accepted = 1.0, False
        for _ in range(40):
            new_beta = beta + t * float(direction[0]) if fit_beta else beta
            new_b = b + t * (direction[1:] if fit_beta else direction)
            if new_beta > 0:
                trial = _pass(z, new_beta, new_b, target, mean_true_logit, fit_beta, dtype)
                armijo = trial.objective <= st.objective + 1e-4 * t * slope
                smaller_gradient = float(gradient(trial).norm()) <= (1 - 1e-4 * t) * g_norm
                if armijo or smaller_gradient:
                    accepted = True
                    break
            t *= 0.5
        iterations += 1
        if not accepted:
            if dtype == torch.float32:
                dtype = torch.float64
                st = _pass(z, beta, b, target, mean_true_logit, fit_beta, dtype)
                continue
            break
        beta, b, st = new_beta, new_b, trial
    gap = float(gradient(st).abs().max())
    return beta, b, iterations, target - st.moments, gap < tol, st.objective, st.grad_beta


def class_proportions(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Label frequencies, float64 [C]."""
    counts = torch.bincount(labels.to(torch.long), minlength=n_classes).to(torch.float64)
    return counts / counts.sum()


def estimate_prior(logits: torch.Tensor, target: torch.Tensor, temperature: float | str = 1.0,
                   labels: torch.Tensor | None = None, tol: float = DEFAULT_TOL,
                   max_iter: int = 100) -> PriorEstimate:
    """Fit ``q`` (and, with ``temperature="nll"``, ``T``) to zero-shot ``logits``.

    Args:
        logits: [N, C] zero-shot logits (any float dtype; kept on its device); finite.
        target: [C] class proportions ``f`` of the estimation set (positive, summing to 1). The
            returned ``q`` is the pre-training prior whatever ``f`` is: ``log q = b + log f``.
        temperature: a positive number (fixed T), ``"confidence"`` (T such that mean max
            probability equals accuracy, then q) or ``"nll"`` (T and q jointly by maximum likelihood).
        labels: [N] labels; needed by ``"confidence"`` and ``"nll"``, and for the reported mean
            cross-entropy. ``"nll"`` requires that ``target`` are the proportions of these labels,
            since both come from the same likelihood.
        tol: stop when ``max_k |f_k - mean_i p_ik|`` (and the beta gradient) is below this, in float64.

    Returns:
        A :class:`PriorEstimate`; ``converged`` is False if ``max_iter`` ran out first.
    """
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if not bool(torch.isfinite(z).all()):
        raise ValueError("the logits hold NaN or infinite values")
    target = target.to(torch.float64).to(z.device)
    if target.shape != (z.shape[1],) or not bool(torch.isfinite(target).all()) or bool((target <= 0).any()):
        raise ValueError("target proportions must be positive, one per class")
    target = target / target.sum()
    # Per-class constants in z only move b (beta * z - b is unchanged with b += beta * shift), but a
    # class far below the rest makes the beta curvature huge; centring the columns conditions the fit.
    shift = z.mean(0, dtype=torch.float64) if temperature == "nll" else None
    rows = _Rows(z, shift)
    mean_true_logit, label_proportions = 0.0, None
    if labels is not None:
        labels = labels.to(z.device).long()
        label_proportions = class_proportions(labels, z.shape[1])
        mean_true_logit = float(z.gather(1, labels[:, None]).to(torch.float64).mean())
        if shift is not None:
            mean_true_logit -= float((label_proportions * shift).sum())
    elif temperature in ("nll", "confidence"):
        raise ValueError(f"temperature '{temperature}' needs labels")
    b = torch.zeros(z.shape[1], dtype=torch.float64, device=z.device)
    if temperature == "nll":
        if not torch.allclose(label_proportions, target, rtol=0, atol=1e-12):
            raise ValueError("temperature 'nll' fits T to the labels, so the target must be their proportions")
        # Start from the NLL-optimal T of the logits debiased by one step at T = 1: a T fitted with
        # q uniform would absorb a strong prior (a class far below the rest sends it to T_MAX).
        b = _fixed_point_step(rows, 1.0, b, target)
        beta = 1.0 / fit_temperature_nll(z.to(torch.float64) - shift - b, labels)
        b = b * beta
        fit_beta = True
    elif temperature == "confidence":
        beta, fit_beta = 1.0 / fit_temperature_confidence(z, labels), False
    else:
        beta, fit_beta = 1.0 / float(temperature), False
    beta, b, iterations, moment_gaps, converged, objective, grad_beta = _fit(
        rows, target, beta, fit_beta, mean_true_logit, tol, max_iter, b)
    if shift is not None:
        b = b + beta * shift
    log_q = b + target.log()
    cross_entropy = None
    if label_proportions is not None:  # L holds sum_k f_k b_k where the cross-entropy has the label mean of b
        cross_entropy = objective + float(((label_proportions - target) * b).sum())
    return PriorEstimate(log_q - torch.logsumexp(log_q, 0), 1.0 / beta, iterations,
                         float(moment_gaps.abs().max()), converged, cross_entropy,
                         grad_beta if fit_beta else None, moment_gaps)


def debiased_logits(logits: torch.Tensor, log_prior: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z / T - log q``: the zero-shot model with its label prior removed."""
    return logits / temperature - log_prior.to(logits.dtype)
