"""The extraction pipeline: rows -> encoder -> a features file, resumable and shardable.

Rows are split into fixed chunks of whole batches. Each finished chunk is committed as its own
small file (written to a temporary name, synced, then renamed) in a hidden ``.NAME.parts``
folder beside the output, next to a ``state.json`` that records what is being extracted.
A killed run (even SIGKILL) loses at most the chunk in flight: the same command lists the
committed chunks, says "resuming from row K of N" and encodes only the rest. When every chunk
is there, the chunks are merged into the output (:mod:`glacli.io.h5file` writes it atomically
and marks it complete last); then the parts folder is removed.

One extraction at a time writes an output: rank 0 holds an exclusive ``flock`` on a hidden
``.NAME.lock`` beside it for the whole run (:func:`output_lock`), so a second run into the same
output is refused at once instead of sharing, and removing, the parts folder of the first.

Under torchrun every rank takes a disjoint contiguous range of chunks (its shard), so the
merged file has exactly the rows, order and values of a single-process run. Batches never
straddle chunks and start at the same rows whatever the number of ranks, so each image is
encoded in the same batch either way.

    distributed.py  this process's place in a torchrun job
    parts.py        the committed chunks: state, resume, merge
    views.py        augmented views as rows (--augment-views): their ids and seeds
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glacli.base.errors import GlaInputError
from glacli.io import locks
from glacli.io.encoders.base import DecodeError, Encoder
from glacli.io.extraction.distributed import Distributed
from glacli.io.extraction.parts import (
    FINGERPRINT_KEYS,
    STATE_FILE,
    ChunkBuffer,
    chunk_bounds,
    committed_chunks,
    existing_output_is_done,
    merge,
    open_parts,
)
from glacli.base.types import ExtractResult, Locator, Reporter, Rows
from glacli.base.validation import feature_dtype, require_count
from glacli.io.extraction.views import expand_views, view_seeds
from glacli.io.h5file import get_attrs, open_h5
from glacli.io.outputs import check_output_path
from glacli.io.sources import read_bytes


EXTRACTION_BUSY = ("another extraction is writing this output ({holder}); wait for it to finish, or stop it and "
                   "rerun this command to resume")


def output_lock(output: Path) -> contextlib.AbstractContextManager[None]:
    """The lock an extraction holds on its output for the whole run (rank 0 holds it)."""
    return locks.output_lock(output, EXTRACTION_BUSY)

@dataclass
class ExtractOptions:
    """How to run an extraction; checked when made, so a bad option stops before any model is loaded."""

    batch_size: int = 128
    workers: int = 4
    dtype: str = "float16"
    commit_rows: int = 4096
    """Rows per committed chunk (rounded up to whole batches): the most work a kill can lose."""
    skip_bad: bool = False
    overwrite: bool = False
    decode_on_device: bool = False
    augment_views: int = 0
    """Augmented views per image (0: the image itself, through the model's own preprocessing)."""
    seed: int = 0
    """Seed of the views' crops and flips."""

    def __post_init__(self) -> None:
        feature_dtype(self.dtype)
        require_count(self.batch_size, "--batch-size")
        require_count(self.commit_rows, "--commit-every")
        require_count(self.workers, "--workers", minimum=0)
        require_count(self.augment_views, "--augment-views", minimum=0)
        if self.augment_views and self.decode_on_device:
            raise GlaInputError("--gpu-decode does not apply with --augment-views (views are cropped by the workers)")


class RowDataset(torch.utils.data.Dataset):
    """Row index -> (index, model input or None, error or None); never raises, so a bad file
    becomes a one-line error (or a skipped row) in the main process instead of a worker traceback."""

    def __init__(self, locators: list[Locator], load: Callable[..., Any], seeds: list[int] | None = None):
        self.locators, self.load, self.seeds = locators, load, seeds
        """``seeds``: one per row for a view loader (``load(bytes, seed)``); None for ``load(bytes)``."""

    def __len__(self) -> int:
        return len(self.locators)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        try:
            data = read_bytes(self.locators[index])
            return index, self.load(data) if self.seeds is None else self.load(data, self.seeds[index]), None
        except OSError as exc:
            return index, None, f"cannot read file ({exc.strerror or exc})"
        except DecodeError as exc:
            return index, None, str(exc)


class Collate:
    """A batch of dataset items -> its rows, the inputs of the readable ones (stacked when they are
    same-shaped tensors) and the errors of the others."""

    def __init__(self, stack: bool):
        self.stack = stack

    def __call__(self, items: list[tuple[int, Any, str | None]]) -> dict[str, Any]:
        good = [(i, value) for i, value, error in items if error is None]
        inputs = [value for _, value in good]
        return {"rows": [i for i, _, _ in items],
                "good": [i for i, _ in good],
                "inputs": torch.stack(inputs) if self.stack and inputs else inputs,
                "bad": [(i, error) for i, _, error in items if error is not None]}


def extract(rows: Rows, encoder: Encoder, output: str | Path, options: ExtractOptions,
            dist: Distributed | None = None, report: Reporter | None = None) -> ExtractResult:
    """Encode ``rows`` with ``encoder`` into the features file ``output`` (see the module docstring).

    Rank 0 takes the output's lock before it looks at the output and keeps it to the end; the
    other ranks of its job write their chunks under that lock. With ``options.augment_views`` each
    row becomes that many views (:mod:`glacli.io.extraction.views`).
    """
    if options.augment_views:
        rows = expand_views(rows, options.augment_views, options.seed)
    with contextlib.ExitStack() as lock:
        return _extract(rows, encoder, Path(output), options, dist or Distributed(device=encoder.device),
                        report or Reporter(), lock)


def _extract(rows: Rows, encoder: Encoder, output: Path, options: ExtractOptions, dist: Distributed,
             report: Reporter, lock: contextlib.ExitStack) -> ExtractResult:
    say = report.message if dist.is_main else (lambda text: None)
    result = ExtractResult(output)
    if rows.input_kind != encoder.input_kind:
        raise GlaInputError(f"the {encoder.backend} encoder reads {encoder.input_kind}s, but this source lists "
                            f"{rows.input_kind}s", rows.attrs.get("source"))
    attrs = {**rows.attrs, **encoder.describe(), "rows_digest": rows.digest(), "dtype": options.dtype}
    fingerprint = {k: attrs.get(k) for k in FINGERPRINT_KEYS}
    parts = output.with_name(f".{output.name}.parts")
    batch = options.batch_size
    chunk_rows = math.ceil(options.commit_rows / batch) * batch

    state: dict[str, Any] = {}
    error: GlaInputError | None = None
    if dist.is_main:
        try:
            check_output_path(output)
            lock.enter_context(output_lock(output))
            if existing_output_is_done(output, fingerprint, options.overwrite):
                result.already_complete = True
                with open_h5(output) as f:
                    done = get_attrs(f)
                result.n_rows, result.n_skipped = int(done.get("n_images", 0)), int(done.get("n_skipped", 0))
            else:
                state = open_parts(output, parts, fingerprint, len(rows), chunk_rows, encoder.dim, options.overwrite)
        except GlaInputError as exc:
            error = exc
    _raise_if_any_failed(dist, error)
    if dist.any_true(result.already_complete):
        result.already_complete = True
        say(f"{output} is already complete for this model and source; nothing to do")
        return result
    if not dist.is_main:
        state = json.loads((parts / STATE_FILE).read_text())
    chunk_rows = int(state["chunk_rows"])
    n_chunks = math.ceil(len(rows) / chunk_rows)
    mine = range(dist.rank * n_chunks // dist.world_size, (dist.rank + 1) * n_chunks // dist.world_size)
    committed = committed_chunks(parts)
    committed_rows = sum(chunk_bounds(c, chunk_rows, len(rows))[1] - chunk_bounds(c, chunk_rows, len(rows))[0]
                         for c in committed)
    result.resumed_from = committed_rows
    if committed_rows:
        say(f"resuming from row {committed_rows} of {len(rows)}")
    pending = [c for c in mine if c not in committed]

    started = time.perf_counter()
    error = None
    try:
        result.encoded = _encode_chunks(rows, encoder, parts, pending, chunk_rows, options, dist, report)
    except GlaInputError as exc:
        error = exc
    _raise_if_any_failed(dist, error)
    result.seconds = time.perf_counter() - started

    error = None
    if dist.is_main:
        try:
            result.n_rows, result.n_skipped = merge(parts, output, rows, n_chunks, chunk_rows, attrs, options.skip_bad)
            shutil.rmtree(parts, ignore_errors=True)
        except GlaInputError as exc:
            error = exc
    _raise_if_any_failed(dist, error)
    return result


def _raise_if_any_failed(dist: Distributed, error: GlaInputError | None) -> None:
    if not dist.all_true(error is None):
        raise error or GlaInputError("stopped because another rank failed (see its message)")


def _encode_chunks(rows: Rows, encoder: Encoder, parts: Path, chunks: list[int], chunk_rows: int,
                   options: ExtractOptions, dist: Distributed, report: Reporter) -> int:
    """Encode and commit ``chunks``; returns how many rows were encoded."""
    n = len(rows)
    batches = [list(range(b, min(b + options.batch_size, stop)))
               for c in chunks for start, stop in [chunk_bounds(c, chunk_rows, n)]
               for b in range(start, stop, options.batch_size)]
    total = sum(len(b) for b in batches)
    if dist.is_main:
        report.start("extract", total, unit="img" if rows.input_kind == "image" else rows.input_kind)
    if not batches:
        return 0
    decode_on_device = options.decode_on_device and encoder.device.type == "cuda"
    stack = encoder.input_kind == "image" and not decode_on_device
    if options.augment_views:
        dataset = RowDataset(rows.locators, encoder.view_loader(), view_seeds(rows.ids, options.seed))
    else:
        dataset = RowDataset(rows.locators, encoder.loader(decode_on_device))
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches,
        num_workers=options.workers, collate_fn=Collate(stack), pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if options.workers else None, persistent_workers=False)
    dtype = feature_dtype(options.dtype)
    chunk: ChunkBuffer | None = None
    for item in loader:
        bad = list(item["bad"])
        good = item["good"]
        features = None
        if good:
            inputs, failed = encoder.prepare(item["inputs"], decode_on_device)
            if failed:
                bad += [(good[k], "cannot decode image on the device") for k in failed]
                good = [i for k, i in enumerate(good) if k not in failed]
            if good:
                features = encoder.encode_batch(inputs).to("cpu", dtype=torch.float32).numpy()
        if bad and not options.skip_bad:
            index, message = bad[0]
            raise GlaInputError(f"{message}; use --skip-bad to leave unreadable images out",
                                _where(rows, index))
        first = item["rows"][0]
        if chunk is None or not chunk.start <= first < chunk.stop:
            c = first // chunk_rows
            chunk = ChunkBuffer(c, *chunk_bounds(c, chunk_rows, n), encoder.dim, dtype)
        if features is not None:
            chunk.put(np.asarray(good), features)
        chunk.seen += len(item["rows"])
        if chunk.seen == chunk.stop - chunk.start:
            chunk.commit(parts)
        if dist.is_main:
            report.advance(len(item["rows"]))
    return total


def _where(rows: Rows, index: int) -> str:
    locator = rows.locators[index]
    return locator if isinstance(locator, str) else rows.ids[index]
