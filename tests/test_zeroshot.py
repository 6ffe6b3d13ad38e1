"""gla zeroshot: heads against open_clip's own zero-shot classifier; template sets; bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from tiny_clip import LOGIT_SCALE, tiny_clip_fixture, write_image_folder  # noqa: F401

from glacli.core import zeroshot
from glacli.io.paramfile import read_head
from glacli.io.rowfile import read_rows
from glacli.io.templates import load_templates, template_set_names

CLASSNAMES = ["tabby cat", "golden retriever", "red fox"]


def model_args(tiny) -> list[str]:
    """The tiny model on the CPU (exact comparisons; a GPU would use autocast)."""
    return ["--model", str(tiny.config), "--pretrained", str(tiny.checkpoint), "--device", "cpu"]


def open_clip_reference(tiny, classnames: list[str], templates: list[str]) -> np.ndarray:
    """open_clip.build_zero_shot_classifier ([D, C], unit columns) times logit_scale.exp(), as [C, D]."""
    from open_clip import build_zero_shot_classifier
    model, _, tokenizer = tiny.load()
    fill = [lambda c, t=t: t.replace("{}", c) for t in templates]  # literal text around '{}', as gla does
    weights = build_zero_shot_classifier(model, tokenizer, classnames, fill, num_classes_per_batch=2)
    return (weights.T * model.logit_scale.exp()).detach().numpy()


@pytest.mark.parametrize("templates", ["simple", "imagenet", "file"])
def test_head_equals_the_open_clip_zero_shot_classifier(gla, tiny_clip, tmp_path, templates):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSNAMES) + "\n")
    if templates == "file":
        (tmp_path / "t.txt").write_text("a photo of a {}.\n\n{} in the wild.\nart of the {}, {{braces}} kept.\n")
        templates = str(tmp_path / "t.txt")
    out = tmp_path / "head.h5"
    r = gla("zeroshot", *model_args(tiny_clip), "--classnames", names, "--templates", templates, "-o", out, "--json")
    assert r.code == 0, r.err
    head = read_head(out)
    _, template_list = load_templates(templates)
    expected = open_clip_reference(tiny_clip, CLASSNAMES, template_list)
    np.testing.assert_allclose(head.weight, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(head.weight, axis=1), LOGIT_SCALE, rtol=1e-5)
    assert head.head_type == "zeroshot" and head.temperature == 1.0
    assert head.classnames == CLASSNAMES
    np.testing.assert_array_equal(head.bias, np.zeros(3, np.float32))
    assert head.attrs["n_templates"] == len(template_list)
    assert head.attrs["model"] == tiny_clip.arch


def test_like_takes_classnames_and_records_the_features_file_as_parent(gla, tiny_clip, tmp_path):
    images = tmp_path / "imgs"
    write_image_folder(images, {"red_fox": 1, "owl": 1})
    features = tmp_path / "f.h5"
    assert gla("extract", images, "-o", features, *model_args(tiny_clip), "--workers", "0").code == 0
    out = tmp_path / "head.h5"
    r = gla("zeroshot", *model_args(tiny_clip), "--like", features, "--templates", "simple", "-o", out)
    assert r.code == 0, r.err
    head = read_head(out)
    assert head.classnames == ["owl", "red fox"]
    with read_rows(features, "features") as f:
        assert head.attrs["parents"] == [f.gla_id]
        logits = f.read() @ head.weight.T
    assert np.abs(logits).max() <= LOGIT_SCALE * 1.001

    other = tmp_path / "other.pt"
    torch.save(torch.load(tiny_clip.checkpoint), other)
    r = gla("zeroshot", "--model", tiny_clip.config, "--pretrained", other, "--like", features, "-o", out)
    assert r.code == 0 and "warning:" in r.err and "other.pt" in r.err
    renamed = tmp_path / "gla-tiny-clip-renamed.json"
    renamed.write_text(tiny_clip.config.read_text())
    r = gla("zeroshot", "--model", renamed, "--pretrained", tiny_clip.checkpoint, "--like", features, "-o", out)
    assert_one_line_error(r, str(features), "was extracted with model 'gla-tiny-clip'")


def test_built_in_template_sets():
    names = template_set_names()
    for name in ("imagenet", "simple", "caltech101", "oxfordpets", "stanfordcars", "oxfordflowers", "flowers102",
                 "food101", "fgvcaircraft", "sun397", "dtd", "describabletextures", "eurosat", "ucf101"):
        assert name in names
        _, templates = load_templates(name)
        assert all(t.count("{}") == 1 for t in templates)
    assert len(load_templates("imagenet")[1]) == 80
    assert load_templates("imagenet")[1][0] == "a bad photo of a {}."
    assert load_templates("simple")[1] == ["a photo of a {}."]
    assert load_templates("OxfordPets")[1] == ["a photo of a {}, a type of pet."]
    assert load_templates("Flowers102")[1] == ["a photo of a {}, a type of flower."]
    assert load_templates("DTD")[1] == ["{} texture."]
    assert load_templates("EuroSAT")[1] == ["a centered satellite photo of {}."]
    assert load_templates("ucf_101")[1] == ["a photo of a person doing {}."]
    assert zeroshot.prompts(["a b", "c"], ["x {}.", "{}!"]) == ["x a b.", "a b!", "x c.", "c!"]


def test_bad_zeroshot_input_is_a_one_line_error(gla, tiny_clip, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    out = tmp_path / "head.h5"
    r = gla("zeroshot", *model_args(tiny_clip), "-o", out)
    assert_one_line_error(r, "exactly one of --classnames")
    r = gla("zeroshot", *model_args(tiny_clip), "--classnames", names, "--like", names, "-o", out)
    assert_one_line_error(r, "exactly one of --classnames")
    (tmp_path / "t.txt").write_text("a photo of a cat.\n")
    r = gla("zeroshot", *model_args(tiny_clip), "--classnames", names, "--templates", tmp_path / "t.txt", "-o", out)
    assert_one_line_error(r, "t.txt", "line 1", "exactly one '{}'")
    r = gla("zeroshot", *model_args(tiny_clip), "--classnames", names, "--templates", "klingon", "-o", out)
    assert_one_line_error(r, "'klingon' is neither a file nor a built-in set")
    r = gla("zeroshot", *model_args(tiny_clip), "--classnames", tmp_path / "none.txt", "-o", out)
    assert_one_line_error(r, "none.txt", "no such file")
    r = gla("zeroshot", *model_args(tiny_clip), "--like", names, "-o", out)
    assert_one_line_error(r, "names.txt", "not an HDF5 file")
    r = gla("zeroshot", *model_args(tiny_clip), "--classnames", names, "--encoder", "nope", "-o", out)
    assert_one_line_error(r, "unknown backend 'nope'")
    assert not out.exists()
