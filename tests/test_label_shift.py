"""Label shift estimation against an independent float64 EM, a known pi_t, and the balanced case."""
from __future__ import annotations

import numpy as np
import pytest
from synth import probability_blocks

from glacli.core.label_shift import (
    bbse,
    mlls,
    probabilities,
    project_to_simplex,
)


def shifted_set(n: int, pi_t: np.ndarray, seed: int, dim: int = 6, spread: float = 1.2):
    """Gaussian classes x | y ~ N(mu_y, I); labels drawn from pi_t. The scores mu_y.x - |mu_y|^2/2 are the
    exact log-posterior for a uniform prior (up to a constant), so softmax(scores) is calibrated for it."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(len(pi_t), dim)) * spread
    y = rng.choice(len(pi_t), size=n, p=pi_t)
    x = means[y] + rng.normal(size=(n, dim))
    return x @ means.T - 0.5 * (means**2).sum(1), y


def em_reference(p: np.ndarray, steps: int = 200000, tol: float = 1e-15) -> np.ndarray:
    """Plain EM for the MLE, float64, to convergence: the fixed point of w <- mean_i p_i w / (p_i . w)."""
    w = np.full(p.shape[1], 1.0 / p.shape[1])
    for _ in range(steps):
        new = (p * w / (p @ w)[:, None]).mean(0)
        if np.abs(new - w).max() < tol:
            return new
        w = new
    return w


PI_T = np.array([0.45, 0.25, 0.15, 0.1, 0.04, 0.01])


def test_mlls_equals_a_float64_em_reference_and_recovers_pi_t():
    scores, y = shifted_set(20000, PI_T, seed=1)
    fit = mlls(probability_blocks(scores, rows=1000), 6, concentration=0.0)
    assert fit.converged and fit.kkt_gap < 1e-8 and fit.iterations < 200
    np.testing.assert_allclose(fit.prior, em_reference(probabilities(scores)), atol=1e-6)
    assert np.abs(fit.prior - PI_T).sum() < 0.03  # sampling error of 20,000 rows
    assert abs(fit.prior.sum() - 1) < 1e-12 and abs(np.exp(fit.log_prior).sum() - 1) < 1e-9


def test_mlls_on_a_balanced_set_is_near_uniform_and_the_prior_moves_it_little():
    scores, _ = shifted_set(30000, np.full(6, 1 / 6), seed=2)
    mle = mlls(probability_blocks(scores), 6, concentration=0.0)
    map_ = mlls(probability_blocks(scores), 6, concentration=1.0)
    assert np.abs(mle.prior - 1 / 6).max() < 0.01
    assert map_.converged and np.abs(map_.prior - mle.prior).max() < 1e-4


def test_an_absent_class_goes_to_zero_in_the_mle_and_stays_finite_in_log():
    pi = np.array([0.5, 0.3, 0.2, 0.0, 0.0, 0.0])
    scores, _ = shifted_set(5000, pi, seed=3, spread=2.0)
    mle = mlls(probability_blocks(scores), 6, concentration=0.0, tol=1e-6)
    map_ = mlls(probability_blocks(scores), 6, concentration=1.0)
    assert mle.prior[3:].max() < 1e-3 and np.isfinite(mle.log_prior).all()
    assert map_.prior.min() > 0 and map_.converged and map_.prior[3:].max() < 1e-2


def test_bbse_recovers_pi_t_and_refuses_a_singular_confusion_matrix():
    val_scores, val_y = shifted_set(20000, np.full(6, 1 / 6), seed=4)
    test_scores, _ = shifted_set(20000, PI_T, seed=5)
    fit = bbse(test_scores.argmax(1), val_scores.argmax(1), val_y, 6)
    assert np.abs(fit.prior - PI_T).sum() < 0.06 and abs(fit.prior.sum() - 1) < 1e-12
    never_two = np.where(val_scores.argmax(1) == 2, 1, val_scores.argmax(1))  # class 2 is never predicted
    with pytest.raises(ValueError, match="singular"):
        bbse(test_scores.argmax(1), never_two, val_y, 6)


def test_projection_onto_the_simplex():
    np.testing.assert_allclose(project_to_simplex(np.array([0.5, 0.3, 0.2])), [0.5, 0.3, 0.2])
    np.testing.assert_allclose(project_to_simplex(np.array([1.2, -0.1, 0.1])), [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(project_to_simplex(np.array([0.6, 0.6, -0.4])), [0.5, 0.5, 0.0])
