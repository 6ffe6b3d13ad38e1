"""The CUDA paths against the CPU: extract (autocast, --gpu-decode), zeroshot, fit, estimate-prior, evaluate.

Skipped without a CUDA device; ``benchmarks/gpu_check.sh`` runs them on a machine with one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synth import biased_logits, class_features, classnames, write_features, write_logits_file
from tiny_clip import tiny_clip_fixture, write_image_folder  # noqa: F401

from glacli.base.types import Prior
from glacli.io.paramfile import read_head, read_prior, write_prior
from glacli.io.rowfile import read_rows

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def features_of(path: Path) -> tuple[np.ndarray, list[str]]:
    with read_rows(path, "features") as rows:
        return np.concatenate([chunk.values for chunk in rows.iter_chunks()]).astype(np.float64), rows.ids()


def test_extraction_matches_cpu_with_autocast_and_gpu_decode(gla, tiny_clip, tmp_path):
    folder = tmp_path / "imgs"
    write_image_folder(folder, {"tabby_cat": 4, "dog": 3})
    cpu, gpu, decoded = tmp_path / "cpu.h5", tmp_path / "gpu.h5", tmp_path / "dec.h5"
    common = ["--model", tiny_clip.config, "--pretrained", tiny_clip.checkpoint, "--dtype", "float32", "--workers", "2"]
    assert gla("extract", folder, "-o", cpu, *common, "--device", "cpu").code == 0
    assert gla("extract", folder, "-o", gpu, *common, "--device", "cuda").code == 0
    r = gla("extract", folder, "-o", decoded, *common, "--device", "cuda", "--gpu-decode")
    assert r.code == 0, r.err
    (a, ids), (b, _), (c, decoded_ids) = (features_of(p) for p in (cpu, gpu, decoded))
    assert (a * b).sum(1).min() > 0.999  # fp16 autocast
    assert (a * c).sum(1).min() > 0.99  # a different JPEG decoder and resampling
    assert ids == decoded_ids


def test_zeroshot_head_on_cuda_matches_cpu(gla, tiny_clip, tmp_path):
    (tmp_path / "names.txt").write_text("tabby cat\ndog\nsports car\n")
    for device in ("cpu", "cuda"):
        r = gla("zeroshot", "--model", tiny_clip.config, "--pretrained", tiny_clip.checkpoint, "--classnames",
                tmp_path / "names.txt", "--templates", "imagenet", "--device", device, "-o", tmp_path / f"{device}.h5")
        assert r.code == 0, r.err
    a, b = read_head(tmp_path / "cpu.h5"), read_head(tmp_path / "cuda.h5")
    assert np.abs(a.weight - b.weight).max() < 1e-4 * np.abs(a.weight).max()  # text encoder in float32 on both


def fit(gla, train: Path, out: Path, *args: object) -> dict:
    r = gla("fit", train, *args, "-o", out, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_fit_on_cuda_matches_cpu(gla, tmp_path):
    x, y = class_features(3000, 0.5, seed=30)
    train = write_features(tmp_path / "train.h5", x, y)
    exact = ("--wd", "1e-3", "--float64", "--tol", "1e-9")
    fit(gla, train, tmp_path / "cpu64.h5", *exact, "--device", "cpu")
    fit(gla, train, tmp_path / "cuda64.h5", *exact, "--device", "cuda")
    a, b = read_head(tmp_path / "cpu64.h5"), read_head(tmp_path / "cuda64.h5")
    assert np.abs(a.weight - b.weight).max() < 1e-5 and np.abs(a.bias - b.bias).max() < 1e-5
    # float32, the default: the same optimum to float32 working precision.
    cpu = fit(gla, train, tmp_path / "cpu32.h5", "--wd", "1e-3", "--device", "cpu")
    cuda = fit(gla, train, tmp_path / "cuda32.h5", "--wd", "1e-3", "--device", "cuda")
    assert cuda["device"].startswith("cuda") and cpu["device"] == "cpu"
    assert cuda["final_loss"] == pytest.approx(cpu["final_loss"], rel=1e-5)


def test_fit_streamed_to_cuda_matches_features_held_on_cuda(gla, tmp_path):
    x, y = class_features(2000, 0.5, seed=31)
    train = write_features(tmp_path / "train.h5", x, y)
    common = ("--wd", "1e-3", "--float64", "--tol", "1e-9", "--device", "cuda")
    fit(gla, train, tmp_path / "held.h5", *common)
    fit(gla, train, tmp_path / "streamed.h5", *common, "--memory", "1e-9")
    a, b = read_head(tmp_path / "held.h5"), read_head(tmp_path / "streamed.h5")
    assert np.abs(a.weight - b.weight).max() < 1e-5


def test_penalty_search_on_cuda_chooses_what_the_cpu_chooses(gla, tmp_path):
    x, y = class_features(1500, 0.4, seed=32)
    xv, yv = class_features(600, 0.4, seed=33)
    train, val = write_features(tmp_path / "train.h5", x, y), write_features(tmp_path / "val.h5", xv, yv)
    cpu = fit(gla, train, tmp_path / "cpu.h5", "--val", val, "--float64", "--device", "cpu")
    cuda = fit(gla, train, tmp_path / "cuda.h5", "--val", val, "--float64", "--device", "cuda")
    assert cuda["wd"] == cpu["wd"] and cuda["val_accuracy"] == cpu["val_accuracy"]
    assert cuda["temperature"] == pytest.approx(cpu["temperature"], rel=1e-4)


def test_estimate_prior_on_cuda_matches_cpu(gla, tmp_path):
    z, y, _ = biased_logits(60, 10, seed=34, temperature=1.5)
    logits = write_logits_file(tmp_path / "zs.h5", z, y)
    for device in ("cpu", "cuda"):
        r = gla("estimate-prior", logits, "-o", tmp_path / f"{device}.h5", "--device", device)
        assert r.code == 0, r.err
    a, b = read_prior(tmp_path / "cpu.h5"), read_prior(tmp_path / "cuda.h5")
    np.testing.assert_allclose(b.prior, a.prior, rtol=1e-6)
    assert b.temperature == pytest.approx(a.temperature, rel=1e-6)


def test_evaluate_on_cuda_matches_cpu(gla, tmp_path):
    z, y, q = biased_logits(40, 8, seed=35)
    logits = write_logits_file(tmp_path / "zs.h5", z, y)
    write_prior(tmp_path / "prior.h5", Prior(q, classnames(8), 1.0, "test"))
    docs = {}
    for device in ("cpu", "cuda"):
        r = gla("evaluate", logits, "--prior", tmp_path / "prior.h5", "--device", device,
                "--json-out", tmp_path / f"{device}.json")
        assert r.code == 0, r.err
        docs[device] = json.loads((tmp_path / f"{device}.json").read_text())
    cpu, cuda = (docs[d]["results"] for d in ("cpu", "cuda"))
    assert len(cpu) == len(cuda) > 0
    for a, b in zip(cpu, cuda):
        for key, value in a["metrics"].items():
            assert b["metrics"][key] == (value if value is None else pytest.approx(value, rel=1e-6, abs=1e-9)), key
