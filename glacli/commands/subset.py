"""``gla subset``: class-balanced few-shot splits of a features (or logits) file, no re-extraction."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from glacli import store
from glacli.app import app, fail, out, print_json, progress
from glacli.subset import NotEnoughRows, few_shot_split, shot_keys


@app.command("subset")
def subset_cmd(
    source: Path = typer.Argument(..., help="A features (or logits) file with labels."),
    shots: int = typer.Option(..., "--shots", help="Training rows per class."),
    seed: int = typer.Option(..., "--seed", help="Seed of the random order within each class."),
    output: Path = typer.Option(..., "-o", "--output", help="The training split."),
    val_shots: int = typer.Option(0, "--val-shots", help="Validation rows per class (needs --val-out)."),
    val_out: Path | None = typer.Option(None, "--val-out", help="The validation split."),
    rest_out: Path | None = typer.Option(None, "--rest-out", help="Every row in neither split (e.g. the test set)."),
    allow_fewer: bool = typer.Option(False, "--allow-fewer", help="A class with too few rows gives what it has "
                                     "(validation first) instead of stopping with an error."),
    as_json: bool = typer.Option(False, "--json", help="Print the split sizes as JSON on stdout."),
) -> None:
    """Draw a deterministic, class-balanced few-shot split from a features file.

    Within each class rows are ordered by a seeded hash of their id, so a reordered file gives
    the same split, and `gla extract --shots K --seed S` keeps exactly this command's K-shot
    training rows (with no --val-shots). Validation rows come first, so they do not change with
    --shots; for one seed the K-shot training set is contained in the K'-shot one (K < K').
    Outputs keep the input's rows in their original order, its dtype, ids, labels, classnames
    and attributes, and add shots, val_shots, seed and split; their parents are the input.

    Example:

      gla subset train_feats.h5 --shots 16 --seed 1 -o train16.h5 --val-shots 4 --val-out val4.h5 --rest-out test.h5
    """
    if shots < 1:
        fail(f"--shots: expected a positive number of rows per class, got {shots}")
    if val_shots < 0:
        fail(f"--val-shots: expected a number of rows per class >= 0, got {val_shots}")
    if (val_shots > 0) != (val_out is not None):
        fail("--val-shots and --val-out go together: give both or neither")
    outputs = {"train": output, "val": val_out, "rest": rest_out}
    outputs = {split: path for split, path in outputs.items() if path is not None}
    _check_distinct(source, outputs)

    with store.RowFile(source) as src:
        labels = src.require_labels("to draw class-balanced shots")
        try:
            split = few_shot_split(labels, _keys(src, seed), src.n_classes, shots, val_shots, allow_fewer)
        except NotEnoughRows as exc:
            fail(exc.for_user(src.classnames), src.path)
        rows = {name: getattr(split, name) for name in outputs}
        _write_splits(src, rows, outputs, {"shots": shots, "val_shots": val_shots, "seed": seed})
        summary = [_summary(name, outputs[name], rows[name], labels, src.n_classes) for name in outputs]

    if as_json:
        print_json({"source": str(source), "shots": shots, "val_shots": val_shots, "seed": seed, "splits": summary})
        return
    table = Table(title=f"gla subset: {source} (shots {shots}, val shots {val_shots}, seed {seed})")
    for column in ("split", "rows", "per class (min-max)", "file"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for row in summary:
        table.add_row(row["split"], str(row["rows"]), f"{row['min_per_class']}-{row['max_per_class']}", row["file"])
    out.print(table)


def _keys(src: store.RowFile, seed: int) -> np.ndarray:
    """The rows' seeded keys, from the ids read window by window (memory stays bounded)."""
    window = store.chunk_rows(src.n_cols)
    return np.concatenate([shot_keys(src.ids(start, min(start + window, src.n_rows)), seed)
                           for start in range(0, src.n_rows, window)])


def _check_distinct(source: Path, outputs: dict[str, Path]) -> None:
    seen = {source.resolve(): "the input"}
    for name, path in outputs.items():
        resolved = path.resolve()
        if resolved in seen:
            fail(f"the {name} output is the same file as {seen[resolved]}", str(path))
        seen[resolved] = f"the {name} output"


def _write_splits(src: store.RowFile, rows: dict[str, np.ndarray], outputs: dict[str, Path],
                  protocol: dict[str, int]) -> None:
    """Stream the selected rows into one file per split in a single pass over the input.

    Windows of the input holding no selected row are skipped; within a window only the span
    from its first to its last selected row is read. All outputs appear together or not at all.
    """
    attrs = {k: v for k, v in src.attrs.items() if k not in store.PROVENANCE_ATTRS}
    window = store.chunk_rows(src.n_cols)
    dtype = src.dtype
    with contextlib.ExitStack() as stack:
        sinks = {name: stack.enter_context(store.write_rows(
                     path, src.kind, n_rows=len(rows[name]), n_cols=src.n_cols, classnames=src.classnames,
                     attrs={**attrs, **protocol, "split": name}, parents=[src.gla_id], dtype=dtype))
                 for name, path in outputs.items()}
        written = dict.fromkeys(outputs, 0)
        with progress(transient=True) as bar:
            task = bar.add_task("subset", total=src.n_rows)
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
                bar.update(task, completed=stop)


def _summary(name: str, path: Path, rows: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, object]:
    counts = np.bincount(labels[rows], minlength=n_classes)
    return {"split": name, "file": str(path), "rows": int(rows.size),
            "min_per_class": int(counts.min()), "max_per_class": int(counts.max())}
