"""``gla estimate-target`` and ``combine --target-prior``: label shift on files whose posteriors are known.

The data are Gaussian classes ``x | y ~ N(mu_y, I)``: ``s = x mu^T - |mu|^2 / 2`` is then exactly the
log-posterior under a uniform prior, so MLLS's population optimum is the true ``pi_t`` and adding
``log pi_t`` is the Bayes rule of the shifted test set.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_one_line_error
from synth import probability_blocks, write_logits_file

from glacli.base import chunking
from glacli.base.types import Prior
from glacli.core.label_shift import mlls
from glacli.core.prior import estimate_prior
from glacli.io.paramfile import read_prior, write_prior
from glacli.io.rowfile import read_rows

PI_T = np.array([0.5, 0.25, 0.15, 0.07, 0.03])


def gaussian_scores(n: int, proportions: np.ndarray, seed: int, separation: float = 1.5):
    """Uniform-prior log-posteriors and labels drawn with ``proportions``."""
    rng = np.random.default_rng(seed)
    c = len(proportions)
    mu = np.random.default_rng(100).normal(size=(c, 4)) * separation
    labels = rng.choice(c, size=n, p=proportions)
    x = mu[labels] + rng.normal(size=(n, 4))
    return x @ mu.T - 0.5 * (mu ** 2).sum(1), labels


def read_logits(path):
    with read_rows(path, "logits") as f:
        return f.read().astype(np.float64), f.attrs


@pytest.fixture
def shifted(tmp_path):
    scores, labels = gaussian_scores(20000, PI_T, seed=1)
    write_logits_file(tmp_path / "test.h5", scores, labels, combine_method="debiased_zeroshot")
    return tmp_path, scores, labels


def test_mlls_recovers_pi_t_from_a_file_held_or_streamed(gla, shifted, monkeypatch):
    tmp, scores, labels = shifted
    r = gla("estimate-target", tmp / "test.h5", "-o", tmp / "t.h5", "--json")
    assert r.code == 0, r.err
    assert "labels in" in r.err and "ignored" in r.err
    report = json.loads(r.out)
    target = read_prior(tmp / "t.h5")
    assert target.method == "mlls" and target.converged and target.max_moment_gap < 1e-8
    assert report["kkt_gap"] == target.max_moment_gap
    truth = np.bincount(labels, minlength=5) / len(labels)
    assert np.abs(target.prior - truth).sum() < 0.03      # MLE sampling error at N = 20000
    direct = mlls(probability_blocks(scores.astype(np.float32)), 5)
    np.testing.assert_allclose(target.prior, direct.prior, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.exp(target.log_prior), target.prior, rtol=1e-12)

    monkeypatch.setattr(chunking, "IO_BYTES", 4096)        # many blocks, re-read on every pass
    r = gla("estimate-target", tmp / "test.h5", "-o", tmp / "s.h5", "--memory", "1e-6")
    assert r.code == 0 and "every pass reads the file" in r.err, r.err
    np.testing.assert_allclose(read_prior(tmp / "s.h5").prior, target.prior, rtol=0, atol=1e-9)


def test_combine_adds_log_pi_t_and_that_raises_accuracy_on_a_shifted_set(gla, shifted):
    tmp, scores, labels = shifted
    q = np.full(5, 0.2)
    write_prior(tmp / "q.h5", Prior(prior=q, classnames=[f"class {k}" for k in range(5)],
                                    temperature=1.0, method="nll"))
    assert gla("estimate-target", tmp / "test.h5", "-o", tmp / "t.h5").code == 0
    write_logits_file(tmp / "zs.h5", scores, labels)          # the same scores, not yet an output of combine
    common = ("combine", "--zeroshot", tmp / "zs.h5", "--prior", tmp / "q.h5")
    assert gla(*common, "-o", tmp / "uniform.h5").code == 0
    r = gla(*common, "--target-prior", tmp / "t.h5", "-o", tmp / "adapted.h5")
    assert r.code == 0, r.err
    uniform, adapted = read_logits(tmp / "uniform.h5")[0], read_logits(tmp / "adapted.h5")
    pi_t = read_prior(tmp / "t.h5")
    np.testing.assert_allclose(adapted[0], uniform + pi_t.log_prior, rtol=1e-6, atol=1e-5)
    assert adapted[1]["target_prior"] == str(tmp / "t.h5") and pi_t.gla_id in adapted[1]["parents"]
    accuracy = {name: float((v.argmax(1) == labels).mean()) for name, v in
                (("uniform", uniform), ("adapted", adapted[0]), ("oracle", scores + np.log(PI_T)))}
    assert accuracy["adapted"] > accuracy["uniform"] + 0.02
    assert accuracy["adapted"] >= accuracy["oracle"] - 0.005

    (tmp / "pi.json").write_text(json.dumps(PI_T.tolist()))
    assert gla(*common, "--target-prior", tmp / "pi.json", "-o", tmp / "json.h5").code == 0
    np.testing.assert_allclose(read_logits(tmp / "json.h5")[0], uniform + np.log(PI_T), rtol=1e-6, atol=1e-5)


def test_bbse_from_a_balanced_validation_set(gla, shifted, tmp_path):
    tmp, _, labels = shifted
    val_scores, val_labels = gaussian_scores(5000, np.full(5, 0.2), seed=2)
    write_logits_file(tmp / "val.h5", val_scores, val_labels)
    r = gla("estimate-target", tmp / "test.h5", "--method", "bbse", "--val", tmp / "val.h5", "-o", tmp / "b.h5")
    assert r.code == 0, r.err
    target = read_prior(tmp / "b.h5")
    truth = np.bincount(labels, minlength=5) / len(labels)
    assert target.method == "bbse" and np.abs(target.prior - truth).sum() < 0.06

    never = val_scores.copy()
    never[:, 4] -= 1e3                                      # class 4 is never predicted: singular system
    write_logits_file(tmp / "never.h5", never, val_labels)
    assert_one_line_error(gla("estimate-target", tmp / "test.h5", "--method", "bbse", "--val", tmp / "never.h5",
                              "-o", tmp / "x.h5"), "never.h5", "singular")
    assert not (tmp / "x.h5").exists()


def test_bcts_on_validation_logits_undoes_a_temperature_and_class_biases(gla, tmp_path):
    bias = np.array([1.5, 0.0, -0.5, 0.8, -1.0])
    test_scores, test_labels = gaussian_scores(20000, PI_T, seed=3)
    val_scores, val_labels = gaussian_scores(6000, np.array([0.3, 0.3, 0.2, 0.1, 0.1]), seed=4)
    write_logits_file(tmp_path / "test.h5", 2.0 * test_scores + bias)   # over-confident and biased
    write_logits_file(tmp_path / "val.h5", 2.0 * val_scores + bias, val_labels)
    truth = np.bincount(test_labels, minlength=5) / len(test_labels)
    assert gla("estimate-target", tmp_path / "test.h5", "-o", tmp_path / "raw.h5").code == 0
    r = gla("estimate-target", tmp_path / "test.h5", "--calibrate", tmp_path / "val.h5", "-o", tmp_path / "c.h5",
            "--json")
    assert r.code == 0, r.err
    raw_error = np.abs(read_prior(tmp_path / "raw.h5").prior - truth).sum()
    calibrated = read_prior(tmp_path / "c.h5").prior
    assert np.abs(calibrated - truth).sum() < 0.04 < raw_error
    assert json.loads(r.out)["calibration"]["temperature"] == pytest.approx(2.0, rel=0.05)

    fit = estimate_prior(2.0 * val_scores + bias, np.bincount(val_labels) / len(val_labels), "nll", labels=val_labels)
    reference = mlls(probability_blocks((2.0 * test_scores + bias).astype(np.float32) / fit.temperature
                                        - fit.log_prior), 5)
    np.testing.assert_allclose(calibrated, reference.prior, rtol=0, atol=1e-7)


def test_refusals_are_one_line(gla, shifted):
    tmp, scores, labels = shifted
    names = [f"class {k}" for k in range(5)]
    write_prior(tmp / "q.h5", Prior(prior=np.full(5, 0.2), classnames=names, temperature=1.0,
                                    method="nll"))
    assert gla("estimate-target", tmp / "test.h5", "-o", tmp / "t.h5").code == 0
    write_logits_file(tmp / "zs.h5", scores, labels)
    write_logits_file(tmp / "ens.h5", scores, labels, combine_method="ensemble")
    write_logits_file(tmp / "small.h5", scores[:3], labels[:3])
    bad = scores.copy()
    bad[7000, 2] = np.nan
    write_logits_file(tmp / "nan.h5", bad, labels)
    write_prior(tmp / "other.h5", Prior(prior=np.full(5, 0.2), classnames=[f"c{k}" for k in range(5)],
                                        temperature=1.0, method="mlls"))
    cases = [
        (("estimate-target", tmp / "ens.h5", "-o", tmp / "x.h5"), ("ens.h5", "ensemble")),
        (("estimate-target", tmp / "test.h5", "--method", "bbse", "-o", tmp / "x.h5"), ("--val",)),
        (("estimate-target", tmp / "small.h5", "-o", tmp / "x.h5"), ("small.h5", "3 rows for 5 classes")),
        (("estimate-target", tmp / "nan.h5", "-o", tmp / "x.h5"), ("nan.h5", "7000")),
        (("combine", "--zeroshot", tmp / "zs.h5", "--prior", tmp / "q.h5", "--target-prior", tmp / "other.h5",
          "-o", tmp / "x.h5"), ("other.h5", "class")),
        (("estimate-target", tmp / "test.h5", "--concentration", "-1", "-o", tmp / "x.h5"), ("--concentration",)),
        (("combine", "--zeroshot", tmp / "zs.h5", "--prior", tmp / "t.h5", "-o", tmp / "x.h5"),
         ("t.h5", "--target-prior")),
        (("combine", "--zeroshot", tmp / "zs.h5", "--prior", tmp / "q.h5", "--target-prior", tmp / "q.h5",
          "-o", tmp / "x.h5"), ("q.h5", "pre-training prior")),
        (("combine", "--zeroshot", tmp / "zs.h5", "--prior", tmp / "q.h5", "--finetuned", tmp / "zs.h5",
          "--method", "ensemble", "--alpha", "0.5", "--target-prior", tmp / "t.h5", "-o", tmp / "x.h5"),
         ("--target-prior",)),
    ]
    for args, fragments in cases:
        assert_one_line_error(gla(*args), *fragments)
    assert not (tmp / "x.h5").exists()
