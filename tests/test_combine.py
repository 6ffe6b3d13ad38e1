"""``gla combine`` equals its formula (float64 numpy), streams, and refuses files that do not belong together."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_one_line_error
from real import balanced_split, clip_cifar10, wideresnet_cifar10, write_rows
from synth import classnames, write_combine_inputs, write_logits_file
from synth import read_logits as read

from glacli.base import chunking
from glacli.base.types import Prior
from glacli.io.paramfile import write_prior
from glacli.io.rowfile import read_rows, write_features


@pytest.fixture
def files(tmp_path):
    return write_combine_inputs(tmp_path)


def test_gla_equals_the_formula_with_a_training_prior(gla, files):
    r = gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "--finetuned", files / "ft.h5",
            "--source-prior", files / "train.h5", "-o", files / "out.h5")
    assert r.code == 0, r.err
    zs, ft = read(files / "zs.h5")[0], read(files / "ft.h5")[0]
    pi_s = np.array([10, 20, 30, 40]) / 100
    expected = ft + zs / 1.7 - np.log([0.1, 0.2, 0.3, 0.4]) - np.log(pi_s)
    got, attrs = read(files / "out.h5")
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    assert attrs["combine_method"] == "gla" and attrs["zs_temperature"] == 1.7
    assert len(attrs["parents"]) == 4
    with read_rows(files / "out.h5", "logits") as out, read_rows(files / "zs.h5", "logits") as z:
        assert out.ids() == z.ids() and (out.labels == z.labels).all()


def test_debiased_zeroshot_and_ensemble(gla, files):
    zs, ft = read(files / "zs.h5")[0], read(files / "ft.h5")[0]
    assert gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "-o", files / "d.h5").code == 0
    np.testing.assert_allclose(read(files / "d.h5")[0], zs / 1.7 - np.log([0.1, 0.2, 0.3, 0.4]), rtol=1e-6, atol=1e-5)
    r = gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "--finetuned", files / "ft.h5",
            "--method", "ensemble", "--alpha", "0.3", "-o", files / "e.h5")
    assert r.code == 0, r.err
    np.testing.assert_allclose(read(files / "e.h5")[0], 0.7 * zs / 1.7 + 0.3 * ft, rtol=1e-6, atol=1e-5)
    assert read(files / "e.h5")[1]["alpha"] == 0.3


def test_uniform_source_prior_and_prior_file_source(gla, files):
    common = ("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "--finetuned", files / "ft.h5")
    assert gla(*common, "-o", files / "u.h5").code == 0
    assert gla(*common, "--source-prior", files / "q.h5", "-o", files / "p.h5").code == 0
    u, p = read(files / "u.h5")[0], read(files / "p.h5")[0]
    np.testing.assert_allclose(p - u, np.tile(-np.log([0.1, 0.2, 0.3, 0.4]) - np.log(4), (50, 1)), rtol=1e-5, atol=1e-5)


def test_streaming_in_small_chunks_gives_the_same_file(gla, files, monkeypatch):
    common = ("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "--finetuned", files / "ft.h5")
    assert gla(*common, "-o", files / "big.h5").code == 0
    monkeypatch.setattr(chunking, "io_rows", lambda n_cols, itemsize=4: 7)  # 7 rows per chunk
    assert gla(*common, "-o", files / "small.h5").code == 0
    np.testing.assert_array_equal(read(files / "small.h5")[0], read(files / "big.h5")[0])


def test_gla_beats_both_models_on_real_cifar10_outputs(gla, shared_fixtures, tmp_path):
    """CLIP ViT-B/32 zero-shot + a supervised WRN-16-4 (log-probabilities) on the same CIFAR-10 test images."""
    z, y, names = clip_cifar10(shared_fixtures)
    ft, y_ft = wideresnet_cifar10(shared_fixtures)
    assert (y == y_ft).all()
    est_rows, test_rows = balanced_split(y, 50, seed=0)
    write_rows(tmp_path / "est.h5", z, y, names, est_rows, head_type="zeroshot")
    write_rows(tmp_path / "zs.h5", z, y, names, test_rows, head_type="zeroshot")
    write_rows(tmp_path / "ft.h5", ft, y, names, test_rows)
    assert gla("estimate-prior", tmp_path / "est.h5", "-o", tmp_path / "q.h5").code == 0
    r = gla("combine", "--zeroshot", tmp_path / "zs.h5", "--prior", tmp_path / "q.h5", "--finetuned", tmp_path / "ft.h5",
            "-o", tmp_path / "gla.h5")
    assert r.code == 0, r.err
    top1 = {name: (read(tmp_path / f"{name}.h5")[0].argmax(1) == y[test_rows]).mean() for name in ("zs", "ft", "gla")}
    assert top1["gla"] > max(top1["zs"], top1["ft"]) + 0.02, top1


# ----------------------------------------------------------------------------- bad input


def test_refuses_files_that_do_not_belong_together(gla, files):
    write_logits_file(files / "other_ids.h5", np.zeros((50, 4)), read(files / "zs.h5")[0].argmax(1) * 0,
                      ids=[f"x{i}" for i in range(50)])
    r = gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "--finetuned", files / "other_ids.h5",
            "-o", files / "out.h5")
    assert_one_line_error(r, "other_ids.h5", "ids disagree")
    write_logits_file(files / "other_names.h5", np.zeros((50, 4)), None, names=["a", "b", "c", "d"])
    r = gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "--finetuned", files / "other_names.h5",
            "-o", files / "out.h5")
    assert_one_line_error(r, "other_names.h5", "classnames disagree")
    write_prior(files / "q3.h5", Prior(prior=np.full(3, 1 / 3), classnames=classnames(3), temperature=1,
                                       method="fixed"))
    assert_one_line_error(gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q3.h5", "-o", files / "out.h5"),
                          "q3.h5", "3 classes")
    assert not (files / "out.h5").exists()


def test_source_prior_with_an_empty_class(gla, files):
    labels = np.array([0, 0, 1, 2])
    write_features(files / "gap.h5", np.eye(4, 8)[labels], labels, ["a", "b", "c", "d"], classnames(4))
    r = gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "--finetuned", files / "ft.h5",
            "--source-prior", files / "gap.h5", "-o", files / "out.h5")
    assert_one_line_error(r, "gap.h5", "class 'class 3' has no rows", "log pi_s is undefined")


@pytest.mark.parametrize("extra, fragment", [
    (("--method", "ensemble"), "needs --finetuned"),
    (("--method", "ensemble", "--finetuned", "FT", "--alpha", "1.5"), "--alpha in [0, 1]"),
    (("--method", "mean"), "--method"),
    (("--alpha", "0.5"), "--alpha applies to --method ensemble"),
    (("--source-prior", "Q"), "--source-prior needs --finetuned"),
])
def test_nonsensical_option_combinations(gla, files, extra, fragment):
    extra = [str(files / "ft.h5") if e == "FT" else str(files / "q.h5") if e == "Q" else e for e in extra]
    r = gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", *extra, "-o", files / "out.h5")
    assert_one_line_error(r, fragment)


def test_gla_without_prior_and_zero_prior(gla, files):
    assert_one_line_error(gla("combine", "--zeroshot", files / "zs.h5", "-o", files / "out.h5"), "needs --prior")
    import h5py
    with h5py.File(files / "q.h5", "a") as f:
        f["prior"][...] = [0.0, 0.2, 0.4, 0.4]
    combine = ("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "-o", files / "out.h5")
    assert_one_line_error(gla(*combine), "q.h5", "prior and log_prior disagree at entry 0")
    with h5py.File(files / "q.h5", "a") as f:
        del f["log_prior"]  # as in files written before log_prior was stored
    assert_one_line_error(gla(*combine), "q.h5", "positive prior")


@pytest.mark.parametrize("head_type", ["anchored", "prompt"])
def test_warns_once_when_the_finetuned_head_already_holds_the_zeroshot_model(gla, files, head_type):
    with read_rows(files / "ft.h5", "logits") as ft:
        write_logits_file(files / "ft_zs.h5", ft.read(), ft.labels, head_type=head_type)
    common = ("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "-o", files / "out.h5")
    r = gla(*common, "--finetuned", files / "ft_zs.h5")
    assert r.code == 0, r.err
    warnings = [line for line in r.err.splitlines() if "counts it twice" in line]
    assert len(warnings) == 1 and head_type in warnings[0]
    assert "counts it twice" not in gla(*common, "--finetuned", files / "ft.h5").err
