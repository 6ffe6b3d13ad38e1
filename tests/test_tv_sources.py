"""torchvision datasets as extract sources, on data written in torchvision's own on-disk formats.

CIFAR-10 is held in pickled arrays (torchvision checks their md5, which generated files cannot
match: those tests accept any existing file through a monkeypatch of ``cifar.check_integrity``);
DTD is stored as image files plus split lists (torchvision checks only that they exist).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from tiny_clip import tiny_clip_fixture, write_jpeg  # noqa: F401

from glacli.io.rowfile import read_rows
from glacli.io.sources import open_source, read_bytes

CIFAR_CLASSES = ["air_plane", "bird", "cat"]


@pytest.fixture
def cifar10(tmp_path, monkeypatch) -> tuple[Path, dict[str, np.ndarray]]:
    """CIFAR-10 batches (6 train images per file, 8 test images); returns the root and the arrays."""
    from torchvision.datasets import cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    arrays: dict[str, list] = {"train": [], "train_labels": [], "test": [], "test_labels": []}
    for name, split, n in [(f"data_batch_{k}", "train", 6) for k in range(1, 6)] + [("test_batch", "test", 8)]:
        data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 3, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        arrays[split].append(data)
        arrays[f"{split}_labels"] += labels
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES}, f)
    return tmp_path / "data", {k: np.concatenate(v) if k in ("train", "test") else np.asarray(v)
                               for k, v in arrays.items()}


def test_cifar_rows_ids_labels_and_cleaned_class_names(cifar10):
    root, arrays = cifar10
    rows = open_source("torchvision:cifar10", split="train", root=str(root))
    assert rows.ids == [f"CIFAR10/train/{k}" for k in range(30)]
    assert rows.labels.tolist() == arrays["train_labels"].tolist()
    assert rows.classnames == ["air plane", "bird", "cat"]
    assert rows.attrs == {"source": "torchvision:CIFAR10", "source_kind": "torchvision", "split": "train",
                          "root": str(root.resolve())}
    test = open_source("torchvision:CIFAR10", root=str(root))  # the default split is test
    assert len(test) == 8 and test.ids[0] == "CIFAR10/test/0"
    import io

    from PIL import Image
    image = Image.open(io.BytesIO(read_bytes(test.locators[5])))
    expected = arrays["test"][5].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_cifar_features_equal_the_image_folder_of_the_same_pixels(gla, tiny_clip, cifar10, tmp_path):
    root, arrays = cifar10
    from PIL import Image
    folder = tmp_path / "folder"
    for k, (pixels, label) in enumerate(zip(arrays["test"], arrays["test_labels"])):
        path = folder / CIFAR_CLASSES[label] / f"{k:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.reshape(3, 32, 32).transpose(1, 2, 0)).save(path)
    model = ["--model", str(tiny_clip.config), "--pretrained", str(tiny_clip.checkpoint), "--device", "cpu",
             "--dtype", "float32"]
    r = gla("extract", "torchvision:CIFAR10", "--root", root, "--split", "test", "-o", tmp_path / "tv.h5", *model,
            "--workers", "2", "--batch-size", "3")
    assert r.code == 0, r.err
    assert gla("extract", folder, "-o", tmp_path / "folder.h5", *model, "--workers", "0").code == 0
    with read_rows(tmp_path / "tv.h5", "features") as tv, read_rows(tmp_path / "folder.h5", "features") as ref:
        order = [int(i.rsplit("/", 1)[1].split(".")[0]) for i in ref.ids()]
        assert tv.ids() == [f"CIFAR10/test/{k}" for k in range(8)]
        assert tv.classnames == ref.classnames == ["air plane", "bird", "cat"]
        np.testing.assert_array_equal(tv.labels[order], ref.labels)
        # same pixels; the images share batches differently (order), so float32 sums differ in the last bits
        np.testing.assert_allclose(tv.read()[order], ref.read(), rtol=0, atol=1e-6)
        assert tv.attrs["source"] == "torchvision:CIFAR10" and tv.attrs["split"] == "test"


def test_file_backed_dataset_reads_its_image_files(tmp_path):
    """DTD in torchvision's layout: rows read the files' own bytes, in the split list's order."""
    base = tmp_path / "dtd" / "dtd"
    listed = ["banded/banded_0001.jpg", "dotted/dotted_0002.jpg", "banded/banded_0003.jpg"]
    for k, rel in enumerate(listed):
        write_jpeg(base / "images" / rel, seed=k)
    (base / "labels").mkdir()
    (base / "labels" / "test1.txt").write_text("\n".join(listed) + "\n")
    rows = open_source("torchvision:DTD", split="test", root=str(tmp_path))
    assert rows.ids == ["DTD/test/0", "DTD/test/1", "DTD/test/2"]
    assert rows.classnames == ["banded", "dotted"] and rows.labels.tolist() == [0, 1, 0]
    assert read_bytes(rows.locators[1]) == (base / "images" / listed[1]).read_bytes()


def test_classnames_file_renames_the_classes(cifar10, tmp_path):
    root, _ = cifar10
    (tmp_path / "names.txt").write_text("plane\nsparrow\nkitten\n")
    rows = open_source("torchvision:CIFAR10", root=str(root), classnames_file=str(tmp_path / "names.txt"))
    assert rows.classnames == ["plane", "sparrow", "kitten"]
    assert rows.attrs["classnames_file"] == str((tmp_path / "names.txt").resolve())


@pytest.mark.parametrize(("args", "fragments"), [
    (["torchvision:ImageNet21k", "--root", "."], ["unknown torchvision dataset", "CIFAR100"]),
    (["torchvision:CIFAR10"], ["needs --root"]),
    (["torchvision:CIFAR10", "--root", "{root}", "--split", "val"], ["--split 'val'", "train, test"]),
    (["torchvision:EuroSAT", "--root", "{root}", "--split", "train"], ["has no splits"]),
    (["torchvision:DTD", "--root", "{root}"], ["torchvision cannot open it", "--download"]),
    (["{root}", "--download"], ["--download applies to torchvision"]),
])
def test_bad_torchvision_sources_are_one_line_errors(gla, tiny_clip, tmp_path, args, fragments):
    out = tmp_path / "out.h5"
    args = [a.replace("{root}", str(tmp_path)) for a in args]
    r = gla("extract", *args, "-o", out, "--model", str(tiny_clip.config), "--pretrained", str(tiny_clip.checkpoint))
    assert_one_line_error(r, *fragments)
    assert not out.exists()
