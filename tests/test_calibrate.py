"""``gla calibrate``: the NLL-optimal temperature, applied and recorded; real CIFAR-10 outputs; errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from synth import classnames, write_logits_file

from glacli.io.rowfile import read_rows, write_features

C = 8


def overconfident_logits(n: int, seed: int, scale: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(g); the logits are ``scale * g``, so the true temperature is ``scale``."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, C)) * 1.5
    p = np.exp(g - g.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1).astype(np.int64)
    return scale * g, labels


def nll64(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    return float((np.log(np.exp(z).sum(1)) - z[np.arange(len(labels)), labels]).mean())


def test_finds_the_nll_optimum_of_a_brute_force_search(tmp_path: Path, gla) -> None:
    val_z, val_y = overconfident_logits(3000, seed=0)
    test_z, test_y = overconfident_logits(500, seed=1)
    val = write_logits_file(tmp_path / "val.h5", val_z.astype(np.float32), val_y)
    test = write_logits_file(tmp_path / "test.h5", test_z.astype(np.float32), test_y)
    r = gla("calibrate", test, "--val", val, "-o", tmp_path / "out.h5", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    fitted = report["temperature"]
    stored_val = val_z.astype(np.float32).astype(np.float64)
    grid = np.exp(np.linspace(np.log(0.5), np.log(50.0), 4001))  # steps of 0.12%
    losses = np.array([nll64(stored_val, val_y, t) for t in grid])
    best = grid[losses.argmin()]
    assert fitted == pytest.approx(best, rel=2e-3)
    assert nll64(stored_val, val_y, fitted) <= losses.min() + 1e-9
    assert fitted == pytest.approx(6.0, rel=0.1)  # and it recovers the true temperature
    assert report["val_nll_after"] == pytest.approx(nll64(stored_val, val_y, fitted), rel=1e-6)
    assert report["val_nll_after"] < report["val_nll_before"]
    with read_rows(tmp_path / "out.h5", "logits") as out, read_rows(test, "logits") as src:
        assert np.allclose(out.read(dtype=np.float64), src.read(dtype=np.float64) / fitted, rtol=1e-6, atol=1e-6)
        assert out.temperature == pytest.approx(fitted)
        assert out.ids() == src.ids() and (out.labels == test_y).all() and out.classnames == classnames(C)
        assert out.attrs["calibration_method"] == "nll"
        with read_rows(val, "logits") as v:
            assert list(out.attrs["parents"]) == [src.gla_id, v.gla_id]


def test_total_temperature_multiplies_the_one_already_applied(tmp_path: Path, gla) -> None:
    val_z, val_y = overconfident_logits(1000, seed=2)
    val = write_logits_file(tmp_path / "val.h5", val_z / 2.0, val_y, temperature=2.0, head_type="linear")
    test = write_logits_file(tmp_path / "test.h5", val_z[:100] / 2.0, val_y[:100], temperature=2.0,
                             head_type="linear")
    r = gla("calibrate", test, "--val", val, "-o", tmp_path / "out.h5", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["total_temperature"] == pytest.approx(2.0 * report["temperature"])
    with read_rows(tmp_path / "out.h5", "logits") as out:
        assert out.temperature == pytest.approx(report["total_temperature"])
        assert out.attrs["head_type"] == "linear"
        # Relative to the raw logits, the file now holds raw / total temperature.
        assert np.allclose(out.read(dtype=np.float64), val_z[:100] / out.temperature, rtol=1e-5, atol=1e-5)


def test_confidence_method_matches_mean_confidence_to_accuracy(tmp_path: Path, gla) -> None:
    val_z, val_y = overconfident_logits(2000, seed=3)
    val = write_logits_file(tmp_path / "val.h5", val_z, val_y)
    r = gla("calibrate", val, "--val", val, "--method", "confidence", "-o", tmp_path / "out.h5", "--json")
    assert r.code == 0, r.err
    with read_rows(tmp_path / "out.h5", "logits") as out:
        z = out.read(dtype=np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert p.max(1).mean() == pytest.approx((z.argmax(1) == val_y).mean(), abs=1e-5)  # float32 file
    r = gla("calibrate", val, "--val", val, "-o", tmp_path / "table.h5")
    assert r.code == 0 and "fitted T" in r.out


def test_real_cifar10_calibrating_both_models_before_summing_helps(tmp_path: Path, gla, shared_fixtures: Path) -> None:
    """CLIP ViT-B/32 zero-shot logits + a WideResNet's log-probabilities on the CIFAR-10 test set.

    Measured (seeds 0-2 of this split): summing the raw outputs gives 94.3-94.8% top-1 on the test
    half, summing after calibrating each on the val half 95.3-95.9%; the supervised model is
    overconfident (T about 2), CLIP underconfident at its logit scale (T about 0.7).
    """
    raw = np.loadtxt(shared_fixtures / "clip-zeroshot" / "Clip_CIFAR10_CIFAR10_test.csv", delimiter=",",
                     skiprows=1)
    with open(shared_fixtures / "clip-zeroshot" / "Clip_CIFAR10_CIFAR10_test.csv") as f:
        names = f.readline().strip().split(",")[:10]
    zs, labels, instance = raw[:, :10], raw[:, 10].astype(np.int64), raw[:, 11].astype(np.int64)
    supervised = np.load(shared_fixtures / "supervised" / "wideresnet-16-4-cifar-10.npz")
    assert (instance == np.arange(len(labels))).all() and (supervised["ground_truth"] == labels).all()
    ft = np.log(supervised["predictions"].astype(np.float64))
    order = np.random.default_rng(0).permutation(len(labels))
    halves = {"val": np.sort(order[:5000]), "test": np.sort(order[5000:])}
    paths = {}
    for model, z in (("zs", zs), ("ft", ft)):
        for half, rows in halves.items():
            paths[model, half] = write_logits_file(tmp_path / f"{model}_{half}.h5", z[rows].astype(np.float32),
                                                   labels[rows], names=names, ids=[f"cifar10/{i}" for i in rows])
        r = gla("calibrate", paths[model, "test"], "--val", paths[model, "val"], "-o", tmp_path / f"{model}_cal.h5",
                "--json")
        assert r.code == 0, r.err
        paths[model, "cal"] = tmp_path / f"{model}_cal.h5"
        paths[model, "T"] = json.loads(r.out)["temperature"]
    assert paths["ft", "T"] > 1.5 and paths["zs", "T"] < 0.9

    def read(path: Path) -> np.ndarray:
        with read_rows(path, "logits") as f:
            return f.read(dtype=np.float64)

    y = labels[halves["test"]]
    raw_sum = ((read(paths["zs", "test"]) + read(paths["ft", "test"])).argmax(1) == y).mean()
    calibrated_sum = ((read(paths["zs", "cal"]) + read(paths["ft", "cal"])).argmax(1) == y).mean()
    assert 0.94 < raw_sum < 0.95
    assert calibrated_sum >= raw_sum + 0.008


# --------------------------------------------------------------------------- errors


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    z, y = overconfident_logits(200, seed=4)
    made = {
        "logits": write_logits_file(tmp_path / "logits.h5", z, y),
        "val": write_logits_file(tmp_path / "val.h5", z, y),
        "unlabelled": write_logits_file(tmp_path / "unlabelled.h5", z),
        "renamed": write_logits_file(tmp_path / "renamed.h5", z, y, names=[f"other {k}" for k in range(C)]),
        "fewer": write_logits_file(tmp_path / "fewer.h5", z[:, :-1], y.clip(max=C - 2)),
        "scaled": write_logits_file(tmp_path / "scaled.h5", z, y, temperature=3.0),
        "chance": write_logits_file(tmp_path / "chance.h5", np.zeros((200, C)), y),
    }
    write_features(tmp_path / "features.h5", np.eye(200, 4, dtype=np.float32), y,
                   [str(i) for i in range(200)], classnames(C))
    made["features"] = tmp_path / "features.h5"
    made["out"] = tmp_path / "out.h5"
    made["out"].write_bytes(b"keep me")
    return made


CALIBRATE_ERRORS = {
    "val without labels": (lambda f: [f["logits"], "--val", f["unlabelled"]], ["unlabelled.h5", "without labels"]),
    "renamed classes": (lambda f: [f["logits"], "--val", f["renamed"]], ["renamed.h5", "classnames disagree"]),
    "fewer classes": (lambda f: [f["logits"], "--val", f["fewer"]], ["fewer.h5", "has 7 classes", "has 8"]),
    "different temperature": (lambda f: [f["logits"], "--val", f["scaled"]],
                              ["scaled.h5", "temperature 3", "same scale"]),
    "bad method": (lambda f: [f["logits"], "--val", f["val"], "--method", "ece"], ["--method", "'ece'"]),
    "val is features": (lambda f: [f["logits"], "--val", f["features"]], ["features.h5", "expected 'logits'"]),
    "input is features": (lambda f: [f["features"], "--val", f["val"]], ["features.h5", "expected 'logits'"]),
    "confidence at chance": (lambda f: [f["logits"], "--val", f["chance"], "--method", "confidence"],
                             ["chance.h5", "chance"]),
    "missing val": (lambda f: [f["logits"], "--val", f["val"].with_name("gone.h5")], ["gone.h5", "no such file"]),
}


@pytest.mark.parametrize("case", CALIBRATE_ERRORS)
def test_calibrate_errors_are_one_line(case: str, inputs: dict[str, Path], gla) -> None:
    make_args, fragments = CALIBRATE_ERRORS[case]
    r = gla("calibrate", *make_args(inputs), "-o", inputs["out"])
    assert_one_line_error(r, *fragments)
    assert inputs["out"].read_bytes() == b"keep me"
