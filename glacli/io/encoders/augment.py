"""Augmented views of an image: a random resized crop and a horizontal flip, drawn from a seed.

The few-shot prompt learner of the GLA authors trains on images through CoOp's training
transform (Dassl: ``random_resized_crop``, ``random_flip``, ``normalize``, bicubic): torchvision's
``RandomResizedCrop`` with its default area ``scale=(0.08, 1)`` and aspect ``ratio=(3/4, 4/3)``,
then a flip with probability 1/2. The image tower is frozen, so ``gla extract --augment-views K``
encodes K such views per image once, and training reads them from the cache.

Each view is drawn from its own seed with its own ``random.Random``, never from torch's global
generator: a view's pixels depend on the seed alone, not on the DataLoader worker, the batch, the
order of rows or a resumed run.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from glacli.io.encoders.base import decode_rgb

CROP_SCALE = (0.08, 1.0)
"""Area of the crop as a fraction of the image (torchvision's default, which Dassl keeps)."""
CROP_RATIO = (3 / 4, 4 / 3)
"""Aspect ratio (width / height) range of the crop, sampled log-uniformly."""
FLIP_PROBABILITY = 0.5
DESCRIPTION = (f"random resized crop (area {CROP_SCALE[0]:g} to {CROP_SCALE[1]:g}, aspect 3/4 to 4/3, bicubic) "
               f"and horizontal flip (p {FLIP_PROBABILITY:g})")
"""What the features file records as ``augment``."""


def crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """``(top, left, crop height, crop width)`` of a random resized crop: torchvision's algorithm.

    Ten tries at a crop of random area and log-uniform aspect ratio that fits the image; if none
    fits, the largest centred crop whose ratio lies in the range.
    """
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        h, w = height, round(height * CROP_RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ViewLoader:
    """``(bytes, seed)`` -> one augmented, normalised view [3, H, W], in DataLoader workers (picklable)."""

    def __init__(self, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]):
        self.size, self.mean, self.std = tuple(size), list(mean), list(std)

    def __call__(self, data: bytes, seed: int) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        rgb = decode_rgb(data)
        rng = random.Random(seed)
        top, left, h, w = crop_box(rgb.width, rgb.height, rng)
        view = TF.resized_crop(rgb, top, left, h, w, list(self.size), interpolation=InterpolationMode.BICUBIC)
        if rng.random() < FLIP_PROBABILITY:
            view = TF.hflip(view)
        return TF.normalize(TF.to_tensor(view), self.mean, self.std)
