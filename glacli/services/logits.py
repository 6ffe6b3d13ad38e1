"""``logits``: a head applied to a features file, streamed: ``(features @ weight.T + bias) / temperature``
(float32 numpy: ``gla logits`` does not import torch)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from glacli.base import chunking
from glacli.base.types import Reporter
from glacli.base.validation import check_head_fits
from glacli.core.heads import apply_head
from glacli.io import fitted_ids
from glacli.io.paramfile import read_head
from glacli.io.rowfile import read_rows, write_rows

HEAD_ATTRS = ("model", "pretrained", "templates", "anchor_id")
"""Attributes of the head that its logits record (which model, which prompts, and for an anchored
head the zero-shot head it already contains)."""


def logits_file(features: Path, head: Path, output: Path, reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Write the logits of every row of ``features`` under ``head``, keeping ids, labels and class
    names; the head's temperature is applied and recorded, with its type and id, and how many rows the
    head was fitted on (``head_fitted_rows``, read by combine and evaluate to warn of leakage)."""
    head_file = read_head(head)
    with read_rows(features, "features") as rows:
        check_head_fits(head_file, head, rows.classnames, rows.n_cols, rows.path)
        weight = np.asarray(head_file.weight, dtype=np.float32)
        bias = np.asarray(head_file.bias, dtype=np.float32)
        hashes = fitted_ids.read_hashes(head)
        fitted = None if hashes is None else fitted_ids.count_fitted(rows, hashes)
        if fitted:
            reporter.warning(f"{fitted} of the {rows.n_rows} rows of {rows.path} were used to fit {head}: "
                             "results on them overstate accuracy")
        attrs = {"temperature": head_file.temperature, "head_type": head_file.head_type, "head_id": head_file.gla_id,
                 "head_fitted_rows": fitted,
                 **{k: head_file.attrs[k] for k in HEAD_ATTRS if k in head_file.attrs}}
        step = chunking.compute_rows(4 * (rows.n_cols + rows.n_classes))
        with write_rows(output, "logits", n_rows=rows.n_rows, n_cols=rows.n_classes,
                        classnames=rows.classnames, attrs=attrs, parents=[rows.gla_id, head_file.gla_id]) as sink:
            reporter.start("logits", rows.n_rows)
            for chunk in rows.iter_chunks(step, with_ids=True):
                logits = apply_head(chunk.values, weight, bias, head_file.temperature)
                sink.write(chunk.start, logits, chunk.labels, chunk.ids)
                reporter.advance(chunk.stop - chunk.start)
        return {"output": str(output), "n_rows": rows.n_rows, "n_classes": rows.n_classes}
