"""gla import --kind head: classification heads from checkpoints (any prefix, any layout) and from arrays,
checked against the model's own forward (image tower + head) with a tiny open_clip model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from tiny_clip import EMBED_DIM, tiny_clip_fixture, write_image_folder  # noqa: F401

from glacli.base.types import Head
from glacli.io.paramfile import read_head, write_head
from glacli.io.rowfile import read_rows

N_CLASSES = 3


class ClassificationHead(torch.nn.Linear):
    """WiSE-FT's head (src/models/modeling.py): a linear layer that may L2-normalise its input first."""

    def __init__(self, normalize: bool, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__(weight.shape[1], weight.shape[0])
        self.normalize = normalize
        self.weight = torch.nn.Parameter(weight.clone())
        self.bias = torch.nn.Parameter(bias.clone())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            inputs = inputs / inputs.norm(dim=-1, keepdim=True)
        return super().forward(inputs)


@pytest.fixture(scope="module")
def extracted(tiny_clip, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A features file of 7 images extracted by gla (float32), and the model's raw (unnormalised) image
    features of the same images, in the same order, from open_clip itself."""
    from PIL import Image

    from glacli.cli.main import main
    folder = tmp_path_factory.mktemp("heads")
    write_image_folder(folder / "imgs", {"a": 3, "b": 2, "c": 2})
    features = folder / "f.h5"
    assert main(["extract", str(folder / "imgs"), "-o", str(features), "--model", str(tiny_clip.config),
                 "--pretrained", str(tiny_clip.checkpoint), "--device", "cpu", "--workers", "0",
                 "--dtype", "float32"]) == 0
    with read_rows(features, "features") as f:
        ids = f.ids()
    model, preprocess, _ = tiny_clip.load()
    with torch.no_grad():
        raw = model.encode_image(torch.stack([preprocess(Image.open(folder / "imgs" / i)) for i in ids]))
    return features, raw


@pytest.fixture
def head() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(N_CLASSES, EMBED_DIM, generator=generator), torch.randn(N_CLASSES, generator=generator)


def state_dict_layouts(weight: torch.Tensor, bias: torch.Tensor) -> dict[str, object]:
    """The same head under the prefixes and nestings that training code writes."""
    other = {"image_encoder.model.visual.proj": torch.ones(4, 2)}
    return {
        "plain.pt": {"classification_head.weight": weight, "classification_head.bias": bias, **other},
        "ddp.pt": {"module.classification_head.weight": weight, "module.classification_head.bias": bias},
        "nested.pt": {"epoch": 10, "state_dict": {"module.model.classification_head.weight": weight,
                                                  "module.model.classification_head.bias": bias, **other}},
        "hf.bin": {"model.classification_head.weight": weight, "model.classification_head.bias": bias},
        "st.safetensors": {"model.classification_head.weight": weight, "model.classification_head.bias": bias,
                           **other},
    }


def save(path: Path, obj: dict[str, object]) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


def gla_logits(gla, features: Path, head_file: Path, tmp_path: Path) -> np.ndarray:
    r = gla("logits", features, head_file, "-o", tmp_path / "logits.h5")
    assert r.code == 0, r.err
    with read_rows(tmp_path / "logits.h5", "logits") as f:
        return f.read(dtype=np.float64)


@pytest.mark.parametrize("name", list(state_dict_layouts(torch.zeros(1, 1), torch.zeros(1))))
@pytest.mark.parametrize("input_normalize", [True, False])
def test_checkpoint_head_gives_the_models_own_logits(gla, extracted, head, tmp_path, name, input_normalize):
    features, raw = extracted
    weight, bias = head
    path = save(tmp_path / name, state_dict_layouts(weight, bias)[name])
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    r = gla("import", path, "--kind", "head", "--key", "classification_head", "--classnames", tmp_path / "names.txt",
            *(["--input-normalize"] if input_normalize else []), "-o", tmp_path / "head.h5")
    assert r.code == 0, r.err
    assert "(state dict)" in r.out and ("--input-normalize" in r.out)
    imported = read_head(tmp_path / "head.h5")
    assert imported.head_type == "finetuned" and imported.classnames == ["a", "b", "c"]
    assert bool(imported.attrs["input_normalize"]) is input_normalize
    with torch.no_grad():
        if input_normalize:  # the model's forward: raw image features into a head that normalises them
            expected = ClassificationHead(True, weight, bias)(raw)
        else:  # a head fitted on normalised features: image features @ W.T + b
            expected = ClassificationHead(False, weight, bias)(raw / raw.norm(dim=-1, keepdim=True))
    np.testing.assert_allclose(gla_logits(gla, features, tmp_path / "head.h5", tmp_path), expected.numpy(),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".pt", ".safetensors"])
def test_text_classifier_array_with_normalized_rows_and_logit_scale(gla, extracted, head, tmp_path, suffix):
    """Zero-shot text classifiers cached by other tools: an unnormalised [C, D] array, no bias."""
    features, raw = extracted
    text_head = head[0] * 3.0
    path = tmp_path / f"cache{suffix}"
    if suffix == ".npz":
        np.savez(path, text_head=text_head.numpy().astype(np.float16), classnames=np.array(["a", "b", "c"]))
    elif suffix == ".npy":
        np.save(path, text_head.numpy())
    else:
        save(path, {"text_head": text_head})
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    key = [] if suffix == ".npy" else ["--key", "text_head"]
    names = [] if suffix == ".npz" else ["--classnames", tmp_path / "names.txt"]
    r = gla("import", path, "--kind", "head", *key, *names, "--normalize-rows", "--logit-scale", "100",
            "-o", tmp_path / "head.h5")
    assert r.code == 0, r.err
    imported = read_head(tmp_path / "head.h5")
    assert imported.head_type == "zeroshot" and imported.attrs["logit_scale"] == 100
    assert imported.classnames == ["a", "b", "c"]
    if suffix == ".npz":  # float16 in the file: the reference starts from the same float16 values
        text_head = torch.from_numpy(text_head.numpy().astype(np.float16).astype(np.float32))
    with torch.no_grad():
        expected = 100 * (raw / raw.norm(dim=-1, keepdim=True)) @ (text_head / text_head.norm(dim=-1, keepdim=True)).T
    np.testing.assert_allclose(gla_logits(gla, features, tmp_path / "head.h5", tmp_path), expected.numpy(),
                               rtol=0, atol=1e-4)  # logits of about 100: 1e-6 relative


def test_exported_head_imports_back(gla, head, tmp_path):
    weight, bias = head
    write_head(tmp_path / "h.h5", Head(weight.numpy(), bias.numpy(), ["a", "b", "c"], "linear", 1.5))
    for suffix in (".npz", ".pt"):
        assert gla("export", tmp_path / "h.h5", "-o", tmp_path / f"h{suffix}").code == 0
        r = gla("import", tmp_path / f"h{suffix}", "--kind", "head", "-o", tmp_path / "back.h5")
        assert r.code == 0, r.err
        back = read_head(tmp_path / "back.h5")
        np.testing.assert_array_equal(back.weight, weight.numpy())
        np.testing.assert_array_equal(back.bias, bias.numpy())
        assert (back.classnames, back.head_type, back.temperature) == (["a", "b", "c"], "linear", 1.5)


def test_bfloat16_safetensors_head_is_widened_exactly(gla, head, tmp_path):
    weight = head[0].to(torch.bfloat16)
    path = save(tmp_path / "bf16.safetensors", {"fc.weight": weight, "fc.bias": head[1].to(torch.bfloat16)})
    r = gla("import", path, "--kind", "head", "--key", "fc", "-o", tmp_path / "h.h5")
    assert r.code == 0, r.err
    np.testing.assert_array_equal(read_head(tmp_path / "h.h5").weight, weight.float().numpy())


BAD_HEADS = [
    ("two matches", lambda t, w, b: [save(t / "two.pt", {"a.fc.weight": w, "b.fc.weight": w}), "--key", "fc"],
     "several entries end in 'fc.weight' (a.fc.weight, b.fc.weight)"),
    ("missing key", lambda t, w, b: [save(t / "m.pt", {"fc.weight": w}), "--key", "classification_head"],
     "has no entry 'classification_head' or 'classification_head.weight'"),
    ("no head found", lambda t, w, b: [save(t / "n.pt", {"x": b}), ], "no head found"),
    ("bias shape", lambda t, w, b: [save(t / "bs.pt", {"fc.weight": w, "fc.bias": b[:2]}), "--key", "fc"],
     "entry 'fc.bias' has shape (2,), expected (3,)"),
    ("1-d weight", lambda t, w, b: [save(t / "v.pt", {"fc.weight": b}), "--key", "fc"],
     "expected a head weight [classes, dim]"),
    ("classnames count", lambda t, w, b: [save(t / "c.pt", {"fc.weight": w}), "--key", "fc", "--classnames",
                                          t / "two.txt"], "the head has 3 classes but 2 class names"),
    ("bad safetensors", lambda t, w, b: [t / "bad.safetensors"], "cannot be read as .safetensors"),
    ("head from csv", lambda t, w, b: [t / "h.csv"], "a head cannot be read from a .csv file"),
    ("bad head type", lambda t, w, b: [save(t / "h.pt", {"fc.weight": w}), "--head-type", "magic"],
     "--head-type: expected one of"),
    ("row options", lambda t, w, b: [save(t / "h.pt", {"fc.weight": w}), "--labels-key", "y"],
     "--labels-key does not apply to a head"),
    ("zero row", lambda t, w, b: [save(t / "z.pt", {"fc.weight": w * 0}), "--normalize-rows"],
     "head row 0 is all zeros"),
]


@pytest.mark.parametrize("case, build, fragment", BAD_HEADS, ids=[c[0] for c in BAD_HEADS])
def test_bad_heads_are_one_line_and_write_nothing(gla, head, tmp_path, case, build, fragment):
    (tmp_path / "two.txt").write_text("a\nb\n")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    (tmp_path / "h.csv").write_text("a,b\n1,2\n")
    r = gla("import", *build(tmp_path, *head), "--kind", "head", "-o", tmp_path / "out.h5")
    assert_one_line_error(r, fragment)
    assert not (tmp_path / "out.h5").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_head_options_are_refused_for_other_kinds(gla, tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((2, 2)))
    assert_one_line_error(gla("import", tmp_path / "z.npy", "--kind", "logits", "--normalize-rows",
                              "-o", tmp_path / "o.h5"), "--normalize-rows applies to --kind head only")
    assert not (tmp_path / "o.h5").exists()
