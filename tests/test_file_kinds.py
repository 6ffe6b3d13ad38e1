"""The HDF5 kinds: round trips, provenance, atomic writes and the validation every reader makes."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from synth import classnames, write_logits_file

from glacli.base.errors import GlaInputError
from glacli.base.types import Head, Prior
from glacli.base.validation import check_same_classnames
from glacli.io.crossfile import check_same_rows
from glacli.io.h5file import COMPLETE_ATTR
from glacli.io.paramfile import read_head, read_prior, write_head, write_prior
from glacli.io.rowfile import read_rows, write_rows


def test_logits_round_trip_keeps_values_labels_ids_and_provenance(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2, -1])
    path = write_logits_file(tmp_path / "z.h5", logits, labels, head_type="zeroshot")
    with read_rows(path, "logits") as f:
        np.testing.assert_array_equal(f.read(), logits)
        np.testing.assert_array_equal(f.labels, labels)
        assert f.ids() == [f"img/{i:06d}.jpg" for i in range(7)]
        assert f.classnames == classnames(3)
        assert f.attrs["gla_kind"] == "logits" and f.attrs["gla_format"] == 1
        assert f.attrs["head_type"] == "zeroshot" and f.temperature == 1.0
        assert len(f.gla_id) == 32 and f.attrs["created"].endswith("+00:00")
        assert not f.has_labels
        chunks = list(f.iter_chunks(rows=3, with_ids=True))
        assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 6), (6, 7)]
        assert chunks[2].ids == ["img/000006.jpg"]


def test_prior_and_head_round_trip_with_parents(tmp_path):
    prior = Prior(prior=np.array([0.2, 0.3, 0.5]), classnames=["a", "b", "c"], temperature=0.7,
                  method="nll", converged=True, max_moment_gap=1e-9, iterations=4)
    write_prior(tmp_path / "q.h5", prior, parents=["abc", ""])
    back = read_prior(tmp_path / "q.h5")
    np.testing.assert_array_equal(back.prior, prior.prior)
    assert (back.temperature, back.method, back.iterations) == (0.7, "nll", 4)
    assert back.attrs["parents"] == ["abc"]
    head = Head(weight=np.eye(3, 4), bias=np.zeros(3), classnames=["a", "b", "c"], head_type="linear",
                temperature=2.0, attrs={"model": "ViT-B-32"})
    write_head(tmp_path / "h.h5", head, parents=[back.gla_id])
    h = read_head(tmp_path / "h.h5")
    np.testing.assert_array_equal(h.weight, np.eye(3, 4, dtype=np.float32))
    assert h.head_type == "linear" and h.temperature == 2.0 and h.attrs["model"] == "ViT-B-32"
    assert h.attrs["parents"] == [back.gla_id]


def test_failed_write_leaves_existing_file_untouched_and_no_temporary(tmp_path):
    path = write_logits_file(tmp_path / "z.h5", np.zeros((2, 2)), np.array([0, 1]))
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with write_rows(path, "logits", n_rows=4, n_cols=2, classnames=["a", "b"]) as sink:
            sink.write(0, np.ones((2, 2)), np.array([0, 1]), ["x", "y"])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.h5"]


def test_incomplete_file_is_refused(tmp_path):
    path = write_logits_file(tmp_path / "z.h5", np.zeros((2, 2)), np.array([0, 1]))
    with h5py.File(path, "a") as f:
        f.attrs[COMPLETE_ATTR] = False
    with pytest.raises(GlaInputError, match="incomplete"):
        read_rows(path, "logits")


@pytest.mark.parametrize("corrupt, message", [
    (lambda f: f.attrs.__setitem__("gla_kind", "prior"), "is a 'prior' file, expected 'logits'"),
    (lambda f: f.attrs.__delitem__("gla_kind"), "not a gla file"),
    (lambda f: f.attrs.__setitem__("gla_format", 99), "gla_format 99"),
    (lambda f: f.__delitem__("labels"), "missing dataset 'labels'"),
    (lambda f: f["labels"].__setitem__(0, 5), "label 5 at row 0 is out of range"),
])
def test_reader_names_the_problem(tmp_path, corrupt, message):
    path = write_logits_file(tmp_path / "z.h5", np.zeros((2, 2)), np.array([0, 1]))
    with h5py.File(path, "a") as f:
        corrupt(f)
    with pytest.raises(GlaInputError, match=message) as info:
        read_rows(path, "logits")
    assert str(path) in str(info.value)


def test_non_finite_values_are_refused_when_read(tmp_path):
    logits = np.zeros((5, 2))
    logits[3, 1] = np.nan
    path = write_logits_file(tmp_path / "z.h5", logits, np.zeros(5, np.int64))
    with read_rows(path, "logits") as f, pytest.raises(GlaInputError, match="first at row 3"):
        f.read()


def test_rows_must_match_across_files(tmp_path):
    a = write_logits_file(tmp_path / "a.h5", np.zeros((3, 2)), np.array([0, 1, 0]))
    b = write_logits_file(tmp_path / "b.h5", np.zeros((3, 2)), np.array([0, 1, 0]), ids=["x", "y", "q"])
    c = write_logits_file(tmp_path / "c.h5", np.zeros((3, 2)), np.array([0, 1, 1]))
    with read_rows(a, "logits") as fa, read_rows(b, "logits") as fb, read_rows(c, "logits") as fc:
        with pytest.raises(GlaInputError, match="ids disagree .* row 0"):
            check_same_rows(fb, fa)
        with pytest.raises(GlaInputError, match="labels disagree .* row 2"):
            check_same_rows(fc, fa)
    with pytest.raises(GlaInputError, match="class 1: 'b' vs 'c'"):
        check_same_classnames(["a", "b"], "x.h5", ["a", "c"], "y.h5")
