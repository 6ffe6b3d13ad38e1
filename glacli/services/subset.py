"""``subset``: class-balanced few-shot splits of a features (or logits) file, without re-extraction.

The sampler is :func:`glacli.core.subset.few_shot_split` (keyed on ids, so ``extract --shots`` takes the
same rows); this module streams the chosen rows of each split into its own file in one pass.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base import chunking
from glacli.base.errors import GlaInputError
from glacli.base.types import Reporter
from glacli.base.validation import require_count
from glacli.core.subset import NotEnoughRows, few_shot_split, shot_keys
from glacli.io.h5file import PROVENANCE_ATTRS
from glacli.io.rowfile import RowFile, write_rows


def subset_file(source: Path, output: Path, *, shots: int, seed: int, val_shots: int = 0,
                val_out: Path | None = None, rest_out: Path | None = None, allow_fewer: bool = False,
                reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Write ``shots`` training rows per class to ``output`` (and ``val_shots`` validation rows to
    ``val_out``, every other row to ``rest_out``); returns the sizes of the splits."""
    require_count(shots, "--shots")
    require_count(val_shots, "--val-shots", minimum=0)
    if (val_shots > 0) != (val_out is not None):
        raise GlaInputError("--val-shots and --val-out go together: give both or neither")
    outputs = {split: path for split, path in {"train": output, "val": val_out, "rest": rest_out}.items()
               if path is not None}
    _check_distinct(source, outputs)
    with RowFile(source) as src:
        if src.attrs.get("augment_views"):
            raise GlaInputError(f"holds {src.attrs['augment_views']} augmented views of each image, and subset draws "
                                "rows: it would split an image's views. Draw the split from the plain features, "
                                "then extract its views with gla extract --rows-of SPLIT.h5 --augment-views K", source)
        labels = src.require_labels("to draw class-balanced shots")
        try:
            split = few_shot_split(labels, _keys(src, seed), src.n_classes, shots, val_shots, allow_fewer)
        except NotEnoughRows as exc:
            raise GlaInputError(exc.for_user(src.classnames), src.path) from None
        rows = {name: getattr(split, name) for name in outputs}
        _write_splits(src, rows, outputs, {"shots": shots, "val_shots": val_shots, "seed": seed}, reporter)
        splits = [_summary(name, outputs[name], rows[name], labels, src.n_classes) for name in outputs]
    return {"source": str(source), "shots": shots, "val_shots": val_shots, "seed": seed, "splits": splits}


def _keys(src: RowFile, seed: int) -> np.ndarray:
    """The rows' seeded keys, from the ids read window by window (memory stays bounded)."""
    window = chunking.io_rows(src.n_cols)
    return np.concatenate([shot_keys(src.ids(start, min(start + window, src.n_rows)), seed)
                           for start in range(0, src.n_rows, window)])


def _check_distinct(source: Path, outputs: dict[str, Path]) -> None:
    seen = {source.resolve(): "the input"}
    for name, path in outputs.items():
        resolved = path.resolve()
        if resolved in seen:
            raise GlaInputError(f"the {name} output is the same file as {seen[resolved]}", path)
        seen[resolved] = f"the {name} output"


def _write_splits(src: RowFile, rows: dict[str, np.ndarray], outputs: dict[str, Path],
                  protocol: dict[str, int], reporter: Reporter) -> None:
    """Stream the selected rows into one file per split in a single pass over the input.

    Windows of the input holding no selected row are skipped; within a window only the span
    from its first to its last selected row is read. All outputs appear together or not at all.
    """
    attrs = {k: v for k, v in src.attrs.items() if k not in PROVENANCE_ATTRS}
    window = chunking.io_rows(src.n_cols)
    dtype = src.dtype
    with contextlib.ExitStack() as stack:
        sinks = {name: stack.enter_context(write_rows(
                     path, src.kind, n_rows=len(rows[name]), n_cols=src.n_cols, classnames=src.classnames,
                     attrs={**attrs, **protocol, "split": name}, parents=[src.gla_id], dtype=dtype))
                 for name, path in outputs.items()}
        written = dict.fromkeys(outputs, 0)
        reporter.start("subset", src.n_rows)
        for start in range(0, src.n_rows, window):
            stop = min(start + window, src.n_rows)
            picked = {name: idx[np.searchsorted(idx, start):np.searchsorted(idx, stop)]
                      for name, idx in rows.items()}
            chosen = [idx for idx in picked.values() if idx.size]
            if chosen:
                lo = min(int(idx[0]) for idx in chosen)
                hi = max(int(idx[-1]) for idx in chosen) + 1
                values = src.read(lo, hi, dtype)
                ids = np.array(src.ids(lo, hi), dtype=object)
                for name, idx in picked.items():
                    if idx.size:
                        local = idx - lo
                        sinks[name].write(written[name], values[local], src.labels[idx], ids[local].tolist())
                        written[name] += idx.size
            reporter.advance(stop - start)


def _summary(name: str, path: Path, rows: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, object]:
    counts = np.bincount(labels[rows], minlength=n_classes)
    return {"split": name, "file": str(path), "rows": int(rows.size),
            "min_per_class": int(counts.min()), "max_per_class": int(counts.max())}
