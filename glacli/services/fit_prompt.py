"""``fit --method prompt``: the GLA authors' few-shot prompt learner, trained over cached image features.

The optimisation is :mod:`glacli.core.prompt_learning`, the text tower :mod:`glacli.io.encoders.prompt_tower`;
this module owns the policies around them: which model (the features file's ``model`` and
``pretrained`` unless given, a mismatch refused), the defaults (template ``simple``, 50 epochs,
the authors' learning rate and batch size for the shot count), the checkpoint a rerun resumes
from, and what the head file records.

The checkpoint, ``.HEAD.h5.ckpt`` beside the output, is rewritten atomically after every epoch
with the residual, the momentum, the epoch reached (which fixes the learning rate and, since
each epoch's shuffling and views are seeded by ``(seed, epoch)``, every later random draw) and
the best epoch so far; a rerun of the same command resumes from it, and it is removed once the
head is written. A checkpoint of another fit (other files or options) is refused.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glacli.base.devices import resolve_device
from glacli.base.errors import GlaInputError, one_line
from glacli.core.calibration import T_MAX, T_MIN, fit_temperature_nll
from glacli.io.encoders import load_encoder
from glacli.io.encoders.prompt_tower import LEARN_CHOICES, PromptTower
from glacli.io.extraction.views import image_of
from glacli.core.prompt_learning import (
    MOMENTUM,
    WARMUP_LR,
    WEIGHT_DECAY,
    PromptState,
    TrainingRows,
    accuracy_nll,
    default_batch_size,
    default_lr,
    fit_batch_to_set,
    group_views,
    prompt_logits,
    train_prompts,
)
from glacli.base.types import PROMPT_PLACEHOLDER, Head, Reporter
from glacli.io.outputs import atomic_output, check_output_path
from glacli.io.paramfile import write_head
from glacli.io.rowfile import read_rows
from glacli.io.templates import load_templates
from glacli.services.fit_defaults import DEFAULT_EPOCHS, DEFAULT_LEARN, DEFAULT_TEMPLATE
from glacli.base.validation import (
    check_same_classnames,
    check_same_dimension,
    require_choice,
    require_count,
    require_every_class,
    require_positive,
)

CHECKPOINT_FORMAT = 1


def checkpoint_path(output: Path) -> Path:
    """Where a prompt fit into ``output`` keeps its per-epoch checkpoint."""
    return output.with_name(f".{output.name}.ckpt")


def resolve_template(template: str) -> tuple[str, str]:
    """``(name, template)``: a template written out (it holds ``{}``), or the first of a set or file."""
    if PROMPT_PLACEHOLDER in template:
        return template, template
    name, templates = load_templates(template)
    return name, templates[0]


def fit_prompt_head(train: Path, output: Path, *, val: Path | None = None, template: str | None = None,
                    learn: str | None = None, epochs: int | None = None, lr: float | None = None,
                    batch_size: int | None = None, seed: int | None = None, model: str | None = None,
                    pretrained: str | None = None, device: str = "auto",
                    reporter: Reporter | None = None) -> dict[str, Any]:
    """Learn the prompt residuals on ``train`` (best epoch on ``val``), write the head, return the report.

    The head's weight is ``normalise(text features of the learned prompts) * logit_scale``, bias 0;
    with ``val`` its temperature is calibrated on it by NLL. ``epochs=0`` gives the zero-shot head
    of the template.
    """
    reporter = reporter or Reporter()
    template_name, template_text = resolve_template(template or DEFAULT_TEMPLATE)
    learn = require_choice(learn or DEFAULT_LEARN, LEARN_CHOICES, "--learn")
    epochs = require_count(DEFAULT_EPOCHS if epochs is None else epochs, "--epochs", minimum=0)
    if lr is not None:
        require_positive(lr, "--lr")
    if batch_size is not None:
        require_count(batch_size, "--batch-size")
    seed = 0 if seed is None else seed
    check_output_path(output)
    torch_device = resolve_device(device)

    load_start = time.perf_counter()
    with read_rows(train, "features") as f:
        labels = f.require_labels("to learn prompts")
        require_every_class(labels, f.classnames, f.path, "prompt learning needs every class")
        arch, weights = _model_of(f.attrs, f.path, model, pretrained)
        classnames, dim, train_attrs, parents = f.classnames, f.n_cols, f.attrs, [f.gla_id]
        ids = f.ids() if f.attrs.get("augment_views") else None
        features = torch.from_numpy(f.read())
    val_rows = None
    if val is not None:
        with read_rows(val, "features") as v:
            check_same_classnames(v.classnames, v.path, classnames, train)
            check_same_dimension(v.n_cols, v.path, dim, train)
            val_rows = (torch.from_numpy(v.read()).to(torch_device),
                        torch.from_numpy(v.require_labels("to choose the epoch and the temperature")).to(torch_device))
            parents.append(v.gla_id)

    images = [image_of(i) for i in ids] if ids is not None else [str(k) for k in range(len(labels))]
    members, counts = group_views(images)
    shots = max(1, round(len(counts) / len(classnames)))
    lr_base = default_lr(shots) if lr is None else lr
    lr_used, batch_used = fit_batch_to_set(lr_base, batch_size or default_batch_size(shots), len(counts))
    fingerprint = {"train": parents[0], "val": parents[1] if val is not None else "", "model": _arch_name(arch),
                   "pretrained": _weights_name(weights), "template": template_text, "learn": learn, "epochs": epochs,
                   "lr": lr_used, "batch_size": batch_used, "seed": seed}
    checkpoint = checkpoint_path(output)
    state = _load_checkpoint(checkpoint, fingerprint, torch_device)
    encoder = load_encoder("open_clip", arch, weights, torch_device, autocast="off")
    tower = PromptTower(encoder, classnames, template_text, learn)
    scale = encoder.logit_scale
    rows = TrainingRows(features.to(torch_device), torch.from_numpy(labels).to(torch_device), members, counts)
    resumed_from = 0 if state is None else state.epoch
    if state is None:
        state = PromptState(residual=torch.zeros(tower.residual_shape, device=torch_device))
    elif resumed_from:
        reporter.message(f"resuming from epoch {resumed_from} of {epochs} ({checkpoint})")

    def evaluate(residual: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            return accuracy_nll(prompt_logits(val_rows[0], tower.features(residual), scale), val_rows[1])

    def on_epoch(done: PromptState) -> None:
        _save_checkpoint(checkpoint, fingerprint, done)
        last = done.history[-1]
        said = f", val top-1 {100 * last['val_accuracy']:.2f}%" if "val_accuracy" in last else ""
        reporter.advance(0, description=f"prompt learning: epoch {done.epoch}/{epochs}, loss {last['train_loss']:.4f}"
                                        f"{said}")

    steps = max(1, len(counts) // batch_used)
    reporter.start("prompt learning", (epochs - state.epoch) * steps)
    fit_start = time.perf_counter()
    train_prompts(state, tower.features, rows, epochs=epochs, lr=lr_used, batch_size=batch_used, seed=seed,
                  logit_scale=scale, amp_dtype=torch.bfloat16 if torch_device.type == "cuda" else None,
                  evaluate=evaluate if val_rows is not None else None, on_step=lambda: reporter.advance(1),
                  on_epoch=on_epoch)
    residual, best_epoch = state.chosen()
    weight = tower.head(residual, scale)
    temperature, val_accuracy, val_nll, val_nll_raw = 1.0, None, None, None
    if val_rows is not None:
        val_logits = (val_rows[0] @ weight.T).double()
        temperature = fit_temperature_nll(val_logits, val_rows[1])
        val_accuracy, val_nll_raw = accuracy_nll(val_logits, val_rows[1])
        val_nll = accuracy_nll(val_logits / temperature, val_rows[1])[1]
    fit_seconds = time.perf_counter() - fit_start

    last_loss = state.history[-1]["train_loss"] if state.history else None
    attrs = {"encoder": "open_clip", "model": train_attrs.get("model", arch),
             "pretrained": train_attrs.get("pretrained", weights or ""), "template": template_text, "learn": learn,
             "epochs": epochs, "best_epoch": best_epoch, "lr": lr_used, "batch_size": batch_used, "seed": seed,
             "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, "warmup_lr": WARMUP_LR, "logit_scale": scale,
             "n_rows": len(labels), "n_images": len(counts), "train": str(train)}
    attrs.update({k: v for k, v in (("val_accuracy", val_accuracy), ("val_nll", val_nll), ("train_loss", last_loss))
                  if v is not None})
    write_head(output, Head(weight=weight.cpu().numpy().astype(np.float32),
                            bias=np.zeros(len(classnames), np.float32), classnames=list(classnames),
                            head_type="prompt", temperature=temperature, attrs=attrs), parents)
    checkpoint.unlink(missing_ok=True)
    warnings = []
    if val_rows is not None and not T_MIN * 1.0001 < temperature < T_MAX / 1.0001:
        warnings.append(f"the calibrated temperature {temperature:g} is at its bound: the validation rows are "
                        "classified with full confidence (separable) or the logits carry no signal")
    return {"output": str(output), "method": "prompt", "template": template_text, "templates": template_name,
            "learn": learn, "epochs": epochs, "best_epoch": best_epoch, "lr": lr_used, "lr_base": lr_base,
            "batch_size": batch_used, "steps_per_epoch": steps, "seed": seed, "shots": shots,
            "n_rows": len(labels), "n_images": len(counts), "views_per_image": int(counts.max()),
            "n_features": dim, "n_classes": len(classnames), "logit_scale": scale, "temperature": temperature,
            "val_accuracy": val_accuracy, "val_nll": val_nll, "val_nll_uncalibrated": val_nll_raw,
            "train_loss": last_loss, "history": state.history, "resumed_from_epoch": resumed_from,
            "device": str(torch_device), "seconds": {"load": fit_start - load_start, "fit": fit_seconds},
            "warnings": warnings}


def _model_of(attrs: dict[str, Any], path: str, model: str | None, pretrained: str | None) -> tuple[str, str | None]:
    """The open_clip model and weights to learn prompts with: the ones the features were extracted
    with, or ``model``/``pretrained`` when given and the same (a mismatch is refused)."""
    backend = attrs.get("encoder", "open_clip")
    if backend != "open_clip":
        raise GlaInputError(f"was extracted with the {backend} backend; prompt learning needs an open_clip model "
                            f"(it learns the prompts of CLIP's text tower)", path)
    recorded_model, recorded_weights = attrs.get("model") or None, attrs.get("pretrained") or None
    if model is not None and recorded_model and _arch_name(model) != recorded_model:
        raise GlaInputError(f"was extracted with model {recorded_model!r}, not {model!r}", path)
    if pretrained is not None and recorded_weights and _weights_name(pretrained) != recorded_weights:
        raise GlaInputError(f"was extracted with pretrained {recorded_weights!r}, not {pretrained!r}", path)
    model, pretrained = model or recorded_model, pretrained or recorded_weights
    if model is None or pretrained is None:
        raise GlaInputError("records no model or pretrained weights; give --model and --pretrained", path)
    return model, pretrained


def _arch_name(model: str) -> str:
    """The architecture name a features file records for ``--model`` (a config JSON: its file stem)."""
    return Path(model).stem if model.endswith(".json") else model


def _weights_name(pretrained: str) -> str:
    """The weights a features file records for ``--pretrained`` (a local file: its absolute path)."""
    return str(Path(pretrained).resolve()) if Path(pretrained).is_file() else pretrained


def _load_checkpoint(path: Path, fingerprint: dict[str, Any], device: torch.device) -> PromptState | None:
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        recorded = saved["fingerprint"]
    except Exception as exc:  # a checkpoint is written atomically, so this is not one of ours
        raise GlaInputError(f"cannot read this prompt-learning checkpoint ({one_line(exc)}); delete it to start over",
                            path) from exc
    differing = [key for key in fingerprint if recorded.get(key) != fingerprint[key]]
    if differing:
        raise GlaInputError(f"is the checkpoint of another prompt fit ({', '.join(differing)} differ); delete it to "
                            f"start over, or rerun the command that wrote it", path)
    return PromptState.from_dict(saved["state"], device)


def _save_checkpoint(path: Path, fingerprint: dict[str, Any], state: PromptState) -> None:
    """Write the state atomically (synced, then renamed over the previous checkpoint)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "state": state.to_dict()}, f)
        f.flush()
        os.fsync(f.fileno())
