"""The few-shot prompt learner's optimisation: schedule, batches, loss and SGD (pure torch, no I/O).

What the GLA authors' trainer does (BeierZhu/GLA, ``GLA.FS.public/trainers/gla.py`` with
``configs/trainers/GLA/rn50_ep50_shot*.yaml`` on Dassl's defaults), over cached image features:

- logits ``logit_scale * normalise(image) @ normalise(text(residual)).T``, mean cross-entropy
  over a batch; only the residual (:mod:`glacli.io.encoders.prompt_tower`) learns;
- SGD with momentum 0.9 and weight decay 5e-4 (Dassl's defaults, which the configs keep);
- the learning rate per epoch: a constant 1e-5 in epoch 0 (warm-up), then a cosine from ``lr``
  to 0 over ``epochs`` epochs, ``lr_e = lr (1 + cos(pi (e - 1) / epochs)) / 2`` for ``e >= 1``
  (Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR``, stepped once per epoch);
- each epoch shuffles the images and drops the last partial batch (Dassl's ``drop_last``);
- batch size 32 per shot and ``lr`` by shots (1: 2e-5, 2: 4e-5, 4: 1e-4, 8: 2e-4, 16: 4e-4, and
  on to 128: 3.2e-3); when the training set is smaller than the batch, the whole set is one batch
  and ``lr`` is multiplied by ``batch / images`` (their trainer's rule, which only EuroSAT meets).

The image tower is frozen, so the augmentation is cached as views (``gla extract
--augment-views``): epoch ``e`` takes view ``(o_i + e) mod V_i`` of image ``i``, ``o_i`` a seeded
random offset, so every view is used once before any repeats. All randomness of epoch ``e``
comes from a generator seeded with ``(seed, e)``: a run resumed at any epoch draws what an
uninterrupted one draws, without saving generator states.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
WARMUP_LR = 1e-5
WARMUP_EPOCHS = 1
BATCH_PER_SHOT = 32
AUTHORS_LR = {1: 2e-5, 2: 4e-5, 4: 1e-4, 8: 2e-4, 16: 4e-4, 32: 8e-4, 64: 1.6e-3, 128: 3.2e-3}
"""The authors' RN50 configurations (``rn50_ep50_shot{K}.yaml``), learning rate by shot count."""


def default_lr(shots: int) -> float:
    """The authors' learning rate for ``shots`` images per class: their table, else its linear rule
    (2e-5 per shot below 4 shots, 2.5e-5 per shot from 4 on)."""
    return AUTHORS_LR.get(shots, (2e-5 if shots < 4 else 2.5e-5) * shots)


def default_batch_size(shots: int) -> int:
    return BATCH_PER_SHOT * shots


def fit_batch_to_set(lr: float, batch_size: int, n_images: int) -> tuple[float, int]:
    """``(lr, batch)`` actually used: a training set smaller than the batch is one batch, and the
    learning rate grows by ``batch / images`` (the authors' trainer)."""
    if n_images < batch_size:
        return lr * batch_size / n_images, n_images
    return lr, batch_size


def epoch_lr(epoch: int, epochs: int, lr: float) -> float:
    """The learning rate of epoch ``epoch`` (from 0): constant warm-up, then a cosine over ``epochs``."""
    if epoch < WARMUP_EPOCHS:
        return WARMUP_LR
    return lr * (1 + math.cos(math.pi * (epoch - WARMUP_EPOCHS) / epochs)) / 2


def group_views(image_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows grouped by image (in order of first appearance): ``[images, V]`` row indices, each row
    padded with its image's first view, and ``[images]`` the number of views of each."""
    groups: dict[str, list[int]] = {}
    for row, image in enumerate(image_ids):
        groups.setdefault(image, []).append(row)
    width = max((len(rows) for rows in groups.values()), default=1)
    members = torch.tensor([rows + rows[:1] * (width - len(rows)) for rows in groups.values()], dtype=torch.long)
    counts = torch.tensor([len(rows) for rows in groups.values()], dtype=torch.long)
    return members.reshape(len(groups), width), counts


def _generator(seed: int, epoch: int) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}\0{epoch}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def epoch_batches(members: torch.Tensor, counts: torch.Tensor, seed: int, epoch: int,
                  batch_size: int) -> list[torch.Tensor]:
    """The row indices of each batch of epoch ``epoch``: one view per image, images shuffled, the
    last partial batch dropped (kept when it is the only one)."""
    n_images = len(counts)
    offsets = (torch.rand(n_images, generator=_generator(seed, -1), dtype=torch.float64) * counts).long()
    rows = members[torch.arange(n_images), (offsets + epoch) % counts]
    rows = rows[torch.randperm(n_images, generator=_generator(seed, epoch))]
    n_batches = max(1, n_images // batch_size)
    return [rows[b * batch_size:(b + 1) * batch_size] for b in range(n_batches)]


def prompt_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``logit_scale * normalise(image) @ normalise(text).T``."""
    return logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T


def accuracy_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 accuracy (a fraction) and mean NLL of ``logits`` against ``labels``."""
    return (float((logits.argmax(dim=1) == labels).double().mean()),
            float(F.cross_entropy(logits.double(), labels)))


@dataclass
class PromptState:
    """Where a training run stands after ``epoch`` epochs: all a resumed run needs."""

    residual: torch.Tensor
    momentum: torch.Tensor | None = None
    epoch: int = 0
    best: torch.Tensor | None = None
    """The residual of the best epoch on the validation rows so far."""
    best_epoch: int = 0
    best_key: tuple[float, float] | None = None
    """``(validation accuracy, -validation NLL)`` of the best epoch: accuracy first, ties by NLL."""
    history: list[dict[str, float]] = field(default_factory=list)

    def chosen(self) -> tuple[torch.Tensor, int]:
        """The residual to write and its epoch: the best on validation, else the last."""
        return (self.residual, self.epoch) if self.best is None else (self.best, self.best_epoch)

    def to_dict(self) -> dict[str, Any]:
        """Tensors on the CPU and plain values (``torch.load(weights_only=True)`` reads it back)."""
        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().cpu()
        return {"residual": cpu(self.residual), "momentum": cpu(self.momentum), "epoch": self.epoch,
                "best": cpu(self.best), "best_epoch": self.best_epoch,
                "best_key": None if self.best_key is None else list(self.best_key), "history": self.history}

    @classmethod
    def from_dict(cls, saved: dict[str, Any], device: torch.device) -> PromptState:
        def on(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)
        return cls(residual=on(saved["residual"]), momentum=on(saved["momentum"]), epoch=int(saved["epoch"]),
                   best=on(saved["best"]), best_epoch=int(saved["best_epoch"]),
                   best_key=None if saved["best_key"] is None else tuple(saved["best_key"]),
                   history=list(saved["history"]))


@dataclass
class TrainingRows:
    """Training features on the compute device, their labels, and their views grouped by image."""

    features: torch.Tensor
    labels: torch.Tensor
    members: torch.Tensor
    counts: torch.Tensor


def sgd_step(param: torch.Tensor, grad: torch.Tensor, momentum: torch.Tensor | None, lr: float) -> torch.Tensor:
    """One step of ``torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`` in place; returns the momentum buffer."""
    step = grad + WEIGHT_DECAY * param
    momentum = step.clone() if momentum is None else momentum.mul_(MOMENTUM).add_(step)
    param.sub_(lr * momentum)
    return momentum


def train_prompts(state: PromptState, text_features: Callable[[torch.Tensor], torch.Tensor], rows: TrainingRows,
                  *, epochs: int, lr: float, batch_size: int, seed: int, logit_scale: float,
                  amp_dtype: torch.dtype | None = None,
                  evaluate: Callable[[torch.Tensor], tuple[float, float]] | None = None,
                  on_step: Callable[[], None] = lambda: None,
                  on_epoch: Callable[[PromptState], None] = lambda state: None) -> PromptState:
    """Run epochs ``state.epoch .. epochs - 1`` in place and return ``state``.

    ``text_features(residual)`` gives the [C, D] text features; ``evaluate(residual)`` the
    validation accuracy and NLL after each epoch (the best is kept); ``on_epoch`` sees the state
    after each epoch (to checkpoint it). ``amp_dtype`` runs the text tower under autocast.
    """
    residual = state.residual.requires_grad_(True)
    device_type = residual.device.type
    for epoch in range(state.epoch, epochs):
        rate = epoch_lr(epoch, epochs, lr)
        total = 0.0
        batches = epoch_batches(rows.members, rows.counts, seed, epoch, batch_size)
        for batch in batches:
            batch = batch.to(rows.features.device)
            with torch.autocast(device_type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                text = text_features(residual)
            loss = F.cross_entropy(prompt_logits(rows.features[batch], text.float(), logit_scale), rows.labels[batch])
            (grad,) = torch.autograd.grad(loss, residual)
            with torch.no_grad():
                state.momentum = sgd_step(residual, grad, state.momentum, rate)
            total += float(loss.detach())
            on_step()
        record = {"epoch": epoch + 1, "lr": rate, "train_loss": total / len(batches)}
        if evaluate is not None:
            accuracy, nll = evaluate(residual.detach())
            record.update(val_accuracy=accuracy, val_nll=nll)
            if state.best_key is None or (accuracy, -nll) > state.best_key:
                state.best, state.best_epoch, state.best_key = residual.detach().clone(), epoch + 1, (accuracy, -nll)
        state.epoch = epoch + 1
        state.history.append(record)
        on_epoch(state)
    residual.requires_grad_(False)
    return state
