"""Source listing: ids, labels and class names per layout; few-shot selection; bad sources."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from tiny_clip import write_image_folder, write_jpeg

from glacli.base.errors import GlaInputError
from glacli.base.types import TarMember
from glacli.io.sources import open_source, read_bytes, select_shots


def test_image_folder_rows_are_sorted_relative_paths_with_folder_classes(tmp_path):
    root = tmp_path / "imgs"
    expected = write_image_folder(root, {"golden_retriever": 3, "cat": 2})
    write_jpeg(root / "cat" / "nested" / "deep.jpg", seed=9)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    write_jpeg(root / ".hidden" / "x.jpg", seed=1)
    write_jpeg(root / "loose.jpg", seed=2)

    rows = open_source(str(root))
    assert rows.classnames == ["cat", "golden retriever"]
    assert rows.ids == sorted(expected + ["cat/nested/deep.jpg"])
    assert rows.ids[:3] == ["cat/000.jpg", "cat/001.jpg", "cat/nested/deep.jpg"]
    assert rows.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert rows.locators[0] == str((root / "cat" / "000.jpg").resolve())
    assert rows.attrs["source_kind"] == "folder"


def test_csv_and_tsv_manifests_keep_file_order_and_name_classes_by_label(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "m.csv").write_text("path,label\nb/2.jpg,zebra\na/1.jpg,ant\n/abs/3.jpg,zebra\nc/4.jpg,\n")
    rows = open_source(str(tmp_path / "m.csv"), root=str(tmp_path / "data"))
    assert rows.ids == ["b/2.jpg", "a/1.jpg", "/abs/3.jpg", "c/4.jpg"]
    assert rows.classnames == ["ant", "zebra"]
    assert rows.labels.tolist() == [1, 0, 1, -1]
    assert rows.locators[:3] == [str(tmp_path / "data" / "b/2.jpg"), str(tmp_path / "data" / "a/1.jpg"), "/abs/3.jpg"]

    (tmp_path / "m.tsv").write_text("label\tpath\nant\tx y.jpg\n")
    rows = open_source(str(tmp_path / "m.tsv"))
    assert rows.ids == ["x y.jpg"] and rows.locators == [str(tmp_path / "x y.jpg")]


def test_txt_manifest_integer_labels_index_the_classnames_file(tmp_path):
    (tmp_path / "train.txt").write_text("train/n01/a.JPEG 2\ntrain/n02/b.JPEG 0\n\ntrain/n03/c.JPEG 1\n")
    (tmp_path / "names.txt").write_text("tench\ngoldfish\ngreat white shark\n")
    rows = open_source(str(tmp_path / "train.txt"), classnames_file=str(tmp_path / "names.txt"))
    assert rows.ids == ["train/n01/a.JPEG", "train/n02/b.JPEG", "train/n03/c.JPEG"]
    assert rows.labels.tolist() == [2, 0, 1]
    assert rows.classnames == ["tench", "goldfish", "great white shark"]
    assert not rows.warnings

    rows = open_source(str(tmp_path / "train.txt"))
    assert rows.classnames == ["0", "1", "2"] and rows.warnings


def test_coop_split_json_takes_the_split_and_names_classes_from_all_splits(tmp_path):
    split = {"train": [["a/1.jpg", 1, "great_pyrenees"], ["b/2.jpg", 0, "abyssinian"]],
             "val": [["c/3.jpg", 2, "yorkshire_terrier"]],
             "test": [["d/4.jpg", 0, "abyssinian"]]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    rows = open_source(str(tmp_path / "split.json"), split="train", root=str(tmp_path / "images"))
    assert rows.ids == ["a/1.jpg", "b/2.jpg"]
    assert rows.labels.tolist() == [1, 0]
    assert rows.classnames == ["abyssinian", "great pyrenees", "yorkshire terrier"]
    assert rows.locators[0] == str(tmp_path / "images" / "a/1.jpg")
    assert rows.attrs["split"] == "train"
    assert open_source(str(tmp_path / "split.json"), split="test").ids == ["d/4.jpg"]


def _write_shard(path: Path, entries: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tar_shards_pair_images_with_cls_entries_and_read_back_the_bytes(tmp_path):
    jpegs = [write_jpeg(tmp_path / f"src{k}.jpg", seed=k).read_bytes() for k in range(3)]
    (tmp_path / "shards").mkdir()
    _write_shard(tmp_path / "shards" / "s-000.tar", [("k0.jpg", jpegs[0]), ("k0.cls", b"1"),
                                                     ("k1.jpg", jpegs[1]), ("k1.cls", b"0\n")])
    _write_shard(tmp_path / "shards" / "s-001.tar", [("d/k2.cls", b"2"), ("d/k2.jpg", jpegs[2]),
                                                     ("k3.json", b"{}")])
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    rows = open_source(str(tmp_path / "shards" / "s-*.tar"), classnames_file=str(tmp_path / "names.txt"))
    assert rows.ids == ["s-000.tar/k0.jpg", "s-000.tar/k1.jpg", "s-001.tar/d/k2.jpg"]
    assert rows.labels.tolist() == [1, 0, 2]
    assert rows.classnames == ["a", "b", "c"]
    assert all(isinstance(loc, TarMember) for loc in rows.locators)
    assert [read_bytes(loc) for loc in rows.locators] == jpegs

    single = open_source(str(tmp_path / "shards" / "s-001.tar"))
    assert single.ids == ["s-001.tar/d/k2.jpg"] and single.classnames == ["0", "1", "2"]


def _labelled_rows(tmp_path: Path, counts: list[int]):
    lines = ["path,label"] + [f"img{c}_{k}.jpg,class{c}" for c, n in enumerate(counts) for k in range(n)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    return open_source(str(tmp_path / "m.csv"))


def test_few_shot_selection_is_balanced_deterministic_and_keeps_order(tmp_path):
    rows = _labelled_rows(tmp_path, [10, 7, 12, 5])
    picked = select_shots(rows, 4, seed=3)
    assert np.bincount(picked.labels).tolist() == [4, 4, 4, 4]
    positions = [rows.ids.index(i) for i in picked.ids]
    assert positions == sorted(positions)
    assert picked.ids == select_shots(rows, 4, seed=3).ids
    assert picked.ids != select_shots(rows, 4, seed=4).ids
    assert picked.attrs["shots"] == 4 and picked.attrs["seed"] == 3
    assert picked.digest() != rows.digest()

    with pytest.raises(GlaInputError, match=r"class 3 \('class3'\) has 5 rows, fewer than --shots 6; use --allow"):
        select_shots(rows, 6, seed=0)
    short = select_shots(rows, 6, seed=0, allow_fewer=True)
    assert np.bincount(short.labels).tolist() == [6, 6, 6, 5]
    assert any("fewer than 6 rows" in w and "'class3'" in w for w in short.warnings)


def test_few_shot_selection_does_not_depend_on_the_row_order(tmp_path):
    """A manifest listing the same images in another order keeps the same images."""
    lines = [f"img{c}_{k}.jpg,class{c}" for c, n in enumerate([9, 6, 11]) for k in range(n)]
    shuffled = [lines[i] for i in np.random.default_rng(0).permutation(len(lines))]
    (tmp_path / "a.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    (tmp_path / "b.csv").write_text("path,label\n" + "\n".join(shuffled) + "\n")
    a, b = open_source(str(tmp_path / "a.csv")), open_source(str(tmp_path / "b.csv"))
    for seed in range(5):
        assert set(select_shots(a, 3, seed).ids) == set(select_shots(b, 3, seed).ids)


def test_few_shot_covers_every_image_of_a_class_across_seeds(tmp_path):
    rows = _labelled_rows(tmp_path, [6, 6])
    seen = {i for seed in range(30) for i in select_shots(rows, 1, seed).ids}
    assert seen == set(rows.ids)


@pytest.mark.parametrize("files, args, fragment", [
    ({"m.csv": "file,label\na.jpg,x\n"}, [], "'path' column"),
    ({"m.txt": "a.jpg 5\n", "names.txt": "x\ny\n"}, ["--classnames", "names.txt"], "out of range"),
    ({"m.csv": "path,label\na.jpg,dog\n", "names.txt": "cat\n"}, ["--classnames", "names.txt"], "'dog' is not in"),
    # a repeated name becomes 'cat (1)' (docs/format.md), which here collides with a listed name
    ({"m.csv": "path,label\na.jpg,dog\n", "names.txt": "cat\ncat\ncat (1)\n"}, ["--classnames", "names.txt"], "twice"),
    ({"s.json": json.dumps({"train": [["a.jpg", 0, "x"]]})}, [], "needs --split"),
    ({"s.json": json.dumps({"train": [["a.jpg", 0, "x"]]})}, ["--split", "test"], "has no split 'test'"),
    ({"s.json": json.dumps({"train": [["a.jpg", "0", "x"]]})}, ["--split", "train"], "train[0] is not"),
    ({"s.json": "{not json"}, ["--split", "train"], "not valid JSON"),
    ({"m.csv": "path,label\n"}, [], "lists no images"),
    ({"m.parquet": "x"}, [], "unrecognised source"),
    ({"m.csv": "path,label\na.jpg,x\n"}, ["--split", "train"], "--split applies"),
    ({"bad.tar": "this is not a tar file"}, [], "not an uncompressed tar"),
])
def test_bad_sources_are_one_line_errors(gla, tmp_path, monkeypatch, files, args, fragment):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    source = next(n for n in files if n != "names.txt")
    r = gla("extract", source, "-o", "out.h5", "--model", "unused", "--pretrained", "unused", *args)
    assert_one_line_error(r, source if fragment != "twice" else "names.txt", fragment)
    assert not (tmp_path / "out.h5").exists()


def test_missing_source_and_empty_folder_are_one_line_errors(gla, tmp_path):
    r = gla("extract", tmp_path / "nope", "-o", tmp_path / "o.h5", "--model", "m", "--pretrained", "p")
    assert_one_line_error(r, "nope", "no such file")
    (tmp_path / "empty").mkdir()
    r = gla("extract", tmp_path / "empty", "-o", tmp_path / "o.h5", "--model", "m", "--pretrained", "p")
    assert_one_line_error(r, "empty", "no class sub-folders")
    r = gla("extract", str(tmp_path / "none-*.tar"), "-o", tmp_path / "o.h5", "--model", "m", "--pretrained", "p")
    assert_one_line_error(r, "no tar shards match")


def test_few_shot_needs_labels(tmp_path):
    (tmp_path / "m.csv").write_text("path\na.jpg\n")
    with pytest.raises(GlaInputError, match="needs labels"):
        select_shots(open_source(str(tmp_path / "m.csv")), 1, 0)
