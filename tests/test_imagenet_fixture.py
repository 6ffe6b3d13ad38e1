"""Real CLIP ViT-B/32 outputs at ImageNet scale (1,000 classes) through the CLI (issue 23.1): the fixture's
features and text classifier import as gla files, zero-shot top-1 is 62.50% on all 7,000 rows, and q from
the 4-shot rows debiases the other 3,000 rows as a float64 reference computed here says."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glacli.io.paramfile import read_head, read_prior
from glacli.io.rowfile import read_rows

FIXTURE = Path("clip-imagenet") / "in1k_clip_vitb32_fewshot7k.npz"


@pytest.fixture(scope="module")
def fixture_npz() -> Path:
    from conftest import SHARED_FIXTURES
    path = SHARED_FIXTURES / FIXTURE
    if not path.is_file():
        pytest.skip(f"real CLIP ImageNet outputs not available: {path} is absent")
    return path


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100 * float((logits.argmax(1) == labels).mean())


def reference_log_prior(z: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """log q at T = 1 by the fixed point of the optimality condition mean_i softmax(z_i - b) = f (the label
    frequencies), b <- b + log(mean softmax(z - b)) - log f, in float64; normalised so that q sums to 1."""
    target = np.bincount(labels, minlength=n_classes) / len(labels)
    b = np.zeros(n_classes)
    for _ in range(2000):
        a = z - b
        a -= a.max(1, keepdims=True)
        p = np.exp(a)
        p /= p.sum(1, keepdims=True)
        mean = p.mean(0)
        if np.abs(mean - target).max() < 1e-9:
            break
        b += np.log(mean) - np.log(target)
    else:
        raise AssertionError("the reference fixed point did not converge")
    return b - np.log(np.exp(b - b.max()).sum()) - b.max()


def write_rows(source: np.lib.npyio.NpzFile, rows: np.ndarray, path: Path) -> Path:
    """The fixture's entries for a subset of rows, as another tool's cache of those rows would be."""
    np.savez(path, features=source["features"][rows], labels=source["labels"][rows], classnames=source["classnames"])
    return path


def test_imagenet_fixture_through_the_cli(gla, tmp_path, fixture_npz):
    r = gla("import", fixture_npz, "--kind", "features", "--key", "features", "--labels-key", "labels",
            "--classnames-key", "classnames", "-o", tmp_path / "F.h5")
    assert r.code == 0, r.err
    assert "'missile (744)', 'sunglasses (837)'" in r.out and "already unit length" in r.out
    r = gla("import", fixture_npz, "--kind", "head", "--key", "text_head", "--normalize-rows", "--logit-scale", "100",
            "--classnames-key", "classnames", "-o", tmp_path / "H.h5")
    assert r.code == 0, r.err
    with read_rows(tmp_path / "F.h5", "features") as f:
        assert f.dtype == np.float32 and f.n_rows == 7000 and f.n_cols == 512
        assert f.classnames[657] == "missile" and f.classnames[744] == "missile (744)"
        assert f.classnames[836] == "sunglasses" and f.classnames[837] == "sunglasses (837)"
    assert read_head(tmp_path / "H.h5").classnames == f.classnames

    assert gla("logits", tmp_path / "F.h5", tmp_path / "H.h5", "-o", tmp_path / "L.h5").code == 0
    with read_rows(tmp_path / "L.h5", "logits") as logits:
        z, y = logits.read(dtype=np.float64), logits.labels
    assert f"{top1(z, y):.2f}" == "62.50"

    # the reference, in float64 from the fixture's own arrays
    data = np.load(fixture_npz)
    features = data["features"].astype(np.float64)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    text = data["text_head"].astype(np.float64)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    z_ref, labels = 100 * features @ text.T, data["labels"].astype(np.int64)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_allclose(z, z_ref, rtol=0, atol=2e-3)  # float32 features and head, logits of about 30

    # q from the 4-shot rows (T = 1), the debiased zero-shot model on the other 3,000 rows
    estimation, held_out = data["source_shots"] == 4, data["source_shots"] != 4
    assert (estimation.sum(), held_out.sum()) == (4000, 3000)
    for name, rows in (("est", estimation), ("test", held_out)):
        write_rows(data, rows, tmp_path / f"{name}.npz")
        assert gla("import", tmp_path / f"{name}.npz", "--kind", "features", "-o", tmp_path / f"{name}_F.h5").code == 0
        assert gla("logits", tmp_path / f"{name}_F.h5", tmp_path / "H.h5", "-o", tmp_path / f"{name}_L.h5").code == 0
    r = gla("estimate-prior", tmp_path / "est_L.h5", "--temperature", "1", "-o", tmp_path / "q.h5")
    assert r.code == 0, r.err
    r = gla("combine", "--zeroshot", tmp_path / "test_L.h5", "--prior", tmp_path / "q.h5", "-o", tmp_path / "D.h5")
    assert r.code == 0, r.err
    with read_rows(tmp_path / "D.h5", "logits") as debiased:
        gla_debiased = top1(debiased.read(dtype=np.float64), debiased.labels)

    log_q = reference_log_prior(z_ref[estimation], labels[estimation], 1000)
    prior = read_prior(tmp_path / "q.h5")
    np.testing.assert_allclose(prior.log_prior, log_q, rtol=0, atol=1e-4)
    before, after = top1(z_ref[held_out], labels[held_out]), top1(z_ref[held_out] - log_q, labels[held_out])
    assert (f"{before:.2f}", f"{after:.2f}") == ("63.27", "64.80")
    assert f"{top1(z[held_out], y[held_out]):.2f}" == "63.27"
    assert abs(gla_debiased - after) < 0.05  # float32 logits may flip a near-tie: 1 row is 0.033 pp
