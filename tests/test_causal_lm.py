"""The causal-lm backend: prompted features of a causal LM, its label-word head, and the content-free prior.

A tiny random Llama (transformers ``LlamaConfig``, two layers) and a byte-level BPE tokenizer
trained on a few sentences are built and saved in the session, so the real loading, tokenising
and encoding path runs with no downloaded model. The reference for every number is the model's
own forward pass on one unpadded prompt at a time.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub: never ask the hub

import numpy as np
import pytest
from conftest import assert_one_line_error

from glacli.base.errors import GlaInputError
from glacli.io.encoders.prompts import DEFAULT_PROMPT, PromptTemplate, parse_label_words
from glacli.io.h5file import get_attrs, open_h5
from glacli.io.rowfile import read_rows

pytest.importorskip("transformers", reason="the causal-lm backend needs transformers (gla[llm])")

import torch  # noqa: E402

BACKEND = ["--backend", "causal-lm"]
PROMPT = "Classify the news into one of: {labels}.\\nArticle: {text}\\nTopic:"
TEXTS = {
    "business": ["shares rose as the market closed higher on profit news",
                 "the bank said profit fell", "oil prices and the economy"],
    "sport": ["the team won the match with a late goal", "a great race", "the coach praised the players after "
              "a long season of matches, goals, wins and a cup final that the whole town watched"],
    "tech": ["a new phone with faster software", "the computer chip", "internet users and mobile games"],
}
"""Texts of different lengths, so that batches are padded."""
CORPUS = [t for texts in TEXTS.values() for t in texts] + [
    "Classify the news into one of: business, sport, technology.", "Article:", "Topic: business", "Topic: sport",
    "Topic: technology", " business sport technology N/A", "news about the world"]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random two-layer Llama with untied LM head and a byte-level BPE tokenizer, saved as a folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<pad>"],
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, initializer_range=0.2, pad_token_id=0)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def reference_model(tiny_llama: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


def own_next_token_logits(reference_model, prompts: list[str]) -> np.ndarray:
    """The model's own next-token logits after each prompt, scored alone (no padding), in float64."""
    tokenizer, model = reference_model
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            rows.append(model(input_ids=ids).logits[0, -1].double().numpy())
    return np.stack(rows)


def write_texts(folder: Path) -> Path:
    for label, texts in TEXTS.items():
        (folder / label).mkdir(parents=True)
        for i, text in enumerate(texts):
            (folder / label / f"{i}.txt").write_text(text)
    return folder


def prompt_of(text: str, labels: str = "business, sport, technology") -> str:
    return PromptTemplate.parse(PROMPT).render(text, labels)


def read(path: Path) -> dict:
    with read_rows(path, "features") as f:
        return {"values": f.read(), "ids": f.ids(), "attrs": f.attrs, "classnames": f.classnames}


def extract(gla, source: Path, out: Path, model: Path, *extra: object):
    return gla("extract", source, "-o", out, *BACKEND, "--model", model, "--prompt", PROMPT, "--workers", 0,
               "--dtype", "float32", "--label-words", "tech=technology", *extra)


def test_head_logits_are_the_models_own_next_token_logits(gla, tiny_llama, reference_model, tmp_path):
    texts = write_texts(tmp_path / "texts")
    features, head, logits = tmp_path / "f.h5", tmp_path / "head.h5", tmp_path / "zs.h5"
    r = extract(gla, texts, features, tiny_llama, "--batch-size", 4)
    assert r.code == 0, r.err
    r = gla("zeroshot", *BACKEND, "--model", tiny_llama, "--like", features, "-o", head, "--json")
    assert r.code == 0, r.err
    assert gla("logits", features, head, "-o", logits).code == 0

    stored = read(features)
    assert stored["attrs"]["l2_normalized"] == 0 and stored["attrs"]["prompt_labels"] == "business, sport, technology"
    assert stored["attrs"]["label_words"] == ["business", "sport", "technology"]
    norms = np.linalg.norm(stored["values"], axis=1)
    assert not np.allclose(norms, 1.0)  # the hidden states are stored as they are
    text_of = {f"{label}/{i}.txt": t for label, ts in TEXTS.items() for i, t in enumerate(ts)}
    tokenizer, _ = reference_model
    tokens = [tokenizer(" " + w)["input_ids"][0] for w in ("business", "sport", "technology")]
    own = own_next_token_logits(reference_model, [prompt_of(text_of[i]) for i in stored["ids"]])[:, tokens]
    with read_rows(logits, "logits") as f:
        ours = f.read().astype(np.float64)
    assert np.abs(own).max() > 0.5  # logits of a size that makes the comparison mean something
    np.testing.assert_allclose(ours, own, rtol=0, atol=1e-4)
    with open_h5(head) as f:
        attrs = get_attrs(f)
    assert attrs["label_tokens"] == tokens and attrs["head_type"] == "zeroshot"


def test_batched_rows_equal_rows_scored_alone(gla, tiny_llama, tmp_path):
    texts = write_texts(tmp_path / "texts")
    alone, batched = tmp_path / "alone.h5", tmp_path / "batched.h5"
    assert extract(gla, texts, alone, tiny_llama, "--batch-size", 1).code == 0
    assert extract(gla, texts, batched, tiny_llama, "--batch-size", 9).code == 0
    a, b = read(alone)["values"], read(batched)["values"]
    assert a.shape == (9, 32)
    # right padding with the last real position taken: the padded tail never reaches a real position
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_max_tokens_cuts_the_text_and_keeps_the_prompt(tiny_llama):
    from glacli.io.encoders.causal_lm import CausalLMEncoder
    encoder = CausalLMEncoder(str(tiny_llama), None, torch.device("cpu"), prompt=PROMPT, max_tokens=3,
                              label_words=["business", "sport", "technology"])
    long_text = TEXTS["sport"][2]
    first3 = encoder.tokenizer.decode(encoder.tokenizer(long_text)["input_ids"][:3]).strip()
    [cut, short] = encoder.prompts([long_text, " a "])
    assert cut == prompt_of(first3) and cut.endswith("\nTopic:") and cut.startswith("Classify the news into one of")
    assert short == prompt_of("a")  # a text within the limit is only stripped
    np.testing.assert_allclose(encoder.encode_text([long_text]).numpy(), encoder.hidden_at_last([cut]).numpy(),
                               atol=1e-6)


def test_a_killed_extraction_resumes_to_the_same_features(gla, tiny_llama, tmp_path, monkeypatch):
    from glacli.io.encoders.causal_lm import CausalLMEncoder
    texts = write_texts(tmp_path / "texts")
    out, reference = tmp_path / "out.h5", tmp_path / "reference.h5"
    common = ["--batch-size", 2, "--commit-every", 4]
    encode, batches = CausalLMEncoder.encode_batch, []

    def stops_at_the_third_batch(self, inputs):
        batches.append(len(inputs))
        if len(batches) == 3:
            raise KeyboardInterrupt
        return encode(self, inputs)

    monkeypatch.setattr(CausalLMEncoder, "encode_batch", stops_at_the_third_batch)
    r = extract(gla, texts, out, tiny_llama, *common)  # interrupted (Ctrl-C) in the third batch
    assert r.code != 0 and not out.exists()
    monkeypatch.undo()
    r = extract(gla, texts, out, tiny_llama, *common)
    assert r.code == 0, r.err
    assert "resuming from row 4 of 9" in r.err
    assert extract(gla, texts, reference, tiny_llama, *common).code == 0
    np.testing.assert_allclose(read(out)["values"], read(reference)["values"], rtol=0, atol=1e-6)

    r = gla("extract", texts, "-o", out, *BACKEND, "--model", tiny_llama, "--prompt", "Text: {text}\\nTopic:",
            "--workers", 0, "--dtype", "float32", "--label-words", "tech=technology")
    assert_one_line_error(r, "different extraction", "prompt")


def test_content_free_prior_is_the_softmax_of_the_content_free_logits(gla, tiny_llama, reference_model, tmp_path):
    """The documented recipe: the content-free text as a one-row text manifest, its label-word logits,
    and ``estimate-prior --target uniform --temperature 1`` give q = softmax(logits of "N/A")."""
    texts = write_texts(tmp_path / "texts")
    features, head = tmp_path / "f.h5", tmp_path / "head.h5"
    assert extract(gla, texts, features, tiny_llama).code == 0
    assert gla("zeroshot", *BACKEND, "--model", tiny_llama, "--like", features, "-o", head).code == 0
    classes = tmp_path / "classes.txt"
    classes.write_text("business\nsport\ntech\n")
    manifest = tmp_path / "content_free.csv"
    manifest.write_text("text\nN/A\n")
    cf, cf_logits, prior = tmp_path / "cf.h5", tmp_path / "cf_zs.h5", tmp_path / "cf_prior.h5"
    assert extract(gla, manifest, cf, tiny_llama, "--classnames", classes).code == 0
    assert gla("logits", cf, head, "-o", cf_logits).code == 0
    r = gla("estimate-prior", cf_logits, "-o", prior, "--target", "uniform", "--temperature", 1)
    assert r.code == 0, r.err
    tokenizer, _ = reference_model
    tokens = [tokenizer(" " + w)["input_ids"][0] for w in ("business", "sport", "technology")]
    z = own_next_token_logits(reference_model, [prompt_of("N/A")])[0, tokens]
    with open_h5(prior) as f:
        q = f["prior"][:]
    np.testing.assert_allclose(q, np.exp(z - z.max()) / np.exp(z - z.max()).sum(), rtol=1e-4)


def test_colliding_label_words_and_soft_capped_models_are_refused(gla, tiny_llama, tmp_path):
    texts = write_texts(tmp_path / "texts")
    features = tmp_path / "f.h5"
    assert extract(gla, texts, features, tiny_llama).code == 0
    r = gla("zeroshot", *BACKEND, "--model", tiny_llama, "--like", features, "-o", tmp_path / "h.h5",
            "--label-words", "business=sport")
    assert_one_line_error(r, "'sport' and 'sport' start with the same token")
    assert not (tmp_path / "h.h5").exists()

    capped = tmp_path / "capped"
    capped.mkdir()
    for file in tiny_llama.iterdir():
        (capped / file.name).symlink_to(file)
    (capped / "config.json").unlink()
    config = json.loads((tiny_llama / "config.json").read_text())
    (capped / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 30.0}))
    (tmp_path / "classes.txt").write_text("business\nsport\ntech\n")
    r = gla("zeroshot", *BACKEND, "--model", capped, "--classnames", tmp_path / "classes.txt", "-o", tmp_path / "h.h5")
    assert_one_line_error(r, "final_logit_softcapping = 30.0", "not a linear head")


def test_options_are_checked_before_a_model_is_loaded(gla, tmp_path):
    texts = write_texts(tmp_path / "texts")
    out = tmp_path / "f.h5"
    r = gla("extract", texts, "-o", out, *BACKEND, "--model", tmp_path / "missing", "--prompt", "no text here")
    assert_one_line_error(r, "--prompt", "{text} exactly once")
    r = gla("extract", texts, "-o", out, *BACKEND, "--model", tmp_path / "missing", "--max-tokens", -1)
    assert_one_line_error(r, "--max-tokens")
    r = gla("extract", texts, "-o", out, *BACKEND, "--model", tmp_path / "missing")
    assert_one_line_error(r, "no such model folder or .gguf file")
    r = gla("extract", texts, "-o", out, "--backend", "sentence-transformers", "--model", "m", "--prompt", "{text}")
    assert_one_line_error(r, "--prompt applies to the causal-lm backend")
    r = gla("zeroshot", *BACKEND, "--model", tmp_path / "missing", "--classnames", tmp_path / "c.txt",
            "--templates", "news", "-o", tmp_path / "h.h5")
    assert_one_line_error(r, "--templates does not apply to the causal-lm backend")
    assert not out.exists()


def test_label_words_and_templates_parse():
    names = ["business", "sport", "tech"]
    assert parse_label_words(None, names) == names
    assert parse_label_words("tech=technology, sport = sports", names) == ["business", "sports", "technology"]
    with pytest.raises(GlaInputError, match="'science' is not a class"):
        parse_label_words("science=technology", names)
    with pytest.raises(GlaInputError, match="given twice"):
        parse_label_words("tech=a,tech=b", names)
    with pytest.raises(GlaInputError, match="no such file"):
        parse_label_words("technology", names)
    template = PromptTemplate.parse("Labels: {labels}. {json: {x}}\\n{text}\\nLabel ({labels}):")
    assert template.render("  a text  ", "x, y") == "Labels: x, y. {json: {x}}\na text\nLabel (x, y):"
    assert template.tail("x, y") == "\nLabel (x, y):"
    assert "{labels}" in DEFAULT_PROMPT and PromptTemplate.parse(None).template == DEFAULT_PROMPT


def test_label_words_from_a_file(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# class=word\nsport=sports\n\ntech=technology\n")
    assert parse_label_words(str(words), ["business", "sport", "tech"]) == ["business", "sports", "technology"]
    words.write_text("sport sports\n")
    with pytest.raises(GlaInputError, match="is not class=word"):
        parse_label_words(str(words), ["sport"])
