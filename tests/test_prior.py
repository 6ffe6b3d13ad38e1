"""Prior estimation against known answers and independent float64 references."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp, softmax
from synth import biased_logits

from glacli.core.calibration import T_MIN, fit_temperature_confidence, mean_confidence
from glacli.core.prior import LogitSource, class_proportions, estimate_prior


def population_problem(n: int, c: int, temperature: float, seed: int = 0):
    """A set whose log-posteriors are g, so its class proportions are f = mean softmax(g) (not uniform).

    The balanced log-posterior is g - log f; the zero-shot model adds log q_true to it, at scale T:
    z = T (g - log f + log q_true). Then softmax(z/T - log q + log f) = softmax(g) at q = q_true,
    which meets the moment condition exactly: the optimum is q_true.
    """
    rng = np.random.default_rng(seed)
    q_true = rng.dirichlet(np.full(c, 1.0))
    g = rng.normal(size=(n, c)) * 2.5
    target = softmax(g, axis=1).mean(0)
    return temperature * (g - np.log(target) + np.log(q_true)), target, q_true


@pytest.mark.parametrize("n, c, temperature", [(400, 5, 1.0), (3000, 50, 0.3), (600, 400, 2.0)])
def test_recovers_a_known_prior_exactly(n, c, temperature):
    z, target, q_true = population_problem(n, c, temperature)
    fit = estimate_prior(torch.tensor(z), torch.tensor(target), temperature)
    assert fit.converged and fit.max_moment_gap < 1e-8
    np.testing.assert_allclose(fit.prior, q_true, rtol=1e-5)
    assert abs(float(fit.prior.sum()) - 1) < 1e-12


def test_float32_large_input_still_reaches_float64_tolerance():
    z, target, q_true = population_problem(5000, 300, 1.0, seed=3)
    fit = estimate_prior(torch.tensor(z, dtype=torch.float32), torch.tensor(target), 1.0)
    assert fit.converged and fit.max_moment_gap < 1e-8
    # float32 storage of z perturbs the problem by ~1e-7 relative, so q_true holds to ~1e-5.
    np.testing.assert_allclose(fit.prior, q_true, rtol=1e-4)


def numpy_objective(b: np.ndarray, z: np.ndarray, y: np.ndarray) -> float:
    return float(-log_softmax(z - b, axis=1)[np.arange(len(y)), y].mean())


def test_matches_scipy_on_the_cross_entropy_with_sampled_labels():
    z, y, _ = biased_logits(60, 12, seed=5, temperature=1.0)
    f = np.bincount(y, minlength=12) / len(y)
    fit = estimate_prior(torch.tensor(z), torch.tensor(f), 1.0, labels=torch.tensor(y))

    def fun(b):
        p = softmax(z - b, axis=1)
        return numpy_objective(b, z, y), f - p.mean(0)

    ref = minimize(fun, np.zeros(12), jac=True, method="BFGS", options={"gtol": 1e-12, "maxiter": 10000})
    # The labels are not balanced: the model on this set is z - log q + log f, so log q = b + log f.
    log_q_ref = ref.x + np.log(f)
    np.testing.assert_allclose(fit.prior, np.exp(log_q_ref - logsumexp(log_q_ref)), rtol=1e-5)
    b = fit.log_prior - np.log(f)
    ours = numpy_objective(b, z, y)
    assert ours <= ref.fun + 1e-12
    assert fit.objective == pytest.approx(ours, abs=1e-12)
    # the moment condition, checked independently in float64 numpy
    p = softmax(z - b, axis=1).mean(0)
    assert np.abs(p - f).max() < 1e-8


def test_nll_temperature_agrees_with_brute_force_over_t():
    z, y, _ = biased_logits(80, 8, seed=2, temperature=1.7)
    f = class_proportions(torch.tensor(y), 8)
    fit = estimate_prior(torch.tensor(z), f, "nll", labels=torch.tensor(y))
    assert fit.converged and abs(fit.temperature_gradient) < 1e-8
    log_f = np.log(f)
    grid = np.linspace(1.0, 2.6, 161)
    losses = []
    for t in grid:
        fixed = estimate_prior(torch.tensor(z), f, float(t))
        losses.append(numpy_objective(fixed.log_prior - log_f, z / t, y))
    best = grid[int(np.argmin(losses))]
    assert abs(fit.temperature - best) <= grid[1] - grid[0]
    ours = numpy_objective(fit.log_prior - log_f, z / fit.temperature, y)
    assert ours <= min(losses) + 1e-12
    assert fit.objective == pytest.approx(ours, abs=1e-9)


def test_confidence_temperature_matches_mean_confidence_to_accuracy():
    z, y, _ = biased_logits(100, 10, seed=4, temperature=3.0)
    zt, yt = torch.tensor(z), torch.tensor(y)
    t = fit_temperature_confidence(zt, yt)
    accuracy = float((zt.argmax(1) == yt).double().mean())
    assert mean_confidence(zt, t) == pytest.approx(accuracy, abs=1e-8)
    fit = estimate_prior(zt, class_proportions(yt, 10), "confidence", labels=yt)
    assert fit.temperature == pytest.approx(t) and fit.converged


def test_nll_needs_the_label_proportions_as_target():
    z, y, _ = biased_logits(20, 4, seed=1)
    with pytest.raises(ValueError, match="target must be their proportions"):
        estimate_prior(torch.tensor(z), torch.full((4,), 0.25, dtype=torch.float64), "nll", labels=torch.tensor(y))


def test_one_solver_for_numpy_and_torch_and_for_kept_and_streamed_rows():
    z, y, _ = biased_logits(300, 12, seed=21, temperature=1.3)
    z32 = z.astype(np.float32)
    f = class_proportions(y, 12)
    reference = estimate_prior(z32, f, "nll", labels=y)
    assert reference.converged
    for logits in (torch.from_numpy(z32), LogitSource(lambda: iter(np.array_split(z32, 7)), len(z32), 12)):
        other = estimate_prior(logits, f, "nll", labels=y)
        assert other.converged and other.temperature == pytest.approx(reference.temperature, rel=1e-7)
        np.testing.assert_allclose(other.log_prior, reference.log_prior, atol=1e-6)
    kept, streamed = (estimate_prior(z32, f, 1.0, labels=y, hold_bytes=budget) for budget in (np.inf, 0))
    assert kept.converged and streamed.converged
    np.testing.assert_allclose(kept.log_prior, streamed.log_prior, atol=1e-6)


def test_nll_profile_path_on_a_large_set_meets_the_float64_optimality_conditions():
    """n * c >= 2**20 takes the held-rows path (profile likelihood in beta over kept float32 exp(beta z),
    then joint float64 Newton). Checked with an independent float64 numpy computation of both gradients
    at the returned (T, q), and against the streamed path (joint Newton on full passes)."""
    z, y, _ = biased_logits(300, 64, seed=31, temperature=0.7)   # 19,200 x 64 = 1,228,800 values
    z32 = z.astype(np.float32)
    assert z32.size >= 2**20
    f = class_proportions(y, 64)
    held = estimate_prior(z32, f, "nll", labels=y)
    streamed = estimate_prior(z32, f, "nll", labels=y, hold_bytes=0)
    rows_only = estimate_prior(z32, f, "nll", labels=y, hold_bytes=6 * z32.size)  # rows fit, rows + E do not
    assert held.converged and streamed.converged and rows_only.converged
    assert rows_only.temperature == pytest.approx(streamed.temperature, rel=1e-7)
    zc = z32.astype(np.float64) - z32.astype(np.float64).mean(0)   # the solver's centring: same optimum
    shift = z32.astype(np.float64).mean(0)
    b = (held.log_prior - np.log(f)) - shift / held.temperature
    p = softmax(zc / held.temperature - b, axis=1)
    assert np.abs(p.mean(0) - f).max() < 1e-8
    beta_gradient = float((p * zc).sum(1).mean() - zc[np.arange(len(y)), y].mean())
    assert abs(beta_gradient) < 1e-8
    assert held.temperature == pytest.approx(streamed.temperature, rel=1e-7)
    np.testing.assert_allclose(held.log_prior, streamed.log_prior, atol=1e-6)
    on_torch = estimate_prior(torch.from_numpy(z32), f, "nll", labels=torch.from_numpy(y))  # the same path in torch
    assert on_torch.converged and on_torch.temperature == pytest.approx(held.temperature, rel=1e-7)
    np.testing.assert_allclose(on_torch.log_prior, held.log_prior, atol=1e-5)


def test_nll_profile_path_with_a_closed_form_temperature_and_a_symmetric_prior():
    """z = a e_j with y = j on 80% of the rows and j + 1 on the rest, every class alike: q is uniform
    for every T (the first fixed-point step already solves b), and the moment condition in beta,
    p_j = 0.8, gives exp(a / T) = 4 (C - 1)."""
    c, a, per_class = 64, 3.0, 300
    j = np.repeat(np.arange(c), per_class)
    y = np.where(np.arange(len(j)) % 5 == 0, (j + 1) % c, j)
    z = np.zeros((len(j), c), dtype=np.float32)
    z[np.arange(len(j)), j] = a
    assert z.size >= 2**20
    fit = estimate_prior(z, class_proportions(y, c), "nll", labels=y)
    assert fit.converged
    assert fit.temperature == pytest.approx(a / np.log(4 * (c - 1)), rel=1e-7)
    # a moment gap below 1e-8 pins log q to about gap / (curvature ~ 1/C): 1e-6
    np.testing.assert_allclose(fit.log_prior, np.full(c, -np.log(c)), atol=1e-6)


def test_a_read_error_in_a_streamed_source_reaches_the_caller():
    """Blocks are read ahead by another thread: an error there is raised in the caller, not lost or hung on."""
    z, y, _ = biased_logits(40, 6, seed=23)
    blocks = np.array_split(z.astype(np.float32), 6)

    def failing():
        yield from blocks[:3]
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        estimate_prior(LogitSource(failing, len(z), 6), class_proportions(y, 6), 1.0, labels=y, hold_bytes=0)


def test_blas_threads_are_one_during_the_solve_and_restored_after_it():
    """The passes' pool is the solver's one threading mechanism: BLAS runs on one thread while it
    works (its own threads beside the pool's oversubscribe the cores), and the caller's setting
    comes back afterwards, also when the solve fails."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    z, y, _ = biased_logits(200, 6, seed=5)
    seen = []

    def blocks():
        seen.append([lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"])
        yield z.astype(np.float32)

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
        estimate_prior(LogitSource(blocks, len(z), 6, z[:0].astype(np.float32)), class_proportions(y, 6), 1.0, labels=y)
        assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"] == before
        with pytest.raises(ValueError):
            estimate_prior(np.full((4, 6), np.nan), np.full(6, 1 / 6), 1.0)
        assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"] == before
    assert before and max(before) == 2 and seen and all(threads == [1] * len(before) for threads in seen)


def test_nll_profile_path_ends_on_a_separable_set():
    """Labels that are the argmax of z: the likelihood keeps rising as T -> 0, so the profile
    iteration must stop at its bracket or its iteration cap and say so (the service then refuses
    the estimate as having no finite optimum)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 64)).astype(np.float32)
    y = z.argmax(1)
    assert z.size >= 2**20
    fit = estimate_prior(z, class_proportions(y, 64), "nll", labels=y)
    assert not fit.converged or fit.temperature <= T_MIN * 1.0001


def test_nll_profile_path_with_a_class_far_below_the_rest():
    """A class 1e6 below the others underflows on every row at T = 1: the profile path's first step
    takes its mean probability in log space, as the Newton start does, and still converges."""
    z, y, _ = biased_logits(300, 64, seed=3, temperature=0.7)
    z = z.astype(np.float32)
    z[:, 5] -= 1e6
    f = class_proportions(y, 64)
    held, streamed = (estimate_prior(z, f, "nll", labels=y, hold_bytes=budget) for budget in (np.inf, 0))
    assert held.converged and streamed.converged
    assert held.temperature == pytest.approx(streamed.temperature, rel=1e-7)
