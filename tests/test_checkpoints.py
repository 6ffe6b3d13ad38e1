"""Fine-tuned checkpoints (glacli/io/checkpoints.py): every layout gives open_clip's own features with the
same weights; pickles are read without running code from them."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from tiny_clip import tiny_clip_fixture, write_image_folder  # noqa: F401

from glacli.io.checkpoints import read_checkpoint
from glacli.io.encoders import load_encoder
from glacli.io.rowfile import read_rows
from glacli.io.sources import open_source


class ImageEncoder(torch.nn.Module):
    """WiSE-FT's ImageEncoder in miniature: the CLIP model under ``model``, plus a preprocessing object
    (a torchvision transform, pickled through its enum's constructor)."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        from torchvision import transforms
        self.model = clip
        self.val_preprocess = transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC)


class ImageClassifier(torch.nn.Module):
    """WiSE-FT's ImageClassifier in miniature; a class that exists only in this test process."""

    def __init__(self, clip: torch.nn.Module, n_classes: int = 5):
        super().__init__()
        self.image_encoder = ImageEncoder(clip)
        self.classification_head = torch.nn.Linear(24, n_classes)


def perturbed(tiny, seed: int = 1) -> torch.nn.Module:
    """The tiny model with every floating-point weight moved by seeded noise: a "fine-tuned" model."""
    model, _, _ = tiny.load()
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


def save_layouts(model: torch.nn.Module, folder: Path) -> dict[str, Path]:
    """The perturbed weights in every layout a user may hold; name -> file."""
    from safetensors.torch import save_file
    state = {k: v.clone() for k, v in model.state_dict().items()}
    head = {"classification_head.weight": torch.randn(5, 24), "classification_head.bias": torch.zeros(5)}
    layouts = {
        "plain.pt": state,
        "plain.bin": state,
        "ddp.pt": {f"module.{k}": v for k, v in state.items()},
        "model.pt": {f"model.{k}": v for k, v in state.items()},
        "wiseft_state.pt": {**{f"image_encoder.model.{k}": v for k, v in state.items()}, **head},
        "training.pt": {"epoch": 10, "name": "ft", "state_dict": {f"module.{k}": v for k, v in state.items()},
                        "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-5}]}},
    }
    paths = {}
    for name, value in layouts.items():
        paths[name] = folder / name
        torch.save(value, paths[name])
    paths["plain.safetensors"] = folder / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(paths["plain.safetensors"]))
    paths["whole_model.pt"] = folder / "whole_model.pt"
    torch.save(ImageClassifier(model), paths["whole_model.pt"])
    return paths


@pytest.fixture(scope="module")
def finetuned(tiny_clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetuned")
    model = perturbed(tiny_clip)
    return model, save_layouts(model, folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imgs") / "imgs"
    write_image_folder(root, {"cat": 2, "dog": 3})
    return root


def reference(model: torch.nn.Module, preprocess, folder: Path) -> np.ndarray:
    from PIL import Image
    paths = [folder / i for i in open_source(str(folder)).ids]
    with torch.no_grad():
        return model.encode_image(torch.stack([preprocess(Image.open(p)) for p in paths]), normalize=True).numpy()


EXPECTED_PREFIX = {"plain.pt": "(none)", "plain.bin": "(none)", "plain.safetensors": "(none)", "ddp.pt": "module.",
                   "model.pt": "model.", "wiseft_state.pt": "image_encoder.model.",
                   "training.pt": "state_dict.module.", "whole_model.pt": "image_encoder.model."}


@pytest.mark.parametrize("layout", sorted(EXPECTED_PREFIX))
def test_every_layout_gives_open_clip_features_of_those_weights(gla, tiny_clip, finetuned, images, tmp_path, layout):
    model, paths = finetuned
    _, preprocess, _ = tiny_clip.load()
    out = tmp_path / "ft.h5"
    r = gla("extract", images, "-o", out, "--model", tiny_clip.config, "--pretrained", paths[layout],
            "--device", "cpu", "--dtype", "float32", "--workers", "0")
    assert r.code == 0, r.err
    with read_rows(out, "features") as f:
        values, attrs = f.read(), f.attrs
    np.testing.assert_allclose(values, reference(model, preprocess, images), rtol=0, atol=2e-6)
    original, _, _ = tiny_clip.load()
    assert np.abs(values - reference(original, preprocess, images)).max() > 1e-3, "the perturbation shows"
    assert attrs["checkpoint_sha256"] == hashlib.sha256(paths[layout].read_bytes()).hexdigest()
    assert attrs["checkpoint_prefix"] == EXPECTED_PREFIX[layout]
    assert attrs["checkpoint_layout"] == ("pickled model" if layout == "whole_model.pt" else
                                          "safetensors" if layout.endswith(".safetensors") else "state dict")
    shown = gla("info", out)
    assert "checkpoint_sha256" in shown.out and EXPECTED_PREFIX[layout] in shown.out
    assert json.loads(gla("info", out, "--json").out)["attributes"]["checkpoint_sha256"] == attrs["checkpoint_sha256"]


def test_whole_pickled_model_yields_its_module_tree(finetuned):
    model, paths = finetuned
    checkpoint = read_checkpoint(paths["whole_model.pt"])
    assert checkpoint.layout == "pickled model"
    assert sorted(checkpoint.ignored) == ["classification_head.bias", "classification_head.weight"]
    expected = model.state_dict()
    assert checkpoint.state_dict.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(checkpoint.state_dict[key], value), key


def test_visual_only_checkpoint_is_completed_from_base_pretrained(gla, tiny_clip, finetuned, images, tmp_path):
    model, _ = finetuned
    visual = tmp_path / "visual_only.pt"
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("visual.")}, visual)
    r = gla("extract", images, "-o", tmp_path / "x.h5", "--model", tiny_clip.config, "--pretrained", visual,
            "--device", "cpu", "--workers", "0")
    assert_one_line_error(r, str(visual), "--base-pretrained")
    assert not (tmp_path / "x.h5").exists()

    encoder = load_encoder("open_clip", str(tiny_clip.config), str(visual), "cpu",
                           base_pretrained=str(tiny_clip.checkpoint))
    base = torch.load(tiny_clip.checkpoint, weights_only=True)
    for key, value in encoder.model.state_dict().items():
        want = model.state_dict()[key] if key.startswith("visual.") else base[key]
        assert torch.equal(value, want), key
    assert encoder.describe()["base_pretrained"] == str(tiny_clip.checkpoint)
    assert encoder.logit_scale == pytest.approx(30.0)


def test_checkpoint_of_another_architecture_or_prefix_is_refused(gla, tiny_clip, finetuned, images, tmp_path):
    model, _ = finetuned
    state = model.state_dict()
    cases = {
        "extra.pt": ({**state, "visual.extra_layer.weight": torch.zeros(2)}, "visual.extra_layer.weight"),
        "teacher.pt": ({f"teacher.{k}": v for k, v in state.items()}, "'teacher.'"),
        "shape.pt": ({**state, "visual.proj": torch.zeros(3, 3)}, "visual.proj has shape (3, 3)"),
        "two.pt": ({**{f"module.{k}": v for k, v in state.items()}, **state}, "several key prefixes"),
    }
    for name, (value, fragment) in cases.items():
        torch.save(value, tmp_path / name)
        r = gla("extract", images, "-o", tmp_path / "x.h5", "--model", tiny_clip.config, "--pretrained",
                tmp_path / name, "--device", "cpu", "--workers", "0")
        assert_one_line_error(r, str(tmp_path / name), fragment)
    r = gla("extract", images, "-o", tmp_path / "x.h5", "--model", tiny_clip.config, "--pretrained",
            tiny_clip.checkpoint, "--base-pretrained", "openai", "--backend", "sentence-transformers")
    assert r.code == 2


class RunsShell:
    """Its pickle asks the unpickler to call os.system (a shell command) on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsSubprocess:
    """Its pickle calls subprocess.call, a module torch does not block by name."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return subprocess.call, (["touch", str(self.marker)],)


@pytest.mark.parametrize("payload", [RunsShell, RunsSubprocess])
def test_pickle_that_runs_code_on_load_is_refused_without_running_it(gla, tiny_clip, finetuned, images, tmp_path,
                                                                     payload):
    model, _ = finetuned
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": model.state_dict(), "hook": payload(marker)}, evil)
    r = gla("extract", images, "-o", tmp_path / "x.h5", "--model", tiny_clip.config, "--pretrained", evil,
            "--device", "cpu", "--workers", "0")
    assert_one_line_error(r, str(evil), "refused")
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "x.h5").exists()


def test_unreadable_files_are_refused_in_one_line(gla, tiny_clip, images, tmp_path):
    import pickle
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"visual.proj": np.zeros(2)}))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3, "note": json.dumps({})}, empty)
    for path, fragment in ((legacy, "legacy pickles are refused"), (broken, "cannot read safetensors"),
                           (empty, "holds no tensors")):
        r = gla("extract", images, "-o", tmp_path / "x.h5", "--model", tiny_clip.config, "--pretrained", path,
                "--device", "cpu", "--workers", "0")
        assert_one_line_error(r, str(path), fragment)


def test_head_of_a_whole_pickled_model_imports_through_the_safe_reader(gla, finetuned, tmp_path):
    model, paths = finetuned
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {k}\n" for k in range(5)))
    r = gla("import", paths["whole_model.pt"], "--kind", "head", "--key", "classification_head", "--classnames",
            names, "-o", tmp_path / "head.h5")
    assert r.code == 0, r.err
    from glacli.io.paramfile import read_head
    head = read_head(tmp_path / "head.h5")
    original = torch.load(paths["whole_model.pt"], weights_only=False).classification_head
    np.testing.assert_array_equal(head.weight, original.weight.detach().numpy())
    np.testing.assert_array_equal(head.bias, original.bias.detach().numpy())
    assert head.head_type == "finetuned" and head.classnames == [f"class {k}" for k in range(5)]


def test_head_import_from_a_code_running_pickle_is_refused_without_running_it(gla, finetuned, tmp_path):
    model, _ = finetuned
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"classification_head.weight": torch.zeros(2, 24), "hook": RunsSubprocess(marker)}, evil)
    r = gla("import", evil, "--kind", "head", "--key", "classification_head", "-o", tmp_path / "head.h5")
    assert_one_line_error(r, str(evil), "refused")
    assert not marker.exists()
