"""The 1,000-class results of docs/results.md on one split, against a float64 reference computed here.

The real CLIP ViT-B/32 ImageNet features and text classifier of the shared fixtures come in through
``gla import``; the zero-shot accuracy and the debiasing gain of one split of
``benchmarks/imagenet_outputs.py`` (seed 0, q at T = 1 from 4 rows per class) are recomputed in
numpy float64 from the fixture's arrays, with the prior solved by Newton's method independently of
``glacli.core.prior``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glacli.cli.main import main
from glacli.io.paramfile import read_prior
from glacli.io.rowfile import read_rows
from conftest import SHARED_FIXTURES

FIXTURE = Path("clip-imagenet") / "in1k_clip_vitb32_fewshot7k.npz"


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The fixture imported with gla (features, head, zero-shot logits of all rows) and its arrays."""
    source = SHARED_FIXTURES / FIXTURE
    if not source.is_file():
        pytest.skip(f"real CLIP ImageNet outputs not available: {source} is absent")
    work = tmp_path_factory.mktemp("imagenet")
    features, head, zeroshot = work / "features.h5", work / "head.h5", work / "zeroshot.h5"
    gla("import", source, "--kind", "features", "--key", "features", "--labels-key", "labels",
        "--classnames-key", "classnames", "-o", features)
    gla("import", source, "--kind", "head", "--key", "text_head", "--normalize-rows",
        "--logit-scale", 100, "--classnames-key", "classnames", "-o", head)
    gla("logits", features, head, "-o", zeroshot)
    arrays = np.load(source)
    return {"work": work, "features": features, "zeroshot": zeroshot, "x": arrays["features"].astype(np.float64),
            "w": arrays["text_head"].astype(np.float64), "labels": arrays["labels"].astype(np.int64)}


def gla(*args: object) -> None:
    assert main([str(a) for a in args]) == 0, args


def reference_logits(data: dict) -> np.ndarray:
    """``100 x cosine`` of features and text classifier, float64."""
    x = data["x"] / np.linalg.norm(data["x"], axis=1, keepdims=True)
    w = data["w"] / np.linalg.norm(data["w"], axis=1, keepdims=True)
    return 100.0 * x @ w.T


def reference_log_prior(z: np.ndarray, f: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """``b = log q`` with ``mean_i softmax(z_i - b) = f`` (the optimum of ``CE(z - b, y)`` on a set
    with class proportions ``f``): fixed-point steps, then Newton on the gradient ``f - mean p``
    with Hessian ``diag(mean p) - mean p p^T`` (``+ 1 1^T`` for the constant direction)."""
    b = np.zeros(z.shape[1])

    def mean_softmax(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = z - b
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return p, p.mean(axis=0)

    for _ in range(20):
        b += np.log(mean_softmax(b)[1]) - np.log(f)
    for _ in range(50):
        p, m = mean_softmax(b)
        gradient = f - m
        if np.abs(gradient).max() < tol:
            break
        hessian = np.diag(m) - p.T @ p / len(z) + 1.0
        b -= np.linalg.solve(hessian, gradient)
    else:
        raise AssertionError("the reference Newton iteration did not converge")
    return b - np.log(np.exp(b).sum())


def evaluate(work: Path, *files: Path) -> list[float]:
    out = work / "result.json"
    gla("evaluate", *files, "--json-out", out)
    return [r["metrics"]["top1"] for r in json.loads(out.read_text())["results"]]


def rows_of(path: Path, features: Path) -> np.ndarray:
    """The fixture's row indices of a file's rows, matched by id."""
    with read_rows(features, "features") as rows:
        index = {id_: i for i, id_ in enumerate(rows.ids())}
    with read_rows(path, "logits") as rows:
        return np.array([index[id_] for id_ in rows.ids()])


def test_zero_shot_accuracy_on_all_rows_is_the_fixtures(imagenet: dict) -> None:
    [top1] = evaluate(imagenet["work"], imagenet["zeroshot"])
    reference = np.mean(reference_logits(imagenet).argmax(axis=1) == imagenet["labels"])
    assert round(100 * reference, 2) == 62.50
    assert abs(top1 - reference) <= 1 / 7000  # float32 logits may flip one near-tie at most


def test_debiasing_gain_of_one_split_matches_a_float64_reference(imagenet: dict) -> None:
    work, zeroshot = imagenet["work"], imagenet["zeroshot"]
    est, test, prior, debiased = (work / f"{name}.h5" for name in ("est", "test", "prior", "debiased"))
    gla("subset", zeroshot, "--shots", 4, "--seed", 0, "-o", est, "--rest-out", test)
    gla("estimate-prior", est, "--temperature", 1, "-o", prior)
    gla("combine", "--zeroshot", test, "--prior", prior, "-o", debiased)
    zs_top1, debiased_top1 = evaluate(work, test, debiased)

    z, labels = reference_logits(imagenet), imagenet["labels"]
    est_rows, test_rows = rows_of(est, imagenet["features"]), rows_of(test, imagenet["features"])
    assert np.bincount(labels[est_rows], minlength=1000).tolist() == [4] * 1000
    assert len(np.intersect1d(est_rows, test_rows)) == 0 and len(test_rows) == 3000
    log_q = reference_log_prior(z[est_rows], np.full(1000, 1e-3))
    np.testing.assert_allclose(read_prior(prior).log_prior, log_q, atol=1e-3)  # float32 logits: ~1e-5

    ref_zs = np.mean(z[test_rows].argmax(axis=1) == labels[test_rows])
    ref_debiased = np.mean((z[test_rows] - log_q).argmax(axis=1) == labels[test_rows])
    assert ref_debiased - ref_zs > 0.005  # the fixture's prior is skewed enough for a clear gain
    assert abs(zs_top1 - ref_zs) <= 2 / 3000
    assert abs(debiased_top1 - ref_debiased) <= 2 / 3000
