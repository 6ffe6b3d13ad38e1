"""glacli.core.bootstrap: exact on given resamples, equal to an independent bootstrap within Monte-Carlo
error, and intervals that cover a known truth at about their nominal rate."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from test_metrics import reference

from glacli.core import bootstrap
from glacli.core import metrics

N, C, K, BINS = 400, 8, 5, 15
GROUPS = {"few_shot": np.array([0, 3, 5]), "few_shot_class_mean": np.array([0, 3, 5]), "q_tail": np.array([6, 7])}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two methods' logits on the same unbalanced labels (one class without test rows)."""
    rng = np.random.default_rng(7)
    y = rng.choice(C, size=N, p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05, 0.0])
    a = rng.normal(size=(N, C)) * 2.0
    a[np.arange(N), y] += 2.5
    b = a + rng.normal(size=(N, C)) * 1.0  # the second method: the first, perturbed (paired)
    return a.astype(np.float32), b.astype(np.float32), y


def rows(z: np.ndarray, y: np.ndarray) -> metrics.RowValues:
    acc = metrics.MetricAccumulator(C, keep_rows=True)
    acc.update(z, y)
    return acc.rows()


def reference_values(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Every metric of the rows ``z, y`` from the straightforward definitions (test_metrics.reference)."""
    ref = reference(z, y)
    correct = ref["correct"]
    tail = np.isin(y, GROUPS["q_tail"])
    few_classes = [c for c in GROUPS["few_shot"] if (y == c).any()]
    return {"top1": ref["top1"], "top5": ref["topk"], "mean_per_class": ref["mean_per_class"], "nll": ref["nll"],
            "ece": ref["ece"], "few_shot": correct[np.isin(y, GROUPS["few_shot"])].mean(),
            "few_shot_class_mean": np.mean([correct[y == c].mean() for c in few_classes]),
            "q_tail": correct[tail].mean() if tail.any() else np.nan}


def test_metrics_of_given_resamples_equal_the_metrics_of_the_resampled_rows(data):
    """Counting row i w_i times is resampling: each metric equals the reference on z[idx], y[idx]."""
    a, _, y = data
    design = bootstrap.Design.of(y, C)
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, N, N) for _ in range(6)] + [np.arange(N)]
    counts = np.stack([np.bincount(idx, minlength=N) for idx in draws]).astype(np.float64)
    sums = bootstrap.weighted_sums(rows(a, y), design, counts, BINS)
    got = metrics.scalars(sums, K) | metrics.group_values(sums.class_correct, sums.class_count, GROUPS)
    for r, idx in enumerate(draws):
        expected = reference_values(a[idx], y[idx])
        for key, value in expected.items():
            assert got[key][r] == pytest.approx(value, rel=1e-10, abs=1e-12, nan_ok=True), (key, r)


def test_the_data_itself_gives_the_accumulator_metrics(data):
    a, _, y = data
    acc = metrics.MetricAccumulator(C)
    acc.update(a, y)
    sums = bootstrap.weighted_sums(rows(a, y), bootstrap.Design.of(y, C), np.ones((1, N)), BINS)
    got = metrics.scalars(sums, K) | metrics.group_values(sums.class_correct, sums.class_count, GROUPS)
    for key, value in metrics.summarise(acc.result(), GROUPS).items():
        assert got[key][0] == pytest.approx(value, rel=1e-12), key


@pytest.mark.parametrize("stratified", [True, False])
def test_intervals_match_an_independent_bootstrap(data, stratified):
    """Endpoints within Monte-Carlo error of a plain loop that draws row indices with its own generator.

    Two independent estimates of the p-quantile from B draws each differ with standard deviation about
    sqrt(2 p (1-p) / B) / f(q_p); for a roughly normal bootstrap distribution of sd s, f(q_p) = phi(z_p) / s.
    We allow 4 such deviations, plus one step of the 1/N grid on which accuracies live.
    """
    a, b, y = data
    n_resamples, confidence = 1000, 0.9
    ours = bootstrap.resampled_metrics([rows(a, y), rows(b, y)], y, C, K, BINS, GROUPS, n_resamples, seed=3,
                                       stratified=stratified, block=97)
    rng = np.random.default_rng(12345)
    members = [np.flatnonzero(y == c) for c in range(C) if (y == c).any()]
    theirs: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        if stratified:
            idx = np.concatenate([m[rng.integers(0, len(m), len(m))] for m in members])
        else:
            idx = rng.integers(0, N, N)
        va, vb = reference_values(a[idx], y[idx]), reference_values(b[idx], y[idx])
        for key in va:
            theirs.setdefault(key, []).append(va[key])
        theirs.setdefault("top1 difference", []).append(vb["top1"] - va["top1"])
        theirs.setdefault("nll difference", []).append(vb["nll"] - va["nll"])
    ours[0]["top1 difference"] = ours[1]["top1"] - ours[0]["top1"]
    ours[0]["nll difference"] = ours[1]["nll"] - ours[0]["nll"]
    p = (1 - confidence) / 2
    mc_sd = np.sqrt(2 * p * (1 - p) / n_resamples) / norm.pdf(norm.ppf(p))  # in units of the bootstrap sd
    for key, values in theirs.items():
        values = np.asarray(values)
        spread = np.nanstd(values)
        assert spread > 0, key
        expected = bootstrap.percentile_interval(values, confidence)
        got = bootstrap.percentile_interval(ours[0][key], confidence)
        assert np.abs(np.subtract(got, expected)).max() <= 4 * mc_sd * spread + 1 / N, (key, got, expected)


def simulated_rows(correct: np.ndarray) -> metrics.RowValues:
    """Per-row values where only top-1 correctness matters."""
    n = len(correct)
    return metrics.RowValues(correct=correct, in_top_k=np.ones(n, bool), nll=np.zeros(n),
                             confidence=np.full(n, 0.5), bin=np.full(n, 7))


@pytest.mark.parametrize("stratified", [True, False])
def test_coverage_of_top1_and_of_a_paired_difference(stratified):
    """200 simulated test sets with known per-class accuracies: the 95% intervals of top-1 and of the
    difference of two correlated methods contain the truth in 90% to 99% of the sets.

    Stratified: 30 test rows per class, so the truth is the mean of the class accuracies. Plain: the
    classes of the rows are drawn uniformly too, so the truth is the same mean (in expectation).
    """
    n_classes, per_class, n_sets, n_resamples = 10, 30, 200, 200
    p_a = np.linspace(0.35, 0.9, n_classes)
    p_b = np.clip(p_a + np.linspace(-0.1, 0.15, n_classes), 0, 1)
    truth_a, truth_diff = p_a.mean(), (p_b - p_a).mean()
    rng = np.random.default_rng(2024)
    covered_a = covered_diff = 0
    for s in range(n_sets):
        if stratified:
            y = np.repeat(np.arange(n_classes), per_class)
        else:
            y = rng.integers(0, n_classes, n_classes * per_class)
        u = rng.random(len(y))  # one latent per row: the methods' errors are correlated (paired)
        a, b = simulated_rows(u < p_a[y]), simulated_rows(u < p_b[y])
        draws = bootstrap.resampled_metrics([a, b], y, n_classes, K, BINS, {}, n_resamples, seed=s,
                                            stratified=stratified, block=n_resamples)
        low, high = bootstrap.percentile_interval(draws[0]["top1"], 0.95)
        covered_a += low <= truth_a <= high
        low, high = bootstrap.paired_intervals(draws[1], draws[0], 0.95)["top1"]
        covered_diff += low <= truth_diff <= high
    assert 0.90 <= covered_a / n_sets <= 0.99, covered_a
    assert 0.90 <= covered_diff / n_sets <= 0.99, covered_diff


def test_stratified_resamples_keep_every_class_count_and_do_not_depend_on_blocks(data):
    _, _, y = data
    design = bootstrap.Design.of(y, C)
    whole = bootstrap.resample_counts(design, 0, 12, seed=5, stratified=True)
    parts = np.concatenate([bootstrap.resample_counts(design, f, min(f + 5, 12), 5, True) for f in range(0, 12, 5)])
    np.testing.assert_array_equal(whole, parts)
    per_class = np.stack([np.bincount(y, weights=w, minlength=C) for w in whole])
    np.testing.assert_array_equal(per_class, np.tile(np.bincount(y, minlength=C), (12, 1)))
    plain = bootstrap.resample_counts(design, 0, 12, seed=5, stratified=False)
    assert (plain.sum(1) == N).all()
    assert not (np.stack([np.bincount(y, weights=w, minlength=C) for w in plain]) == per_class).all()
    assert not np.array_equal(plain, bootstrap.resample_counts(design, 0, 12, seed=6, stratified=False))


def test_percentile_interval_skips_undefined_draws():
    draws = np.array([np.nan, 1.0, 2.0, 3.0, np.nan])
    assert bootstrap.percentile_interval(draws, 0.5) == pytest.approx((1.5, 2.5))
    assert all(np.isnan(bootstrap.percentile_interval(np.full(3, np.nan), 0.95)))
