"""The causal-lm backend: a causal language model read at the last position of a prompt.

A text row becomes the prompt ``TEMPLATE`` with ``{text}`` (the text, stripped, cut to
``max_tokens`` tokens when given) and ``{labels}`` (the label words joined with ", ", in class
order). Its feature is the model's final hidden state at the prompt's last position, after the
final norm: the vector the LM head multiplies to give the next token's logits. So for a label word
whose first token is ``t`` the next-token logit is ``h . E_t + b_t`` (``E`` the LM head's weight,
``b`` its bias if any): a linear head on these features, and zero-shot classification by label
words is an ordinary ``head`` file (:meth:`CausalLMEncoder.label_head`). The features are not
L2-normalised (the head's logits depend on their norm); files record ``l2_normalized = 0``.

Batches are right-padded and the feature is taken at each row's last real position; causal
attention with the padding masked makes a batched row equal to the same row scored alone (within
float32 rounding). ``--model`` is a local folder in the transformers layout or a ``.gguf`` file
(transformers de-quantises it to float32); nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from glacli.base.errors import GlaInputError, one_line
from glacli.io.encoders.base import TextEncoder, amp_dtype_for, quiet_weight_loading
from glacli.io.encoders.prompts import PromptTemplate

INSTALL_HINT = "pip install 'gla[llm]'"
CHECK_TEXT = "N/A"
"""The text of the prompt on which :meth:`CausalLMEncoder.label_head` compares its head with the model."""
CHECK_RTOL = 1e-3
"""Largest difference allowed between the head's logits and the model's own, relative to their scale."""


class CausalLMEncoder(TextEncoder):
    """A transformers ``AutoModelForCausalLM``, frozen in eval mode, read through a prompt template."""

    backend = "causal-lm"
    needs_pretrained = False
    reads_prompt = True

    def __init__(self, model: str, pretrained: str | None, device: torch.device, autocast: str = "off",
                 prompt: str | None = None, max_tokens: int = 0, label_words: Sequence[str] = ()):
        if pretrained:
            raise GlaInputError(f"--pretrained does not apply to the {self.backend} backend "
                                f"(--model names the model folder or .gguf file)")
        self.template = PromptTemplate.parse(prompt)
        self.max_tokens = int(max_tokens)
        self.label_words = list(label_words)
        self.labels_text = ", ".join(self.label_words)
        self.amp_dtype = amp_dtype_for(autocast, device)
        folder, gguf_file = _locate(model)
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise GlaInputError(f"the {self.backend} backend needs the transformers package: {INSTALL_HINT}") from None
        try:
            with quiet_weight_loading(), contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader's own bar
                self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
                net = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True,
                                                           dtype=torch.float32)
        except ImportError as exc:
            raise GlaInputError(f"cannot load the causal language model ({one_line(exc)}); {INSTALL_HINT}",
                                model) from exc
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise GlaInputError(f"cannot load causal language model ({one_line(exc)})", model) from exc
        net.eval().requires_grad_(False).to(device)
        self.model = net
        self.model_name = str(Path(folder, gguf_file or "").resolve())
        self.pretrained, self.device = None, device
        self.dim = int(net.config.get_text_config().hidden_size)
        self.model_sha256 = _digest(Path(self.model_name))

    @property
    def logit_scale(self) -> float:
        return 1.0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dim": self.dim, "model_sha256": self.model_sha256,
                "prompt": self.template.template, "prompt_labels": self.labels_text,
                "label_words": self.label_words, "max_tokens": self.max_tokens, "l2_normalized": 0,
                "feature": "final normed hidden state at the prompt's last token"}

    def prompts(self, texts: Sequence[str]) -> list[str]:
        """The prompts of ``texts``: each text stripped and cut to ``max_tokens`` tokens, in the template."""
        texts = [t.strip() for t in texts]
        if self.max_tokens:
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            texts = [self.tokenizer.decode(row[: self.max_tokens]).strip() if len(row) > self.max_tokens else text
                     for text, row in zip(texts, ids)]
        return [self.template.render(t, self.labels_text) for t in texts]

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> [N, D] float32 final hidden states at their prompts' last tokens (not normalised)."""
        return self.hidden_at_last(self.prompts(texts))

    def hidden_at_last(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts (already rendered) -> [N, D] final normed hidden states at their last tokens,
        from one right-padded batch."""
        input_ids, mask, last = self._right_padded(prompts)
        with torch.inference_mode(), self._autocast():
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        return hidden[torch.arange(len(prompts), device=hidden.device), last].float()

    def _right_padded(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = self.tokenizer(list(prompts))["input_ids"]
        if any(not row for row in rows):
            raise GlaInputError("a prompt tokenises to nothing (give a --prompt with text around {text})")
        lengths = torch.tensor([len(row) for row in rows])
        input_ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
        for i, row in enumerate(rows):  # one copy per row of token ids; the model's work is batched
            input_ids[i, : len(row)] = torch.tensor(row)
        mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
        return input_ids.to(self.device), mask.to(self.device), (lengths - 1).to(self.device)

    def label_tokens(self, words: Sequence[str]) -> list[int]:
        """The first token of each word as the next token after the prompt (``' ' + word`` after its tail)."""
        tail = self.template.tail(self.labels_text)
        context = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
        tokens = []
        for word in words:
            full = self.tokenizer(tail + " " + word, add_special_tokens=False)["input_ids"]
            if full[: len(context)] == context and len(full) > len(context):
                tokens.append(int(full[len(context)]))
            else:  # the tail and the word merged into one token: the word's own tokens, read alone
                tokens.append(int(self.tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]))
        return tokens

    def label_head(self, words: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``(weight [C, D], bias [C], tokens)``: the LM head's rows of each word's first token, such
        that ``features @ weight.T + bias`` are the model's next-token logits of those tokens.

        Refused when the words' first tokens collide, or when the model transforms its logits in a
        way no linear head reproduces (a soft-cap such as Gemma 2's); checked against the model's
        own logits on one prompt.
        """
        tokens = self.label_tokens(words)
        seen: dict[int, str] = {}
        for word, token in zip(words, tokens):
            if token in seen:
                piece = self.tokenizer.convert_ids_to_tokens(token)
                raise GlaInputError(f"--label-words: {seen[token]!r} and {word!r} start with the same token "
                                    f"{piece!r}; choose label words whose first tokens differ")
            seen[token] = word
        config = self.model.config.get_text_config()
        cap = getattr(config, "final_logit_softcapping", None)
        if cap:
            raise GlaInputError(f"the model caps its logits (final_logit_softcapping = {cap}): cap * tanh(logit / cap) "
                                f"is not a linear head, so its label-word logits cannot be a head file", self.model_name)
        lm_head = self.model.get_output_embeddings()
        index = torch.tensor(tokens, device=lm_head.weight.device)
        weight = lm_head.weight[index].detach().double()
        bias = torch.zeros(len(tokens), dtype=torch.float64, device=weight.device)
        if getattr(lm_head, "bias", None) is not None:
            bias = lm_head.bias[index].detach().double()
        scale = float(getattr(config, "logit_scale", 1.0) or 1.0) / float(getattr(config, "logits_scaling", 1.0) or 1.0)
        weight, bias = weight * scale, bias * scale
        self._check_head(weight, bias, tokens)
        return weight.float().cpu(), bias.float().cpu(), tokens

    def _check_head(self, weight: torch.Tensor, bias: torch.Tensor, tokens: list[int]) -> None:
        """Refuse a head whose logits differ from the model's own next-token logits on one prompt."""
        prompt = self.prompts([CHECK_TEXT])
        input_ids, mask, _ = self._right_padded(prompt)
        with torch.inference_mode():
            own = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[0, -1, tokens].double()
            hidden = self.hidden_at_last(prompt)[0].double()
        ours = hidden @ weight.T + bias
        gap = float((ours - own).abs().max())
        if gap > CHECK_RTOL * max(1.0, float(own.abs().max())):
            raise GlaInputError(f"the label-word logits of this model are not its LM head applied to the final hidden "
                                f"state (they differ by {gap:.3g} on a test prompt); no head file can hold them",
                                self.model_name)


def _locate(model: str) -> tuple[str, str | None]:
    """``--model`` as (folder, gguf file name or None); only local models (nothing is downloaded)."""
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise GlaInputError("a causal-lm model is a folder (transformers layout) or a .gguf file", model)
        return str(path.parent.resolve()), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GlaInputError("this folder has no config.json (a transformers model folder has one)", model)
        return str(path.resolve()), None
    raise GlaInputError("no such model folder or .gguf file", model)


def _digest(path: Path) -> str:
    """sha256 of a model file, or of a folder's files (names and contents, sorted by name)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    total = hashlib.sha256()
    for file in files:
        h = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if path.is_file():
            return h.hexdigest()
        total.update(json.dumps([str(file.relative_to(path)), h.hexdigest()]).encode())
    return total.hexdigest()
