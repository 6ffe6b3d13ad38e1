"""gla interpolate (WiSE-FT): checkpoints and head files equal the manual interpolation; alpha 0 and 1
reproduce the inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from test_checkpoints import ImageClassifier, perturbed
from tiny_clip import tiny_clip_fixture, write_image_folder  # noqa: F401

from glacli.base.types import Head
from glacli.core.interpolation import interpolate
from glacli.io import paramfile
from glacli.io.paramfile import read_head
from glacli.io.rowfile import read_rows


@pytest.fixture(scope="module")
def pair(tiny_clip, tmp_path_factory):
    """The tiny model as zero-shot checkpoint (plain state dict) and a perturbed one saved as WiSE-FT saves
    its fine-tuned model (a whole pickled ImageClassifier, keys under image_encoder.model.)."""
    folder = tmp_path_factory.mktemp("pair")
    zs_model, _, _ = tiny_clip.load()
    ft_model = perturbed(tiny_clip, seed=4)
    torch.save(ImageClassifier(ft_model), folder / "ft.pt")
    return tiny_clip.checkpoint, folder / "ft.pt", zs_model.state_dict(), ft_model.state_dict()


def test_checkpoints_interpolate_key_by_key_and_name_the_curve(gla, pair, tmp_path):
    zs, ft, zs_state, ft_state = pair
    r = gla("interpolate", zs, ft, "--alpha", "0,0.3,1", "-o", tmp_path / "wise.safetensors", "--json")
    assert r.code == 0, r.err
    outputs = json.loads(r.out)["outputs"]
    assert outputs == [str(tmp_path / f"wise_alpha{a}.safetensors") for a in ("0", "0.3", "1")]
    from safetensors.torch import load_file
    mixed = load_file(outputs[1])
    assert mixed.keys() == zs_state.keys()
    for key, value in zs_state.items():
        manual = 0.7 * value.double() + 0.3 * ft_state[key].double()
        torch.testing.assert_close(mixed[key].double(), manual, rtol=0, atol=1e-6 * (1 + manual.abs().max().item()))
    for key in zs_state:
        assert torch.equal(load_file(outputs[0])[key], zs_state[key]), key
        assert torch.equal(load_file(outputs[2])[key], ft_state[key]), key


def test_alpha_0_and_1_give_the_inputs_features_exactly(gla, tiny_clip, pair, tmp_path):
    zs, ft, _, _ = pair
    images = tmp_path / "imgs"
    write_image_folder(images, {"a": 2, "b": 2})
    assert gla("interpolate", zs, ft, "--alpha", "0,1", "-o", tmp_path / "w.safetensors").code == 0

    def features(weights, name):
        out = tmp_path / f"{name}.h5"
        r = gla("extract", images, "-o", out, "--model", tiny_clip.config, "--pretrained", weights, "--device",
                "cpu", "--workers", "0", "--dtype", "float32")
        assert r.code == 0, r.err
        with read_rows(out, "features") as f:
            return f.read()

    np.testing.assert_array_equal(features(tmp_path / "w_alpha0.safetensors", "a0"), features(zs, "zs"))
    np.testing.assert_array_equal(features(tmp_path / "w_alpha1.safetensors", "a1"), features(ft, "ft"))


def test_checkpoints_whose_keys_differ_are_refused_naming_the_first(gla, pair, tmp_path):
    zs, _, zs_state, _ = pair
    other = {k: v for k, v in zs_state.items() if k != "visual.proj"}
    torch.save(other, tmp_path / "other.pt")
    r = gla("interpolate", zs, tmp_path / "other.pt", "--alpha", "0.5", "-o", tmp_path / "w.safetensors")
    assert_one_line_error(r, "key 'visual.proj' is not in", str(tmp_path / "other.pt"))
    for alpha, fragment in (("1.5", "outside [0, 1]"), ("0.5,0.5", "given twice"), ("half", "expected numbers")):
        assert_one_line_error(gla("interpolate", zs, zs, "--alpha", alpha, "-o", tmp_path / "w.safetensors"),
                              fragment)
    assert_one_line_error(gla("interpolate", zs, zs, "--alpha", "0.5", "-o", tmp_path / "w.pt"), ".safetensors")
    assert not list(tmp_path.glob("w*"))


def write_head(path, weight, bias, temperature, names, head_type="zeroshot"):
    paramfile.write_head(path, Head(weight=weight, bias=bias, classnames=names, head_type=head_type,
                                    temperature=temperature))
    return path


def test_heads_interpolate_their_logits(gla, tmp_path):
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    w_zs, w_ft = rng.normal(size=(3, 8)).astype(np.float32) * 30, rng.normal(size=(3, 8)).astype(np.float32)
    b_ft = rng.normal(size=3).astype(np.float32)
    zs = write_head(tmp_path / "zs.h5", w_zs, np.zeros(3, np.float32), 1.0, names)
    ft = write_head(tmp_path / "ft.h5", w_ft, b_ft, 1.0, names, "linear")
    assert gla("interpolate", zs, ft, "--alpha", "0,0.25,1", "-o", tmp_path / "h.h5").code == 0
    quarter = read_head(tmp_path / "h_alpha0.25.h5")
    np.testing.assert_allclose(quarter.weight, 0.75 * w_zs.astype(np.float64) + 0.25 * w_ft, rtol=1e-6)
    np.testing.assert_allclose(quarter.bias, 0.25 * b_ft.astype(np.float64), rtol=1e-6)
    assert quarter.head_type == "wise-ft" and quarter.attrs["interpolated_alpha"] == 0.25
    np.testing.assert_array_equal(read_head(tmp_path / "h_alpha0.h5").weight, w_zs)
    np.testing.assert_array_equal(read_head(tmp_path / "h_alpha1.h5").bias, b_ft)

    calibrated = write_head(tmp_path / "cal.h5", w_ft, b_ft, 0.5, names, "linear")
    assert gla("interpolate", zs, calibrated, "--alpha", "0.4", "-o", tmp_path / "m.h5").code == 0
    mixed = read_head(tmp_path / "m.h5")
    x = rng.normal(size=(5, 8))
    want = 0.6 * (x @ w_zs.T) + 0.4 * (x @ w_ft.T + b_ft) / 0.5
    got = (x @ mixed.weight.T + mixed.bias) / mixed.temperature
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)

    other = write_head(tmp_path / "other.h5", w_ft, b_ft, 1.0, ["a", "b", "d"], "linear")
    assert_one_line_error(gla("interpolate", zs, other, "--alpha", "0.5", "-o", tmp_path / "x.h5"),
                          "classnames disagree")
    assert_one_line_error(gla("interpolate", zs, tmp_path / "ft.pt", "--alpha", "0.5", "-o", tmp_path / "x.h5"),
                          "no such file")


def test_interpolate_is_exact_at_the_ends_for_arrays_and_tensors():
    a, b = np.array([1e-8, 3.0, -7.5]), np.array([2.0, 1e8, 0.1])
    np.testing.assert_array_equal(interpolate(a, b, 0.0), a)
    np.testing.assert_array_equal(interpolate(a, b, 1.0), b)
    t, u = torch.tensor(a, dtype=torch.float16), torch.tensor([2.0, 6e4, 0.1], dtype=torch.float16)
    assert torch.equal(interpolate(t, u, 0.0), t) and torch.equal(interpolate(t, u, 1.0), u)
