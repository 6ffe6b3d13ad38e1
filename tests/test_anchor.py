"""``gla fit --anchor`` and glacli.core.anchor: the anchored objective against float64 references, T_zs, the
stop rule, the search, what the head records, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression
from synth import DIM, N_CLASSES, class_features, classnames, write_features

from glacli.base.types import Head
from glacli.core.anchor import fit_anchor
from glacli.core.calibration import T_MIN
from glacli.core.probe import WD_GRID, ProbeData, SolverOptions, fit_probe, probe_objective, search_penalty, wd_to_c
from glacli.io import rowfile
from glacli.io.paramfile import read_head, write_head
from glacli.io.rowfile import read_rows

F64 = SolverOptions(dtype=torch.float64, tol=1e-10, max_iter=5000)


def anchored64(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray, wd: float, anchor: np.ndarray,
               adjustment: np.ndarray | float = 0.0) -> tuple[float, np.ndarray]:
    """mean CE(W x + b + a) + wd/2 ||W - W_a||^2 and its gradient in W, float64 numpy: the reference."""
    z = x @ weight.T + bias + adjustment
    log_p = log_softmax(z, axis=1)
    rows = np.arange(len(y))
    residual = np.exp(log_p)
    residual[rows, y] -= 1.0
    gap = weight - anchor
    return (float(-log_p[rows, y].mean() + 0.5 * wd * (gap**2).sum()),
            residual.T @ x / len(y) + wd * gap)


def scipy_anchored(x: np.ndarray, y: np.ndarray, wd: float, anchor: np.ndarray, bias: np.ndarray,
                   adjustment: np.ndarray | float = 0.0) -> np.ndarray:
    """The anchored optimum (bias held) by scipy's L-BFGS-B in float64, to its own gradient tolerance."""
    shape = anchor.shape

    def f(flat: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = anchored64(x, y, flat.reshape(shape), bias, wd, anchor, adjustment)
        return value, grad.ravel()

    done = minimize(f, anchor.ravel(), jac=True, method="L-BFGS-B",
                    options={"maxiter": 20000, "gtol": 1e-13, "ftol": 0.0})
    return done.x.reshape(shape)


def zero_shot_weights(scale: float = 20.0, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """A usable but imperfect "zero-shot" head for :func:`class_features`: noisy class means x a logit scale."""
    means = np.random.default_rng(1000).normal(size=(N_CLASSES, DIM))  # class_features' means
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    return scale * (means + noise * np.random.default_rng(seed).normal(size=means.shape) / np.sqrt(DIM))


def tensors(x: np.ndarray, y: np.ndarray, rows: int = 97) -> ProbeData:
    return ProbeData.from_tensors(torch.from_numpy(x), torch.from_numpy(y), N_CLASSES, rows=rows)


def strong_convexity_bound(x, y, wd, anchor, bias, w1, w2, adjustment=0.0) -> float:
    """``||W1 - W2|| <= (||grad L(W1)|| + ||grad L(W2)||) / wd``: L is wd-strongly convex in W (bias held)."""
    g1 = anchored64(x, y, w1, bias, wd, anchor, adjustment)[1]
    g2 = anchored64(x, y, w2, bias, wd, anchor, adjustment)[1]
    return (np.linalg.norm(g1) + np.linalg.norm(g2)) / wd


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("wd", [1e-2, 1e-4])
def test_anchored_fit_matches_scipy_float64(wd: float, balanced: bool) -> None:
    probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05]) if balanced else None
    x, y = class_features(300, 0.4, seed=1, class_probs=probs)
    anchor, bias = zero_shot_weights(), np.random.default_rng(2).normal(size=N_CLASSES)
    adjustment = np.log(np.bincount(y, minlength=N_CLASSES) / len(y)) if balanced else 0.0
    data = tensors(x, y)
    fit = fit_probe(data, wd, F64, anchor=(torch.from_numpy(anchor), torch.from_numpy(bias)),
                    adjustment=torch.from_numpy(np.asarray(adjustment, dtype=np.float64)) if balanced else None)
    reference = scipy_anchored(x, y, wd, anchor, bias, adjustment)
    ours = fit.weight.numpy()
    value, _ = anchored64(x, y, ours, bias, wd, anchor, adjustment)
    best, _ = anchored64(x, y, reference, bias, wd, anchor, adjustment)
    # Both optimise the same strictly convex objective: the values agree to solver precision, the
    # reported loss is the objective at the returned point, and the weights lie within the bound
    # that strong convexity puts on two points with these gradients.
    assert value == pytest.approx(best, rel=1e-10)
    assert fit.loss == pytest.approx(value, rel=1e-12)
    assert np.linalg.norm(ours - reference) <= strong_convexity_bound(x, y, wd, anchor, bias, ours, reference,
                                                                      adjustment)
    assert np.linalg.norm(ours - reference) < 1e-5 * np.linalg.norm(ours - anchor)
    # The bias is held at the anchor's, and the shots moved the weights away from the anchor.
    assert np.array_equal(fit.bias.numpy(), bias)
    assert np.linalg.norm(ours - anchor) > 0.05 * np.linalg.norm(anchor)


def test_anchored_objective_and_gradient_match_the_reference() -> None:
    x, y = class_features(200, 0.5, seed=3)
    rng = np.random.default_rng(4)
    anchor, weight, bias = zero_shot_weights(), rng.normal(size=(N_CLASSES, DIM)), rng.normal(size=N_CLASSES)
    loss, grad_w, grad_b = probe_objective(tensors(x, y, rows=13), torch.from_numpy(weight - anchor),
                                           torch.from_numpy(bias), 3e-3, anchor=torch.from_numpy(anchor))
    value, gradient = anchored64(x, y, weight, bias, 3e-3, anchor)
    assert loss == pytest.approx(value, rel=1e-12)
    assert np.allclose(grad_w.numpy(), gradient, rtol=1e-10, atol=1e-14)
    # Central differences of the reference (error O(eps^2) ~ 1e-12, well inside 1e-6 relative).
    eps = 1e-6
    for k, j in [(0, 0), (2, 11), (4, 23)]:
        bumped = weight.copy()
        bumped[k, j] += eps
        up = anchored64(x, y, bumped, bias, 3e-3, anchor)[0]
        bumped[k, j] -= 2 * eps
        down = anchored64(x, y, bumped, bias, 3e-3, anchor)[0]
        assert float(grad_w[k, j]) == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-10)
    assert float(grad_b.sum()) == pytest.approx(0.0, abs=1e-12)


def test_zero_anchor_is_the_plain_probe_without_bias() -> None:
    """With W_a = 0 and b_a = 0 the objective is the plain one with the bias held at 0: scikit-learn's
    ``LogisticRegression(fit_intercept=False, C=1/(wd N))`` solves it independently."""
    x, y = class_features(400, 0.5, seed=5)
    wd = 1e-3
    zero = (torch.zeros(N_CLASSES, DIM, dtype=torch.float64), torch.zeros(N_CLASSES, dtype=torch.float64))
    fit = fit_probe(tensors(x, y), wd, F64, anchor=zero)
    sk = LogisticRegression(C=wd_to_c(wd, len(y)), fit_intercept=False, tol=1e-12, max_iter=10000).fit(x, y)
    ours, theirs = fit.weight.numpy(), sk.coef_
    zeros = np.zeros((N_CLASSES, DIM))
    assert anchored64(x, y, ours, 0.0, wd, zeros)[0] == pytest.approx(anchored64(x, y, theirs, 0.0, wd, zeros)[0],
                                                                      rel=1e-9)
    assert np.linalg.norm(ours - theirs) <= strong_convexity_bound(x, y, wd, zeros, 0.0, ours, theirs)
    # And the plain probe's objective is the anchored one at a zero anchor, for any point.
    w, b = torch.from_numpy(theirs), torch.zeros(N_CLASSES, dtype=torch.float64)
    plain = probe_objective(tensors(x, y), w, b, wd)
    anchored = probe_objective(tensors(x, y), w, b, wd, anchor=zero[0])
    assert plain[0] == pytest.approx(anchored[0], rel=1e-12)
    assert torch.allclose(plain[1], anchored[1], rtol=0, atol=1e-12)  # float64 rounding of a different sum order


def test_stop_rule_bounds_the_distance_by_what_the_shots_moved() -> None:
    """Stopped at ``||grad|| <= tol wd ||W - W_a||``, strong convexity gives ``||W - W*|| <= tol ||W - W_a||``.

    The anchor is large against what the shots move (as a zero-shot head's logit scale makes it):
    a rule measured against ``||W||`` would already accept the start, which is a distance
    ``||W* - W_a||`` from the optimum."""
    x, y = class_features(300, 0.4, seed=6)
    anchor, bias = zero_shot_weights(scale=200.0), np.zeros(N_CLASSES)
    wd, tol = 1e-1, 1e-2
    start_gradient = anchored64(x, y, anchor, bias, wd, anchor)[1]
    assert np.linalg.norm(start_gradient) <= tol * wd * np.linalg.norm(anchor)  # what ||W|| would accept
    pair = (torch.from_numpy(anchor), torch.from_numpy(bias))
    fit = fit_probe(tensors(x, y), wd, SolverOptions(dtype=torch.float64, max_iter=5000), anchor=pair, tol=tol)
    optimum = scipy_anchored(x, y, wd, anchor, bias)
    ours = fit.weight.numpy()
    gradient = anchored64(x, y, ours, bias, wd, anchor)[1]
    assert fit.converged and fit.iterations > 0
    assert np.linalg.norm(gradient) <= tol * wd * np.linalg.norm(ours - anchor)
    optimum_gradient = np.linalg.norm(anchored64(x, y, optimum, bias, wd, anchor)[1])
    assert np.linalg.norm(ours - optimum) <= tol * np.linalg.norm(ours - anchor) + optimum_gradient / wd


def test_default_start_is_the_anchor() -> None:
    """Three L-BFGS steps from the default start are the steps from an explicit start at the anchor, and
    not those from zero; each lowers the anchored objective (float64 numpy) below its value at the anchor."""
    x, y = class_features(100, 0.5, seed=7)
    anchor, bias = zero_shot_weights(), np.random.default_rng(8).normal(size=N_CLASSES)
    pair = (torch.from_numpy(anchor), torch.from_numpy(bias))
    options = SolverOptions(dtype=torch.float64, max_iter=3)
    default = fit_probe(tensors(x, y), 1e-3, options, anchor=pair).weight.numpy()
    from_anchor = fit_probe(tensors(x, y), 1e-3, options, anchor=pair, start=pair).weight.numpy()
    zeros = (torch.zeros_like(pair[0]), pair[1])
    from_zero = fit_probe(tensors(x, y), 1e-3, options, anchor=pair, start=zeros).weight.numpy()
    np.testing.assert_allclose(default, from_anchor, rtol=0, atol=1e-12)
    assert np.linalg.norm(default - from_zero) > 1e-3 * np.linalg.norm(anchor)
    at_anchor = anchored64(x, y, anchor, bias, 1e-3, anchor)[0]
    assert anchored64(x, y, default, bias, 1e-3, anchor)[0] < at_anchor


def nll_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """argmin_T mean CE(z / T, y) by a bounded scalar search on log T (float64 scipy)."""
    rows = np.arange(len(y))
    done = minimize_scalar(lambda s: -log_softmax(z / np.exp(s), axis=1)[rows, y].mean(), bounds=(-6, 6),
                           method="bounded", options={"xatol": 1e-10})
    return float(np.exp(done.x))


def test_anchor_temperature_is_the_nll_optimum_on_the_training_rows() -> None:
    x, y = class_features(300, 0.3, seed=9)
    weight, bias = zero_shot_weights(), np.random.default_rng(10).normal(size=N_CLASSES)
    head_temperature = 2.0
    expected = nll_temperature((x @ weight.T + bias) / head_temperature, y)
    fits = [fit_anchor(tensors(x, y, rows=rows), torch.from_numpy(weight), torch.from_numpy(bias), head_temperature,
                       SolverOptions(dtype=torch.float64)) for rows in (7, 300)]
    for anchor in fits:  # streamed in chunks of 7 rows or held whole: the same optimum
        assert anchor.fitted
        assert anchor.t_zs == pytest.approx(expected, rel=1e-6)
        assert anchor.temperature == pytest.approx(head_temperature * expected, rel=1e-6)
        assert np.allclose(anchor.weight.numpy(), weight / anchor.temperature, rtol=1e-12)
        assert np.allclose(anchor.bias.numpy(), bias / anchor.temperature, rtol=1e-12)
    assert 1.0 < expected  # the noisy head at scale 20 is overconfident here: T_zs does something


def test_anchor_keeps_the_heads_scale_when_every_training_row_is_right() -> None:
    """Separable rows: the NLL falls as T -> 0 without a minimum; T_zs = 1 rather than an anchor no shot could move."""
    x, y = class_features(50, 3.0, seed=11)
    weight = zero_shot_weights(noise=0.0)
    assert ((x @ weight.T).argmax(1) == y).all()
    anchor = fit_anchor(tensors(x, y), torch.from_numpy(weight), torch.zeros(N_CLASSES, dtype=torch.float64), 1.5,
                        SolverOptions(dtype=torch.float64))
    assert anchor.t_zs <= T_MIN * 1.0001 and not anchor.fitted
    assert anchor.temperature == 1.5
    assert np.allclose(anchor.weight.numpy(), weight / 1.5)


def test_anchored_search_walks_every_decade() -> None:
    """The plain walk may stop at the first worse decade; the anchored one never stops early."""
    x, y = class_features(60, 0.5, seed=12)
    xv, yv = class_features(40, 0.5, seed=13)
    pair = (torch.from_numpy(zero_shot_weights() / 4), torch.zeros(N_CLASSES, dtype=torch.float64))
    search = search_penalty(tensors(x, y), tensors(xv, yv), SolverOptions(dtype=torch.float64), anchor=pair)
    coarse = sorted(p.wd for p in search.points if p.stage == "coarse")
    assert np.allclose(coarse, sorted(WD_GRID[::8]))


# --------------------------------------------------------------------------- the command


@pytest.fixture
def problem(tmp_path: Path) -> dict[str, Path]:
    x, y = class_features(200, 0.4, seed=14)
    xv, yv = class_features(100, 0.4, seed=15)
    zs = Head(weight=zero_shot_weights(), bias=np.zeros(N_CLASSES), classnames=classnames(N_CLASSES),
              head_type="zeroshot", attrs={"model": "ViT-B-32", "pretrained": "synthetic"})
    write_head(tmp_path / "zs.h5", zs)
    return {"train": write_features(tmp_path / "train.h5", x, y), "val": write_features(tmp_path / "val.h5", xv, yv),
            "zs": tmp_path / "zs.h5", "x": x, "y": y}


def test_fit_anchor_writes_the_reference_solution_and_records_its_anchor(tmp_path: Path, problem, gla) -> None:
    wd = 1e-3
    r = gla("fit", problem["train"], "--anchor", problem["zs"], "--wd", wd, "--float64", "--tol", "1e-10",
            "-o", tmp_path / "head.h5", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    head, zs = read_head(tmp_path / "head.h5"), read_head(problem["zs"])
    x, y = problem["x"], problem["y"]
    t_zs = nll_temperature(x @ zs.weight.T.astype(np.float64), y)
    assert head.head_type == "anchored"
    assert head.attrs["anchor_id"] == zs.gla_id == report["anchor"]["anchor_id"]
    assert head.attrs["anchor_temperature"] == pytest.approx(t_zs, rel=1e-6) and head.attrs["anchor_t_zs_fitted"]
    with read_rows(problem["train"], "features") as f:
        assert list(head.attrs["parents"]) == [f.gla_id, zs.gla_id]
    anchor = zs.weight.astype(np.float64) / head.attrs["anchor_temperature"]
    reference = scipy_anchored(x, y, wd, anchor, np.zeros(N_CLASSES))
    ours = head.weight.astype(np.float64)
    # Stored in float32: the objective within float32 rounding of the weights (relative 1e-6).
    assert anchored64(x, y, ours, head.bias, wd, anchor)[0] == pytest.approx(
        anchored64(x, y, reference, 0.0, wd, anchor)[0], rel=1e-6)
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()
    assert np.array_equal(head.bias, np.zeros(N_CLASSES, np.float32))
    # The logits of an anchored head say so.
    assert gla("logits", problem["train"], tmp_path / "head.h5", "-o", tmp_path / "logits.h5").code == 0
    with read_rows(tmp_path / "logits.h5", "logits") as logits:
        assert logits.attrs["head_type"] == "anchored" and logits.attrs["head_id"] == head.gla_id
        assert logits.attrs["anchor_id"] == zs.gla_id


def test_fit_anchor_with_val_and_init(tmp_path: Path, problem, gla) -> None:
    r = gla("fit", problem["train"], "--val", problem["val"], "--anchor", problem["zs"], "-o", tmp_path / "a.h5",
            "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert {p["wd"] for p in report["path"] if p["stage"] == "coarse"} == set(WD_GRID[::8])
    assert "Anchored head" in gla("fit", problem["train"], "--anchor", problem["zs"], "--wd", "1e-3",
                                  "-o", tmp_path / "b.h5").out
    # --init moves the start, not the optimum (strictly convex in W).
    common = ("--anchor", problem["zs"], "--wd", "1e-3", "--float64", "--tol", "1e-9")
    assert gla("fit", problem["train"], *common, "-o", tmp_path / "from_anchor.h5").code == 0
    write_head(tmp_path / "other.h5", Head(np.ones((N_CLASSES, DIM)), np.zeros(N_CLASSES),
                                           classnames(N_CLASSES), "zeroshot"))
    assert gla("fit", problem["train"], *common, "--init", tmp_path / "other.h5", "-o", tmp_path / "c.h5").code == 0
    a, c = read_head(tmp_path / "from_anchor.h5"), read_head(tmp_path / "c.h5")
    assert np.abs(a.weight - c.weight).max() < 1e-4 * np.abs(a.weight).max()


def test_warns_when_the_anchor_temperature_has_no_optimum(tmp_path: Path, gla) -> None:
    x, y = class_features(50, 3.0, seed=16)
    train = write_features(tmp_path / "train.h5", x, y)
    write_head(tmp_path / "zs.h5", Head(zero_shot_weights(noise=0.0), np.zeros(N_CLASSES),
                                        classnames(N_CLASSES), "zeroshot"))
    r = gla("fit", train, "--anchor", tmp_path / "zs.h5", "--wd", "1e-3", "-o", tmp_path / "head.h5", "--json")
    assert r.code == 0, r.err
    warnings = " ".join(json.loads(r.out)["warnings"])
    assert "classifies every training row correctly" in warnings and "T_zs = 1" in warnings
    assert not read_head(tmp_path / "head.h5").attrs["anchor_t_zs_fitted"]


# --------------------------------------------------------------------------- errors


@pytest.fixture
def anchors(tmp_path: Path, problem) -> dict[str, Path]:
    def head(name: str, weight: np.ndarray, names: list[str] | None = None, head_type: str = "zeroshot",
             **attrs: str) -> Path:
        write_head(tmp_path / f"{name}.h5", Head(weight, np.zeros(N_CLASSES), names or
                                                  classnames(N_CLASSES), head_type, attrs=attrs))
        return tmp_path / f"{name}.h5"

    x, y = problem["x"], problem["y"]
    rowfile.write_features(tmp_path / "clip.h5", x, y, [f"i{i}" for i in range(len(y))], classnames(N_CLASSES),
                           attrs={"encoder": "open_clip", "model": "ViT-B-32", "pretrained": "openai"})
    weight = zero_shot_weights()
    made = {
        "train": problem["train"], "clip": tmp_path / "clip.h5",
        "names": head("names", weight, [f"other {k}" for k in range(N_CLASSES)]),
        "wide": head("wide", np.zeros((N_CLASSES, DIM + 1))),
        "text": head("text", weight, encoder="sentence-transformers", model="all-MiniLM-L6-v2"),
        "model": head("model", weight, encoder="open_clip", model="RN50", pretrained="openai"),
        "linear": head("linear", weight, head_type="linear"),
        "pretrained": head("pretrained", weight, encoder="open_clip", model="ViT-B-32", pretrained="laion2b"),
        "out": tmp_path / "head.h5",
    }
    made["out"].write_bytes(b"previous output")
    return made


ANCHOR_ERRORS = {
    "missing": (lambda a: [a["train"], "--anchor", a["train"].with_name("nope.h5")], ["nope.h5", "no such file"]),
    "not a head": (lambda a: [a["train"], "--anchor", a["train"]], ["train.h5", "'features' file"]),
    "classnames": (lambda a: [a["train"], "--anchor", a["names"]], ["names.h5", "classnames disagree"]),
    "dimension": (lambda a: [a["train"], "--anchor", a["wide"]], ["wide.h5", "25-dimensional", "24"]),
    "backend": (lambda a: [a["clip"], "--anchor", a["text"]],
                ["text.h5", "encoder 'sentence-transformers'", "clip.h5", "'open_clip'"]),
    "model": (lambda a: [a["clip"], "--anchor", a["model"]], ["model.h5", "model 'RN50'", "'ViT-B-32'"]),
    "fitted head": (lambda a: [a["train"], "--anchor", a["linear"]], ["linear.h5", "'linear' head", "gla zeroshot"]),
}


@pytest.mark.parametrize("case", ANCHOR_ERRORS)
def test_anchor_errors_are_one_line(case: str, anchors: dict[str, Path], gla) -> None:
    make_args, fragments = ANCHOR_ERRORS[case]
    r = gla("fit", *make_args(anchors), "--wd", "1e-3", "-o", anchors["out"])
    assert_one_line_error(r, *fragments)
    assert anchors["out"].read_bytes() == b"previous output"


def test_another_pretrained_tag_is_a_warning(anchors: dict[str, Path], gla) -> None:
    """A tag and a path may name the same weights (as in gla zeroshot --like): warned, not refused."""
    r = gla("fit", anchors["clip"], "--anchor", anchors["pretrained"], "--wd", "1e-3", "-o", anchors["out"])
    assert r.code == 0, r.err
    assert "pretrained 'laion2b'" in r.err and "'openai'" in r.err
