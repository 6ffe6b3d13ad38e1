"""``gla logits`` and glacli.core.heads: logits equal (features @ W.T + b) / T, streamed; errors are one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from glacli.base import chunking
from glacli.base.types import Head
from glacli.core.heads import apply_head
from glacli.io import paramfile, rowfile
from glacli.io.paramfile import read_head
from glacli.io.rowfile import read_rows

N, C, D = 53, 6, 16
NAMES = [f"class {k}" for k in range(C)]


def features(n: int = N, d: int = D, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    labels = rng.integers(-1, C, n)  # some rows unlabelled
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def write_features(path: Path, x: np.ndarray, labels: np.ndarray, names: list[str] = NAMES) -> Path:
    rowfile.write_features(path, x, labels, [f"img/{i}.png" for i in range(len(x))], names,
                           attrs={"model": "RN50", "pretrained": "openai"})
    return path


def write_head(path: Path, d: int = D, names: list[str] = NAMES, temperature: float = 2.5) -> Head:
    rng = np.random.default_rng(1)
    head = Head(weight=(rng.normal(size=(len(names), d)) * 30).astype(np.float32),
                bias=rng.normal(size=len(names)).astype(np.float32), classnames=names,
                head_type="linear", temperature=temperature, attrs={"model": "RN50"})
    paramfile.write_head(path, head)
    return head


def test_apply_head_matches_float64_reference() -> None:
    x, _ = features()
    rng = np.random.default_rng(2)
    weight, bias = rng.normal(size=(C, D)), rng.normal(size=C)
    got = apply_head(torch.from_numpy(x).half(), torch.from_numpy(weight), torch.from_numpy(bias), 4.0)
    assert got.dtype == torch.float64
    reference = (x.astype(np.float16).astype(np.float64) @ weight.T + bias) / 4.0
    assert np.allclose(got.numpy(), reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 7])
def test_logits_equal_features_times_head_over_temperature(tmp_path: Path, gla, monkeypatch, chunk) -> None:
    if chunk is not None:  # force many chunks, with a ragged last one, to check the streaming
        monkeypatch.setattr(chunking, "compute_rows", lambda row_bytes, device_type="cpu": chunk)
    x, labels = features()
    feature_file = write_features(tmp_path / "f.h5", x, labels)
    head = write_head(tmp_path / "h.h5")
    r = gla("logits", feature_file, tmp_path / "h.h5", "-o", tmp_path / "l.h5")
    assert r.code == 0, r.err
    stored = read_rows(feature_file, "features")
    with read_rows(tmp_path / "l.h5", "logits") as out, stored:
        expected = (stored.read(dtype=np.float64) @ head.weight.astype(np.float64).T + head.bias) / 2.5
        assert np.allclose(out.read(dtype=np.float64), expected, rtol=1e-5, atol=1e-4)
        assert out.ids() == stored.ids() and (out.labels == labels).all()
        assert out.classnames == NAMES
        assert out.temperature == 2.5 and out.attrs["head_type"] == "linear"
        assert list(out.attrs["parents"]) == [stored.gla_id, read_head(tmp_path / "h.h5").gla_id]


def test_zeroshot_head_type_is_kept(tmp_path: Path, gla) -> None:
    x, labels = features()
    paramfile.write_head(tmp_path / "zs.h5", Head(np.eye(C, D, dtype=np.float32) * 100, np.zeros(C, np.float32),
                                                  NAMES, "zeroshot"))
    r = gla("logits", write_features(tmp_path / "f.h5", x, labels), tmp_path / "zs.h5", "-o", tmp_path / "l.h5")
    assert r.code == 0, r.err
    with read_rows(tmp_path / "l.h5", "logits") as out:
        assert out.attrs["head_type"] == "zeroshot" and out.temperature == 1.0
        assert np.allclose(out.read(), 100 * x[:, :C], atol=1e-1)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    x, labels = features()
    made = {"features": write_features(tmp_path / "f.h5", x, labels)}
    write_head(tmp_path / "head.h5")
    made["head"] = tmp_path / "head.h5"
    write_head(tmp_path / "renamed.h5", names=[f"other {k}" for k in range(C)])
    made["renamed"] = tmp_path / "renamed.h5"
    write_head(tmp_path / "fewer.h5", names=NAMES[:-1])
    made["fewer"] = tmp_path / "fewer.h5"
    write_head(tmp_path / "wide.h5", d=D + 4)
    made["wide"] = tmp_path / "wide.h5"
    made["out"] = tmp_path / "out.h5"
    made["out"].write_bytes(b"keep me")
    return made


LOGITS_ERRORS = {
    "renamed classes": (lambda f: [f["features"], f["renamed"]], ["renamed.h5", "classnames disagree", "class 0"]),
    "fewer classes": (lambda f: [f["features"], f["fewer"]], ["fewer.h5", "has 5 classes", "has 6"]),
    "feature dimension": (lambda f: [f["features"], f["wide"]], ["wide.h5", "20-dimensional", "16"]),
    "head is features": (lambda f: [f["features"], f["features"]], ["f.h5", "'features' file, expected 'head'"]),
    "features is head": (lambda f: [f["head"], f["head"]], ["head.h5", "'head' file, expected 'features'"]),
    "missing head": (lambda f: [f["features"], f["head"].with_name("gone.h5")], ["gone.h5", "no such file"]),
    "not hdf5": (lambda f: [f["out"], f["head"]], ["out.h5", "not an HDF5 file"]),
}


@pytest.mark.parametrize("case", LOGITS_ERRORS)
def test_logits_errors_are_one_line(case: str, inputs: dict[str, Path], gla) -> None:
    make_args, fragments = LOGITS_ERRORS[case]
    r = gla("logits", *make_args(inputs), "-o", inputs["out"])
    assert_one_line_error(r, *fragments)
    assert inputs["out"].read_bytes() == b"keep me"
