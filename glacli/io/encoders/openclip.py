"""The open_clip backend: any open_clip architecture (or a model-config JSON) with its own preprocessing."""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from glacli.base.errors import GlaInputError, one_line
from glacli.io.checkpoints import CHECKPOINT_SUFFIXES, IMAGE_TOWER, Checkpoint, is_checkpoint_file, read_checkpoint
from glacli.io.encoders.augment import ViewLoader
from glacli.io.encoders.base import DecodeError, Encoder, amp_dtype_for, decode_rgb

JPEG_MAGIC = b"\xff\xd8\xff"


class PilImageLoader:
    """Bytes -> preprocessed image tensor, in DataLoader workers (picklable: holds only the transform)."""

    def __init__(self, transform: Callable[[Any], torch.Tensor]):
        self.transform = transform

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.transform(decode_rgb(data))


class RawJpegLoader:
    """Bytes -> raw uint8 tensor for device-side JPEG decoding; other formats are decoded here on the CPU."""

    def __call__(self, data: bytes) -> torch.Tensor:
        if data[:3] == JPEG_MAGIC:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8)
        from torchvision.io import ImageReadMode, decode_image
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except Exception as exc:
            raise DecodeError(f"cannot decode image ({one_line(exc)})") from exc


class OpenClipEncoder(Encoder):
    """An open_clip model, frozen in eval mode, created by ``open_clip.create_model_and_transforms``.

    ``model`` is an architecture name (``ViT-B-16``), ``hf-hub:org/repo``, or the path of a
    model-config JSON, which is registered with open_clip under its file stem first.
    ``pretrained`` is an open_clip tag, an ``hf-hub:`` name or a local checkpoint path,
    passed through unchanged; ``None`` keeps the random initialisation (benchmarks).
    """

    backend = "open_clip"
    input_kind = "image"

    def __init__(self, model: str, pretrained: str | None, device: torch.device, autocast: str = "fp16",
                 base_pretrained: str | None = None):
        import open_clip

        amp_dtype = amp_dtype_for(autocast, device)
        arch = _register_config(model) if model.endswith(".json") else model
        name, weights = arch, pretrained or None
        if weights and weights.startswith("hf-hub:"):
            name, weights = weights, None
        elif not arch.startswith(("hf-hub:", "local-dir:")) and arch not in open_clip.list_models():
            raise GlaInputError(f"--model: unknown open_clip architecture {model!r} "
                                f"(see open_clip.list_models(), or pass a model-config .json)")
        checkpoint = read_checkpoint(weights) if is_checkpoint_file(weights) else None
        if base_pretrained and checkpoint is None:
            raise GlaInputError("--base-pretrained applies when --pretrained is a checkpoint file "
                                f"({', '.join(CHECKPOINT_SUFFIXES)})")
        if weights and Path(weights).is_file():
            weights = str(Path(weights).resolve())
        with _quiet_open_clip_logging():
            try:
                net, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=weights if checkpoint is None else base_pretrained,
                    device=device if checkpoint is None else "cpu")
            except (RuntimeError, ValueError, KeyError, OSError) as exc:
                given = pretrained if checkpoint is None else base_pretrained
                raise GlaInputError(f"--{'base-' if checkpoint else ''}pretrained {given!r}: cannot load model "
                                    f"{arch!r}: {one_line(exc)}") from exc
        self.checkpoint_attrs: dict[str, str] = {}
        if checkpoint is not None:
            from_base = load_checkpoint_weights(net, checkpoint, arch, base_pretrained)
            self.checkpoint_attrs = {**checkpoint.describe(),
                                     **({"base_pretrained": base_pretrained} if from_base else {})}
            net.to(device)
        net.eval().requires_grad_(False)
        self.model, self.preprocess = net, preprocess
        self.tokenizer = open_clip.get_tokenizer(name)
        self.model_name, self.pretrained, self.device = arch, weights, device
        self.amp_dtype = amp_dtype
        self.dim = int(getattr(net.visual, "output_dim", 0)) or int(self.encode_text(["a"]).shape[-1])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dim": self.dim, **self.checkpoint_attrs}

    def loader(self, decode_on_device: bool = False) -> Callable[[bytes], torch.Tensor]:
        return RawJpegLoader() if decode_on_device else PilImageLoader(self.preprocess)

    def view_loader(self) -> ViewLoader:
        """Augmented views at the model's input size, normalised as its own preprocessing does."""
        from torchvision.transforms import CenterCrop, Normalize

        steps = getattr(self.preprocess, "transforms", [])
        normalize = next(step for step in steps if isinstance(step, Normalize))
        crop = next((step.size for step in steps if isinstance(step, CenterCrop)), self.model.visual.image_size)
        size = (crop, crop) if isinstance(crop, int) else tuple(crop)
        return ViewLoader(size, normalize.mean, normalize.std)

    def prepare(self, batch: Any, decode_on_device: bool = False) -> tuple[torch.Tensor, list[int]]:
        if not decode_on_device:
            return batch.to(self.device, non_blocking=True), []
        images, failed = self._decode_on_device(batch)
        transform = self.tensor_transform()
        kept = [transform(image) for k, image in enumerate(images) if k not in failed]
        inputs = torch.stack(kept) if kept else torch.empty(0)
        return inputs, sorted(failed)

    def tensor_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """open_clip's preprocessing applied to a decoded uint8 [3, H, W] tensor on any device.

        The PIL-only steps (RGB conversion, ToTensor) become a float conversion; resizing,
        cropping and normalisation are the same torchvision transforms on tensors.
        """
        from torchvision.transforms import ToTensor

        steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for step in getattr(self.preprocess, "transforms", [self.preprocess]):
            if isinstance(step, ToTensor):
                steps.append(_to_unit_float)
            elif type(step).__name__ == "MaybeConvertMode" or getattr(step, "__name__", "") == "_convert_to_rgb":
                continue  # decode_jpeg already returns RGB
            else:
                steps.append(step)

        def apply(image: torch.Tensor) -> torch.Tensor:
            for step in steps:
                image = step(image)
            return image

        return apply

    def encode_batch(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            return F.normalize(self.model.encode_image(inputs).float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def _decode_on_device(self, raw: list[torch.Tensor]) -> tuple[list[torch.Tensor], set[int]]:
        """Decode the JPEGs of a batch in one call on the device; if that fails, one by one (see
        :meth:`_decode_one`), so that only the files nothing can decode are reported."""
        from torchvision.io import ImageReadMode, decode_jpeg

        images: list[torch.Tensor] = [t.to(self.device, non_blocking=True) if t.ndim == 3 else t for t in raw]
        jpeg_positions = [k for k, t in enumerate(raw) if t.ndim == 1]
        failed: set[int] = set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                decoded = decode_jpeg([raw[k] for k in jpeg_positions], mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:
                decoded = [self._decode_one(raw[k]) for k in jpeg_positions]
        for k, image in zip(jpeg_positions, decoded):
            if image is None:
                failed.add(k)
            else:
                images[k] = image
        return images, failed

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        """One JPEG on the device, else on the CPU (nvjpeg rejects some JPEGs libjpeg reads, such as CMYK
        ones), moved to the device; ``None`` when neither decodes it."""
        from torchvision.io import ImageReadMode, decode_jpeg

        for device in (self.device, "cpu"):
            try:
                return decode_jpeg(data, mode=ImageReadMode.RGB, device=device).to(self.device)
            except RuntimeError:
                continue
        return None


def open_clip_weights(model: str, pretrained: str) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` with the weights ``pretrained`` (a tag, hf-hub name or file), on the CPU."""
    encoder = OpenClipEncoder(model, pretrained, torch.device("cpu"), autocast="off")
    return {k: v.detach() for k, v in encoder.model.state_dict().items()}


IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size", "text.transformer.embeddings.position_ids")
"""Entries of OpenAI's and older Hugging Face state dicts that are not weights (open_clip drops them too)."""


def load_checkpoint_weights(net: torch.nn.Module, checkpoint: Checkpoint, arch: str, base: str | None) -> bool:
    """Load ``checkpoint`` into ``net`` with open_clip's own conversions (``open_clip.load_checkpoint``'s
    steps on an already-read state dict); returns whether keys it lacks were kept from ``base``.

    A key the model does not have, a missing image-tower key, or a missing text-tower key without
    ``--base-pretrained`` is refused in one line naming the first such key.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    path = checkpoint.path
    state = {k: v for k, v in checkpoint.state_dict.items() if k not in IGNORED_KEYS}
    state = convert_state_dict(net, state)
    if "positional_embedding" in state and not hasattr(net, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        ours = getattr(net, key, None)
        if key in state and ours is not None and ours.ndim != state[key].ndim:
            state[key] = state[key].reshape(ours.shape)
    resize_pos_embed(state, net)
    resize_text_pos_embed(state, net)
    expected = net.state_dict()
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise GlaInputError(f"key {unexpected[0]!r} is not a weight of {arch} ({len(unexpected)} such keys; is "
                            f"--model right?)", path)
    wrong = next((k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)), None)
    if wrong is not None:
        raise GlaInputError(f"{wrong} has shape {tuple(state[wrong].shape)}, {arch} needs "
                            f"{tuple(expected[wrong].shape)} (is --model right?)", path)
    missing = [k for k in expected if k not in state]
    tower = next((k for k in missing if k.startswith(IMAGE_TOWER)), None)
    if tower is not None:
        raise GlaInputError(f"lacks the image-tower weight {tower!r} of {arch}", path)
    if missing and not base:
        raise GlaInputError(f"holds no {missing[0]!r} ({len(missing)} weights outside the image tower are "
                            f"missing): give --base-pretrained (the zero-shot weights, e.g. openai) for them", path)
    net.load_state_dict(state, strict=False)
    return bool(missing)


def _to_unit_float(image: torch.Tensor) -> torch.Tensor:
    return image.float().div_(255)


def _register_config(path_text: str) -> str:
    """Register an open_clip model-config JSON; returns the architecture name (the file stem)."""
    import open_clip

    path = Path(path_text)
    if not path.is_file():
        raise GlaInputError("model config: no such file", path)
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GlaInputError(f"model config is not valid JSON ({one_line(exc)})", path) from exc
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= config.keys():
        raise GlaInputError("not an open_clip model config (needs embed_dim, vision_cfg and text_cfg)", path)
    open_clip.add_model_config(path)
    return path.stem


@contextlib.contextmanager
def _quiet_open_clip_logging() -> Iterator[None]:
    """open_clip logs failures on the root logger before raising; the raised error is reported instead."""
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
