"""Plausible mistakes in combine, estimate-prior, estimate-target and evaluate are refused or warned about, never
silently computed: debiasing twice, a prior of another model, rows a fit has seen, an uncalibrated fine-tuned
model, and label shift that raises top-1 by no longer telling the classes apart (DermaMNIST, real CLIP outputs)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from real import balanced_split, clip_cifar10, write_rows
from synth import class_features, classnames, write_combine_inputs, write_features, write_logits_file
from synth import read_logits as read

from glacli.base.types import Prior
from glacli.io import rowfile
from glacli.io.h5file import open_h5
from glacli.io.paramfile import read_prior, write_prior
from glacli.io.rowfile import read_rows, write_logits


@pytest.fixture
def files(tmp_path):
    return write_combine_inputs(tmp_path)


def warnings_in(err: str, fragment: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:") and fragment in line]


def assert_nothing_written(folder: Path, name: str) -> None:
    """Neither the output nor a temporary file of it is left in ``folder``."""
    assert not (folder / name).exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(f".{name}.tmp-")]


# ----------------------------------------------------------------------------- debiasing twice


def test_an_output_of_combine_is_refused_as_zeroshot_input(gla, files):
    common = ("combine", "--prior", files / "q.h5")
    assert gla(*common, "--zeroshot", files / "zs.h5", "-o", files / "debiased.h5").code == 0
    r = gla(*common, "--zeroshot", files / "debiased.h5", "-o", files / "twice.h5")
    assert_one_line_error(r, "debiased.h5", "already an output of gla combine", "debiased_zeroshot")
    assert_nothing_written(files, "twice.h5")

    assert gla(*common, "--zeroshot", files / "zs.h5", "--finetuned", files / "ft.h5", "-o", files / "gla.h5").code == 0
    assert gla("calibrate", files / "gla.h5", "--val", files / "gla.h5", "-o", files / "gla_cal.h5").code == 0
    r = gla(*common, "--zeroshot", files / "gla_cal.h5", "-o", files / "twice.h5")
    assert_one_line_error(r, "gla_cal.h5", "combine_method gla (then calibrated)")
    assert_nothing_written(files, "twice.h5")


@pytest.mark.parametrize("made", ["debiased_zeroshot", "gla", "ensemble"])
def test_an_output_of_combine_is_refused_as_finetuned_input(gla, files, made):
    zs = read(files / "zs.h5")[0]
    with read_rows(files / "zs.h5", "logits") as f:
        labels = f.labels
    write_logits_file(files / "made.h5", zs, labels, combine_method=made)
    r = gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "--finetuned", files / "made.h5",
            "-o", files / "out.h5")
    assert_one_line_error(r, "made.h5", f"combine_method {made}", "not a fine-tuned model's logits")
    assert_nothing_written(files, "out.h5")


# ----------------------------------------------------------------------------- a prior of another model


def cifar_pair(fixtures: Path, tmp: Path, model: str, pretrained: str) -> tuple[Path, Path, np.ndarray]:
    """q estimated on 50 CLIP images a class (recording CLIP's head), and the test rows of ``model``."""
    z, y, names = clip_cifar10(fixtures)
    est_rows, test_rows = balanced_split(y, 50, seed=0)
    clip = {"head_type": "zeroshot", "model": "ViT-B-32", "pretrained": "openai", "head_id": "clip-head"}
    write_rows(tmp / "est.h5", z, y, names, est_rows, **clip)
    source = "SigLIP" if model != "ViT-B-32" else "Clip"
    table = np.loadtxt(fixtures / "clip-zeroshot" / f"{source}_CIFAR10_CIFAR10_test.csv", delimiter=",", skiprows=1)
    assert (table[:, 10] == y).all()
    write_rows(tmp / "test.h5", table[:, :10], y, names, test_rows, head_type="zeroshot", model=model,
               pretrained=pretrained, head_id=f"{source}-head")
    return tmp / "est.h5", tmp / "test.h5", y[test_rows]


def test_a_prior_of_another_model_is_refused_unless_forced(gla, shared_fixtures, tmp_path):
    """CLIP's q on SigLIP logits (both files record their model, as gla logits does)."""
    est, test, labels = cifar_pair(shared_fixtures, tmp_path, "ViT-B-16-SigLIP", "webli")
    assert gla("estimate-prior", est, "-o", tmp_path / "q.h5").code == 0
    q = read_prior(tmp_path / "q.h5")
    assert (q.attrs["zeroshot_model"], q.attrs["zeroshot_pretrained"], q.attrs["zeroshot_head_id"]) == \
        ("ViT-B-32", "openai", "clip-head")
    combine = ("combine", "--zeroshot", test, "--prior", tmp_path / "q.h5", "-o", tmp_path / "out.h5")
    assert_one_line_error(gla(*combine), "test.h5", "another model", "model 'ViT-B-16-SigLIP' (q: 'ViT-B-32')",
                          "pretrained 'webli' (q: 'openai')", "--allow-other-model")
    assert_nothing_written(tmp_path, "out.h5")
    r = gla(*combine, "--allow-other-model")
    assert r.code == 0, r.err
    assert len(warnings_in(r.err, "another model")) == 1
    assert (read(tmp_path / "out.h5")[0].argmax(1) == labels).mean() > 0.5


def test_logits_that_record_no_model_are_said_to_be_unchecked(gla, shared_fixtures, tmp_path):
    est, test, _ = cifar_pair(shared_fixtures, tmp_path, "ViT-B-32", "openai")
    assert gla("estimate-prior", est, "-o", tmp_path / "q.h5").code == 0
    with read_rows(test, "logits") as f:   # as imported from another tool: no model recorded
        write_logits_file(tmp_path / "imported.h5", f.read(), f.labels, names=f.classnames, ids=f.ids())
    r = gla("combine", "--zeroshot", tmp_path / "imported.h5", "--prior", tmp_path / "q.h5", "-o", tmp_path / "o.h5")
    assert r.code == 0 and len(warnings_in(r.err, "records no model, so nothing checks")) == 1, r.err


def test_another_head_of_the_same_model_is_warned_about_in_one_line(gla, shared_fixtures, tmp_path):
    est, test, _ = cifar_pair(shared_fixtures, tmp_path, "ViT-B-32", "openai")   # same model, another head id
    assert gla("estimate-prior", est, "-o", tmp_path / "q.h5").code == 0
    r = gla("combine", "--zeroshot", test, "--prior", tmp_path / "q.h5", "-o", tmp_path / "out.h5")
    assert r.code == 0, r.err
    assert len(warnings_in(r.err, "another zero-shot head")) == 1 and not warnings_in(r.err, "another model")


# ----------------------------------------------------------------------------- leakage


def test_row_hashes_follow_the_documented_fnv1a_and_ignore_scale():
    from glacli.io import fitted_ids

    def fnv1a(data: bytes, h: int = 0xCBF29CE484222325) -> int:
        for byte in data:
            h = ((h ^ byte) * 0x100000001B3) % 2**64
        return h

    assert [int(h) for h in fitted_ids.id_hashes(["", "a", "é/ü.jpg"])] == [fnv1a(s.encode()) for s in
                                                                           ("", "a", "é/ü.jpg")]
    values = np.random.default_rng(0).normal(size=(3, 7))
    u = values - values.mean(1, keepdims=True)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    digest = np.rint(u @ np.random.default_rng(7).standard_normal((7, 2)) * 100).astype("<i8")
    expected = [fnv1a(digest[i].tobytes(), fnv1a(f"r{i}".encode())) for i in range(3)]
    ids = ["r0", "r1", "r2"]
    assert [int(h) for h in fitted_ids.row_hashes(ids, values)] == expected
    np.testing.assert_array_equal(fitted_ids.row_hashes(ids, values / 3.7 + 2), fitted_ids.row_hashes(ids, values))
    assert (fitted_ids.row_hashes(ids, values[[1, 2, 0]]) != fitted_ids.row_hashes(ids, values)).all()


def test_rows_q_was_estimated_on_are_counted_by_combine_and_evaluate(gla, shared_fixtures, tmp_path):
    from glacli.io import fitted_ids

    z, y, names = clip_cifar10(shared_fixtures)
    est_rows, test_rows = balanced_split(y, 50, seed=0)
    write_rows(tmp_path / "est.h5", z, y, names, est_rows)
    write_rows(tmp_path / "clean.h5", z, y, names, test_rows)
    leaky = np.sort(np.concatenate([test_rows[:2000], est_rows[:123]]))
    write_rows(tmp_path / "leaky.h5", z, y, names, leaky)
    assert gla("estimate-prior", tmp_path / "est.h5", "-o", tmp_path / "q.h5").code == 0
    with open_h5(tmp_path / "q.h5") as f:
        assert f[fitted_ids.DATASET].shape == (500,) and f[fitted_ids.DATASET].dtype == np.uint64

    r = gla("combine", "--zeroshot", tmp_path / "leaky.h5", "--prior", tmp_path / "q.h5", "-o", tmp_path / "d.h5")
    assert r.code == 0, r.err
    assert len(warnings_in(r.err, "123 of the 2123 rows of")) == 1
    assert read(tmp_path / "d.h5")[1]["prior_fitted_rows"] == 123
    r = gla("evaluate", tmp_path / "d.h5")
    assert r.code == 0 and len(warnings_in(r.err, "123 of its 2123 rows were used to estimate its q")) == 1, r.err

    r = gla("combine", "--zeroshot", tmp_path / "clean.h5", "--prior", tmp_path / "q.h5", "-o", tmp_path / "c.h5")
    assert r.code == 0 and not warnings_in(r.err, "were used")
    assert not warnings_in(gla("evaluate", tmp_path / "c.h5").err, "were used")


def test_ids_that_only_number_the_rows_of_each_split_are_not_taken_for_the_same_rows(gla, tmp_path):
    """CSV exports number every split 0, 1, ...: same ids, other images; only the values tell them apart."""
    rng = np.random.default_rng(3)
    ids = [str(i) for i in range(400)]
    train, test = rng.normal(size=(400, 5)) * 3, rng.normal(size=(400, 5)) * 3
    labels = np.repeat(np.arange(5), 80)
    write_logits_file(tmp_path / "train.h5", train, labels, ids=ids)
    write_logits_file(tmp_path / "test.h5", test, labels, ids=ids)
    write_logits_file(tmp_path / "train_again.h5", train / 2.5, labels, ids=ids)   # the same rows at another scale
    assert gla("estimate-prior", tmp_path / "train.h5", "--temperature", "1", "-o", tmp_path / "q.h5").code == 0
    combine = ("combine", "--prior", tmp_path / "q.h5", "-o", tmp_path / "out.h5", "--zeroshot")
    assert not warnings_in(gla(*combine, tmp_path / "test.h5").err, "were used")
    assert len(warnings_in(gla(*combine, tmp_path / "train_again.h5").err, "400 of the 400 rows")) == 1


def test_rows_a_head_was_fitted_or_validated_on_are_counted(gla, tmp_path):
    from glacli.io import fitted_ids

    x, y = class_features(300, 2.0, seed=0)
    write_features(tmp_path / "all.h5", x, y)
    with read_rows(tmp_path / "all.h5", "features") as f:
        ids = f.ids()
    names = classnames(5)
    attrs = {"model": "ViT-B-32", "pretrained": "synthetic"}
    for name, rows in (("train", slice(0, 100)), ("val", slice(100, 150)), ("test", slice(150, 300))):
        rowfile.write_features(tmp_path / f"{name}.h5", x[rows], y[rows], ids[rows], names, attrs=attrs,
                               dtype=np.float32)
    assert gla("fit", tmp_path / "train.h5", "--val", tmp_path / "val.h5", "-o", tmp_path / "head.h5").code == 0
    with open_h5(tmp_path / "head.h5") as f:
        assert f[fitted_ids.DATASET].shape == (150,)
    r = gla("logits", tmp_path / "all.h5", tmp_path / "head.h5", "-o", tmp_path / "all_logits.h5")
    assert r.code == 0 and len(warnings_in(r.err, "150 of the 300 rows")) == 1, r.err
    assert read(tmp_path / "all_logits.h5")[1]["head_fitted_rows"] == 150
    r = gla("evaluate", tmp_path / "all_logits.h5")
    assert len(warnings_in(r.err, "150 of its 300 rows were used to fit its head")) == 1, r.err
    r = gla("logits", tmp_path / "test.h5", tmp_path / "head.h5", "-o", tmp_path / "test_logits.h5")
    assert r.code == 0 and not warnings_in(r.err, "were used")
    assert not warnings_in(gla("evaluate", tmp_path / "test_logits.h5").err, "were used")

    write_logits_file(tmp_path / "zs.h5", np.zeros((300, 5)), y, ids=ids)
    write_prior(tmp_path / "q.h5", Prior(prior=np.full(5, 0.2), classnames=names, temperature=1.0,
                                         method="fixed"))
    r = gla("combine", "--zeroshot", tmp_path / "zs.h5", "--prior", tmp_path / "q.h5", "--finetuned",
            tmp_path / "all_logits.h5", "-o", tmp_path / "gla.h5")
    assert r.code == 0 and len(warnings_in(r.err, "150 of the 300 rows")) == 1, r.err
    assert read(tmp_path / "gla.h5")[1]["head_fitted_rows"] == 150


# ----------------------------------------------------------------------------- calibration, ensemble alpha


@pytest.mark.parametrize("attrs, why", [({"from_probabilities": True}, "made from probabilities"),
                                        ({"head_type": "linear"}, "uncalibrated 'linear' head")])
def test_an_uncalibrated_finetuned_file_is_warned_about_until_calibrated(gla, files, attrs, why):
    ft, _ = read(files / "ft.h5")
    with read_rows(files / "ft.h5", "logits") as f:
        labels = f.labels
    write_logits_file(files / "raw.h5", ft, labels, **attrs)
    combine = ("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "-o", files / "out.h5",
               "--finetuned")
    r = gla(*combine, files / "raw.h5")
    assert r.code == 0 and len(warnings_in(r.err, why)) == 1 and "gla calibrate" in r.err, r.err
    assert gla("calibrate", files / "raw.h5", "--val", files / "raw.h5", "-o", files / "cal.h5").code == 0
    assert not warnings_in(gla(*combine, files / "cal.h5").err, "no calibration record")
    write_logits_file(files / "fitted.h5", ft, labels, head_type="linear", temperature=1.3)   # T fitted by gla fit
    assert not warnings_in(gla(*combine, files / "fitted.h5").err, "no calibration record")


def test_ensemble_without_alpha_takes_and_records_one_half(gla, files):
    r = gla("combine", "--zeroshot", files / "zs.h5", "--prior", files / "q.h5", "--finetuned", files / "ft.h5",
            "--method", "ensemble", "-o", files / "e.h5")
    assert r.code == 0, r.err
    zs, ft = read(files / "zs.h5")[0], read(files / "ft.h5")[0]
    values, attrs = read(files / "e.h5")
    np.testing.assert_allclose(values, 0.5 * zs / 1.7 + 0.5 * ft, rtol=1e-6, atol=1e-5)
    assert attrs["alpha"] == 0.5


# ----------------------------------------------------------------------------- label shift that misleads


def dermamnist(fixtures: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CLIP ViT-B/32 zero-shot logits on DermaMNIST (7 classes, one of them 67% of the rows)."""
    path = fixtures / "clip-zeroshot" / f"Clip_DermaMNIST_DermaMNIST_{split}.csv"
    header = path.open().readline().strip().split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    n_classes = header.index("target-0")
    return table[:, :n_classes], table[:, n_classes].astype(np.int64), header[:n_classes]


@pytest.fixture
def derma(gla, shared_fixtures, tmp_path):
    """q from the train split (estimate-prior's report), the debiased train and test logits."""
    for split in ("train", "test"):
        z, y, names = dermamnist(shared_fixtures, split)
        write_logits(tmp_path / f"{split}.h5", z, y, [f"derma/{split}/{i}" for i in range(len(y))], names)
    r = gla("estimate-prior", tmp_path / "train.h5", "-o", tmp_path / "q.h5", "--json")
    assert r.code == 0, r.err
    for split in ("train", "test"):
        assert gla("combine", "--zeroshot", tmp_path / f"{split}.h5", "--prior", tmp_path / "q.h5",
                   "-o", tmp_path / f"{split}_debiased.h5").code == 0
    return tmp_path, r


def test_estimate_prior_warns_when_debiasing_lowers_both_accuracies_on_its_own_rows(derma, gla, shared_fixtures):
    _, r = derma
    report = json.loads(r.out)
    assert (round(report["top1_before"], 2), round(report["top1_after"], 2)) == (23.65, 15.61)
    assert report["mean_per_class_after"] < report["mean_per_class_before"]
    assert len(warnings_in(r.err, "debiasing lowers top-1 (23.65 -> 15.61) and mean per-class accuracy")) == 1

    z, y, names = clip_cifar10(shared_fixtures)               # where debiasing helps: no warning
    est_rows, _ = balanced_split(y, 50, seed=0)
    tmp = derma[0]
    write_rows(tmp / "cifar.h5", z, y, names, est_rows)
    r = gla("estimate-prior", tmp / "cifar.h5", "-o", tmp / "cq.h5")
    assert r.code == 0 and not warnings_in(r.err, "debiasing lowers"), r.err


def test_estimate_target_warns_on_a_model_near_chance(derma, gla):
    tmp, _ = derma
    r = gla("estimate-target", tmp / "test_debiased.h5", "--method", "bbse", "--val", tmp / "train_debiased.h5",
            "-o", tmp / "bbse.h5", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["kkt_gap"] > 0.1 and len(report["warnings"]) == 3
    assert len(warnings_in(r.err, "BBSE system is far from solved (residual 0.133 > 0.05)")) == 1
    assert len(warnings_in(r.err, "less than 1% on 5 of the 7 classes")) == 1
    assert len(warnings_in(r.err, "mean per-class accuracy is 15.63%, near chance (14.29%)")) == 1
    r = gla("estimate-target", tmp / "test.h5", "--calibrate", tmp / "train.h5", "-o", tmp / "bcts.h5")
    assert r.code == 0 and len(warnings_in(r.err, "near chance")) == 1, r.err


def test_estimate_target_is_quiet_on_a_model_that_tells_the_classes_apart(gla, shared_fixtures, tmp_path):
    z, y, names = clip_cifar10(shared_fixtures)
    est_rows, test_rows = balanced_split(y, 50, seed=0)
    write_rows(tmp_path / "est.h5", z, y, names, est_rows)
    write_rows(tmp_path / "test.h5", z, y, names, test_rows)
    r = gla("estimate-target", tmp_path / "test.h5", "--method", "bbse", "--val", tmp_path / "est.h5",
            "-o", tmp_path / "t.h5", "--json")
    assert r.code == 0 and json.loads(r.out)["warnings"] == [] and "warning:" not in r.err, r.err


def test_evaluate_puts_mean_per_class_beside_top1_and_flags_a_majority_vote(derma, gla):
    tmp, _ = derma
    assert gla("estimate-target", tmp / "test_debiased.h5", "-o", tmp / "target.h5").code == 0
    assert gla("combine", "--zeroshot", tmp / "test.h5", "--prior", tmp / "q.h5", "--target-prior", tmp / "target.h5",
               "-o", tmp / "adapted.h5").code == 0
    files = (tmp / "test.h5", tmp / "adapted.h5", "--name", "zero-shot", "--name", "adapted")
    r = gla("evaluate", *files, "--bootstrap", "50", "--baseline", "zero-shot")
    assert r.code == 0, r.err
    flags = warnings_in(r.err, "adapted: top-1 rises over zero-shot (+40.50 pp) while mean per-class accuracy is "
                               "14.20%, below chance + 1 pp (15.29%)")
    assert len(flags) == 1, r.err
    difference = r.out[r.out.index("difference to zero-shot"):].splitlines()
    rows = [line.split()[0] + (" " + line.split()[1] if line.split()[0] == "mean" else "")
            for line in difference[3:6]]
    assert rows == ["top-1", "mean per", "top-5"], difference
    document = json.loads(gla("evaluate", *files, "--json").out)
    assert document["label_shift"] is True and len(document["warnings"]) == 1

    r = gla("evaluate", tmp / "test.h5", tmp / "test_debiased.h5", "--bootstrap", "50", "--baseline", "test")
    assert r.code == 0 and "top-1 rises" not in r.err
    difference = r.out[r.out.index("difference to test"):].splitlines()
    assert [line.split()[0] for line in difference[3:5]] == ["top-1", "top-5"], difference
