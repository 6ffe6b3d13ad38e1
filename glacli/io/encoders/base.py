"""What every encoder backend implements (:class:`Encoder`) and the autocast rule they share."""
from __future__ import annotations

import abc
import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch

from glacli.base.errors import GlaInputError, one_line
from glacli.base.validation import require_choice
from glacli.io.encoders import AUTOCAST_CHOICES

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = dict(zip(AUTOCAST_CHOICES, (torch.float16, torch.bfloat16, None)))
"""``--autocast`` choice -> the mixed-precision dtype on CUDA (the CPU always runs float32)."""


def amp_dtype_for(autocast: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--autocast`` on ``device`` (None: full precision); checks the choice."""
    dtype = AUTOCAST_DTYPES[require_choice(autocast, AUTOCAST_CHOICES, "--autocast")]
    return dtype if device.type == "cuda" else None


class DecodeError(Exception):
    """A row whose bytes the encoder cannot turn into an input (corrupt or unsupported file)."""


def decode_rgb(data: bytes) -> Any:
    """An image file's bytes as an RGB PIL image, or a :class:`DecodeError` saying why not."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
        raise DecodeError(f"cannot decode image ({one_line(exc)})") from exc


class Encoder(abc.ABC):
    """A frozen model that maps rows (images or texts) and prompts to L2-normalised embeddings."""

    backend: ClassVar[str]
    input_kind: ClassVar[str]
    """``"image"`` or ``"text"``: which kind of source rows this encoder reads."""
    needs_pretrained: ClassVar[bool] = True
    """Whether ``--pretrained`` must name weights (False where ``--model`` alone holds them)."""
    reads_prompt: ClassVar[bool] = False
    """Whether rows are read through a prompt template (``--prompt``, ``--max-tokens``, ``--label-words``)."""

    model_name: str
    pretrained: str | None
    device: torch.device
    dim: int
    amp_dtype: torch.dtype | None
    """Autocast dtype for the model's forward passes (:func:`amp_dtype_for`)."""

    @property
    @abc.abstractmethod
    def logit_scale(self) -> float:
        """The multiplier of cosine similarities in zero-shot logits (CLIP's ``logit_scale.exp()``)."""

    @abc.abstractmethod
    def loader(self, decode_on_device: bool = False) -> Callable[[bytes], Any]:
        """A picklable function run in DataLoader workers: raw bytes of one row -> model input.

        Raises :class:`DecodeError` for rows it cannot read. With ``decode_on_device`` the
        function may return raw data that :meth:`prepare` decodes on the device instead.
        """

    def view_loader(self) -> Callable[[bytes, int], Any]:
        """A picklable function run in DataLoader workers: (raw bytes, seed) -> the model input of one
        augmented view (``gla extract --augment-views``); backends without views refuse."""
        raise GlaInputError(f"--augment-views: the {self.backend} backend has no augmented views "
                            f"(they are image crops and flips)")

    @abc.abstractmethod
    def prepare(self, batch: Any, decode_on_device: bool = False) -> tuple[Any, list[int]]:
        """Move a collated batch to the device; returns the inputs and the batch positions that
        failed to decode there (always empty unless ``decode_on_device``)."""

    @abc.abstractmethod
    def encode_batch(self, inputs: Any) -> torch.Tensor:
        """Prepared inputs -> [B, D] float32 L2-normalised embeddings on the device (a causal LM's
        hidden states are not normalised: its ``describe()`` says ``l2_normalized = 0``)."""

    @abc.abstractmethod
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts -> [N, D] float32 L2-normalised embeddings on the device."""

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> dict[str, Any]:
        """Attributes that record which model produced a file."""
        return {"encoder": self.backend, "model": self.model_name, "pretrained": self.pretrained or ""}


class TextLoader:
    """Bytes of one row -> its text (UTF-8; undecodable bytes become U+FFFD, so no row is unreadable)."""

    def __call__(self, data: bytes) -> str:
        return data.decode("utf-8", errors="replace")


class TextEncoder(Encoder):
    """An encoder whose rows are texts: a batch is a list of strings, encoded as :meth:`encode_text`
    encodes prompts, so documents and prompts go through the same model."""

    input_kind = "text"

    def loader(self, decode_on_device: bool = False) -> Callable[[bytes], str]:
        return TextLoader()

    def prepare(self, batch: list[str], decode_on_device: bool = False) -> tuple[list[str], list[int]]:
        return list(batch), []

    def encode_batch(self, inputs: list[str]) -> torch.Tensor:
        return self.encode_text(inputs)


@contextlib.contextmanager
def quiet_weight_loading() -> Iterator[None]:
    """transformers draws a "Loading weights" bar of its own; gla's stderr keeps only gla's bars."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
