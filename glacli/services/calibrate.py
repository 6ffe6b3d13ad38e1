"""``calibrate``: temperature scaling of a logits file, with T fitted on labelled validation logits.

The output stores ``LOGITS / T`` and records the total temperature (T times any temperature the
input already had), so every later scale conversion stays exact. One scalar needs no torch: the
fit runs on numpy arrays.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from glacli import api
from glacli.base.errors import GlaInputError
from glacli.base.types import Reporter
from glacli.base.validation import check_same_classnames, check_same_temperature, require_choice
from glacli.core.calibration import nll
from glacli.io.h5file import PROVENANCE_ATTRS
from glacli.io.rowfile import read_rows, write_rows

METHODS = ("nll", "confidence")


def calibrate_file(logits: Path, val: Path, output: Path, method: str = "nll",
                   reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Fit T on ``val`` (``nll``: minimum NLL; ``confidence``: mean max-probability = accuracy) and
    write ``logits / T`` to ``output``; returns T and the validation NLL before and after."""
    require_choice(method, METHODS, "--method")
    with read_rows(val, "logits") as val_file:
        labels = val_file.require_labels("to fit a temperature")
        val_logits = val_file.read()
        val_classnames, val_temperature, val_id = val_file.classnames, val_file.temperature, val_file.gla_id
    with read_rows(logits, "logits") as rows:
        check_same_classnames(val_classnames, val, rows.classnames, rows.path)
        check_same_temperature(val_temperature, val, rows.temperature, rows.path,
                               "calibrate logits on the same scale")
        try:
            temperature = api.fit_temperature(val_logits, labels, method=method)
        except ValueError as exc:
            raise GlaInputError(str(exc), val) from None
        total = temperature * rows.temperature
        attrs = {**{k: v for k, v in rows.attrs.items() if k not in PROVENANCE_ATTRS},
                 "temperature": total, "calibration_method": method}
        with write_rows(output, "logits", n_rows=rows.n_rows, n_cols=rows.n_cols,
                        classnames=rows.classnames, attrs=attrs, parents=[rows.gla_id, val_id]) as sink:
            reporter.start("calibrating", rows.n_rows)
            for chunk in rows.iter_chunks(with_ids=True):
                sink.write(chunk.start, (chunk.values / np.float32(temperature)).astype(np.float32),
                           chunk.labels, chunk.ids)
                reporter.advance(chunk.stop - chunk.start)
        return {"output": str(output), "method": method, "temperature": temperature,
                "total_temperature": total, "input_temperature": rows.temperature,
                "val_rows": len(labels),
                "val_accuracy": float((val_logits.argmax(1) == labels).mean()),
                "val_nll_before": nll(val_logits, labels), "val_nll_after": nll(val_logits, labels, temperature)}
