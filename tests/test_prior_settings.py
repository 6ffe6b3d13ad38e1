"""Priors and temperatures off balanced sets: q for any class proportions, pi_s at the fine-tuned
scale, the scale bookkeeping between files, log q in prior files, and the solver's fragile corners."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from real import balanced_split, clip_cifar10, write_rows
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp, softmax
from synth import (
    biased_logits,
    class_features,
    classnames,
    write_combine_inputs,
    write_features,
    write_logits_file,
)

from glacli.base.types import Head, Prior
from glacli.core.prior import class_proportions, estimate_prior
from glacli.core.prior.newton import regularised_inverse
from glacli.io.paramfile import read_head, read_prior, write_head
from glacli.io.rowfile import read_rows


def read_logits(path):
    with read_rows(path, "logits") as f:
        return f.read().astype(np.float64), f.attrs


def imbalanced_rows(labels: np.ndarray, largest: int, smallest: int, seed: int) -> np.ndarray:
    """Rows of a long-tailed subset: class k keeps about largest * (smallest/largest)^(k/(C-1)) rows."""
    n_classes = int(labels.max()) + 1
    counts = np.round(largest * (smallest / largest) ** (np.arange(n_classes) / (n_classes - 1))).astype(int)
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), counts[k], replace=False)
                                   for k in range(n_classes)]))


# --------------------------------------------------------------------------- 1. q for any proportions f


def test_q_from_an_imbalanced_set_equals_q_from_a_balanced_one(gla, tmp_path):
    z, y, q_true = biased_logits(3000, 5, seed=11)
    balanced = np.flatnonzero(np.arange(len(y)) % 2 == 0)
    skewed = imbalanced_rows(y, 1400, 70, seed=1)  # 20:1, disjoint in distribution only
    write_logits_file(tmp_path / "bal.h5", z[balanced], y[balanced])
    write_logits_file(tmp_path / "skew.h5", z[skewed], y[skewed])
    assert gla("estimate-prior", tmp_path / "bal.h5", "-o", tmp_path / "qb.h5", "-t", "1").code == 0
    r = gla("estimate-prior", tmp_path / "skew.h5", "-o", tmp_path / "qs.h5", "-t", "1", "--json")
    assert r.code == 0, r.err
    log_bal, log_skew = (read_prior(tmp_path / n).log_prior for n in ("qb.h5", "qs.h5"))
    # q/f (what dividing out nothing gives) would be off by up to log 20 = 3.0; sampling error is ~0.1.
    assert np.abs(log_skew - log_bal).max() < 0.15
    assert np.abs(log_skew - np.log(q_true)).max() < 0.15
    report = json.loads(r.out)
    counts = np.bincount(y[skewed])
    assert report["imbalance"] == pytest.approx(counts.max() / counts.min())
    assert {"mean_per_class_before", "mean_per_class_after", "top1_before", "top1_after"} <= report.keys()


def test_a_target_file_means_the_same_proportions_as_the_labels(gla, tmp_path):
    z, y, _ = biased_logits(400, 4, seed=12)
    rows = imbalanced_rows(y, 300, 30, seed=2)
    f = np.bincount(y[rows]) / len(rows)
    write_logits_file(tmp_path / "zs.h5", z[rows], y[rows])
    write_logits_file(tmp_path / "unlabelled.h5", z[rows], None)
    (tmp_path / "f.json").write_text(json.dumps(f.tolist()))
    assert gla("estimate-prior", tmp_path / "zs.h5", "-o", tmp_path / "a.h5", "-t", "1").code == 0
    assert gla("estimate-prior", tmp_path / "unlabelled.h5", "-o", tmp_path / "b.h5", "-t", "1",
               "--target", tmp_path / "f.json").code == 0
    np.testing.assert_allclose(read_prior(tmp_path / "b.h5").log_prior,
                               read_prior(tmp_path / "a.h5").log_prior, atol=1e-9)


def test_real_clip_cifar10_q_from_a_long_tailed_subset(gla, shared_fixtures, tmp_path):
    z, y, names = clip_cifar10(shared_fixtures)
    held_out, pool = balanced_split(y, 500, seed=0)
    skewed = pool[imbalanced_rows(y[pool], 400, 4, seed=3)]  # 994 rows, 100:1
    small_balanced = pool[balanced_split(y[pool], 50, seed=4)[0]]
    write_rows(tmp_path / "skew.h5", z, y, names, skewed)
    write_rows(tmp_path / "bal.h5", z, y, names, small_balanced)
    for name, temperature in (("skew", "1"), ("skew", "nll"), ("bal", "nll")):
        r = gla("estimate-prior", tmp_path / f"{name}.h5", "-o", tmp_path / f"q_{name}_{temperature}.h5", "-t", temperature)
        assert r.code == 0, r.err
    # float64 reference at T = 1: b minimises the cross-entropy of z - b on the skewed rows; log q = b + log f
    zs, ys = read_logits(tmp_path / "skew.h5")[0], y[skewed]
    f = np.bincount(ys, minlength=10) / len(ys)
    ref = minimize(lambda b: (-log_softmax(zs - b, axis=1)[np.arange(len(ys)), ys].mean(),
                              f - softmax(zs - b, axis=1).mean(0)),
                   np.zeros(10), jac=True, method="BFGS", options={"gtol": 1e-13, "maxiter": 10000})
    log_q_ref = ref.x + np.log(f)
    np.testing.assert_allclose(read_prior(tmp_path / "q_skew_1.h5").prior,
                               np.exp(log_q_ref - logsumexp(log_q_ref)), atol=1e-4)

    def debiased_top1(prior: Prior, log_f: np.ndarray | float = 0.0) -> float:
        adjusted = z[held_out] / prior.temperature - prior.log_prior + log_f
        return float((adjusted.argmax(1) == y[held_out]).mean())

    skew, bal = (read_prior(tmp_path / f"q_{n}_nll.h5") for n in ("skew", "bal"))
    # measured: zero-shot 89.30, q/f (the estimate before this fix) 83.74, q 90.62, q from balanced rows 90.66
    assert abs(debiased_top1(skew) - debiased_top1(bal)) < 0.01
    assert debiased_top1(skew, np.log(f)) < debiased_top1(skew) - 0.03


# --------------------------------------------------------------------------- 2. pi_s at the fine-tuned scale


@pytest.fixture
def files(tmp_path):
    return write_combine_inputs(tmp_path, ft_temperature=2.5)


def test_source_prior_is_removed_at_the_fine_tuned_logits_scale(gla, files):
    r = gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "--finetuned", files / "ft.h5",
            "--source-prior", files / "train.h5", "-o", files / "out.h5")
    assert r.code == 0, r.err
    zs, ft = read_logits(files / "zs.h5")[0], read_logits(files / "ft.h5")[0]
    expected = ft + zs / 1.7 - np.log([0.1, 0.2, 0.3, 0.4]) - np.log([0.1, 0.2, 0.3, 0.4]) / 2.5
    got, attrs = read_logits(files / "out.h5")
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    assert attrs["ft_temperature"] == 2.5


def test_long_tailed_probe_plain_with_source_prior_comes_close_to_the_balanced_probe(gla, tmp_path):
    """600 -> 7 training rows per class; both probes calibrated on a balanced validation set."""
    n_classes, dim = 10, 24
    counts = np.round(600 * (7 / 600) ** (np.arange(n_classes) / (n_classes - 1))).astype(int)
    sets = {"train": class_features(int(counts.sum()), 0.35, seed=100, n_classes=n_classes, dim=dim,
                                    class_probs=counts / counts.sum()),
            "val": class_features(500, 0.35, seed=200, n_classes=n_classes, dim=dim),
            "test": class_features(5000, 0.35, seed=300, n_classes=n_classes, dim=dim)}
    names = classnames(n_classes)
    for name, (x, y) in sets.items():
        write_features(tmp_path / f"{name}.h5", x, y, names)
    means = np.random.default_rng(1000).normal(size=(n_classes, dim))
    weight = 30 * (means / np.linalg.norm(means, axis=1, keepdims=True)
                   + 0.6 * np.random.default_rng(0).normal(size=(n_classes, dim)) / np.sqrt(dim))
    q = np.random.default_rng(7).dirichlet(np.ones(n_classes))
    write_head(tmp_path / "zs_head.h5", Head(weight=weight.astype(np.float32),
                                             bias=np.log(q).astype(np.float32), classnames=names,
                                             head_type="zeroshot"))
    t = tmp_path
    for cmd in (("logits", t / "val.h5", t / "zs_head.h5", "-o", t / "zs_val.h5"),
                ("logits", t / "test.h5", t / "zs_head.h5", "-o", t / "zs_test.h5"),
                ("estimate-prior", t / "zs_val.h5", "-o", t / "q.h5"),
                ("fit", t / "train.h5", "--val", t / "val.h5", "-o", t / "plain.h5"),
                ("fit", t / "train.h5", "--val", t / "val.h5", "--balanced", "-o", t / "balanced.h5"),
                ("logits", t / "test.h5", t / "plain.h5", "-o", t / "ft_plain.h5"),
                ("logits", t / "test.h5", t / "balanced.h5", "-o", t / "ft_balanced.h5"),
                ("combine", "--zeroshot", t / "zs_test.h5", "--prior", t / "q.h5", "--finetuned", t / "ft_plain.h5",
                 "--source-prior", t / "train.h5", "-o", t / "gla_plain.h5"),
                ("combine", "--zeroshot", t / "zs_test.h5", "--prior", t / "q.h5", "--finetuned",
                 t / "ft_balanced.h5", "-o", t / "gla_balanced.h5")):
        r = gla(*cmd)
        assert r.code == 0, (cmd, r.err)
    y = sets["test"][1]
    plain, balanced = (float((read_logits(t / f"gla_{k}.h5")[0].argmax(1) == y).mean()) for k in ("plain", "balanced"))
    # log pi_s subtracted unscaled, as before: (1/T_ft - 1) log pi_s left in, T_ft ~ 3 here
    ft_temperature = read_head(t / "plain.h5").temperature
    log_pi = np.log(counts / counts.sum())
    unscaled = read_logits(t / "gla_plain.h5")[0] + log_pi / ft_temperature - log_pi
    before = float((unscaled.argmax(1) == y).mean())
    # measured: 47.2 (unscaled) -> 50.9 (this fix); balanced probe 51.2
    assert plain > before + 0.02 and abs(plain - balanced) < 0.015


# --------------------------------------------------------------------------- 3. scale bookkeeping


def test_inputs_of_different_temperatures_are_pooled_at_the_raw_scale(gla, tmp_path):
    z, y, _ = biased_logits(60, 5, seed=13)
    write_logits_file(tmp_path / "raw.h5", z, y)
    write_logits_file(tmp_path / "a.h5", z[:150], y[:150])
    write_logits_file(tmp_path / "b.h5", z[150:] / 2.0, y[150:], temperature=2.0)
    assert gla("estimate-prior", tmp_path / "raw.h5", "-o", tmp_path / "q_raw.h5").code == 0
    r = gla("estimate-prior", tmp_path / "a.h5", tmp_path / "b.h5", "-o", tmp_path / "q.h5")
    assert r.code == 0 and "pooled at the raw scale" in r.err
    raw, pooled = read_prior(tmp_path / "q_raw.h5"), read_prior(tmp_path / "q.h5")
    np.testing.assert_allclose(pooled.log_prior, raw.log_prior, atol=1e-5)
    assert pooled.temperature == pytest.approx(raw.temperature, rel=1e-6) and pooled.logits_temperature == 1.0
    # All inputs at one scale: kept there, and the file says which
    write_logits_file(tmp_path / "half.h5", z / 2.0, y, temperature=2.0)
    assert gla("estimate-prior", tmp_path / "half.h5", "-o", tmp_path / "q_half.h5").code == 0
    half = read_prior(tmp_path / "q_half.h5")
    assert half.logits_temperature == 2.0 and half.temperature == pytest.approx(raw.temperature / 2, rel=1e-6)


def test_combine_brings_calibrated_zero_shot_logits_to_the_scale_of_q(gla, tmp_path):
    z, y, _ = biased_logits(60, 5, seed=14)
    write_logits_file(tmp_path / "raw.h5", z, y)
    write_logits_file(tmp_path / "calibrated.h5", z / 3.0, y, temperature=3.0)
    assert gla("estimate-prior", tmp_path / "raw.h5", "-o", tmp_path / "q.h5").code == 0
    assert gla("combine", "--zeroshot", tmp_path / "raw.h5", "--prior", tmp_path / "q.h5",
               "-o", tmp_path / "from_raw.h5").code == 0
    r = gla("combine", "--zeroshot", tmp_path / "calibrated.h5", "--prior", tmp_path / "q.h5",
            "-o", tmp_path / "from_calibrated.h5")
    assert r.code == 0 and "converted exactly" in r.err
    np.testing.assert_allclose(read_logits(tmp_path / "from_calibrated.h5")[0],
                               read_logits(tmp_path / "from_raw.h5")[0], rtol=1e-5, atol=1e-5)


def test_prior_names_its_zero_shot_head_and_combine_warns_on_another(gla, tmp_path):
    x, y = class_features(200, 1.0, seed=15)
    write_features(tmp_path / "f.h5", x, y)
    rng = np.random.default_rng(0)
    for name in ("head_a", "head_b"):
        write_head(tmp_path / f"{name}.h5", Head(
            weight=(20 * rng.normal(size=(5, x.shape[1]))).astype(np.float32), bias=np.zeros(5, np.float32),
            classnames=classnames(5), head_type="zeroshot", attrs={"model": "ViT-B-32", "templates": "simple"}))
        assert gla("logits", tmp_path / "f.h5", tmp_path / f"{name}.h5", "-o", tmp_path / f"zs_{name}.h5").code == 0
    assert gla("estimate-prior", tmp_path / "zs_head_a.h5", "-o", tmp_path / "q.h5", "-t", "1").code == 0
    prior = read_prior(tmp_path / "q.h5")
    assert prior.attrs["zeroshot_head_id"] == read_head(tmp_path / "head_a.h5").gla_id
    assert prior.attrs["zeroshot_model"] == "ViT-B-32" and prior.attrs["zeroshot_templates"] == "simple"
    same = gla("combine", "--zeroshot", tmp_path / "zs_head_a.h5", "--prior", tmp_path / "q.h5", "-o", tmp_path / "a.h5")
    other = gla("combine", "--zeroshot", tmp_path / "zs_head_b.h5", "--prior", tmp_path / "q.h5", "-o", tmp_path / "b.h5")
    assert same.code == other.code == 0
    assert "another zero-shot head" not in same.err
    assert "warning:" in other.err and "another zero-shot head" in other.err


def test_info_shows_kind_shape_scales_and_parents(gla, tmp_path):
    z, y, _ = biased_logits(20, 3, seed=16)
    write_logits_file(tmp_path / "zs.h5", z / 2, y, temperature=2.0)
    assert gla("estimate-prior", tmp_path / "zs.h5", "-o", tmp_path / "q.h5", "-t", "1").code == 0
    r = gla("info", tmp_path / "q.h5", "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["kind"] == "prior" and info["shape"] == [3] and info["n_classes"] == 3
    assert info["attributes"]["logits_temperature"] == 2.0 and info["attributes"]["temperature"] == 1.0
    assert info["attributes"]["parents"] == [read_rows(tmp_path / "zs.h5", "logits").gla_id]
    table = gla("info", tmp_path / "zs.h5")
    assert table.code == 0 and "logits" in table.out and "60 x 3" in table.out and "temperature" in table.out
    assert_one_line_error(gla("info", tmp_path / "missing.h5"), "missing.h5", "no such file")


# --------------------------------------------------------------------------- 4. log q in prior files


def test_a_class_below_exp_minus_745_is_written_and_used_in_log_space(gla, tmp_path):
    z, y, _ = biased_logits(50, 4, seed=17)
    z[:, 2] -= 1e6
    write_logits_file(tmp_path / "zs.h5", z, y)
    r = gla("estimate-prior", tmp_path / "zs.h5", "-o", tmp_path / "q.h5", "-t", "1")
    assert r.code == 0, r.err
    prior = read_prior(tmp_path / "q.h5")
    assert prior.prior[2] == 0.0 and prior.log_prior[2] < -9e5 and np.isfinite(prior.log_prior).all()
    assert prior.converged
    assert gla("combine", "--zeroshot", tmp_path / "zs.h5", "--prior", tmp_path / "q.h5", "-o", tmp_path / "d.h5").code == 0
    debiased = read_logits(tmp_path / "d.h5")[0]
    assert np.isfinite(debiased).all()
    assert 0.1 < float((debiased.argmax(1) == 2).mean()) < 0.4  # class 2 is predicted again


# --------------------------------------------------------------------------- 5. fragile corners


def test_non_finite_logits_are_refused_by_the_solver():
    z, _, _ = biased_logits(10, 3, seed=18)
    z[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        estimate_prior(torch.tensor(z), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_the_ridge_retries_are_capped():
    with pytest.raises(ValueError, match="not positive definite"):
        regularised_inverse(np.array([[1.0, 0.0], [0.0, np.nan]]))


@pytest.mark.parametrize("temperature", [1.0, "nll"])
def test_a_class_far_below_the_rest_converges(temperature):
    z, y, _ = biased_logits(200, 20, seed=3)
    z[:, 3] -= 1e6
    fit = estimate_prior(torch.tensor(z, dtype=torch.float32), class_proportions(torch.tensor(y), 20), temperature,
                         labels=torch.tensor(y))
    assert fit.converged and fit.max_moment_gap < 1e-8 and fit.iterations < 20


def test_near_one_hot_logits_converge_with_nll_and_name_the_classes_at_a_fixed_t(gla, tmp_path):
    z, y, _ = biased_logits(200, 20, seed=3)
    fit = estimate_prior(torch.tensor(z * 1000, dtype=torch.float32), class_proportions(torch.tensor(y), 20), "nll",
                         labels=torch.tensor(y))
    assert fit.converged and fit.temperature == pytest.approx(1000, rel=0.1)
    write_logits_file(tmp_path / "zs.h5", z * 1000, y)
    r = gla("estimate-prior", tmp_path / "zs.h5", "-o", tmp_path / "q.h5", "-t", "1", "--max-iter", "20")
    assert r.code == 0
    assert "not converged" in r.err and "pin q down poorly for 'class" in r.err and "--temperature nll" in r.err


def test_stored_objective_is_the_mean_cross_entropy_and_the_gap_is_the_moment_gap(gla, tmp_path):
    z, y, _ = biased_logits(80, 6, seed=19, temperature=1.5)
    z = read_logits(write_logits_file(tmp_path / "zs.h5", z, y))[0]  # the float32 values the solver sees
    for temperature in ("1", "nll"):
        assert gla("estimate-prior", tmp_path / "zs.h5", "-o", tmp_path / "q.h5", "-t", temperature).code == 0
        prior = read_prior(tmp_path / "q.h5")
        f = np.bincount(y, minlength=6) / len(y)
        s = z / prior.temperature - prior.log_prior + np.log(f)
        cross_entropy = -log_softmax(s, axis=1)[np.arange(len(y)), y].mean()
        assert prior.attrs["objective"] == pytest.approx(cross_entropy, abs=1e-10)
        assert prior.max_moment_gap == pytest.approx(np.abs(softmax(s, axis=1).mean(0) - f).max(), abs=1e-12)
        assert ("temperature_gradient" in prior.attrs) == (temperature == "nll")


def test_ensemble_zero_shot_scale_is_explicit_and_recorded(gla, files):
    base = ("combine", "--zeroshot", files / "zs.h5", "--finetuned", files / "ft.h5", "--method", "ensemble",
            "--alpha", "0.25")
    assert_one_line_error(gla(*base, "-o", files / "e.h5"), "--zs-temperature 1")
    assert gla(*base, "--zs-temperature", "1", "-o", files / "e1.h5").code == 0
    assert gla(*base, "--prior", files / "q.h5", "-o", files / "eq.h5").code == 0
    zs, ft = read_logits(files / "zs.h5")[0], read_logits(files / "ft.h5")[0]
    (e1, a1), (eq, aq) = read_logits(files / "e1.h5"), read_logits(files / "eq.h5")
    np.testing.assert_allclose(e1, 0.75 * zs + 0.25 * ft, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(eq, 0.75 * zs / 1.7 + 0.25 * ft, rtol=1e-6, atol=1e-5)
    assert a1["zs_temperature"] == 1.0 and aq["zs_temperature"] == pytest.approx(1.7)
