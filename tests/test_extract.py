"""gla extract with a tiny real open_clip model: values, rows, crash safety, sharding, bad input."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, blocked_extraction, subprocess_env
from tiny_clip import EMBED_DIM, tiny_clip_fixture, write_image_folder, write_jpeg  # noqa: F401

from glacli.base.errors import GlaInputError
from glacli.io.encoders import load_encoder
from glacli.io.h5file import COMPLETE_ATTR, get_attrs
from glacli.io.rowfile import read_rows
from glacli.io.sources import open_source

VOLATILE_ATTRS = ("created", "gla_id")


def model_args(tiny) -> list[str]:
    """The tiny model on the CPU (exact comparisons; a GPU would use autocast)."""
    return ["--model", str(tiny.config), "--pretrained", str(tiny.checkpoint), "--device", "cpu"]


def contents(path: Path) -> dict:
    """Every dataset and the stable attributes of a features file."""
    with h5py.File(path, "r") as f:
        data = {name: f[name][()] for name in f}
        data["attrs"] = {k: v for k, v in get_attrs(f).items() if k not in VOLATILE_ATTRS}
    return data


FLOAT32_ATOL = 1e-6
"""Unit-norm float32 features encoded in batches of another shape, or with another thread count, differ
by a few float32 ulps (BLAS splits the sums differently): 1e-6 is ten times what is seen."""


def assert_same_file(a: Path, b: Path, exact: bool = True) -> None:
    """Same datasets and attributes; float values bit for bit when ``exact`` (same batch shape and
    threads), else within :data:`FLOAT32_ATOL`."""
    left, right = contents(a), contents(b)
    assert left.keys() == right.keys()
    for name in left:
        if name == "attrs":
            assert left[name] == right[name]
        elif not exact and np.asarray(left[name]).dtype.kind == "f":
            np.testing.assert_allclose(left[name], right[name], rtol=0, atol=FLOAT32_ATOL, err_msg=name)
        else:
            np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def reference_features(tiny, paths: list[Path]) -> np.ndarray:
    """open_clip's own encode_image + normalise on the same files."""
    from PIL import Image
    model, preprocess, _ = tiny.load()
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.open(p)) for p in paths])
        return model.encode_image(batch, normalize=True).numpy()


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    write_image_folder(root, {"tabby_cat": 4, "dog": 3})
    return root


def test_features_equal_open_clip_encode_image(gla, tiny_clip, folder, tmp_path):
    out = tmp_path / "f32.h5"
    r = gla("extract", folder, "-o", out, *model_args(tiny_clip), "--dtype", "float32", "--batch-size", "3",
            "--workers", "0", "--json")
    assert r.code == 0, r.err
    rows = open_source(str(folder))
    expected = reference_features(tiny_clip, [folder / i for i in rows.ids])
    with read_rows(out, "features") as f:
        assert f.ids() == rows.ids == sorted(rows.ids)
        assert f.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
        assert f.classnames == ["dog", "tabby cat"]
        values = f.read()
        assert f.attrs["model"] == tiny_clip.arch
        assert f.attrs["pretrained"] == str(tiny_clip.checkpoint.resolve())
        assert f.attrs["source"] == str(folder.resolve())
        assert f.attrs["n_images"] == 7 and f.attrs["n_skipped"] == 0
    assert values.shape == (7, EMBED_DIM)
    np.testing.assert_allclose(values, expected, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1.0, atol=1e-6)

    half = tmp_path / "f16.h5"
    assert gla("extract", folder, "-o", half, *model_args(tiny_clip), "--workers", "2", "--batch-size", "2").code == 0
    with read_rows(half, "features") as f:
        assert contents(half)["features"].dtype == np.float16
        np.testing.assert_allclose(f.read(), expected, atol=1e-3)


def test_manifest_and_tar_shards_give_the_same_features_as_the_folder(gla, tiny_clip, folder, tmp_path):
    rows = open_source(str(folder))
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{i},{i.split('/')[0]}\n" for i in rows.ids))
    (tmp_path / "names.txt").write_text("dog\ntabby_cat\n")
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for k, (i, label) in enumerate(zip(rows.ids, rows.labels)):
            for name, data in ((f"{k:04d}.jpg", (folder / i).read_bytes()), (f"{k:04d}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    common = [*model_args(tiny_clip), "--dtype", "float32", "--workers", "0"]
    assert gla("extract", folder, "-o", tmp_path / "a.h5", *common).code == 0
    r = gla("extract", tmp_path / "m.csv", "--root", folder, "-o", tmp_path / "b.h5", *common)
    assert r.code == 0, r.err
    r = gla("extract", str(tmp_path / "shard-*.tar"), "--classnames", tmp_path / "names.txt",
            "-o", tmp_path / "c.h5", *common)
    assert r.code == 0, r.err
    a, b, c = (contents(tmp_path / n) for n in ("a.h5", "b.h5", "c.h5"))
    np.testing.assert_array_equal(a["features"], b["features"])
    np.testing.assert_array_equal(a["features"], c["features"])
    assert a["ids"].tolist() == b["ids"].tolist()
    assert [x.decode() for x in c["ids"]] == [f"shard-0.tar/{k:04d}.jpg" for k in range(7)]
    assert a["labels"].tolist() == b["labels"].tolist() == c["labels"].tolist()
    assert b["classnames"].tolist() == [b"dog", b"tabby_cat"]
    assert c["classnames"].tolist() == [b"dog", b"tabby_cat"]


def test_few_shot_extraction_records_the_selection(gla, tiny_clip, folder, tmp_path):
    out = tmp_path / "few.h5"
    r = gla("extract", folder, "-o", out, *model_args(tiny_clip), "--shots", "2", "--seed", "5", "--workers", "0")
    assert r.code == 0, r.err
    with read_rows(out, "features") as f:
        assert np.bincount(f.labels).tolist() == [2, 2]
        assert f.attrs["shots"] == 2 and f.attrs["seed"] == 5
        ids = f.ids()
    again = tmp_path / "again.h5"
    assert gla("extract", folder, "-o", again, *model_args(tiny_clip), "--shots", "2", "--seed", "5").code == 0
    with read_rows(again, "features") as f:
        assert f.ids() == ids


def test_corrupt_image_is_a_one_line_error_or_skipped_with_skip_bad(gla, tiny_clip, folder, tmp_path):
    bad = folder / "dog" / "001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    (folder / "dog" / "zz.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "out.h5"
    r = gla("extract", folder, "-o", out, *model_args(tiny_clip), "--workers", "0")
    assert_one_line_error(r, str(bad.resolve()), "cannot decode image", "--skip-bad")
    assert not out.exists()

    r = gla("extract", folder, "-o", out, *model_args(tiny_clip), "--workers", "2", "--batch-size", "2",
            "--skip-bad", "--dtype", "float32")
    assert r.code == 0, r.err
    assert "skipped 2 unreadable images" in r.err
    with read_rows(out, "features") as f:
        assert "dog/001.jpg" not in f.ids() and len(f.ids()) == 6
        assert f.attrs["n_skipped"] == 2
        good = [folder / i for i in f.ids()]
        np.testing.assert_allclose(f.read(), reference_features(tiny_clip, good), atol=2e-6)
    assert [s.decode() for s in contents(out)["skipped"]] == ["dog/001.jpg", "dog/zz.jpg"]


def test_missing_manifest_file_and_bad_options_are_one_line_errors(gla, tiny_clip, folder, tmp_path):
    (tmp_path / "m.csv").write_text("path,label\ndog/000.jpg,dog\ndog/gone.jpg,dog\n")
    out = tmp_path / "out.h5"
    r = gla("extract", tmp_path / "m.csv", "--root", folder, "-o", out, *model_args(tiny_clip), "--workers", "0")
    assert_one_line_error(r, "gone.jpg", "cannot read file")
    assert not out.exists()
    r = gla("extract", folder, "-o", out, "--model", "no-such-arch", "--pretrained", "x")
    assert_one_line_error(r, "unknown open_clip architecture")
    r = gla("extract", folder, "-o", out, "--model", tiny_clip.config, "--pretrained", tmp_path / "missing.pt")
    assert_one_line_error(r, "missing.pt", "cannot load model")
    r = gla("extract", folder, "-o", out, *model_args(tiny_clip), "--dtype", "int8")
    assert_one_line_error(r, "--dtype")
    r = gla("extract", folder, "-o", tmp_path / "no-dir" / "out.h5", *model_args(tiny_clip))
    assert_one_line_error(r, "does not exist")
    (tmp_path / "bad.json").write_text('{"embed_dim": 8}')
    r = gla("extract", folder, "-o", out, "--model", tmp_path / "bad.json", "--pretrained", tiny_clip.checkpoint)
    assert_one_line_error(r, "bad.json", "not an open_clip model config")


def test_existing_output_is_kept_done_or_refused_unless_overwrite(gla, tiny_clip, folder, tmp_path):
    out = tmp_path / "out.h5"
    assert gla("extract", folder, "-o", out, *model_args(tiny_clip), "--workers", "0").code == 0
    before = contents(out)
    r = gla("extract", folder, "-o", out, *model_args(tiny_clip), "--workers", "0")
    assert r.code == 0 and "already complete" in r.err

    other = tmp_path / "other.pt"
    state = torch.load(tiny_clip.checkpoint)
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, other)
    r = gla("extract", folder, "-o", out, "--model", tiny_clip.config, "--pretrained", other, "--workers", "0")
    assert_one_line_error(r, str(out), "different extraction", "pretrained", "--overwrite")
    (folder / "dog" / "000.jpg").rename(folder / "dog" / "renamed.jpg")
    r = gla("extract", folder, "-o", out, *model_args(tiny_clip), "--workers", "0")
    assert_one_line_error(r, "different extraction", "rows_digest")
    np.testing.assert_array_equal(contents(out)["features"], before["features"])

    r = gla("extract", folder, "-o", out, *model_args(tiny_clip), "--workers", "0", "--overwrite")
    assert r.code == 0, r.err
    assert "dog/renamed.jpg" in [i.decode() for i in contents(out)["ids"]]

    (tmp_path / "notes.h5").write_text("precious")
    r = gla("extract", folder, "-o", tmp_path / "notes.h5", *model_args(tiny_clip))
    assert_one_line_error(r, "notes.h5", "--overwrite")
    assert (tmp_path / "notes.h5").read_text() == "precious"


@pytest.mark.e2e(budget=30)
def test_sigkill_half_way_then_the_same_command_resumes_to_the_same_file(gla, tiny_clip, tmp_path):
    """Row 8 is a named pipe: the run commits rows 0-7, blocks reading it, and is killed there."""
    blocked = blocked_extraction(tmp_path, model_args(tiny_clip))
    args, out, parts = blocked.args, blocked.output, blocked.parts

    proc = blocked.start()
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not out.exists()
    assert sorted(p.name for p in parts.glob("chunk-*")) == ["chunk-00000000.npz", "chunk-00000001.npz"]
    with pytest.raises(GlaInputError, match="no such file"):
        read_rows(out, "features")

    blocked.unblock()
    r = gla(*args)
    assert r.code == 0, r.err
    assert "resuming from row 8 of 12" in r.err
    assert not parts.exists()

    reference = tmp_path / "reference.h5"
    r = gla(*[a if a != str(out) else str(reference) for a in args])
    assert r.code == 0 and "resuming" not in r.err
    attrs_ref = contents(reference)["attrs"]
    assert attrs_ref["n_images"] == 12
    assert_same_file(out, reference, exact=False)  # rows 0-7 came from a process with OMP_NUM_THREADS=1


def test_out_of_gpu_memory_is_one_line_and_a_smaller_batch_resumes(gla, tiny_clip, tmp_path, monkeypatch):
    """torch's OutOfMemoryError half-way (raised here by a wrapped encoder: the CPU has no GPU memory)."""
    from glacli.io.encoders.openclip import OpenClipEncoder
    images = tmp_path / "imgs"
    write_image_folder(images, {"a": 6, "b": 6})
    out, reference = tmp_path / "out.h5", tmp_path / "reference.h5"
    common = [*model_args(tiny_clip), "--commit-every", "4", "--workers", "0", "--dtype", "float32"]
    encode, batches = OpenClipEncoder.encode_batch, []

    def runs_out_at_the_fifth_batch(self, inputs):
        batches.append(len(inputs))
        if len(batches) == 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                         "capacity of 79.11 GiB of which 1.50 GiB is free.\nmore details")
        return encode(self, inputs)

    monkeypatch.setattr(OpenClipEncoder, "encode_batch", runs_out_at_the_fifth_batch)
    r = gla("extract", images, "-o", out, *common, "--batch-size", "2")
    assert_one_line_error(r, "out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB)",
                          "rerun with a smaller --batch-size to resume")
    assert not out.exists()
    monkeypatch.undo()
    r = gla("extract", images, "-o", out, *common, "--batch-size", "1")
    assert r.code == 0, r.err
    assert "resuming from row 8 of 12" in r.err
    assert gla("extract", images, "-o", reference, *common, "--batch-size", "2").code == 0
    assert_same_file(out, reference, exact=False)  # rows 8-11 were encoded in batches of 1, not 2


@pytest.mark.e2e(budget=40)
def test_torchrun_two_ranks_give_the_single_process_file(gla, tiny_clip, tmp_path):
    images = tmp_path / "imgs"
    write_image_folder(images, {"a": 6, "b": 5})  # 11 rows, batches of 2, chunks of 2: 6 chunks over 2 ranks
    single, sharded = tmp_path / "single.h5", tmp_path / "sharded.h5"
    common = [*model_args(tiny_clip), "--batch-size", "2", "--commit-every", "2", "--workers", "0",
              "--dtype", "float32"]
    assert gla("extract", images, "-o", single, *common).code == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "glacli", "extract", str(images), "-o", str(sharded), *common, "--json"]
    done = subprocess.run(cmd, check=False, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert '"ranks": 2' in done.stdout
    assert_same_file(sharded, single, exact=False)  # ranks run with OMP_NUM_THREADS=1, the single process not
    assert not (tmp_path / ".sharded.h5.parts").exists()


def test_tensor_preprocessing_for_device_decoding_matches_the_pil_path(tiny_clip, folder):
    """The --gpu-decode path (decode_jpeg + tensor transforms), run here on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg
    encoder = load_encoder("open_clip", str(tiny_clip.config), str(tiny_clip.checkpoint), "cpu")
    pil = encoder.loader(decode_on_device=False)
    raw = encoder.loader(decode_on_device=True)
    transform = encoder.tensor_transform()
    paths = sorted(folder.rglob("*.jpg"))
    expected = torch.stack([pil(p.read_bytes()) for p in paths])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision.io points to torchcodec
        decoded = [decode_jpeg(raw(p.read_bytes()), mode=ImageReadMode.RGB) for p in paths]
    got = torch.stack([transform(image) for image in decoded])
    assert got.shape == expected.shape
    # JPEG decoders (libjpeg in PIL vs torchvision) and resampling differ by a few grey levels.
    assert (got - expected).abs().mean() < 0.05
    features = encoder.encode_batch(got)
    reference = encoder.encode_batch(expected)
    assert torch.nn.functional.cosine_similarity(features, reference).min() > 0.99


def test_device_decoding_falls_back_to_the_cpu_decoder_per_image(tiny_clip, tmp_path, monkeypatch):
    """nvjpeg rejects some JPEGs that libjpeg reads (CMYK); here every device decode is made to fail."""
    import torchvision.io
    from PIL import Image
    rgb = write_jpeg(tmp_path / "rgb.jpg", seed=1)
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(rgb).convert("CMYK").save(cmyk, format="JPEG")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(rgb.read_bytes()[:40])
    decode = torchvision.io.decode_jpeg

    def no_device_decoding(data, *args, device="cpu", **kwargs):
        if device != "cpu" or isinstance(data, list):
            raise RuntimeError("unsupported on the device")
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_device_decoding)
    encoder = load_encoder("open_clip", str(tiny_clip.config), str(tiny_clip.checkpoint), "cpu")
    raw, pil = encoder.loader(decode_on_device=True), encoder.loader(decode_on_device=False)
    inputs, failed = encoder.prepare([raw(p.read_bytes()) for p in (rgb, cmyk, broken)], decode_on_device=True)
    assert failed == [2] and inputs.shape[0] == 2
    expected = torch.stack([pil(p.read_bytes()) for p in (rgb, cmyk)])
    assert (inputs - expected).abs().mean() < 0.05  # decoders and resampling differ by a few grey levels


def test_split_json_extraction_records_the_split(gla, tiny_clip, folder, tmp_path):
    split = {"train": [["dog/000.jpg", 0, "dog"]],
             "test": [["tabby_cat/001.jpg", 1, "tabby_cat"], ["dog/002.jpg", 0, "dog"]]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    out = tmp_path / "test.h5"
    r = gla("extract", tmp_path / "split.json", "--split", "test", "--root", folder, "-o", out, *model_args(tiny_clip))
    assert r.code == 0, r.err
    with read_rows(out, "features") as f:
        assert f.ids() == ["tabby_cat/001.jpg", "dog/002.jpg"]
        assert f.labels.tolist() == [1, 0] and f.classnames == ["dog", "tabby cat"]
        assert f.attrs["split"] == "test" and f.attrs["root"] == str(folder.resolve())


def test_a_features_file_without_the_complete_mark_is_refused(gla, tiny_clip, folder, tmp_path):
    out = tmp_path / "f.h5"
    assert gla("extract", folder, "-o", out, *model_args(tiny_clip), "--workers", "0").code == 0
    with h5py.File(out, "a") as f:
        del f.attrs[COMPLETE_ATTR]
    with pytest.raises(GlaInputError, match="is incomplete"):
        read_rows(out, "features")
    r = gla("zeroshot", *model_args(tiny_clip), "--like", out, "-o", tmp_path / "head.h5")
    assert_one_line_error(r, str(out), "is incomplete")
