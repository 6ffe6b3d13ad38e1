"""One class-name reader for extract, zeroshot and import: text or a JSON list, the same rules and messages."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error
from tiny_clip import tiny_clip_fixture, write_image_folder  # noqa: F401

from glacli.base.errors import GlaInputError
from glacli.base.validation import check_classnames
from glacli.io.formats.classnames import read_classnames
from glacli.io.h5file import write_strings
from glacli.io.paramfile import read_head
from glacli.io.rowfile import read_rows, write_features


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("name, text", [
    ("names.txt", "  cat \ndog\t\n\n\n"),  # surrounding whitespace and trailing blank lines
    ("names.json", '["cat", " dog"]'),
    ("names.txt", '\n ["cat", "dog"]\n'),  # a text file holding a JSON list is read as one
    ("names.txt", "\ufeffcat\r\ndog\r\n"),  # a byte-order mark and Windows line ends
])
def test_text_and_json_lists_give_the_same_names(tmp_path, name, text):
    assert read_classnames(write(tmp_path / name, text)) == ["cat", "dog"]


@pytest.mark.parametrize("name, text, message", [
    ("names.txt", "cat\n\ndog\n", "class name at line 2 is blank"),
    ("names.txt", "cat\n   \ndog", "class name at line 2 is blank"),
    ("names.json", '["cat", " "]', "class name at entry 1 is blank"),
    ("names.txt", "cat\ndog\ncat\ncat (2)\n", "class name 'cat (2)' appears twice (classes 2 and 3)"),
    ("names.txt", "\n  \n", "holds no class names"),
    ("names.json", "[]", "holds no class names"),
    ("names.json", '["cat", "dog"', "class names are not valid JSON (Expecting ','"),
    ("names.json", '{"classes": ["cat"]}', "JSON class names must be a list of strings"),
    ("names.json", '["cat", 3]', "JSON class names must be a list of strings"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, name, text, message):
    path = write(tmp_path / name, text)
    with pytest.raises(GlaInputError) as info:
        read_classnames(path)
    assert str(info.value).startswith(f"{path}: {message}") and "\n" not in str(info.value)


def test_unreadable_files(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(GlaInputError, match=r"latin1.txt: class names are not UTF-8 text"):
        read_classnames(tmp_path / "latin1.txt")
    with pytest.raises(GlaInputError, match=r"none.txt: class names: no such file"):
        read_classnames(tmp_path / "none.txt")
    with pytest.raises(GlaInputError, match=r"class names cannot be read"):
        read_classnames(tmp_path)


def test_names_from_other_files_follow_the_same_rules(tmp_path):
    assert check_classnames([" a", "b "], "x.npz") == ["a", "b"]
    assert check_classnames(["a", "b", "a "], "x.npz") == ["a", "b", "a (2)"]
    with pytest.raises(GlaInputError, match=r"x.npz: class name at class 1 is blank"):
        check_classnames(["a", ""], "x.npz")


def test_a_gla_file_with_repeated_classnames_gets_the_same_message(tmp_path):
    path = tmp_path / "f.h5"
    write_features(path, np.eye(2, 3), np.array([0, 1]), ["a.jpg", "b.jpg"], ["cat", "dog"])
    with h5py.File(path, "r+") as f:
        del f["classnames"]
        write_strings(f, "classnames", ["cat", "cat"])
    with pytest.raises(GlaInputError, match=r"f.h5: class name 'cat' appears twice \(classes 0 and 1\)"):
        read_rows(path, "features")


# --------------------------------------------------------------------------- the three commands


def model_args(tiny) -> list[object]:
    return ["--model", tiny.config, "--pretrained", tiny.checkpoint, "--device", "cpu"]


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "imgs"
    write_image_folder(root, {"n01": 2, "n02": 2})
    return root


def test_a_json_list_works_for_zeroshot_extract_and_import(gla, tiny_clip, images, tmp_path):
    names = write(tmp_path / "names.json", json.dumps(["tabby cat", "golden retriever"]))
    r = gla("zeroshot", *model_args(tiny_clip), "--classnames", names, "--templates", "simple",
            "-o", tmp_path / "head.h5")
    assert r.code == 0, r.err
    assert read_head(tmp_path / "head.h5").classnames == ["tabby cat", "golden retriever"]

    r = gla("extract", images, "--classnames", names, *model_args(tiny_clip), "--workers", 0,
            "-o", tmp_path / "feats.h5")
    assert r.code == 0, r.err
    with read_rows(tmp_path / "feats.h5", "features") as f:
        assert f.classnames == ["tabby cat", "golden retriever"]

    np.save(tmp_path / "z.npy", np.zeros((3, 2), np.float32))
    r = gla("import", tmp_path / "z.npy", "--kind", "logits", "--classnames", names, "-o", tmp_path / "z.h5")
    assert r.code == 0, r.err
    with read_rows(tmp_path / "z.h5", "logits") as f:
        assert f.classnames == ["tabby cat", "golden retriever"]


@pytest.mark.parametrize("name, text, message", [
    ("names.txt", "cat\n\ndog\n", "class name at line 2 is blank"),
    ("names.txt", "cat\ncat\ncat (1)\n", "class name 'cat (1)' appears twice (classes 1 and 2)"),
    ("names.json", '["cat", "dog"', "class names are not valid JSON"),
])
def test_each_command_gives_the_same_line_for_a_bad_file(gla, images, tmp_path, name, text, message):
    """Refused before any model loads, so the model options need not name a real model."""
    path = write(tmp_path / name, text)
    np.save(tmp_path / "z.npy", np.zeros((3, 2), np.float32))
    np.save(tmp_path / "q.npy", np.array([0.5, 0.5]))
    unused = ["--model", "unused", "--pretrained", "unused"]
    runs = [gla("zeroshot", *unused, "--classnames", path, "-o", tmp_path / "head.h5"),
            gla("extract", images, *unused, "--classnames", path, "-o", tmp_path / "feats.h5"),
            gla("import", tmp_path / "z.npy", "--kind", "logits", "--classnames", path, "-o", tmp_path / "z.h5"),
            gla("import", tmp_path / "q.npy", "--kind", "prior", "--classnames", path, "-o", tmp_path / "q.h5")]
    for r in runs:
        assert_one_line_error(r, f"{path}: {message}")
    assert len({r.err for r in runs}) == 1
    assert not any((tmp_path / out).exists() for out in ("head.h5", "feats.h5", "z.h5", "q.h5"))


# --------------------------------------------------------------------------- repeated names (issue 23.1)


def test_repeated_names_are_made_distinct_by_their_index(tmp_path):
    from glacli.base.validation import prompt_classnames, renamed_classnames_note
    names = read_classnames(write(tmp_path / "in.txt", "missile\ncat\nmissile\nmissile\n"))
    assert names == ["missile", "cat", "missile (2)", "missile (3)"]
    assert prompt_classnames(names) == ["missile", "cat", "missile", "missile"]
    assert prompt_classnames(["a (0)", "b", "b (1)"]) == ["a (0)", "b", "b (1)"]  # no earlier 'b' at 0: kept
    assert renamed_classnames_note(names).startswith("2 repeated class names made distinct")
    assert renamed_classnames_note(["a", "b"]) is None


def test_zeroshot_and_extract_accept_repeated_names(gla, tiny_clip, images, tmp_path):
    """The head stores distinct names; the prompts keep the names as listed, so both 'cat' rows are equal."""
    names = write(tmp_path / "names.txt", "cat\ncat\n")
    r = gla("zeroshot", *model_args(tiny_clip), "--classnames", names, "--templates", "simple",
            "-o", tmp_path / "head.h5")
    assert r.code == 0, r.err
    assert "1 repeated class name made distinct by adding the class index: 'cat (1)'" in r.err
    head = read_head(tmp_path / "head.h5")
    assert head.classnames == ["cat", "cat (1)"]
    np.testing.assert_array_equal(head.weight[0], head.weight[1])

    r = gla("extract", images, "--classnames", names, *model_args(tiny_clip), "--workers", 0,
            "-o", tmp_path / "feats.h5")
    assert r.code == 0, r.err
    assert "'cat (1)'" in r.err
    with read_rows(tmp_path / "feats.h5", "features") as f:
        assert f.classnames == ["cat", "cat (1)"]
