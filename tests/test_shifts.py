"""ImageNet's distribution shifts: the five source layouts label rows in ImageNet's 1000 classes, and
``gla project`` restricts or max-merges logits onto a set's classes (glacli/core/projection.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from synth import write_logits_file
from tiny_clip import tiny_clip_fixture, write_jpeg  # noqa: F401

from glacli.core.projection import group_layout, project_labels, project_logits
from glacli.io.imagenet_classes import imagenet_wnids, read_objectnet_mapping, subset_indices
from glacli.io.rowfile import read_rows
from glacli.io.sources import open_source
from glacli.io.sources.torchvision_datasets import clip_imagenet_classnames

WNIDS = imagenet_wnids()
# Real ImageNet indices of the classes the ObjectNet test mapping uses.
BANANA, ANALOG_CLOCK, DIGITAL_CLOCK = 954, 409, 530


def test_shipped_class_lists_are_consistent():
    assert len(WNIDS) == 1000 and WNIDS == sorted(WNIDS) and len(set(WNIDS)) == 1000
    assert WNIDS[0] == "n01440764" and WNIDS[-1] == "n15075141"
    for name in ("imagenet-r", "imagenet-a"):
        indices = subset_indices(name)
        assert len(indices) == 200 and len(set(indices.tolist())) == 200
        assert (np.diff(indices) > 0).all() and 0 <= indices.min() and indices.max() < 1000
    # a few classes each set is known to hold (goldfish is in both, tench in neither)
    assert WNIDS.index("n01443537") in subset_indices("imagenet-r").tolist()
    assert WNIDS.index("n01443537") not in subset_indices("imagenet-a").tolist()
    assert 0 not in subset_indices("imagenet-r").tolist() and 0 not in subset_indices("imagenet-a").tolist()


def write_objectnet(root: Path) -> Path:
    """A miniature ObjectNet: images/ of three classes (one outside ImageNet) and mappings/ in the format of
    the dataset's own files, with real ImageNet ids (banana 954, analog clock 409, digital clock 530)."""
    mappings = root / "mappings"
    mappings.mkdir(parents=True)
    (mappings / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"alarm_clock": "Alarm clock", "banana": "Banana", "chair": "Chair"}))
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}))
    # line k of imagenet_to_label_2012_v2 is ImageNet 2012 id k; pytorch_to_... maps sorted-wnid index -> id
    (mappings / "imagenet_to_label_2012_v2").write_text("digital clock\nbanana\nanalog clock\n")
    (mappings / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps(
        {str(DIGITAL_CLOCK): 0, str(BANANA): 1, str(ANALOG_CLOCK): 2}))
    for folder, seeds in (("alarm_clock", (1, 2)), ("banana", (3,)), ("chair", (4,))):
        for seed in seeds:
            write_jpeg(root / "images" / folder / f"{seed}.png", seed=seed, size=(40, 36))
    return root


@pytest.fixture(scope="module")
def shift_folders(tmp_path_factory) -> dict[str, tuple[Path, dict[str, int]]]:
    """One tiny folder per layout; name -> (root, expected label of each id)."""
    root = tmp_path_factory.mktemp("shifts")
    r, a = subset_indices("imagenet-r"), subset_indices("imagenet-a")
    layouts = {
        "imagenet-v2": {"0": 0, "17": 17, "999": 999},
        "imagenet-sketch": {WNIDS[0]: 0, WNIDS[500]: 500},
        "imagenet-r": {WNIDS[r[0]]: int(r[0]), WNIDS[r[-1]]: int(r[-1])},
        "imagenet-a": {WNIDS[a[0]]: int(a[0]), WNIDS[a[5]]: int(a[5])},
    }
    folders = {}
    for k, (name, classes) in enumerate(layouts.items()):
        expected = {}
        for c, (folder, label) in enumerate(classes.items()):
            for j in range(2):
                write_jpeg(root / name / folder / f"{j}.JPEG", seed=100 * k + 10 * c + j)
                expected[f"{folder}/{j}.JPEG"] = label
        folders[name] = (root / name, expected)
    objectnet = write_objectnet(root / "objectnet")
    folders["objectnet"] = (objectnet, {"images/alarm_clock/1.png": ANALOG_CLOCK, "images/alarm_clock/2.png":
                                        ANALOG_CLOCK, "images/banana/3.png": BANANA})
    return folders


@pytest.mark.parametrize("name", ["imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet"])
def test_each_layout_extracts_with_imagenet_labels(gla, tiny_clip, shift_folders, tmp_path, name):
    root, expected = shift_folders[name]
    out = tmp_path / f"{name}.h5"
    r = gla("extract", f"{name}:{root}", "-o", out, "--model", tiny_clip.config, "--pretrained",
            tiny_clip.checkpoint, "--device", "cpu", "--workers", "0", "--dtype", "float32")
    assert r.code == 0, r.err
    with read_rows(out, "features") as f:
        assert f.classnames == clip_imagenet_classnames()
        assert dict(zip(f.ids(), f.labels.tolist())) == expected
        assert f.attrs["source_kind"] == name and f.attrs["label_space"] == "imagenet-1k"
        values = f.read()
    if name == "objectnet":
        assert "1 ObjectNet folders of classes outside ImageNet left out" in r.err
        # the 2-pixel border is cropped before open_clip's preprocessing, as WiSE-FT's loader does
        import torch
        from PIL import Image
        model, preprocess, _ = tiny_clip.load()
        images = [Image.open(root / i).convert("RGB") for i in sorted(expected)]
        cropped = [im.crop((2, 2, im.width - 2, im.height - 2)) for im in images]
        with torch.no_grad():
            want = model.encode_image(torch.stack([preprocess(im) for im in cropped]), normalize=True).numpy()
            uncropped = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
        np.testing.assert_allclose(values, want, rtol=0, atol=2e-6)
        assert np.abs(values - uncropped).max() > 1e-4


def test_imagenet_classes_option_names_the_classes(tmp_path, shift_folders):
    root, _ = shift_folders["imagenet-v2"]
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {k}\n" for k in range(1000)))
    rows = open_source(f"imagenet-v2:{root}", classnames_file=str(names))
    assert rows.classnames[17] == "class 17"
    names.write_text("a\nb\n")
    with pytest.raises(Exception, match="names 2 classes"):
        open_source(f"imagenet-v2:{root}", classnames_file=str(names))


def test_folders_that_do_not_belong_to_the_layout_are_refused(gla, tmp_path):
    cases = {
        "imagenet-v2": ("cat", "not a class index"),
        "imagenet-sketch": ("n99999999", "not an ImageNet wnid"),
        "imagenet-r": (WNIDS[0], "not one of its 200 classes"),
    }
    for name, (folder, fragment) in cases.items():
        write_jpeg(tmp_path / name / folder / "0.jpg", seed=1)
        r = gla("extract", f"{name}:{tmp_path / name}", "-o", tmp_path / "x.h5", "--model", "ViT-B-32",
                "--pretrained", "openai")
        assert_one_line_error(r, fragment)
    r = gla("extract", f"objectnet:{tmp_path / 'imagenet-v2'}", "-o", tmp_path / "x.h5", "--model", "ViT-B-32",
            "--pretrained", "openai")
    assert_one_line_error(r, "folder_to_objectnet_label.json")


def test_objectnet_mapping_groups_imagenet_classes(shift_folders):
    mapping = read_objectnet_mapping(shift_folders["objectnet"][0] / "mappings")
    assert mapping.folders == ["alarm_clock", "banana"]
    assert mapping.names == ["Alarm clock", "Banana"]
    assert [g.tolist() for g in mapping.groups] == [[ANALOG_CLOCK, DIGITAL_CLOCK], [BANANA]]


# --------------------------------------------------------------------------- projection


def synthetic_logits(n: int = 40, c: int = 1000, labels: np.ndarray | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)).astype(np.float32) * 3
    return logits, labels if labels is not None else rng.integers(0, c, n)


def write_logits(path: Path, logits: np.ndarray, labels: np.ndarray) -> Path:
    return write_logits_file(path, logits, labels, clip_imagenet_classnames()[:logits.shape[1]],
                             [f"img{k}" for k in range(len(logits))], temperature=2.0, head_type="zeroshot")


def test_core_projection_equals_a_hand_computation():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(7, 9))
    groups = [np.array([4]), np.array([0, 2, 8]), np.array([5, 6])]
    order, starts, class_map = group_layout(groups, 9)
    got = project_logits(logits, order, starts)
    for k, group in enumerate(groups):
        for i in range(7):
            assert got[i, k] == max(logits[i, c] for c in group)
    labels = np.array([4, 0, 8, 6, -1, 1, 3])
    assert project_labels(labels, class_map).tolist() == [0, 1, 1, 2, -1, -1, -1]
    only = [np.array([3]), np.array([1])]
    o, s, _ = group_layout(only, 9)
    np.testing.assert_array_equal(project_logits(logits, o, s), logits[:, [3, 1]])
    for bad in ([np.array([1]), np.array([1, 2])], [np.array([9])], [np.array([], dtype=np.int64)]):
        with pytest.raises(ValueError):
            group_layout(bad, 9)


@pytest.mark.parametrize("subset", ["imagenet-r", "imagenet-a"])
def test_project_onto_a_200_class_subset(gla, tmp_path, subset):
    keep = subset_indices(subset)
    rng = np.random.default_rng(1)
    labels = rng.choice(keep, 40)
    labels[3] = -1
    logits, _ = synthetic_logits(labels=labels)
    source = write_logits(tmp_path / "in.h5", logits, labels)
    r = gla("project", source, "--onto", subset, "-o", tmp_path / "out.h5", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["n_classes"] == 200
    with read_rows(tmp_path / "out.h5", "logits") as f:
        values, got_labels, names, attrs = f.read(), f.labels, f.classnames, f.attrs
    hand = np.array([[row[c] for c in keep] for row in logits])
    np.testing.assert_array_equal(values, hand)
    assert got_labels.tolist() == [-1 if y < 0 else keep.tolist().index(y) for y in labels]
    assert names == [clip_imagenet_classnames()[c] for c in keep]
    assert attrs["temperature"] == 2.0 and attrs["projected_onto"] == subset and attrs["head_type"] == "zeroshot"


def test_project_onto_objectnet_takes_the_maximum_over_its_classes(gla, tmp_path, shift_folders):
    labels = np.array([ANALOG_CLOCK, DIGITAL_CLOCK, BANANA, ANALOG_CLOCK])
    logits, _ = synthetic_logits(n=4, labels=labels, seed=2)
    logits[0, DIGITAL_CLOCK] = 50.0  # the second clock class wins row 0's alarm-clock column
    source = write_logits(tmp_path / "in.h5", logits, labels)
    mappings = shift_folders["objectnet"][0] / "mappings"
    r = gla("project", source, "--onto", "objectnet", "--mappings", mappings, "-o", tmp_path / "out.h5")
    assert r.code == 0, r.err
    with read_rows(tmp_path / "out.h5", "logits") as f:
        values, got_labels, names = f.read(), f.labels, f.classnames
    hand = np.array([[max(row[ANALOG_CLOCK], row[DIGITAL_CLOCK]), row[BANANA]] for row in logits])
    np.testing.assert_array_equal(values, hand)
    assert values[0, 0] == 50.0
    assert got_labels.tolist() == [0, 0, 1, 0] and names == ["Alarm clock", "Banana"]


def test_project_onto_a_file_of_classes(gla, tmp_path):
    names = clip_imagenet_classnames()
    logits, labels = synthetic_logits(n=6, labels=np.array([5, 7, 5, 900, 7, 5]))
    source = write_logits(tmp_path / "in.h5", logits, labels)
    (tmp_path / "subset.txt").write_text(f"{names[900]}\n{names[5]}\n{names[7]}\n")
    assert gla("project", source, "--onto", tmp_path / "subset.txt", "-o", tmp_path / "a.h5").code == 0
    with read_rows(tmp_path / "a.h5", "logits") as f:
        np.testing.assert_array_equal(f.read(), logits[:, [900, 5, 7]])
        assert f.labels.tolist() == [1, 2, 1, 0, 2, 1]
    (tmp_path / "groups.json").write_text(json.dumps({"odd": [names[5], 7], "big": [900]}))
    assert gla("project", source, "--onto", tmp_path / "groups.json", "-o", tmp_path / "b.h5").code == 0
    with read_rows(tmp_path / "b.h5", "logits") as f:
        np.testing.assert_array_equal(f.read(), np.stack([logits[:, [5, 7]].max(1), logits[:, 900]], 1))
        assert f.labels.tolist() == [0, 0, 0, 1, 0, 0] and f.classnames == ["odd", "big"]


def test_project_refuses_what_does_not_fit(gla, tmp_path, shift_folders):
    keep = subset_indices("imagenet-r")
    outside = next(c for c in range(1000) if c not in set(keep.tolist()))
    logits, _ = synthetic_logits(n=3, labels=np.array([keep[0], outside, keep[1]]))
    source = write_logits(tmp_path / "in.h5", logits, np.array([keep[0], outside, keep[1]]))
    out = tmp_path / "out.h5"
    assert_one_line_error(gla("project", source, "--onto", "imagenet-r", "-o", out), "row 1", "outside imagenet-r")
    assert_one_line_error(gla("project", source, "--onto", "objectnet", "-o", out), "--mappings")
    small = write_logits(tmp_path / "small.h5", *synthetic_logits(n=3, c=100))
    assert_one_line_error(gla("project", small, "--onto", "imagenet-a", "-o", out), "has 100 classes")
    assert_one_line_error(gla("project", source, "--onto", "nonsense", "-o", out), "neither imagenet-r")
    assert not out.exists()
    mappings = shift_folders["objectnet"][0] / "mappings"
    clocks = write_logits(tmp_path / "clocks.h5", *synthetic_logits(n=2, labels=np.array([BANANA, BANANA])))
    assert gla("project", clocks, "--onto", "objectnet", "--mappings", mappings, "-o", out).code == 0
    assert_one_line_error(gla("project", out, "--onto", "objectnet", "--mappings", mappings, "-o",
                              tmp_path / "again.h5"), "already projected")
