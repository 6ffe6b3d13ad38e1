"""The Python API (``import glacli as gla``): each function equals the command on the same data, equals
a float64 reference on synthetic data, and refuses bad input with the CLI's one-line messages (what
importing the package loads: tests/test_architecture.py)."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, logsumexp
from sklearn.linear_model import LogisticRegression
from synth import biased_logits, class_features, classnames, write_combine_inputs, write_features, write_logits_file

import glacli as gla
from glacli.io.paramfile import read_prior

C = 6


@pytest.fixture
def gla_cli(gla):
    """conftest's in-process ``gla`` runner, renamed: here ``gla`` is the package."""
    return gla


@pytest.fixture(scope="module")
def data():
    """Zero-shot logits at T = 1.8 with a known prior, on an imbalanced estimation set (every class present)."""
    z, y, q = biased_logits(120, C, seed=3, temperature=1.8)
    keep = np.concatenate([np.flatnonzero(y == k)[: 20 + 15 * k] for k in range(C)])
    keep.sort()
    return z[keep].astype(np.float32), y[keep], q


def prior_reference(z: np.ndarray, f: np.ndarray, temperature: float) -> np.ndarray:
    """``log q`` at a fixed T in float64 by scipy's L-BFGS on the convex objective
    ``mean_i logsumexp(z_i / T - b) + f . b`` (b = log q - log f), independent of the solver."""
    s = z.astype(np.float64) / temperature

    def objective(b):
        p = np.exp(log_softmax(s - b, axis=1))
        return logsumexp(s - b, axis=1).mean() + f @ b, f - p.mean(0)

    b = minimize(objective, np.zeros(len(f)), jac=True, method="L-BFGS-B",
                 options={"gtol": 1e-13, "ftol": 1e-16, "maxiter": 10000}).x
    log_q = b + np.log(f)
    return log_q - logsumexp(log_q)


def nll_reference(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """T and ``log q`` by joint maximum likelihood in float64 (scipy over ``(beta, b)``)."""
    s = z.astype(np.float64)
    f = np.bincount(y, minlength=s.shape[1]) / len(y)

    def objective(theta):
        beta, b = theta[0], theta[1:]
        logits = beta * s - b
        p = np.exp(log_softmax(logits, axis=1))
        loss = logsumexp(logits, axis=1).mean() + f @ b - beta * s[np.arange(len(y)), y].mean()
        return loss, np.concatenate([[(p * s).sum(1).mean() - s[np.arange(len(y)), y].mean()], f - p.mean(0)])

    theta = minimize(objective, np.concatenate([[1.0], np.zeros(s.shape[1])]), jac=True, method="L-BFGS-B",
                     options={"gtol": 1e-12, "ftol": 1e-16, "maxiter": 10000}).x
    log_q = theta[1:] + np.log(f)
    return 1.0 / theta[0], log_q - logsumexp(log_q)


# --------------------------------------------------------------------------- the package


def test_all_names_are_exported_documented_and_nothing_else():
    from glacli import api

    assert sorted(gla.__all__) == sorted(api.__all__)
    for name in gla.__all__:
        obj = getattr(gla, name)
        assert obj is getattr(api, name)
        assert obj.__doc__ and len(obj.__doc__) > 40, name
    for name in ("estimate_prior", "combine", "debias", "fit_temperature", "estimate_target", "fit_probe",
                 "evaluate"):
        doc = getattr(gla, name).__doc__
        assert "Parameters:" in doc and "Returns:" in doc and "[" in doc, name  # shapes are stated
    with pytest.raises(AttributeError):
        gla.no_such_function  # noqa: B018
    assert issubclass(gla.GlaInputError, ValueError)


def test_the_package_root_holds_only_init_main_and_the_api():
    assert sorted(p.name for p in (ROOT / "glacli").glob("*.py")) == ["__init__.py", "__main__.py", "api.py"]


# --------------------------------------------------------------------------- estimate_prior


def test_estimate_prior_equals_the_command_in_every_mode(gla_cli, data, tmp_path):
    z, y, _ = data
    path = write_logits_file(tmp_path / "zs.h5", z, y)
    f = np.bincount(y, minlength=C) / len(y)
    cases = [
        (["--temperature", "nll"], dict(temperature="nll")),
        (["--temperature", "confidence"], dict(temperature="confidence")),
        (["--temperature", "2"], dict(temperature=2.0)),
        (["--temperature", "1.5", "--target", "uniform"], dict(temperature=1.5, target="uniform")),
    ]
    for options, kwargs in cases:
        out = tmp_path / f"q{len(list(tmp_path.iterdir()))}.h5"
        assert gla_cli("estimate-prior", path, "-o", out, *options).code == 0
        written = read_prior(out)
        labels = None if kwargs.get("target") == "uniform" else y
        fit = gla.estimate_prior(z, labels, **kwargs)
        assert fit.converged and fit.moment_gap < 1e-8
        np.testing.assert_allclose(fit.log_prior, written.log_prior, rtol=0, atol=1e-6, err_msg=str(options))
        assert fit.temperature == pytest.approx(written.temperature, rel=1e-6)
        assert fit.iterations >= 1 and fit.prior.sum() == pytest.approx(1.0)
    # a file of proportions is the proportions argument
    np.save(tmp_path / "f.npy", f)
    assert gla_cli("estimate-prior", path, "-o", tmp_path / "qf.h5", "-t", "1",
                   "--target", tmp_path / "f.npy").code == 0
    np.testing.assert_allclose(gla.estimate_prior(z, temperature=1.0, proportions=f).log_prior,
                               read_prior(tmp_path / "qf.h5").log_prior, rtol=0, atol=1e-6)


def test_estimate_prior_equals_float64_references(data):
    z, y, q_true = data
    f = np.bincount(y, minlength=C) / len(y)
    # fixed T on labelled (imbalanced) rows: log q = b + log f, so the labels' imbalance is corrected
    fit = gla.estimate_prior(z, y, temperature=1.8)
    np.testing.assert_allclose(fit.log_prior, prior_reference(z, f, 1.8), rtol=0, atol=1e-6)
    # balanced proportions without labels
    fit = gla.estimate_prior(z, temperature=1.8, target="uniform")
    np.testing.assert_allclose(fit.log_prior, prior_reference(z, np.full(C, 1 / C), 1.8), rtol=0, atol=1e-6)
    # joint maximum likelihood of T and q
    t_ref, log_q_ref = nll_reference(z, y)
    fit = gla.estimate_prior(z, y)
    assert fit.temperature == pytest.approx(t_ref, rel=1e-5)
    np.testing.assert_allclose(fit.log_prior, log_q_ref, rtol=0, atol=1e-5)
    # and it finds the prior the data were made with, within sampling error
    assert np.abs(fit.prior - q_true).max() < 0.05
    assert fit.temperature == pytest.approx(1.8, rel=0.1)


def test_estimate_prior_takes_torch_tensors(data):
    torch = pytest.importorskip("torch")
    z, y, _ = data
    a, b = gla.estimate_prior(z, y), gla.estimate_prior(torch.from_numpy(z), torch.from_numpy(y))
    np.testing.assert_allclose(a.log_prior, b.log_prior, rtol=0, atol=1e-6)
    assert a.temperature == pytest.approx(b.temperature, rel=1e-6)


@pytest.mark.parametrize("call, fragments", [
    (lambda z, y: gla.estimate_prior(z), ["labels are needed for target 'labels'", "target='uniform'"]),
    (lambda z, y: gla.estimate_prior(z, y[:-1]), ["labels:", "one per row"]),
    (lambda z, y: gla.estimate_prior(z, np.where(y == 2, 0, y)), ["class '2' has no rows"]),
    (lambda z, y: gla.estimate_prior(z, y + 1), ["labels:", "out of range for 6 classes"]),
    (lambda z, y: gla.estimate_prior(np.where(np.arange(len(z))[:, None] == 7, np.nan, z), y),
     ["logits:", "NaN", "row 7"]),
    (lambda z, y: gla.estimate_prior(z[0], y), ["logits:", "2-d"]),
    (lambda z, y: gla.estimate_prior(z, y, temperature="mle"), ["temperature: expected one of nll, confidence"]),
    (lambda z, y: gla.estimate_prior(z, y, temperature=-1.0), ["temperature: expected a positive number"]),
    (lambda z, y: gla.estimate_prior(z, target="uniform"), ["temperature 'nll'", "target 'labels'"]),
    (lambda z, y: gla.estimate_prior(z, y, temperature=1.0, proportions=[1, 2]), ["holds 2 proportions"]),
    (lambda z, y: gla.estimate_prior(z, y, temperature=1.0, proportions=np.arange(C)),
     ["proportions entry 0 is 0"]),
])
def test_estimate_prior_refuses_bad_input_in_one_line(data, call, fragments):
    z, y, _ = data
    with pytest.raises(gla.GlaInputError) as error:
        call(z, y)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --------------------------------------------------------------------------- combine and debias


def test_combine_equals_the_command_and_the_formula(gla_cli, tmp_path):
    folder = write_combine_inputs(tmp_path, ft_temperature=2.5)
    zs, ft, q = gla.load(folder / "zs.h5"), gla.load(folder / "ft.h5"), gla.load(folder / "q.h5")
    train_labels = gla.load(folder / "train.h5").labels
    pi_s = np.bincount(train_labels) / len(train_labels)
    pi_t = np.array([0.4, 0.3, 0.2, 0.1])
    (folder / "pi_t.json").write_text(json.dumps(pi_t.tolist()))
    runs = {
        "gla": (["--finetuned", folder / "ft.h5", "--source-prior", folder / "train.h5",
                 "--target-prior", folder / "pi_t.json"],
                dict(finetuned=ft, source_prior=pi_s, target_prior=pi_t)),
        "debiased": ([], {}),
        "ensemble": (["--finetuned", folder / "ft.h5", "--method", "ensemble", "--alpha", "0.3"],
                     dict(finetuned=ft, method="ensemble", alpha=0.3)),
    }
    for name, (options, kwargs) in runs.items():
        assert gla_cli("combine", "--zeroshot", folder / "zs.h5", "--prior", folder / "q.h5", *options,
                       "-o", folder / f"{name}.h5").code == 0
        np.testing.assert_allclose(gla.combine(zs, q, **kwargs), gla.load(folder / f"{name}.h5").values,
                                   rtol=0, atol=1e-6, err_msg=name)
    # float64 reference: ft (T_ft 2.5 applied) + zs / T_zs - log q - log(pi_s) / T_ft + log pi_t
    z64, f64 = zs.values.astype(np.float64), ft.values.astype(np.float64)
    reference = f64 + z64 / 1.7 - np.log(q.prior) - np.log(pi_s) / 2.5 + np.log(pi_t)
    out = gla.combine(zs.values, q.prior, ft.values, zeroshot_temperature=1.7, finetuned_temperature=2.5,
                      source_prior=pi_s, target_prior=pi_t)
    np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gla.debias(zs.values, q), z64 / 1.7 - np.log(q.prior), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gla.combine(zs.values, q, ft.values, method="ensemble", alpha=0.3),
                               0.7 * z64 / 1.7 + 0.3 * f64, rtol=1e-6, atol=1e-6)


def test_combine_brings_records_to_the_scale_q_was_fitted_on(data):
    z, y, _ = data
    fit = gla.estimate_prior(z, y)
    prior = gla.Prior(None, classnames(C), fit.temperature, "nll", log_prior=fit.log_prior, logits_temperature=1.0)
    record = gla.RowRecord("logits", z / np.float32(4.0), y, [str(i) for i in range(len(y))], classnames(C), 4.0)
    np.testing.assert_allclose(gla.combine(record, prior), gla.debias(z, fit), rtol=1e-6, atol=1e-5)
    # an explicit temperature divides the values as given, as gla combine --zs-temperature does
    np.testing.assert_allclose(gla.combine(record, prior, zeroshot_temperature=2.0),
                               record.values / 2.0 - fit.log_prior, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(prior=np.full(C, 1 / C)), ["zeroshot_temperature is needed"]),
    (dict(prior=np.full(C, 0.1)), ["prior sums to 0.6, not 1"]),
    (dict(prior=np.full(C + 1, 1 / (C + 1)), zeroshot_temperature=1.0), ["prior:", "has 7 classes"]),
    (dict(method="ensemble"), ["method 'ensemble' needs finetuned"]),
    (dict(method="mean"), ["method: expected one of gla, ensemble"]),
    (dict(source_prior=np.full(C, 1 / C)), ["source_prior needs finetuned"]),
    (dict(finetuned=np.zeros((3, C))), ["finetuned:", "shape"]),
])
def test_combine_refuses_bad_input_in_one_line(data, kwargs, fragments):
    z, y, _ = data
    kwargs.setdefault("prior", gla.estimate_prior(z, y))
    with pytest.raises(gla.GlaInputError) as error:
        gla.combine(z, **kwargs)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_a_test_label_distribution_is_no_prior_q(data):
    z, y, _ = data
    target = gla.estimate_target(gla.debias(z, gla.estimate_prior(z, y)))
    with pytest.raises(gla.GlaInputError, match="test label distribution"):
        gla.debias(z, target, temperature=1.0)


# --------------------------------------------------------------------------- temperature, label shift


def test_fit_temperature_equals_the_command_and_a_float64_search(gla_cli, data, tmp_path):
    z, y, _ = data
    write_logits_file(tmp_path / "val.h5", z, y)
    for method in ("nll", "confidence"):
        r = gla_cli("calibrate", tmp_path / "val.h5", "--val", tmp_path / "val.h5", "--method", method,
                    "-o", tmp_path / f"{method}.h5", "--json")
        assert r.code == 0
        assert gla.fit_temperature(z, y, method=method) == pytest.approx(json.loads(r.out)["temperature"], rel=1e-9)
    z64 = z.astype(np.float64)
    nll = lambda log_t: -log_softmax(z64 / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean()  # noqa: E731
    t_ref = np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded", options={"xatol": 1e-10}).x)
    assert gla.fit_temperature(z, y) == pytest.approx(t_ref, rel=1e-6)
    accuracy = (z.argmax(1) == y).mean()
    t = gla.fit_temperature(z, y, method="confidence")
    assert np.exp(log_softmax(z64 / t, axis=1).max(1)).mean() == pytest.approx(accuracy, abs=1e-9)


def test_estimate_target_equals_the_command_and_plain_em(gla_cli, tmp_path):
    rng = np.random.default_rng(5)
    pi_t = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    y = rng.choice(C, size=3000, p=pi_t)
    means = rng.normal(size=(C, 4)) * 1.5

    def log_likelihoods(labels):  # Gaussian classes: their log-likelihoods are calibrated for a uniform prior
        x = means[labels] + rng.normal(size=(len(labels), 4))
        return (-0.5 * ((x[:, None, :] - means[None]) ** 2).sum(2)).astype(np.float32)

    scores = log_likelihoods(y)
    val_y = np.repeat(np.arange(C), 100)
    val = log_likelihoods(val_y)
    write_logits_file(tmp_path / "test.h5", scores)
    write_logits_file(tmp_path / "val.h5", val, val_y)
    for method, options, kwargs in [("mlls", [], {}),
                                    ("bbse", ["--val", tmp_path / "val.h5"], dict(val=(val, val_y))),
                                    ("mlls", ["--calibrate", tmp_path / "val.h5"], dict(calibrate=(val, val_y)))]:
        out = tmp_path / f"{method}{len(options)}.h5"
        assert gla_cli("estimate-target", tmp_path / "test.h5", "--method", method, *options, "-o", out).code == 0
        fit = gla.estimate_target(scores, method=method, **kwargs)
        np.testing.assert_allclose(fit.log_prior, read_prior(out).log_prior, rtol=0, atol=1e-6)
    # MLE (concentration 0) against plain EM in float64, run to a fixed point
    p = np.exp(log_softmax(scores.astype(np.float64), axis=1))
    w = np.full(C, 1 / C)
    for _ in range(20000):
        w = w * (p / (p @ w)[:, None]).mean(0)
    fit = gla.estimate_target(scores, concentration=0.0, tol=1e-12)
    np.testing.assert_allclose(fit.prior, w, rtol=0, atol=1e-6)
    assert np.abs(fit.prior - pi_t).max() < 0.05


# --------------------------------------------------------------------------- the probe


def test_fit_probe_equals_the_command_and_scikit_learn(gla_cli, tmp_path):
    x, y = class_features(300, 1.0, seed=0)
    xv, yv = class_features(200, 1.0, seed=1)
    write_features(tmp_path / "train.h5", x, y)
    write_features(tmp_path / "val.h5", xv, yv)
    wd = 1e-3
    assert gla_cli("fit", tmp_path / "train.h5", "--wd", wd, "--float64", "--tol", 1e-8, "--device", "cpu",
                   "-o", tmp_path / "head.h5").code == 0
    head = gla.fit_probe(x, y, wd=wd, float64=True, tol=1e-8)
    written = gla.load(tmp_path / "head.h5")
    np.testing.assert_allclose(head.weight, written.weight, rtol=0, atol=1e-5)
    np.testing.assert_allclose(head.logits(xv), written.logits(xv), rtol=0, atol=1e-5)
    # scikit-learn's LogisticRegression(C) solves the same problem at wd = 1 / (C N)
    reference = LogisticRegression(C=1 / (wd * len(y)), tol=1e-12, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(head.logits(xv), reference.decision_function(xv) - reference.intercept_.mean()
                               + head.bias.mean(), rtol=0, atol=1e-3)
    # with a validation set the penalty is searched and the temperature calibrated, as gla fit does
    assert gla_cli("fit", tmp_path / "train.h5", "--val", tmp_path / "val.h5", "--device", "cpu",
                   "-o", tmp_path / "searched.h5").code == 0
    searched, written = gla.fit_probe(x, y, val=(xv, yv)), gla.load(tmp_path / "searched.h5")
    assert searched.attrs["wd"] == pytest.approx(written.attrs["wd"])
    assert searched.temperature == pytest.approx(written.temperature, rel=1e-4)
    assert (searched.logits(xv).argmax(1) == written.logits(xv).argmax(1)).mean() > 0.99


def test_gla_fit_writes_the_head_gla_fit_probe_returns(gla_cli, tmp_path):
    """The command is the API plus files: the penalty search, the balanced loss and the calibrated
    temperature give the same head (to 1e-6) and the same recorded fit, held in memory or streamed."""
    x, y = class_features(90, 0.6, seed=4)
    xv, yv = class_features(60, 0.6, seed=5)
    write_features(tmp_path / "train.h5", x, y)
    write_features(tmp_path / "val.h5", xv, yv)
    head = gla.fit_probe(x, y, val=(xv, yv), balanced=True, classnames=classnames(5))
    for memory in ("16", "1e-9"):  # GiB: held, then streamed from disk on every pass
        assert gla_cli("fit", tmp_path / "train.h5", "--val", tmp_path / "val.h5", "--balanced", "--device", "cpu",
                       "--memory", memory, "-o", tmp_path / f"{memory}.h5").code == 0
        written = gla.load(tmp_path / f"{memory}.h5")
        assert written.head_type == head.head_type == "linear" and written.classnames == head.classnames
        np.testing.assert_allclose(written.weight, head.weight, rtol=0, atol=1e-6)
        np.testing.assert_allclose(written.bias, head.bias, rtol=0, atol=1e-6)
        assert written.temperature == pytest.approx(head.temperature, rel=1e-6)
        for key, value in head.attrs.items():
            exact = key in ("wd", "n_rows", "balanced", "iterations", "converged")
            assert written.attrs[key] == (value if exact else pytest.approx(value, rel=1e-5)), key


def test_the_anchored_probe_equals_the_command(gla_cli, tmp_path):
    x, y = class_features(100, 1.0, seed=2)
    write_features(tmp_path / "train.h5", x, y)
    means = np.random.default_rng(1000).normal(size=(5, x.shape[1]))  # class_features' class means
    zero_shot = gla.Head((50 * means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32),
                         np.zeros(5, np.float32), classnames(5), "zeroshot")
    gla.save(zero_shot, tmp_path / "zs_head.h5")
    assert gla_cli("fit", tmp_path / "train.h5", "--anchor", tmp_path / "zs_head.h5", "--wd", 1e-2, "--float64",
                   "--tol", 1e-8, "--device", "cpu", "-o", tmp_path / "anchored.h5").code == 0
    head, written = gla.fit_probe(x, y, anchor=zero_shot, wd=1e-2, float64=True, tol=1e-8), gla.load(
        tmp_path / "anchored.h5")
    assert head.head_type == written.head_type == "anchored" and head.classnames == written.classnames
    np.testing.assert_allclose(head.logits(x), written.logits(x), rtol=0, atol=1e-5)
    assert head.attrs["anchor_t_zs"] == pytest.approx(written.attrs["anchor_t_zs"], rel=1e-9)


def test_fit_probe_refuses_a_missing_penalty_and_an_absent_class():
    x, y = class_features(50, 1.0, seed=0)
    with pytest.raises(gla.GlaInputError, match="give val to choose the penalty"):
        gla.fit_probe(x, y)
    with pytest.raises(gla.GlaInputError, match="class '1' has no rows"):
        gla.fit_probe(x, np.where(y == 1, 0, y), wd=1e-3, classnames=[str(k) for k in range(5)])


# --------------------------------------------------------------------------- evaluate


def test_evaluate_gives_the_commands_document(gla_cli, data, tmp_path):
    z, y, _ = data
    fit = gla.estimate_prior(z, y)
    debiased = gla.debias(z, fit)
    write_logits_file(tmp_path / "zs.h5", z, y)
    write_logits_file(tmp_path / "deb.h5", debiased, y)
    gla.save(gla.Prior(None, classnames(C), fit.temperature, "nll", log_prior=fit.log_prior), tmp_path / "q.h5")
    r = gla_cli("evaluate", tmp_path / "zs.h5", tmp_path / "deb.h5", "--name", "zs", "--name", "deb",
                "--prior", tmp_path / "q.h5", "--bootstrap", 300, "--baseline", "zs", "--json")
    assert r.code == 0, r.err
    cli = json.loads(r.out)
    ours = gla.evaluate({"zs": z, "deb": debiased}, y, prior=fit, bootstrap=300, baseline="zs",
                        classnames=classnames(C))
    assert ours == json.loads(json.dumps(ours))  # plain JSON values
    assert set(ours) == set(cli)
    for mine, theirs in zip(ours["results"], cli["results"]):
        assert mine["metrics"] == theirs["metrics"]
        assert mine["ci"] == theirs["ci"]
        assert mine.get("vs_baseline") == theirs.get("vs_baseline")
        assert mine["per_class"] == theirs["per_class"]
    assert ours["groups"] == cli["groups"] and ours["bootstrap"] == cli["bootstrap"]
    # float64 reference of the scalar metrics
    z64 = debiased.astype(np.float64)
    metrics = ours["results"][1]["metrics"]
    assert metrics["top1"] == pytest.approx((z64.argmax(1) == y).mean(), abs=1e-12)
    assert metrics["nll"] == pytest.approx(-log_softmax(z64, axis=1)[np.arange(len(y)), y].mean(), rel=1e-6)
    per_class = [(z64.argmax(1)[y == k] == k).mean() for k in range(C)]
    assert metrics["mean_per_class"] == pytest.approx(np.mean(per_class), abs=1e-12)
    low, high = ours["results"][1]["ci"]["top1"]
    assert low < metrics["top1"] < high


def test_evaluate_json_out_is_the_api_document_with_the_files_filled_in(gla_cli, data, tmp_path):
    """``gla evaluate --json-out`` is ``gla.evaluate``'s dict on the same rows: every group (q, shots),
    the target prior's error, the plain bootstrap and the tags; only where each input came from differs."""
    z, y, _ = data
    fit = gla.estimate_prior(z, y)
    debiased = gla.debias(z, fit)
    train_y = np.repeat(np.arange(C), [150, 120, 60, 30, 10, 5])
    pi_t = np.bincount(y, minlength=C) / len(y) * 0.9 + 0.1 / C
    write_logits_file(tmp_path / "zs.h5", z, y)
    write_logits_file(tmp_path / "deb.h5", debiased, y)
    write_features(tmp_path / "train.h5", np.random.default_rng(0).normal(size=(len(train_y), 4)), train_y,
                   classnames(C))
    gla.save(gla.Prior(None, classnames(C), fit.temperature, "nll", log_prior=fit.log_prior), tmp_path / "q.h5")
    gla.save(gla.Prior(pi_t, classnames(C), 1.0, "mlls"), tmp_path / "pi_t.h5")
    r = gla_cli("evaluate", tmp_path / "zs.h5", tmp_path / "deb.h5", "--name", "zs", "--name", "deb",
                "--prior", tmp_path / "q.h5", "--train", tmp_path / "train.h5", "--many-shot-above", 100,
                "--few-shot-below", 20, "--target-prior", tmp_path / "pi_t.h5", "--bootstrap", 200, "--plain",
                "--baseline", "deb", "--tag", "shots=16", "--device", "cpu", "--json-out", tmp_path / "r.json")
    assert r.code == 0, r.err
    cli = json.loads((tmp_path / "r.json").read_text())
    target = gla.load(tmp_path / "pi_t.h5")
    ours = gla.evaluate({"zs": z, "deb": debiased}, y, prior=gla.load(tmp_path / "q.h5"),
                        train_counts=np.bincount(train_y, minlength=C), target_prior=target, bootstrap=200,
                        stratified=False, baseline="deb", classnames=classnames(C), tags={"shots": 16})
    assert ours["groups"]["many_shot"]["classes"] == [0, 1] and ours["groups"]["few_shot"]["classes"] == [4, 5]
    true = np.bincount(y, minlength=C) / len(y)
    assert ours["target_prior"]["l1"] == pytest.approx(np.abs(pi_t - true).sum(), rel=1e-12)
    assert ours["label_shift"] and ours["bootstrap"]["sampling"] == "plain" and ours["tags"] == {"shots": 16}
    for key, file in (("prior", "q.h5"), ("train", "train.h5"), ("target_prior", "pi_t.h5")):
        assert cli[key].pop("path") == str(tmp_path / file) and ours[key].pop("path") is None
    assert ours["target_prior"]["gla_id"] == target.gla_id != ""  # a loaded record keeps its id
    assert cli["train"].pop("gla_id") and ours["train"].pop("gla_id") == ""  # counts carry none
    for mine, theirs, name in zip(ours["results"], cli["results"], ("zs", "deb")):
        assert theirs.pop("path") == str(tmp_path / f"{name}.h5") and theirs.pop("gla_id") and \
            mine.pop("path") is None and mine.pop("gla_id") == ""
    cli.pop("created"), ours.pop("created")
    assert ours == cli


def assert_same_document(a, b, where="document"):
    """Equal JSON values, floats to 1e-12 relative (sums taken in other blocks round differently)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same_document(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_document(x, y, f"{where}[{i}]")
    else:
        assert a == (pytest.approx(b, rel=1e-12) if isinstance(a, float) else b), where


def test_evaluate_reports_progress_and_reads_streamed_rows(data):
    """A ``LogitSource`` (how ``gla evaluate`` streams its files) gives the document of the array, and the
    progress counts cover every row and every resample."""
    from glacli.base.chunking import LogitSource
    from glacli.base.types import Reporter

    z, y, _ = data
    counts: dict[str, list[int]] = {}
    current: list[str] = []
    progress = Reporter(start=lambda what, total: (current.append(what), counts.setdefault(what, [total, 0])),
                        advance=lambda n: counts[current[-1]].__setitem__(1, counts[current[-1]][1] + n))
    blocks = LogitSource(lambda: (z[i:i + 7] for i in range(0, len(z), 7)), *z.shape)
    streamed = gla.evaluate({"a": blocks, "b": z}, y, bootstrap=50, progress=progress)
    held = gla.evaluate({"a": z, "b": z}, y, bootstrap=50)
    streamed.pop("created"), held.pop("created")
    assert_same_document(streamed, held)  # sums over other blocks: equal to rounding
    assert counts == {"evaluating": [2 * len(y), 2 * len(y)], "bootstrap resamples": [50, 50]}


def test_evaluate_refuses_a_baseline_without_bootstrap_and_mismatched_rows(data):
    z, y, _ = data
    with pytest.raises(gla.GlaInputError, match="give bootstrap=N too"):
        gla.evaluate({"a": z}, y, baseline="a")
    with pytest.raises(gla.GlaInputError, match=re.escape("logits_by_name['b']")):
        gla.evaluate({"a": z, "b": z[1:]}, y)


# --------------------------------------------------------------------------- files


def test_load_and_save_round_trip_what_the_commands_read(gla_cli, data, tmp_path):
    z, y, _ = data
    path = write_logits_file(tmp_path / "zs.h5", z, y, temperature=1.0, head_type="zeroshot")
    record = gla.load(path)
    assert isinstance(record, gla.RowRecord) and record.kind == "logits"
    np.testing.assert_array_equal(record.values, z)
    np.testing.assert_array_equal(record.labels, y)
    assert record.classnames == classnames(C) and record.temperature == 1.0 and record.attrs["head_type"] == "zeroshot"
    record.values = gla.debias(z, gla.estimate_prior(z, y))
    gla.save(record, tmp_path / "deb.h5")
    assert gla_cli("info", tmp_path / "deb.h5").code == 0
    again = gla.load(tmp_path / "deb.h5")
    np.testing.assert_array_equal(again.values, record.values)
    assert again.attrs["parents"] == [record.attrs["gla_id"]]
    assert gla_cli("estimate-prior", path, "-o", tmp_path / "q.h5").code == 0
    prior = gla.load(tmp_path / "q.h5")
    assert isinstance(prior, gla.Prior) and prior.method == "nll"
    gla.save(prior, tmp_path / "q2.h5")
    assert gla_cli("combine", "--zeroshot", path, "--prior", tmp_path / "q2.h5", "-o", tmp_path / "c.h5").code == 0
    with pytest.raises(gla.GlaInputError, match="cannot save a dict"):
        gla.save({}, tmp_path / "x.h5")


# --------------------------------------------------------------------------- the README


def test_the_readme_python_snippet_runs():
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    assert len(section.strip().splitlines()) <= 15
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 (the project's own README)
    assert 0 < namespace["fit"].temperature and namespace["doc"]["results"][0]["metrics"]["top1"] > 0


def test_the_worked_example_prints_what_docs_api_shows(shared_fixtures, monkeypatch):
    text = (ROOT / "docs" / "api.md").read_text()
    example = text.split("## A worked example", 1)[1]
    code = re.search(r"```python\n(.*?)```", example, re.S).group(1)
    shown = re.search(r"```text\n(.*?)```", example, re.S).group(1)
    monkeypatch.chdir(ROOT)  # the example names the fixtures relative to the project root
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "docs/api.md", "exec"), {})  # noqa: S102 (the project's own docs)
    assert printed.getvalue() == shown
