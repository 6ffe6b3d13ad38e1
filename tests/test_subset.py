"""gla subset: class-balanced, deterministic, disjoint few-shot splits that keep the input's rows and provenance."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error
from synth import classnames, write_logits_file
from tiny_clip import tiny_clip_fixture, write_image_folder  # noqa: F401

from glacli.base import chunking
from glacli.base.types import Prior
from glacli.core.subset import NotEnoughRows, few_shot_split, shot_keys
from glacli.io.paramfile import write_prior
from glacli.io.rowfile import read_rows, write_features

COUNTS = [12, 9, 20, 7]


def labels_with_counts(counts: list[int], seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)


def split(labels: np.ndarray, n_classes: int, shots: int, seed: int, val_shots: int = 0, **kwargs):
    """``few_shot_split`` of rows whose ids are ``img/0000.jpg``, ``img/0001.jpg``, ... (as in ``features_file``)."""
    keys = shot_keys([f"img/{i:04d}.jpg" for i in range(len(labels))], seed)
    return few_shot_split(labels, keys, n_classes, shots, val_shots, **kwargs)


# --------------------------------------------------------------------------- the selection (pure)


def test_split_is_balanced_disjoint_sorted_and_covers_all_rows():
    labels = labels_with_counts(COUNTS)
    s = split(labels, 4, shots=4, seed=3, val_shots=2)
    assert np.bincount(labels[s.train], minlength=4).tolist() == [4] * 4
    assert np.bincount(labels[s.val], minlength=4).tolist() == [2] * 4
    assert np.bincount(labels[s.rest], minlength=4).tolist() == [c - 6 for c in COUNTS]
    together = np.concatenate([s.train, s.val, s.rest])
    assert np.array_equal(np.sort(together), np.arange(labels.size))  # disjoint and covering
    for part in (s.train, s.val, s.rest):
        assert np.all(np.diff(part) > 0)  # original order kept


def test_split_is_deterministic_and_depends_on_the_seed():
    labels = labels_with_counts(COUNTS)
    a, b = split(labels, 4, 4, seed=1, val_shots=2), split(labels, 4, 4, seed=1, val_shots=2)
    c = split(labels, 4, 4, seed=2, val_shots=2)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert not np.array_equal(a.train, c.train)


def test_validation_fixed_across_shots_and_training_nested():
    labels = labels_with_counts(COUNTS)
    splits = [split(labels, 4, k, seed=5, val_shots=2) for k in (1, 2, 4)]
    for small, large in zip(splits, splits[1:]):
        assert np.array_equal(small.val, large.val)
        assert set(small.train) < set(large.train)


def test_each_row_of_a_class_is_equally_likely():
    """Over many seeds, every row of a class lands in training with frequency shots / class size."""
    labels = labels_with_counts([10, 5])
    hits = np.zeros(labels.size)
    seeds = 4000
    for seed in range(seeds):
        hits[split(labels, 2, shots=2, seed=seed, val_shots=1).train] += 1
    expected = np.where(labels == 0, 2 / 10, 2 / 5)
    se = np.sqrt(expected * (1 - expected) / seeds)
    assert np.all(np.abs(hits / seeds - expected) < 5 * se)


def test_too_few_rows_raises_unless_allowed():
    labels = labels_with_counts(COUNTS)
    with pytest.raises(NotEnoughRows) as info:
        split(labels, 4, shots=6, seed=0, val_shots=2)
    assert (info.value.class_index, info.value.available, info.value.needed) == (3, 7, 8)
    s = split(labels, 4, shots=6, seed=0, val_shots=2, allow_fewer=True)
    assert np.bincount(labels[s.val], minlength=4).tolist() == [2] * 4  # validation first
    assert np.bincount(labels[s.train], minlength=4).tolist() == [6, 6, 6, 5]
    assert np.bincount(labels[s.rest], minlength=4).tolist() == [4, 1, 12, 0]


def test_selection_follows_the_ids_not_the_row_order():
    """The same rows in another order (another listing, a merged file) give the same three parts."""
    labels = labels_with_counts(COUNTS)
    ids = [f"img/{i:04d}.jpg" for i in range(labels.size)]
    perm = np.random.default_rng(9).permutation(labels.size)
    for seed in (0, 1, 2):
        a = few_shot_split(labels, shot_keys(ids, seed), 4, 3, 2)
        b = few_shot_split(labels[perm], shot_keys([ids[i] for i in perm], seed), 4, 3, 2)
        for part in ("train", "val", "rest"):
            assert {ids[i] for i in getattr(a, part)} == {ids[perm[i]] for i in getattr(b, part)}


def test_keys_are_the_documented_hash():
    """blake2b (8 bytes, little-endian) of "SEED\\0ID": another tool can draw the same shots."""
    expected = int.from_bytes(hashlib.blake2b("7\0dog/001.jpg".encode(), digest_size=8).digest(), "little")
    assert shot_keys(["dog/001.jpg"], 7).tolist() == [expected]
    assert shot_keys(["dog/001.jpg"], -7).dtype == np.uint64  # any integer seed


# --------------------------------------------------------------------------- the command


@pytest.fixture
def features_file(tmp_path: Path) -> Path:
    labels = labels_with_counts(COUNTS, seed=1)
    x = np.random.default_rng(0).normal(size=(labels.size, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = tmp_path / "feats.h5"
    write_features(path, x, labels, [f"img/{i:04d}.jpg" for i in range(labels.size)], classnames(4),
                   attrs={"model": "ViT-B-32", "pretrained": "openai", "source": "data/train"})
    return path


@pytest.fixture
def small_windows(monkeypatch):
    """Stream in windows of 5 rows so the command reads the input in many pieces."""
    monkeypatch.setattr(chunking, "io_rows", lambda n_cols, itemsize=4: 5)


def read_all(path: Path, kind: str = "features"):
    with read_rows(path, kind) as f:
        values = f.read(dtype=np.float64), f.labels.copy(), f.ids(), f.classnames, f.attrs
    with h5py.File(path, "r") as h5:
        return (*values, h5[kind].dtype)


def test_subset_files_hold_the_selected_rows_with_provenance(gla, tmp_path, features_file, small_windows):
    train, val, rest = tmp_path / "train.h5", tmp_path / "val.h5", tmp_path / "rest.h5"
    r = gla("subset", features_file, "--shots", 4, "--seed", 7, "-o", train, "--val-shots", 2, "--val-out", val,
            "--rest-out", rest)
    assert r.code == 0, r.err
    x0, y0, ids0, names0, attrs0, dtype0 = read_all(features_file)
    s = few_shot_split(y0, shot_keys(ids0, 7), 4, 4, 2)
    for path, rows, name in ((train, s.train, "train"), (val, s.val, "val"), (rest, s.rest, "rest")):
        x, y, ids, names, attrs, dtype = read_all(path)
        np.testing.assert_array_equal(x, x0[rows])  # same values, bit for bit
        np.testing.assert_array_equal(y, y0[rows])
        assert ids == [ids0[i] for i in rows] and names == names0 and dtype == dtype0 == np.float16
        assert attrs["parents"] == [attrs0["gla_id"]] and attrs["gla_id"] != attrs0["gla_id"]
        assert (attrs["shots"], attrs["val_shots"], attrs["seed"], attrs["split"]) == (4, 2, 7, name)
        assert (attrs["model"], attrs["pretrained"], attrs["source"]) == ("ViT-B-32", "openai", "data/train")
    assert sorted(read_all(train)[2] + read_all(val)[2] + read_all(rest)[2]) == sorted(ids0)


def test_subset_is_deterministic_per_seed(gla, tmp_path, features_file):
    def train_ids(seed: int, name: str) -> list[str]:
        assert gla("subset", features_file, "--shots", 3, "--seed", seed, "-o", tmp_path / name).code == 0
        return read_all(tmp_path / name)[2]

    assert train_ids(1, "a.h5") == train_ids(1, "b.h5")
    assert train_ids(1, "a.h5") != train_ids(2, "c.h5")


def test_subset_of_logits_and_json_report(gla, tmp_path):
    labels = labels_with_counts(COUNTS)
    z = np.random.default_rng(4).normal(size=(labels.size, 4))
    write_logits_file(tmp_path / "zs.h5", z, labels, temperature=1.5, head_type="zeroshot")
    r = gla("subset", tmp_path / "zs.h5", "--shots", 2, "--seed", 0, "-o", tmp_path / "t.h5", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["splits"] == [{"split": "train", "file": str(tmp_path / "t.h5"), "rows": 8,
                                 "min_per_class": 2, "max_per_class": 2}]
    with read_rows(tmp_path / "t.h5", "logits") as f:
        assert f.temperature == 1.5 and f.attrs["head_type"] == "zeroshot" and f.n_rows == 8


def test_allow_fewer(gla, tmp_path, features_file):
    r = gla("subset", features_file, "--shots", 8, "--seed", 0, "-o", tmp_path / "t.h5", "--allow-fewer", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["splits"][0]["min_per_class"] == 7


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra, fragments", [
    (["--shots", "8"], ["class 3 ('class 3') has 7 rows", "--allow-fewer", "feats.h5"]),
    (["--shots", "0"], ["--shots: expected a positive integer"]),
    (["--shots", "2", "--val-shots", "-1"], ["--val-shots"]),
    (["--shots", "2", "--val-shots", "2"], ["--val-shots and --val-out go together"]),
    (["--shots", "2", "--val-out", "VAL"], ["--val-shots and --val-out go together"]),
    (["--shots", "2", "--rest-out", "OUT"], ["the rest output is the same file as the train output"]),
    (["--shots", "2", "--rest-out", "IN"], ["the rest output is the same file as the input"]),
])
def test_bad_options_leave_outputs_untouched(gla, tmp_path, features_file, extra, fragments):
    out = tmp_path / "out.h5"
    out.write_bytes(b"keep")
    names = {"OUT": out, "IN": features_file, "VAL": tmp_path / "val.h5"}
    r = gla("subset", features_file, "--seed", 0, "-o", out, *[names.get(a, a) for a in extra])
    assert_one_line_error(r, *fragments)
    assert out.read_bytes() == b"keep"
    assert not (tmp_path / "val.h5").exists()


def test_unlabelled_or_missing_input(gla, tmp_path):
    write_logits_file(tmp_path / "u.h5", np.zeros((4, 2)))
    assert_one_line_error(gla("subset", tmp_path / "u.h5", "--shots", 1, "--seed", 0, "-o", tmp_path / "o.h5"),
                          "u.h5", "without labels", "class-balanced")
    assert_one_line_error(gla("subset", tmp_path / "nope.h5", "--shots", 1, "--seed", 0, "-o", tmp_path / "o.h5"),
                          "nope.h5", "no such file")
    write_prior(tmp_path / "q.h5", Prior(np.array([0.5, 0.5]), ["a", "b"], 1.0, "x"))
    assert_one_line_error(gla("subset", tmp_path / "q.h5", "--shots", 1, "--seed", 0, "-o", tmp_path / "o.h5"),
                          "q.h5", "is a 'prior' file")
    assert not (tmp_path / "o.h5").exists()


# --------------------------------------------------------------------------- gla extract --shots draws the same rows


def test_extract_shots_keeps_the_rows_subset_takes_from_the_full_extraction(gla, tiny_clip, tmp_path):
    images = tmp_path / "imgs"
    write_image_folder(images, {"cat": 5, "dog": 4, "owl": 6})
    model = ["--model", tiny_clip.config, "--pretrained", tiny_clip.checkpoint, "--device", "cpu", "--workers", "0",
             "--dtype", "float32"]
    full = tmp_path / "full.h5"
    assert gla("extract", images, "-o", full, *model).code == 0
    for shots, seed, extra in ((3, 1, []), (2, 2, []), (5, 1, ["--allow-fewer"])):
        sub, few = tmp_path / f"sub{shots}_{seed}.h5", tmp_path / f"few{shots}_{seed}.h5"
        r = gla("subset", full, "--shots", shots, "--seed", seed, "-o", sub, *extra)
        assert r.code == 0, r.err
        r = gla("extract", images, "-o", few, *model, "--shots", shots, "--seed", seed, *extra)
        assert r.code == 0, r.err
        x_sub, y_sub, ids_sub, _, _, _ = read_all(sub)
        x_few, y_few, ids_few, _, attrs, _ = read_all(few)
        assert ids_few == ids_sub and y_few.tolist() == y_sub.tolist()
        assert np.bincount(y_few).tolist() == [min(shots, n) for n in (5, 4, 6)]
        assert (attrs["shots"], attrs["seed"]) == (shots, seed)
        np.testing.assert_allclose(x_few, x_sub, rtol=0, atol=1e-5)  # other batch shapes: not bit for bit
    assert "'dog'" in r.err and "keep all they have" in r.err


def test_too_few_rows_are_refused_alike_by_extract_and_subset(gla, tmp_path):
    """One policy: a class short of --shots stops both commands with the same line (before any model loads)."""
    images = tmp_path / "imgs"
    write_image_folder(images, {"cat": 5, "dog": 4})
    x = np.random.default_rng(0).normal(size=(9, 4))
    write_features(tmp_path / "full.h5", x / np.linalg.norm(x, axis=1, keepdims=True),
                   np.array([0] * 5 + [1] * 4), [f"x{i}" for i in range(9)], ["cat", "dog"])
    message = "class 1 ('dog') has 4 rows, fewer than --shots 5; use --allow-fewer to take what there is"
    r = gla("subset", tmp_path / "full.h5", "--shots", 5, "--seed", 0, "-o", tmp_path / "sub.h5")
    assert_one_line_error(r, "full.h5", message)
    r = gla("extract", images, "-o", tmp_path / "few.h5", "--model", "unused", "--pretrained", "unused",
            "--shots", 5, "--seed", 0)
    assert_one_line_error(r, str(images.resolve()), message)
    r = gla("extract", images, "-o", tmp_path / "few.h5", "--model", "unused", "--pretrained", "unused",
            "--allow-fewer")
    assert_one_line_error(r, "--allow-fewer applies with --shots only")
    assert not (tmp_path / "sub.h5").exists() and not (tmp_path / "few.h5").exists()
