"""gla fit --method prompt and gla extract --augment-views: the GLA authors' prompt learner over cached views.

The tiny open_clip model (tests/tiny_clip.py) on nine noise JPEGs of three classes: features of
the images and of two augmented views each are extracted once for the module.
"""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from tiny_clip import tiny_clip_fixture, write_image_folder  # noqa: F401

from glacli.base.errors import GlaInputError
from glacli.cli.main import main
from glacli.io.encoders.augment import CROP_SCALE, crop_box
from glacli.io.extraction.views import image_of
from glacli.core.prompt_learning import (
    WARMUP_LR,
    default_lr,
    epoch_batches,
    epoch_lr,
    fit_batch_to_set,
    group_views,
    sgd_step,
)
from glacli.base.types import Reporter
from glacli.io.paramfile import read_head
from glacli.io.rowfile import read_rows, write_features
from glacli.services.fit_prompt import checkpoint_path, fit_prompt_head

CLASSES = {"cat": 3, "dog": 3, "red_fox": 3}


def model_args(tiny) -> list[str]:
    return ["--model", str(tiny.config), "--pretrained", str(tiny.checkpoint), "--device", "cpu"]


def extract(tiny, *args: object) -> None:
    code = main([str(a) for a in ("extract", *args, *model_args(tiny), "--workers", "0", "--dtype", "float32")])
    assert code == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_clip):
    """Image features (``plain``) and two views per image (``views``, seed 1) of the same nine images."""
    root = tmp_path_factory.mktemp("prompt")
    write_image_folder(root / "images", CLASSES)
    extract(tiny_clip, root / "images", "-o", root / "plain.h5")
    extract(tiny_clip, root / "images", "-o", root / "views.h5", "--augment-views", 2, "--seed", 1)
    return root


def read(path):
    with read_rows(path, "features") as f:
        return f.read(), f.labels, f.ids(), f.attrs


def mean_ce(head, features, labels) -> float:
    z = features @ head.weight.T + head.bias
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]))


# --------------------------------------------------------------------------- the math


def test_schedule_is_a_constant_warm_up_then_torchs_cosine_and_sgd_is_torchs():
    lr, epochs = 4e-4, 6
    assert epoch_lr(0, epochs, lr) == WARMUP_LR
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for epoch in range(1, epochs):  # Dassl steps the cosine once per epoch after the warm-up epoch
        assert epoch_lr(epoch, epochs, lr) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
        optimizer.step()
        cosine.step()

    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 3, generator=generator) for _ in range(4)]
    ours, theirs = torch.randn(4, 3, generator=generator), None
    theirs = ours.clone().requires_grad_(True)
    reference = torch.optim.SGD([theirs], lr=0.1, momentum=0.9, weight_decay=5e-4)
    momentum = None
    for grad in grads:
        momentum = sgd_step(ours, grad, momentum, 0.1)
        theirs.grad = grad.clone()
        reference.step()
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-6, atol=1e-7)


def test_authors_learning_rates_and_small_set_scaling():
    assert [default_lr(k) for k in (1, 2, 4, 8, 16)] == [2e-5, 4e-5, 1e-4, 2e-4, 4e-4]
    assert default_lr(3) == pytest.approx(6e-5) and default_lr(12) == pytest.approx(3e-4)
    # EuroSAT at 1 shot: 10 images, a batch of 32 -> one batch of all 10 and the rate times 3.2
    assert fit_batch_to_set(2e-5, 32, 10) == (pytest.approx(6.4e-5), 10)
    assert fit_batch_to_set(4e-4, 512, 16000) == (4e-4, 512)


def test_epochs_take_one_view_per_image_cycling_through_its_views():
    ids = [f"img{i}#v{k}" for i in range(10) for k in range(3)]
    members, counts = group_views([image_of(i) for i in ids])
    assert members.shape == (10, 3) and counts.tolist() == [3] * 10
    used: dict[int, list[int]] = {i: [] for i in range(10)}
    for epoch in range(3):
        batches = epoch_batches(members, counts, seed=5, epoch=epoch, batch_size=4)
        assert [len(b) for b in batches] == [4, 4]  # 10 images // 4: the last partial batch is dropped
        rows = torch.cat(batches).tolist()
        assert len({r // 3 for r in rows}) == 8  # one view each of distinct images
        full = torch.cat(epoch_batches(members, counts, seed=5, epoch=epoch, batch_size=10)).tolist()
        for r in full:
            used[r // 3].append(r % 3)
        assert rows == torch.cat(epoch_batches(members, counts, seed=5, epoch=epoch, batch_size=4)).tolist()
    assert all(sorted(views) == [0, 1, 2] for views in used.values())  # every view once in three epochs
    assert epoch_batches(members, counts, 5, 0, 10)[0].tolist() != epoch_batches(members, counts, 6, 0, 10)[0].tolist()


def test_crop_boxes_lie_inside_the_image():
    for width, height in ((48, 40), (300, 10), (10, 300), (1, 1)):
        for seed in range(50):
            top, left, h, w = crop_box(width, height, random.Random(seed))
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
    areas = [h * w / (48 * 40) for top, left, h, w in (crop_box(48, 40, random.Random(s)) for s in range(200))]
    assert CROP_SCALE[0] * 0.9 <= min(areas) and max(areas) <= 1 and np.std(areas) > 0.1


# --------------------------------------------------------------------------- extract --augment-views


def test_augmented_views_are_deterministic_per_seed(data, tiny_clip, tmp_path):
    views, labels, ids, attrs = read(data / "views.h5")
    plain, plain_labels, plain_ids, _ = read(data / "plain.h5")
    assert ids == [f"{i}#v{k}" for i in plain_ids for k in range(2)]
    np.testing.assert_array_equal(labels, np.repeat(plain_labels, 2))
    assert attrs["augment_views"] == 2 and attrs["seed"] == 1 and "random resized crop" in attrs["augment"]
    assert np.abs(views[0] - views[1]).max() > 1e-3 and np.abs(views[0] - plain[0]).max() > 1e-3

    extract(tiny_clip, data / "images", "-o", tmp_path / "again.h5", "--augment-views", 2, "--seed", 1,
            "--batch-size", 5)
    again, _, again_ids, _ = read(tmp_path / "again.h5")
    assert again_ids == ids
    np.testing.assert_allclose(again, views, atol=1e-6)
    extract(tiny_clip, data / "images", "-o", tmp_path / "seed2.h5", "--augment-views", 2, "--seed", 2)
    assert np.abs(read(tmp_path / "seed2.h5")[0] - views).max() > 1e-2

    # the views of a few-shot subset are the same views, keyed on the image and the view, not the position
    assert main(["subset", str(data / "plain.h5"), "--shots", "1", "--seed", "3", "-o", str(tmp_path / "sub.h5")]) == 0
    extract(tiny_clip, data / "images", "-o", tmp_path / "sub_views.h5", "--rows-of", tmp_path / "sub.h5",
            "--augment-views", 2, "--seed", 1)
    sub_ids = read(tmp_path / "sub.h5")[2]
    sub_views, _, sub_view_ids, sub_attrs = read(tmp_path / "sub_views.h5")
    assert sub_view_ids == [f"{i}#v{k}" for i in sub_ids for k in range(2)] and len(sub_ids) == 3
    np.testing.assert_allclose(sub_views, views[[ids.index(i) for i in sub_view_ids]], atol=1e-6)
    assert sub_attrs["rows_of"] == str((tmp_path / "sub.h5").resolve())


def test_extract_refusals(gla, data, tiny_clip, tmp_path):
    images, out = data / "images", tmp_path / "x.h5"
    r = gla("extract", images, "-o", out, *model_args(tiny_clip), "--augment-views", 2, "--gpu-decode")
    assert_one_line_error(r, "--gpu-decode does not apply with --augment-views")
    r = gla("extract", images, "-o", out, "--backend", "sentence-transformers", "--model", "m", "--augment-views", 2)
    assert_one_line_error(r, "--augment-views applies to images")
    r = gla("extract", images, "-o", out, *model_args(tiny_clip), "--shots", 1, "--rows-of", data / "plain.h5")
    assert_one_line_error(r, "give --shots or --rows-of, not both")
    r = gla("extract", images, "-o", out, *model_args(tiny_clip), "--rows-of", data / "views.h5")
    assert_one_line_error(r, str(data / "views.h5"), "holds augmented views")
    r = gla("subset", data / "views.h5", "--shots", 1, "--seed", 0, "-o", out)
    assert_one_line_error(r, str(data / "views.h5"), "split an image's views", "--rows-of")
    assert not out.exists()


# --------------------------------------------------------------------------- fit --method prompt


@pytest.mark.parametrize(("template", "learn"), [("simple", "context+class"), ("file", "context")])
def test_epochs_0_is_the_zero_shot_head_of_the_same_template(gla, data, tiny_clip, tmp_path, template, learn):
    if template == "file":
        template = str(tmp_path / "one.txt")
        (tmp_path / "one.txt").write_text("a blurry photo of the {}, seen from afar.\n")
    r = gla("zeroshot", *model_args(tiny_clip), "--like", data / "plain.h5", "--templates", template,
            "-o", tmp_path / "zs.h5")
    assert r.code == 0, r.err
    r = gla("fit", data / "plain.h5", "--method", "prompt", "--epochs", 0, "--template", template, "--learn", learn,
            *model_args(tiny_clip), "-o", tmp_path / "prompt.h5", "--json")
    assert r.code == 0, r.err
    zs, prompt = read_head(tmp_path / "zs.h5"), read_head(tmp_path / "prompt.h5")
    np.testing.assert_allclose(prompt.weight, zs.weight, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(prompt.bias, np.zeros(3, np.float32))
    assert prompt.head_type == "prompt" and prompt.temperature == 1.0 and prompt.classnames == zs.classnames
    assert prompt.attrs["learn"] == learn and prompt.attrs["epochs"] == 0 and prompt.attrs["model"] == tiny_clip.arch


@pytest.mark.parametrize(("learn", "lr"), [("context+class", 1e-4), ("context", 3e-4)])
def test_a_few_epochs_lower_the_training_loss(data, tiny_clip, tmp_path, learn, lr):
    model = {"model": str(tiny_clip.config), "pretrained": str(tiny_clip.checkpoint), "device": "cpu"}
    features, labels, _, _ = read(data / "views.h5")
    fit_prompt_head(data / "views.h5", tmp_path / "zs.h5", epochs=0, learn=learn, **model)
    report = fit_prompt_head(data / "views.h5", tmp_path / "p.h5", epochs=6, lr=lr, batch_size=3, learn=learn,
                             seed=2, **model)
    assert report["steps_per_epoch"] == 3 and report["n_images"] == 9 and report["views_per_image"] == 2
    assert [h["lr"] for h in report["history"][:2]] == [WARMUP_LR, lr]
    before = mean_ce(read_head(tmp_path / "zs.h5"), features, labels)
    after = mean_ce(read_head(tmp_path / "p.h5"), features, labels)
    assert after < 0.9 * before, (before, after)
    assert not checkpoint_path(tmp_path / "p.h5").exists()


class Stop(Exception):
    """Stands for a crash (a kill, an out-of-memory error) in the middle of an epoch."""


def test_a_fit_interrupted_mid_epoch_resumes_to_the_same_residuals(data, tiny_clip, tmp_path):
    model = {"model": str(tiny_clip.config), "pretrained": str(tiny_clip.checkpoint), "device": "cpu"}

    def fit(out, reporter, lr=1e-4):
        return fit_prompt_head(data / "views.h5", out, val=data / "plain.h5", epochs=4, lr=lr, batch_size=3, seed=7,
                               reporter=reporter, **model)

    def keep_checkpoints(out, saved):
        """Advance with a description ends an epoch, after its checkpoint is written: keep a copy."""
        def advance(n=1, description=None):
            if description is not None:
                saved.append(torch.load(checkpoint_path(out), weights_only=True)["state"])
        return advance

    whole: list = []
    fit(tmp_path / "whole.h5", Reporter(advance=keep_checkpoints(tmp_path / "whole.h5", whole)))
    steps = 0

    def crash_at_step_5(n=1, description=None):  # 3 steps per epoch: during epoch 2
        nonlocal steps
        steps += n if description is None else 0
        if steps == 5:
            raise Stop

    out = tmp_path / "resumed.h5"
    with pytest.raises(Stop):
        fit(out, Reporter(advance=crash_at_step_5))
    assert not out.exists()
    first = torch.load(checkpoint_path(out), weights_only=True)["state"]
    assert first["epoch"] == 1
    torch.testing.assert_close(first["residual"], whole[0]["residual"], rtol=0, atol=1e-7)
    with pytest.raises(GlaInputError, match="lr differ"):
        fit(out, Reporter(), lr=2e-4)

    messages: list[str] = []
    resumed: list = []
    fit(out, Reporter(message=messages.append, advance=keep_checkpoints(out, resumed)))
    assert messages == [f"resuming from epoch 1 of 4 ({checkpoint_path(out)})"]
    assert [state["epoch"] for state in resumed] == [2, 3, 4]
    for key in ("residual", "momentum", "best"):
        torch.testing.assert_close(resumed[-1][key], whole[-1][key], rtol=0, atol=1e-6)
    assert [pytest.approx(h) for h in resumed[-1]["history"]] == whole[-1]["history"]
    a, b = read_head(tmp_path / "whole.h5"), read_head(out)
    np.testing.assert_allclose(b.weight, a.weight, rtol=0, atol=1e-5)
    assert b.temperature == pytest.approx(a.temperature, rel=1e-6) and b.attrs["best_epoch"] == a.attrs["best_epoch"]
    assert not checkpoint_path(out).exists()


def test_fit_refusals(gla, data, tiny_clip, tmp_path):
    out = tmp_path / "h.h5"
    features, labels, ids, _ = read(data / "plain.h5")
    text = tmp_path / "text.h5"
    write_features(text, features, labels, ids, ["cat", "dog", "red fox"],
                   attrs={"encoder": "sentence-transformers", "model": "/models/minilm", "pretrained": ""})
    r = gla("fit", text, "--method", "prompt", "-o", out)
    assert_one_line_error(r, str(text), "sentence-transformers backend", "prompt learning needs an open_clip model")

    renamed = tmp_path / "gla-tiny-clip-renamed.json"
    shutil.copy(tiny_clip.config, renamed)
    r = gla("fit", data / "plain.h5", "--method", "prompt", "--model", renamed, "--pretrained", tiny_clip.checkpoint,
            "-o", out)
    assert_one_line_error(r, str(data / "plain.h5"), "was extracted with model 'gla-tiny-clip'")
    other = tmp_path / "other.pt"
    shutil.copy(tiny_clip.checkpoint, other)
    r = gla("fit", data / "plain.h5", "--method", "prompt", "--model", tiny_clip.config, "--pretrained", other,
            "-o", out)
    assert_one_line_error(r, "was extracted with pretrained", "other.pt")
    r = gla("fit", data / "plain.h5", "--method", "prompt", "--wd", "1e-3", "-o", out)
    assert_one_line_error(r, "--wd: for --method linear only")
    r = gla("fit", data / "plain.h5", "--val", data / "plain.h5", "--epochs", 3, "-o", out)
    assert_one_line_error(r, "--epochs: for --method prompt only")
    r = gla("fit", data / "plain.h5", "--method", "prompt", "--learn", "class", *model_args(tiny_clip), "-o", out)
    assert_one_line_error(r, "--learn: expected one of context+class, context")
    assert not out.exists()
