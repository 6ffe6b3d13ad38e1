"""``gla fit`` and glacli.core.probe: agreement with scikit-learn, the penalty search, calibration, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from synth import DIM, N_CLASSES, class_features, classnames, write_features

from glacli.base.types import Head
from glacli.core.probe import (
    PRECONDITIONER_KEEP,
    PRECONDITIONER_RIDGE,
    WD_GRID,
    Curvature,
    Preconditioner,
    ProbeData,
    SolverOptions,
    fit_probe,
    probe_objective,
    search_penalty,
    wd_to_c,
)
from glacli.io.paramfile import read_head, write_head
from glacli.io.rowfile import read_rows, write_logits


def objective64(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray, wd: float) -> float:
    """mean CE + wd/2 ||W||^2 in float64 numpy: the reference for both solvers."""
    z = x @ weight.T + bias
    z = z - z.max(1, keepdims=True)
    ce = np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]
    return float(ce.mean() + 0.5 * wd * (weight**2).sum())


def sklearn_fit(x: np.ndarray, y: np.ndarray, wd: float) -> LogisticRegression:
    return LogisticRegression(C=wd_to_c(wd, len(y)), tol=1e-10, max_iter=10000).fit(x, y)


def tensors(x: np.ndarray, y: np.ndarray, dtype=torch.float64) -> ProbeData:
    return ProbeData.from_tensors(torch.from_numpy(x).to(dtype), torch.from_numpy(y), N_CLASSES, rows=97)


# Separable (classes far apart, train accuracy 100%) and noisy (test accuracy 40-85%) problems.
PROBLEMS = {"separable": 3.0, "noisy": 0.3}


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("wd", [1e-2, 1e-4])
def test_matches_sklearn_float64(problem: str, wd: float) -> None:
    x, y = class_features(600, PROBLEMS[problem], seed=1)
    sk = sklearn_fit(x, y, wd)
    fit = fit_probe(tensors(x, y), wd, SolverOptions(dtype=torch.float64, tol=1e-10, max_iter=5000))
    weight, bias = fit.weight.numpy(), fit.bias.numpy()
    ours, theirs = objective64(x, y, weight, bias, wd), objective64(x, y, sk.coef_, sk.intercept_, wd)
    # Same strictly convex problem: the optima agree to solver precision (relative 1e-8), and
    # the reported loss is the objective at the returned point.
    assert ours == pytest.approx(theirs, rel=1e-8, abs=1e-12)
    assert fit.loss == pytest.approx(ours, rel=1e-10)
    assert fit.converged
    # The bias is unpenalised, so both are defined up to a constant shift of b: compare centred.
    assert np.abs(weight - sk.coef_).max() <= 1e-3 * max(1.0, np.abs(sk.coef_).max())
    assert np.abs((bias - bias.mean()) - (sk.intercept_ - sk.intercept_.mean())).max() <= 1e-3 * max(
        1.0, np.abs(sk.intercept_).max())
    # Accuracy: identical predictions on the training rows and on fresh rows.
    x_test, y_test = class_features(400, PROBLEMS[problem], seed=2)
    ours_pred = (x_test @ weight.T + bias).argmax(1)
    assert (ours_pred == sk.predict(x_test)).mean() >= 0.9975  # at most 1 of 400 rows on a near-tie
    assert abs((ours_pred == y_test).mean() - sk.score(x_test, y_test)) <= 0.0025
    if problem == "separable":
        assert sk.score(x, y) == 1.0
    else:
        assert 0.4 < sk.score(x_test, y_test) < 0.85


@pytest.mark.parametrize("problem", PROBLEMS)
def test_matches_sklearn_float32(problem: str) -> None:
    """The default float32 solver reaches the float64 optimum to float32 precision."""
    x, y = class_features(800, PROBLEMS[problem], seed=3)
    wd = 1e-3
    sk = sklearn_fit(x, y, wd)
    fit = fit_probe(tensors(x, y, torch.float32), wd, SolverOptions())
    ours = objective64(x, y, fit.weight.double().numpy(), fit.bias.double().numpy(), wd)
    theirs = objective64(x, y, sk.coef_, sk.intercept_, wd)
    assert theirs <= ours <= theirs * (1 + 5e-6)  # float32 working precision
    assert ((x @ fit.weight.double().numpy().T + fit.bias.double().numpy()).argmax(1) == sk.predict(x)).mean() >= 0.99


def test_wd_c_mapping_is_the_same_problem() -> None:
    """scikit-learn's objective 0.5||W||^2 + C sum CE equals C N times ours at wd = 1/(C N)."""
    x, y = class_features(300, 0.5, seed=4)
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(N_CLASSES, DIM)), rng.normal(size=N_CLASSES)
    wd = 0.009
    c = wd_to_c(wd, len(y))
    z = x @ weight.T + bias
    ce_sum = float((np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]).sum())
    sklearn_objective = 0.5 * (weight**2).sum() + c * ce_sum
    assert sklearn_objective == pytest.approx(c * len(y) * objective64(x, y, weight, bias, wd), rel=1e-12)
    loss, grad_w, grad_b = probe_objective(tensors(x, y), torch.from_numpy(weight), torch.from_numpy(bias), wd)
    assert loss == pytest.approx(objective64(x, y, weight, bias, wd), rel=1e-12)
    # Gradient against central finite differences of the float64 reference.
    eps = 1e-6
    for k, j in [(0, 0), (3, 7), (4, 23)]:
        bumped = weight.copy()
        bumped[k, j] += eps
        up = objective64(x, y, bumped, bias, wd)
        bumped[k, j] -= 2 * eps
        down = objective64(x, y, bumped, bias, wd)
        assert float(grad_w[k, j]) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)
    assert float(grad_b.sum()) == pytest.approx(0.0, abs=1e-12)  # softmax rows sum to one


def test_streamed_chunks_equal_in_memory() -> None:
    """Loss and gradient do not depend on how the rows are chunked (so a file can be streamed)."""
    x, y = class_features(500, 0.5, seed=5)
    weight = torch.from_numpy(np.random.default_rng(1).normal(size=(N_CLASSES, DIM)))
    bias = torch.zeros(N_CLASSES, dtype=torch.float64)
    whole = probe_objective(ProbeData.from_tensors(torch.from_numpy(x), torch.from_numpy(y), N_CLASSES, rows=500),
                            weight, bias, 1e-3)
    pieces = probe_objective(ProbeData.from_tensors(torch.from_numpy(x), torch.from_numpy(y), N_CLASSES, rows=7),
                             weight, bias, 1e-3)
    assert whole[0] == pytest.approx(pieces[0], rel=1e-13)
    assert torch.allclose(whole[1], pieces[1], rtol=1e-12, atol=1e-15)


def test_preconditioner_is_the_ridged_inverse_second_moment() -> None:
    """H0 = (S + mu I)^-1 on every class's [w_c, b_c], S the second moment of [x, 1], computed here in numpy;
    the directions it leaves undamped (damping below PRECONDITIONER_KEEP) bound the difference."""
    x, y = class_features(300, 0.6, seed=5)
    x = x + 3.0 * np.ones(DIM) / np.sqrt(DIM)  # a shared mean direction, as CLIP features have
    pre = Preconditioner.of(tensors(x, y), torch.device("cpu"), torch.float64)
    extended = np.hstack([x, np.ones((len(x), 1))])
    moment = extended.T @ extended / len(x)
    ridge = PRECONDITIONER_RIDGE * (x * x).sum(1).mean()
    v = np.random.default_rng(0).normal(size=N_CLASSES * (DIM + 1))
    rows = np.hstack([v[: N_CLASSES * DIM].reshape(N_CLASSES, DIM), v[N_CLASSES * DIM:, None]])
    expected = np.linalg.solve(moment + ridge * np.eye(DIM + 1), rows.T).T
    out = pre(torch.from_numpy(v)).numpy()
    got = np.hstack([out[: N_CLASSES * DIM].reshape(N_CLASSES, DIM), out[N_CLASSES * DIM:, None]])
    assert pre.ridge == pytest.approx(ridge, rel=1e-12)
    # Each undamped direction u (damping d < KEEP) is off by d (u.r) / mu: per row at most KEEP ||r|| / mu.
    assert np.all(np.linalg.norm(got - expected, axis=1) <= PRECONDITIONER_KEEP * np.linalg.norm(rows, axis=1) / ridge)
    assert not np.allclose(got, rows / ridge, atol=0.1 * np.abs(rows).max() / ridge)  # it does damp


def gradient64(x: np.ndarray, y: np.ndarray, theta: np.ndarray, wd: float) -> np.ndarray:
    """The gradient of ``objective64`` at flat ``theta = [W row-major, b]``, in float64 numpy."""
    weight, bias = theta[: N_CLASSES * DIM].reshape(N_CLASSES, DIM), theta[N_CLASSES * DIM:]
    z = x @ weight.T + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return np.concatenate([(p.T @ x / len(y) + wd * weight).ravel(), p.sum(0) / len(y)])


def test_curvature_pairs_move_to_another_penalty_as_its_secant_pairs() -> None:
    """A pair (s, y) of penalty wd, shifted to wd', is y' = grad L_wd'(theta + s) - grad L_wd'(theta),
    computed here in numpy; the bias (unpenalised) part of y is unchanged."""
    x, y = class_features(300, 0.5, seed=3)
    rng = np.random.default_rng(4)
    wd, other = 1e-2, 3e-5
    pairs = []
    for _ in range(3):
        theta, s = rng.normal(size=N_CLASSES * (DIM + 1)), 0.1 * rng.normal(size=N_CLASSES * (DIM + 1))
        change = gradient64(x, y, theta + s, wd) - gradient64(x, y, theta, wd)
        pairs.append(((theta, s), (torch.from_numpy(s), torch.from_numpy(change), 1.0 / float(s @ change))))
    shifted = Curvature(wd, tuple(pair for _, pair in pairs), N_CLASSES * DIM).at(other)
    assert len(shifted) == len(pairs)
    for ((theta, s), _), (s_out, y_out, rho) in zip(pairs, shifted):
        expected = gradient64(x, y, theta + s, other) - gradient64(x, y, theta, other)
        assert np.allclose(y_out.numpy(), expected, rtol=1e-9, atol=1e-12)
        assert rho == pytest.approx(1.0 / float(s @ expected), rel=1e-9)
        assert np.array_equal(s_out.numpy(), s)


@pytest.mark.parametrize("anchored", [False, True])
def test_warm_start_with_carried_curvature_reaches_the_same_optimum_sooner(anchored: bool) -> None:
    """A fit started from a neighbouring penalty's solution and curvature reaches the optimum that a cold
    fit and scikit-learn reach (plain probe) in fewer objective evaluations than the cold fit."""
    x, y = class_features(600, 0.4, seed=9)
    options = SolverOptions(dtype=torch.float64, tol=1e-10, max_iter=5000)
    anchor = None
    if anchored:
        weight = np.random.default_rng(2).normal(size=(N_CLASSES, DIM))
        anchor = (torch.from_numpy(weight), torch.zeros(N_CLASSES, dtype=torch.float64))
    neighbour = fit_probe(tensors(x, y), 1e-3, options, anchor=anchor)
    wd = 1e-3 * 10 ** (-1 / 8)
    cold = fit_probe(tensors(x, y), wd, options, anchor=anchor)
    warm = fit_probe(tensors(x, y), wd, options, anchor=anchor, start=(neighbour.weight, neighbour.bias),
                     curvature=neighbour.curvature)
    assert neighbour.curvature is not None and len(neighbour.curvature.pairs) > 0
    assert warm.converged and cold.converged
    assert warm.loss == pytest.approx(cold.loss, rel=1e-10)
    assert torch.allclose(warm.weight, cold.weight, rtol=0, atol=1e-5 * float(cold.weight.abs().max()))
    if not anchored:
        sk = sklearn_fit(x, y, wd)
        assert objective64(x, y, warm.weight.numpy(), warm.bias.numpy(), wd) == pytest.approx(
            objective64(x, y, sk.coef_, sk.intercept_, wd), rel=1e-8)
    assert warm.evaluations < cold.evaluations


def test_search_picks_validation_optimum_of_its_grid() -> None:
    x, y = class_features(500, 0.6, seed=6)
    xv, yv = class_features(400, 0.6, seed=7)
    search = search_penalty(tensors(x, y), tensors(xv, yv), SolverOptions(dtype=torch.float64, search_tol=1e-6))
    points = search.points
    assert {p.stage for p in points} == {"coarse", "refine"}
    best = search.chosen
    assert search.best.wd == best.wd  # the fit returned is the chosen point's
    # Independently: scikit-learn at each evaluated penalty reproduces the validation accuracy (up to
    # one near-tie row) and NLL each point records; on those numbers the chosen penalty is the most
    # accurate of the grid, and the lowest in NLL of the points as accurate as it.
    fits = {p.wd: sklearn_fit(x, y, p.wd) for p in points}
    sk_accuracy = {wd: fit.score(xv, yv) for wd, fit in fits.items()}
    sk_nll = {wd: log_loss(yv, fit.predict_proba(xv), labels=range(N_CLASSES)) for wd, fit in fits.items()}
    for p in points:
        assert abs(sk_accuracy[p.wd] - p.val_accuracy) <= 1 / len(yv) + 1e-12
        assert p.val_nll == pytest.approx(sk_nll[p.wd], rel=1e-6)
    assert sk_accuracy[best.wd] >= max(sk_accuracy.values()) - 1 / len(yv) - 1e-12
    as_accurate = [p.wd for p in points if p.val_accuracy == best.val_accuracy]
    assert sk_nll[best.wd] <= min(sk_nll[wd] for wd in as_accurate) * (1 + 1e-6)
    # The finer search ends with the chosen penalty's neighbours evaluated an eighth of a decade away.
    log_wd = np.log10([p.wd for p in points])
    gaps = np.abs(log_wd - np.log10(best.wd))
    assert np.isclose(gaps, 1 / 8).sum() == 2
    assert 1e-7 < best.wd < 1.0  # inside the grid, so both neighbours exist


def test_fit_command_matches_sklearn(tmp_path: Path, gla) -> None:
    x, y = class_features(600, 0.5, seed=8)
    train = write_features(tmp_path / "train.h5", x, y)
    wd = 3e-4
    r = gla("fit", train, "--wd", wd, "--float64", "--tol", "1e-9", "-o", tmp_path / "head.h5", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    head = read_head(tmp_path / "head.h5")
    sk = sklearn_fit(x, y, wd)
    ours = objective64(x, y, head.weight.astype(np.float64), head.bias.astype(np.float64), wd)
    theirs = objective64(x, y, sk.coef_, sk.intercept_, wd)
    assert ours == pytest.approx(theirs, rel=1e-6)  # the head is stored in float32
    assert report["final_loss"] == pytest.approx(theirs, rel=1e-8)
    assert head.head_type == "linear" and head.temperature == 1.0
    assert head.attrs["wd"] == wd and head.attrs["c_equivalent"] == pytest.approx(wd_to_c(wd, len(y)))
    assert head.attrs["iterations"] == report["iterations"] > 0
    assert head.attrs["model"] == "ViT-B-32" and head.attrs["pretrained"] == "synthetic"
    with read_rows(train, "features") as f:
        assert list(head.attrs["parents"]) == [f.gla_id]
    assert "val_accuracy" not in head.attrs


def test_fit_with_val_searches_calibrates_and_records(tmp_path: Path, gla) -> None:
    x, y = class_features(600, 0.6, seed=9)
    xv, yv = class_features(300, 0.6, seed=10)
    train, val = write_features(tmp_path / "train.h5", x, y), write_features(tmp_path / "val.h5", xv, yv)
    r = gla("fit", train, "--val", val, "-o", tmp_path / "head.h5", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    head = read_head(tmp_path / "head.h5")
    path = report["path"]
    best = max(path, key=lambda p: (p["val_accuracy"], -p["val_nll"]))
    assert head.attrs["wd"] == report["wd"] == best["wd"]
    # Recorded validation numbers, recomputed independently from the stored head.
    z = xv @ head.weight.astype(np.float64).T + head.bias
    assert head.attrs["val_accuracy"] == pytest.approx((z.argmax(1) == yv).mean())

    def val_nll(temperature: float) -> float:
        s = z / temperature
        s = s - s.max(1, keepdims=True)
        return float((np.log(np.exp(s).sum(1)) - s[np.arange(len(yv)), yv]).mean())

    assert report["val_nll_uncalibrated"] == pytest.approx(val_nll(1.0), rel=1e-5)
    assert head.attrs["val_nll"] == pytest.approx(val_nll(head.temperature), rel=1e-5)
    # The temperature is the NLL optimum: calibration lowers validation NLL, and nudging T does not help.
    assert val_nll(head.temperature) < val_nll(1.0)
    assert val_nll(head.temperature) <= min(val_nll(head.temperature * 1.05), val_nll(head.temperature / 1.05))
    with read_rows(train, "features") as ft, read_rows(val, "features") as fv:
        assert list(head.attrs["parents"]) == [ft.gla_id, fv.gla_id]
    # The human-readable output has the search table and the summary.
    r = gla("fit", train, "--val", val, "-o", tmp_path / "head2.h5")
    assert r.code == 0 and "Penalty search" in r.out and "temperature" in r.out


def test_weak_penalty_is_overconfident_and_calibration_fixes_it(tmp_path: Path, gla) -> None:
    """At a tiny penalty on noisy data the head is overconfident: T > 1 and validation NLL drops."""
    x, y = class_features(300, 0.4, seed=11)
    xv, yv = class_features(300, 0.4, seed=12)
    train, val = write_features(tmp_path / "train.h5", x, y), write_features(tmp_path / "val.h5", xv, yv)
    r = gla("fit", train, "--val", val, "--wd", "1e-6", "-o", tmp_path / "head.h5", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["temperature"] > 1.5
    assert report["val_nll"] < 0.8 * report["val_nll_uncalibrated"]
    assert report["path"] == []


def test_balanced_loss_is_post_hoc_logit_adjustment(tmp_path: Path, gla) -> None:
    """With a free bias, the logit-adjusted loss gives the plain solution with log pi_s subtracted from b."""
    probs = np.array([0.6, 0.2, 0.1, 0.06, 0.04])
    x, y = class_features(800, 0.5, seed=13, class_probs=probs)
    train = write_features(tmp_path / "train.h5", x, y)
    for name, extra in (("plain", ()), ("balanced", ("--balanced",))):
        r = gla("fit", train, "--wd", "1e-3", "--float64", "--tol", "1e-9", *extra, "-o", tmp_path / f"{name}.h5")
        assert r.code == 0, r.err
    plain, balanced = read_head(tmp_path / "plain.h5"), read_head(tmp_path / "balanced.h5")
    log_pi = np.log(np.bincount(y, minlength=N_CLASSES) / len(y))
    assert np.abs(balanced.weight - plain.weight).max() < 1e-4
    shift = balanced.bias - (plain.bias - log_pi)
    assert np.abs(shift - shift.mean()).max() < 1e-4
    assert balanced.attrs["balanced"] and not plain.attrs["balanced"]
    # On a balanced test set the balanced head has the higher mean per-class accuracy.
    xt, yt = class_features(2000, 0.5, seed=14)

    def mean_per_class(head: Head) -> float:
        pred = (xt @ head.weight.T + head.bias).argmax(1)
        return float(np.mean([(pred[yt == k] == k).mean() for k in range(N_CLASSES)]))

    assert mean_per_class(balanced) > mean_per_class(plain) + 0.02


def search_warnings(tmp_path: Path, gla, train: tuple, val: tuple, n_classes: int) -> tuple[dict, str]:
    names = classnames(n_classes)
    paths = [write_features(tmp_path / f"{name}.h5", x, y, names) for name, (x, y) in (("train", train), ("val", val))]
    r = gla("fit", paths[0], "--val", paths[1], "-o", tmp_path / "head.h5", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert all(f"warning: {w}" in r.err for w in report["warnings"])
    return report, " ".join(report["warnings"])


def tiny_scale_features(n: int, seed: int, n_classes: int = 4, dim: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Classes apart along e_k, hidden under one large noise shared by every coordinate, all x 1e-3.

    Only differences of coordinates separate the classes, and at this scale the weights must be
    large to use them: validation accuracy rises from 30% at wd 1e-6 to 60% at 1.8e-7 and 90% at
    1.3e-7 and below, so the optimum lies beyond the grid's weak end whatever the platform's path.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    x = 0.5 * np.eye(n_classes, dim)[labels] + 3.0 * rng.normal(size=(n, 1)) + 0.05 * rng.normal(size=(n, dim))
    return (1e-3 * x).astype(np.float32), labels.astype(np.int64)


def test_warns_when_the_search_ends_at_the_weak_end_of_its_range(tmp_path: Path, gla) -> None:
    report, warnings = search_warnings(tmp_path, gla, tiny_scale_features(400, 1), tiny_scale_features(2000, 2), 4)
    assert report["wd"] <= WD_GRID[-2] and "weak end" in warnings and "strongest" not in warnings


def test_warns_when_no_penalty_beats_the_strongest(tmp_path: Path, gla) -> None:
    # Features without signal, a majority class, and a validation set of that class alone: the head
    # closest to zero (the class prior in the bias) validates best; weaker penalties fit noise.
    majority = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    train = class_features(300, 0.0, seed=4, dim=200, class_probs=majority)
    val = class_features(300, 0.0, seed=5, dim=200, class_probs=np.eye(N_CLASSES)[0])
    report, warnings = search_warnings(tmp_path, gla, train, val, N_CLASSES)
    assert report["val_accuracy"] == 1.0 and "no penalty validated better than the strongest" in warnings


def test_warns_when_the_temperature_reaches_its_bound(tmp_path: Path, gla) -> None:
    # Separable classes: every validation row right, so the NLL keeps falling as T -> 0.
    train, val = class_features(300, 3.0, seed=6), class_features(200, 3.0, seed=7)
    report, warnings = search_warnings(tmp_path, gla, train, val, N_CLASSES)
    assert report["val_accuracy"] == 1.0 and "temperature" in warnings and "at its bound" in warnings


def test_no_warnings_on_a_well_posed_search(tmp_path: Path, gla) -> None:
    train, val = class_features(600, 0.6, seed=9), class_features(300, 0.6, seed=10)
    report, _ = search_warnings(tmp_path, gla, train, val, N_CLASSES)
    assert report["warnings"] == []


def test_init_from_a_head_reaches_the_same_optimum(tmp_path: Path, gla) -> None:
    x, y = class_features(500, 0.5, seed=15)
    train = write_features(tmp_path / "train.h5", x, y)
    common = ("--wd", "1e-3", "--float64", "--tol", "1e-9")
    assert gla("fit", train, *common, "-o", tmp_path / "cold.h5").code == 0
    # A "zero-shot" head: the class means times a logit scale, with a temperature to divide by.
    rng = np.random.default_rng(0)
    zs = Head(weight=rng.normal(size=(N_CLASSES, DIM)) * 50, bias=np.zeros(N_CLASSES),
              classnames=classnames(N_CLASSES), head_type="zeroshot", temperature=2.0)
    write_head(tmp_path / "zs.h5", zs)
    r = gla("fit", train, *common, "--init", tmp_path / "zs.h5", "-o", tmp_path / "warm.h5")
    assert r.code == 0, r.err
    cold, warm = read_head(tmp_path / "cold.h5"), read_head(tmp_path / "warm.h5")
    assert np.abs(cold.weight - warm.weight).max() < 1e-4
    assert list(warm.attrs["parents"])[-1] == read_head(tmp_path / "zs.h5").gla_id
    # Starting at the optimum itself (rounded to the float32 of the head file) costs few iterations.
    r = gla("fit", train, *common, "--init", tmp_path / "cold.h5", "-o", tmp_path / "again.h5", "--json")
    assert json.loads(r.out)["iterations"] < cold.attrs["iterations"] / 2


def test_streaming_from_disk_gives_the_same_head(tmp_path: Path, gla) -> None:
    x, y = class_features(400, 0.5, seed=16)
    train = write_features(tmp_path / "train.h5", x, y)
    common = ("--wd", "1e-3", "--float64", "--tol", "1e-9")
    assert gla("fit", train, *common, "-o", tmp_path / "memory.h5").code == 0
    assert gla("fit", train, *common, "--memory", "1e-9", "-o", tmp_path / "streamed.h5").code == 0
    a, b = read_head(tmp_path / "memory.h5"), read_head(tmp_path / "streamed.h5")
    assert np.abs(a.weight - b.weight).max() < 1e-5


def test_features_are_held_on_a_gpu_only_within_half_its_free_memory(monkeypatch) -> None:
    from glacli.services.fit import hold_on_device
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert hold_on_device(4 * gib, 8 * gib, cuda)
    assert not hold_on_device(6 * gib, 8 * gib, cuda)  # fits --memory, not half of the free 10 GiB
    assert hold_on_device(6 * gib, 8 * gib, cpu)
    assert not hold_on_device(9 * gib, 8 * gib, cpu)


def test_out_of_gpu_memory_in_fit_is_one_line_naming_memory(tmp_path: Path, gla, monkeypatch) -> None:
    from glacli.services import fit as fit_service
    x, y = class_features(100, 0.5, seed=17)
    train = write_features(tmp_path / "train.h5", x, y)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.66 GiB. GPU 0 has a total capacity")

    monkeypatch.setattr(fit_service, "_run_fit", out_of_memory)
    r = gla("fit", train, "--wd", "1e-3", "-o", tmp_path / "head.h5")
    assert_one_line_error(r, "out of GPU memory (CUDA out of memory. Tried to allocate 3.66 GiB)", "lower --memory")
    assert not (tmp_path / "head.h5").exists()


# --------------------------------------------------------------------------- errors


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    x, y = class_features(60, 1.0, seed=20)
    made = {"train": write_features(tmp_path / "train.h5", x, y)}
    made["other_names"] = write_features(tmp_path / "names.h5", x, y, [f"other {k}" for k in range(N_CLASSES)])
    xw, _ = class_features(60, 1.0, seed=20, dim=DIM + 1)
    made["wide"] = write_features(tmp_path / "wide.h5", xw, y)
    made["unlabelled"] = write_features(tmp_path / "unlabelled.h5", x, np.where(np.arange(60) % 2, y, -1))
    made["missing_class"] = write_features(tmp_path / "missing.h5", x[y != 2], y[y != 2])
    write_logits(tmp_path / "logits.h5", x[:, :N_CLASSES], y, [str(i) for i in range(60)],
                 classnames(N_CLASSES))
    made["logits"] = tmp_path / "logits.h5"
    write_head(tmp_path / "wide_head.h5", Head(np.zeros((N_CLASSES, DIM + 1)), np.zeros(N_CLASSES),
                                                classnames(N_CLASSES), "zeroshot"))
    made["wide_head"] = tmp_path / "wide_head.h5"
    made["out"] = tmp_path / "head.h5"
    made["out"].write_bytes(b"previous output")
    return made


ERROR_CASES = {
    "no penalty": (lambda f: [f["train"]], ["--val", "--wd"]),
    "bad wd": (lambda f: [f["train"], "--wd", "-1"], ["--wd", "positive"]),
    "bad wd text": (lambda f: [f["train"], "--wd", "lots"], ["--wd"]),
    "val classnames": (lambda f: [f["train"], "--val", f["other_names"]], ["names.h5", "classnames disagree"]),
    "val dimension": (lambda f: [f["train"], "--val", f["wide"]], ["wide.h5", "25-dimensional", "24"]),
    "unlabelled train": (lambda f: [f["unlabelled"], "--wd", "1e-3"], ["unlabelled.h5", "without labels"]),
    "unlabelled val": (lambda f: [f["train"], "--val", f["unlabelled"]], ["unlabelled.h5", "without labels"]),
    "class without rows": (lambda f: [f["missing_class"], "--wd", "1e-3"],
                           ["missing.h5", "class 'class 2' has no rows", "a linear probe needs every class"]),
    "logits as features": (lambda f: [f["logits"], "--wd", "1e-3"], ["logits.h5", "'logits' file"]),
    "init dimension": (lambda f: [f["train"], "--wd", "1e-3", "--init", f["wide_head"]],
                       ["wide_head.h5", "25-dimensional"]),
    "init not a head": (lambda f: [f["train"], "--wd", "1e-3", "--init", f["train"]], ["train.h5", "'features' file"]),
    "missing train": (lambda f: [f["train"].with_name("nope.h5"), "--wd", "1e-3"], ["nope.h5", "no such file"]),
    "bad device": (lambda f: [f["train"], "--wd", "1e-3", "--device", "tpu"], ["--device"]),
    "bad max-iter": (lambda f: [f["train"], "--wd", "1e-3", "--max-iter", "0"], ["--max-iter"]),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_fit_errors_are_one_line(case: str, files: dict[str, Path], gla) -> None:
    make_args, fragments = ERROR_CASES[case]
    r = gla("fit", *make_args(files), "-o", files["out"])
    assert_one_line_error(r, *fragments)
    assert files["out"].read_bytes() == b"previous output"


def test_the_fit_commands_help_shows_the_solvers_tolerance() -> None:
    """``gla fit --help`` takes its defaults from a module without torch; they must be the solver's."""
    from glacli.services.fit_defaults import DEFAULT_TOL
    assert DEFAULT_TOL == SolverOptions.tol
