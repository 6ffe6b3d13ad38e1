"""glacli.core.metrics against independent float64 numpy/scipy references on the full arrays."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from glacli.core import metrics


def reference(z: np.ndarray, y: np.ndarray, k: int = 5, n_bins: int = 15) -> dict:
    """Straightforward definitions on the whole [N, C] array, in float64."""
    z = z.astype(np.float64)
    n, c = z.shape
    k = min(k, c)
    order = np.argsort(-z, axis=1, kind="stable")  # ties: lower class index ranks first
    rank = np.argmax(order == y[:, None], axis=1)
    correct = rank == 0
    logp = log_softmax(z, axis=1)
    confidence = np.exp(logp.max(1))
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.digitize(confidence, edges[1:-1], right=True)  # bin b holds (edges[b], edges[b+1]]
    in_bin = bins[:, None] == np.arange(n_bins)[None, :]
    n_b = in_bin.sum(0)
    acc_b = (in_bin * correct[:, None]).sum(0) / np.maximum(n_b, 1)
    conf_b = (in_bin * confidence[:, None]).sum(0) / np.maximum(n_b, 1)
    present = np.unique(y)
    per_class = np.array([correct[y == j].mean() for j in present])
    return {
        "top1": correct.mean(), "topk": (rank < k).mean(),
        "nll": -logp[np.arange(n), y].mean(),
        "ece": (n_b / n * np.abs(acc_b - conf_b)).sum(),
        "mean_per_class": per_class.mean(), "present": present, "per_class": per_class,
        "bin_count": n_b, "correct": correct,
    }


def accumulate(z: np.ndarray, y: np.ndarray, rows: int, **kwargs) -> metrics.Metrics:
    acc = metrics.MetricAccumulator(z.shape[1], **kwargs)
    for start in range(0, len(z), rows):
        acc.update(z[start:start + rows], y[start:start + rows])
    return acc.result()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    n, c = 2000, 40
    y = rng.integers(0, c - 1, n)  # the last class gets no test samples
    z = rng.normal(size=(n, c)) * 2.5
    z[np.arange(n), y] += 4.0
    return z.astype(np.float32), y


def test_metrics_equal_reference(data):
    z, y = data
    got, ref = accumulate(z, y, rows=len(z)), reference(z, y)
    assert got.n_samples == len(y) and got.k == 5
    for key in ("top1", "topk", "nll", "ece", "mean_per_class"):
        assert getattr(got, key) == pytest.approx(ref[key], rel=1e-10, abs=1e-12), key
    assert 0.2 < got.top1 < 0.9 and got.ece > 0.01  # a non-trivial example
    np.testing.assert_allclose(got.class_accuracy[ref["present"]], ref["per_class"], rtol=1e-12)
    assert np.isnan(got.class_accuracy[-1]) and got.class_count[-1] == 0
    np.testing.assert_array_equal(got.reliability.count, ref["bin_count"])
    assert got.reliability.count.sum() == len(y)


def test_streaming_in_tiny_chunks_equals_one_chunk(data):
    z, y = data
    whole, tiny = accumulate(z, y, rows=len(z)), accumulate(z, y, rows=7)
    for key in ("top1", "topk", "nll", "ece", "mean_per_class"):
        assert getattr(tiny, key) == pytest.approx(getattr(whole, key), rel=1e-12), key
    np.testing.assert_array_equal(tiny.class_correct, whole.class_correct)
    np.testing.assert_array_equal(tiny.reliability.count, whole.reliability.count)


def test_ties_break_toward_lower_index_like_argmax():
    rng = np.random.default_rng(0)
    z = rng.integers(0, 3, size=(500, 8)).astype(np.float32)  # many ties
    y = rng.integers(0, 8, 500)
    got, ref = accumulate(z, y, rows=64, top_k=3), reference(z, y, k=3)
    assert got.top1 == pytest.approx(ref["top1"]) and got.topk == pytest.approx(ref["topk"])
    assert got.top1 == pytest.approx((z.argmax(1) == y).mean())


def test_top5_caps_at_number_of_classes_and_torch_input():
    z = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    acc = metrics.MetricAccumulator(3)
    acc.update(z, y)
    result = acc.result()
    assert result.k == 3 and result.topk == 1.0 and result.top1 == 0.0


def test_ece_on_a_hand_example():
    # Two samples, both with confidence softmax([log 3, 0]) = 0.75 -> one bin; one correct.
    z = np.array([[np.log(3.0), 0.0], [np.log(3.0), 0.0]])
    y = np.array([0, 1])
    result = accumulate(z, y, rows=2)
    assert result.ece == pytest.approx(abs(0.5 - 0.75))
    assert result.nll == pytest.approx(-(np.log(0.75) + np.log(0.25)) / 2)
    used = result.reliability.count > 0
    assert result.reliability.count[used].tolist() == [2]
    assert result.reliability.confidence[used] == pytest.approx([0.75])
    assert result.reliability.accuracy[used] == pytest.approx([0.5])


def test_empty_accumulator_gives_nan():
    result = metrics.MetricAccumulator(4).result()
    assert result.n_samples == 0 and np.isnan(result.top1) and np.isnan(result.ece)


def test_wrong_shapes_are_refused():
    acc = metrics.MetricAccumulator(4)
    with pytest.raises(ValueError):
        acc.update(np.zeros((2, 3)), np.zeros(2, dtype=int))


def test_prior_groups_hand_example():
    q = np.array([0.05, 0.30, 0.10, 0.20, 0.15, 0.02, 0.18])
    groups = metrics.prior_groups(q)
    # ranked: 1 (.30), 3 (.20), 6 (.18), 4 (.15), 2 (.10), 0 (.05), 5 (.02); sizes 2 / 2 / 3
    assert groups["q_head"].tolist() == [1, 3]
    assert groups["q_medium"].tolist() == [6, 4]
    assert groups["q_tail"].tolist() == [2, 0, 5]


def test_prior_groups_sizes_on_imagenet_scale():
    groups = metrics.prior_groups(np.random.default_rng(0).dirichlet(np.ones(1000)))
    assert [len(g) for g in groups.values()] == [333, 333, 334]
    assert sorted(np.concatenate(list(groups.values())).tolist()) == list(range(1000))


def test_shot_groups_boundaries():
    groups = metrics.shot_groups(np.array([0, 19, 20, 100, 101, 500]))
    assert groups["few_shot"].tolist() == [0, 1]
    assert groups["medium_shot"].tolist() == [2, 3]
    assert groups["many_shot"].tolist() == [4, 5]
    for name in ("few_shot", "medium_shot", "many_shot"):
        assert groups[name + "_class_mean"].tolist() == groups[name].tolist()
    moved = metrics.shot_groups(np.array([0, 9, 10, 50, 51]), many_above=50, few_below=10)
    assert moved["few_shot"].tolist() == [0, 1] and moved["medium_shot"].tolist() == [2, 3]
    assert moved["many_shot"].tolist() == [4]


def test_kept_rows_equal_the_reference_per_row_values(data):
    z, y = data
    acc = metrics.MetricAccumulator(z.shape[1], keep_rows=True)
    for start in range(0, len(z), 333):
        acc.update(z[start:start + 333], y[start:start + 333])
    rows, ref = acc.rows(), reference(z, y)
    z64 = z.astype(np.float64)
    np.testing.assert_array_equal(rows.correct, ref["correct"])
    np.testing.assert_allclose(rows.nll, -log_softmax(z64, axis=1)[np.arange(len(y)), y], rtol=1e-12)
    np.testing.assert_allclose(rows.confidence, np.exp(log_softmax(z64, axis=1).max(1)), rtol=1e-12)
    np.testing.assert_array_equal(np.bincount(rows.bin, minlength=15), ref["bin_count"])
    with pytest.raises(ValueError):
        metrics.MetricAccumulator(4).rows()


def test_group_accuracy_pools_samples():
    # class 0: 1/1 correct, class 1: 1/3 correct -> pooled 2/4, not the class mean 2/3
    z = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    y = np.array([0, 1, 1, 1])
    result = accumulate(z, y, rows=4)
    assert result.group_accuracy(np.array([0, 1])) == pytest.approx(0.5)
    assert result.mean_per_class == pytest.approx((1 + 1 / 3) / 2)
    assert np.isnan(dataclasses.replace(result, class_count=np.zeros(2, int)).group_accuracy(np.array([0])))
    summary = metrics.summarise(result, {"q_head": np.array([1])})
    assert summary["q_head"] == pytest.approx(1 / 3) and summary["top1"] == pytest.approx(0.5)


def test_class_mean_groups_average_the_classes():
    # class 0: 1/1 correct, class 1: 1/3, class 2: no test samples -> mean of the tested classes, (1 + 1/3) / 2
    z = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    y = np.array([0, 1, 1, 1])
    result = accumulate(z, y, rows=4)
    groups = {"few_shot": np.array([0, 1, 2]), "few_shot_class_mean": np.array([0, 1, 2]),
              "many_shot_class_mean": np.array([2])}
    summary = metrics.summarise(result, groups)
    assert summary["few_shot"] == pytest.approx(0.5)
    assert summary["few_shot_class_mean"] == pytest.approx((1 + 1 / 3) / 2)
    assert np.isnan(summary["many_shot_class_mean"])
