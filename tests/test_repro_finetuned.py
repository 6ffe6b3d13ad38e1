"""``make repro-imagenet FT_CHECKPOINT=...`` end to end: the tiny open_clip model as the zero-shot model, a
perturbed copy of it saved as a DDP state dict as the fine-tuned one, a generated ImageNet of all 1000
wnid folders (the shifts are labelled in ImageNet's 1000 classes) and one tiny folder per shift.

Kept small for two cores: two training images and one validation image per class (HOLDOUT_SHOTS=1),
one prompt (IMAGENET_TEMPLATES=simple), no bootstrap (FT_BOOTSTRAP=0), the fine-tuned head from the
checkpoint's own text tower (FT_HEAD=zeroshot: the default probe's 1000-class penalty search alone takes
minutes here; its rules are the linear-probe run's commands), and q at a fixed temperature (the random tiny model is near
chance; see tests/test_repro.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoints import perturbed
from test_repro import make, report_rows
from test_shifts import write_objectnet
from tiny_clip import tiny_clip_fixture, write_jpeg  # noqa: F401

from glacli.io.imagenet_classes import imagenet_wnids, subset_indices
from glacli.io.rowfile import read_rows

SETS = ["ImageNet", "ImageNet-A", "ImageNet-R", "ImageNet-Sketch", "ImageNet-V2", "ObjectNet"]
METHODS = ["zero-shot", "zero-shot-debiased", "fine-tuned", "WiSE-FT", "ensemble", "GLA"]


def write_imagenet_and_shifts(root: Path) -> dict[str, str]:
    wnids = imagenet_wnids()
    for c, wnid in enumerate(wnids):
        for k in range(2):
            write_jpeg(root / "imagenet" / "train" / wnid / f"{wnid}_{k}.JPEG", seed=10 * c + k, size=(36, 36))
        write_jpeg(root / "imagenet" / "val" / wnid / f"val_{c}.JPEG", seed=100_000 + c, size=(36, 36))
    r, a = subset_indices("imagenet-r"), subset_indices("imagenet-a")
    shifts = root / "shifts"
    folders = {"imagenetv2-matched-frequency-format-val": ["0", "1", "954"], "sketch": [wnids[0], wnids[954]],
               "imagenet-r": [wnids[r[0]], wnids[r[1]]], "imagenet-a": [wnids[a[0]], wnids[a[1]]]}
    for k, (name, classes) in enumerate(folders.items()):
        for c, folder in enumerate(classes):
            write_jpeg(shifts / name / folder / "0.jpg", seed=200_000 + 10 * k + c)
    write_objectnet(shifts / "objectnet-1.0")
    return {"IMAGENET": str(root / "imagenet"), "SHIFT_ROOT": str(shifts)}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_clip) -> dict[str, str]:
    root = tmp_path_factory.mktemp("repro_ft")
    ft = root / "checkpoint_ft.pt"
    torch.save({f"module.{k}": v for k, v in perturbed(tiny_clip, seed=7).state_dict().items()}, ft)
    return {**write_imagenet_and_shifts(root / "data"), "RUNS": str(root / "runs"),
            "GLA": f"{sys.executable} -m glacli", "GLA_PYTHON": sys.executable, "MODEL": str(tiny_clip.config),
            "PRETRAINED": str(tiny_clip.checkpoint), "FT_CHECKPOINT": str(ft), "DEVICE": "cpu",
            "EXTRACT_FLAGS": "--workers 0 --batch-size 512", "HOLDOUT_SHOTS": "1", "Q_TEMPERATURE": "1",
            "IMAGENET_TEMPLATES": "simple", "FT_BOOTSTRAP": "0", "FT_HEAD": "zeroshot"}


@pytest.mark.e2e(budget=300)
def test_repro_imagenet_with_a_finetuned_checkpoint(workspace):
    make(workspace, "repro-imagenet")
    out = Path(workspace["RUNS"]) / "imagenet" / "gla-tiny-clip_gla-tiny-clip" / "finetuned_checkpoint_ft"
    report = (out / "report.md").read_text()
    sets = report_rows(out / "report-sets.md")
    assert list(sets) == METHODS
    header = next(line for line in (out / "report-sets.md").read_text().splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [f"set={s}" for s in SETS]
    assert all(len(cells) == len(SETS) and "-" not in cells for cells in sets.values())
    assert list(report_rows(out / "report-shifts-mean.md")) == METHODS
    assert "tail-third accuracy by q" in report and report.count("| method |") == 5

    # every shift's rows carry ImageNet labels; the projected files carry the set's own classes
    with read_rows(out / "r" / "zs_features.h5", "features") as f:
        assert f.n_classes == 1000 and sorted(set(f.labels.tolist())) == subset_indices("imagenet-r")[:2].tolist()
    for name, n_classes in (("r", 200), ("a", 200), ("objectnet", 2)):
        with read_rows(out / name / "gla_projected.h5", "logits") as f:
            assert f.n_classes == n_classes and f.attrs["projected_from_classes"] == 1000
    # the fine-tuned and WiSE-FT image towers are the checkpoint's and the interpolation's
    with read_rows(out / "imagenet" / "zs_features.h5", "features") as zs, \
            read_rows(out / "imagenet" / "ft_features.h5", "features") as ft, \
            read_rows(out / "imagenet" / "wise_features.h5", "features") as wise:
        assert ft.attrs["checkpoint_prefix"] == "module." and zs.ids() == ft.ids() == wise.ids()
        z, f_, w = zs.read(), ft.read(), wise.read()
    assert np.abs(z - f_).max() > 1e-3 and np.abs(w - z).max() > 1e-4 and np.abs(w - f_).max() > 1e-4
    results = json.loads((out / "imagenet" / "results.json").read_text())
    assert results["tags"]["set"] == "ImageNet" and [r["name"] for r in results["results"]] == METHODS
    assert [len(results["groups"][g]["classes"]) for g in ("q_head", "q_medium", "q_tail")] == [333, 333, 334]


@pytest.mark.e2e(budget=90)
def test_ft_head_import_reads_the_checkpoints_own_head(tiny_clip, tmp_path):
    """FT_HEAD=import: the head of a WiSE-FT-style pickled model, through the safe reader, by its make rule."""
    from test_checkpoints import ImageClassifier

    from glacli.io.paramfile import read_head
    model = ImageClassifier(perturbed(tiny_clip, seed=8), n_classes=1000)
    checkpoint = tmp_path / "checkpoint_10.pt"
    torch.save(model, checkpoint)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {k}\n" for k in range(1000)))
    runs = tmp_path / "runs"
    workspace = {"RUNS": str(runs), "GLA": f"{sys.executable} -m glacli", "MODEL": str(tiny_clip.config),
                 "PRETRAINED": str(tiny_clip.checkpoint), "FT_CHECKPOINT": str(checkpoint), "FT_HEAD": "import",
                 "IMAGENET_CLASSNAMES": str(names)}
    target = runs / "imagenet" / "gla-tiny-clip_gla-tiny-clip" / "finetuned_checkpoint_10" / "ft_head-import.h5"
    make(workspace, str(target))
    head = read_head(target)
    np.testing.assert_array_equal(head.weight, model.classification_head.weight.detach().numpy())
    assert head.head_type == "finetuned" and bool(head.attrs["input_normalize"])
