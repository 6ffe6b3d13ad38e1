"""A tiny random-init open_clip model saved to disk, so tests run the real open_clip loading path.

``write_tiny_clip(folder)`` writes a model-config JSON and a checkpoint made from it with a
fixed seed; ``TinyClip.load()`` creates the same model independently through
``open_clip.create_model_and_transforms(arch, pretrained=checkpoint)`` for reference values.
Use the session fixture ``tiny_clip`` in a test module with
``from tiny_clip import tiny_clip_fixture  # noqa: F401``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ARCH = "gla-tiny-clip"
IMAGE_SIZE = 32
EMBED_DIM = 24
LOGIT_SCALE = 30.0
"""Not CLIP's initial 1/0.07, so a test can tell the scale was read from the checkpoint."""

CONFIG = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class TinyClip:
    config: Path
    """The model-config JSON; its stem is the architecture name (``--model`` takes the path)."""
    checkpoint: Path
    """A state dict saved with ``torch.save`` (``--pretrained`` takes the path)."""

    @property
    def arch(self) -> str:
        return self.config.stem

    def load(self):
        """(model, preprocess, tokenizer) created by open_clip itself from the saved files."""
        import open_clip
        open_clip.add_model_config(self.config)
        model, _, preprocess = open_clip.create_model_and_transforms(self.arch, pretrained=str(self.checkpoint))
        model.eval()
        return model, preprocess, open_clip.get_tokenizer(self.arch)


def write_tiny_clip(folder: Path, seed: int = 0) -> TinyClip:
    """Write the config and a seeded random-init checkpoint of the tiny model into ``folder``."""
    import open_clip
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{ARCH}.json"
    config.write_text(json.dumps(CONFIG, indent=1))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(ARCH)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    checkpoint = folder / f"{ARCH}.pt"
    torch.save(model.state_dict(), checkpoint)
    return TinyClip(config, checkpoint)


@pytest.fixture(scope="session", name="tiny_clip")
def tiny_clip_fixture(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    """The tiny model's config and checkpoint, written once per test session."""
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A small random-noise JPEG (width, height) whose pixels depend only on ``seed``."""
    import numpy as np
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path


def write_image_folder(root: Path, classes: dict[str, int], seed: int = 0) -> list[str]:
    """An image-folder tree ``root/<class>/<k>.jpg``; returns the relative paths in sorted order."""
    paths = []
    for c, (name, count) in enumerate(classes.items()):
        for k in range(count):
            write_jpeg(root / name / f"{k:03d}.jpg", seed=seed * 100_000 + c * 1000 + k)
            paths.append(f"{name}/{k:03d}.jpg")
    return sorted(paths)
