"""The committed chunks of an extraction: a hidden ``.NAME.parts`` folder beside the output.

Each finished chunk is its own small ``.npz`` (written to a temporary name, synced, then renamed),
next to a ``state.json`` that records what is being extracted, so a killed run resumes where it
stopped. When every chunk is there they are merged into the output features file through
:class:`glacli.io.rowfile.RowSink`.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import Rows
from glacli.base.validation import feature_dtype
from glacli.io.h5file import COMPLETE_ATTR, atomic_h5, get_attrs, open_h5, write_strings
from glacli.io.outputs import atomic_output, write_text_atomic
from glacli.io.rowfile import RowSink

STATE_FILE = "state.json"
FINGERPRINT_KEYS = ("encoder", "model", "pretrained", "checkpoint_sha256", "source", "source_kind", "split", "root",
                    "shots", "seed", "classnames_file", "rows_digest", "dtype", "model_sha256", "prompt", "prompt_labels",
                    "max_tokens")
"""Attributes that must agree for a run to resume, or for an existing output to count as done."""


@dataclass
class ChunkBuffer:
    """The features of one chunk of rows as they are encoded, and which rows could be read."""

    index: int
    start: int
    stop: int
    dim: int
    dtype: Any
    seen: int = 0
    features: np.ndarray = field(init=False)
    ok: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.features = np.zeros((self.stop - self.start, self.dim), dtype=self.dtype)
        self.ok = np.zeros(self.stop - self.start, dtype=bool)

    def put(self, rows: np.ndarray, features: np.ndarray) -> None:
        self.features[rows - self.start] = features
        self.ok[rows - self.start] = True

    def commit(self, parts: Path) -> None:
        """Write the chunk under a temporary name, sync it, and rename it into place (atomic)."""
        with atomic_output(parts / chunk_name(self.index)) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=self.features[self.ok], ok=self.ok)
            f.flush()
            os.fsync(f.fileno())


def chunk_name(index: int) -> str:
    return f"chunk-{index:08d}.npz"


def chunk_bounds(index: int, chunk_rows: int, n_rows: int) -> tuple[int, int]:
    return index * chunk_rows, min((index + 1) * chunk_rows, n_rows)


def committed_chunks(parts: Path) -> set[int]:
    return {int(p.stem.split("-")[1]) for p in parts.glob("chunk-*.npz")}


def existing_output_is_done(output: Path, fingerprint: dict[str, Any], overwrite: bool) -> bool:
    """True if ``output`` is a complete features file of the same extraction; refuse any other file."""
    if not output.exists() or overwrite:
        return False
    try:
        with open_h5(output) as f:
            attrs = get_attrs(f)
    except GlaInputError:
        attrs = {}
    complete = attrs.get("gla_kind") == "features" and bool(attrs.get(COMPLETE_ATTR))
    differs = _differences(fingerprint, attrs)
    if complete and not differs:
        return True
    what = f"holds features of a different extraction ({differs[0]})" if complete and differs else \
        "already exists and is not a complete features file of this extraction"
    raise GlaInputError(f"{what}; use --overwrite to replace it", output)


def _differences(fingerprint: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    def norm(value: Any) -> Any:
        return "" if value is None else value
    return [f"{k}: {norm(recorded.get(k))!r} here, {norm(v)!r} now" for k, v in fingerprint.items()
            if norm(recorded.get(k)) != norm(v)]


def open_parts(output: Path, parts: Path, fingerprint: dict[str, Any], n_rows: int, chunk_rows: int, dim: int,
                overwrite: bool) -> dict[str, Any]:
    """Create the parts folder of a new run, or return the state of the unfinished run of this same
    extraction in it; an unfinished run of something else is discarded only with ``overwrite``."""
    state = {"fingerprint": fingerprint, "n_rows": n_rows, "chunk_rows": chunk_rows, "dim": dim}
    state_path = parts / STATE_FILE
    if parts.exists() and not committed_chunks(parts):
        shutil.rmtree(parts)  # an earlier run stopped before committing anything: nothing to keep
    if parts.exists():
        try:
            previous = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        same = previous is not None and previous.get("n_rows") == n_rows and previous.get("dim") == dim \
            and not _differences(fingerprint, previous.get("fingerprint", {}))
        if same:  # the same extraction, even with --overwrite: resume it
            for tmp in parts.glob(".*.tmp-*"):  # left by a kill during a commit
                tmp.unlink()
            return previous
        if not overwrite:
            differs = _differences(fingerprint, previous.get("fingerprint", {})) if previous else ["unreadable state"]
            raise GlaInputError(f"an unfinished extraction of something else is in {parts} "
                                f"({(differs or ['row count'])[0]}); use --overwrite to discard it", output)
        shutil.rmtree(parts)
    parts.mkdir()
    write_text_atomic(state_path, json.dumps(state, indent=1))
    return state


def merge(parts: Path, output: Path, rows: Rows, n_chunks: int, chunk_rows: int, attrs: dict[str, Any],
          skip_bad: bool) -> tuple[int, int]:
    """Concatenate the committed chunks into ``output`` (atomic, complete last); returns (rows, skipped)."""
    ok = np.concatenate([np.load(parts / chunk_name(c))["ok"] for c in range(n_chunks)])
    skipped = np.flatnonzero(~ok)
    if len(skipped) and not skip_bad:
        raise GlaInputError(f"{len(skipped)} images were left out by an earlier --skip-bad run "
                            f"(first: {rows.ids[skipped[0]]}); add --skip-bad or --overwrite", output)
    n_ok = int(ok.sum())
    if not n_ok:
        raise GlaInputError("no image could be read", attrs.get("source"))
    dim = int(json.loads((parts / STATE_FILE).read_text())["dim"])
    attrs = {**attrs, "n_images": n_ok, "n_skipped": len(skipped)}
    with atomic_h5(output, "features", (), attrs) as f:
        write_strings(f, "classnames", rows.classnames)
        sink = RowSink(f, "features", n_ok, dim, feature_dtype(attrs["dtype"]))
        position = 0
        for c in range(n_chunks):
            start = chunk_bounds(c, chunk_rows, len(rows))[0]
            with np.load(parts / chunk_name(c)) as data:
                kept = np.flatnonzero(data["ok"]) + start
                values = data["features"]
            if len(kept):
                sink.write(position, values, rows.labels[kept], [rows.ids[i] for i in kept])
                position += len(kept)
        write_strings(f, "skipped", [rows.ids[i] for i in skipped])
    return n_ok, len(skipped)
