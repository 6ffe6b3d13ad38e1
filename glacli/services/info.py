"""``info``: what a gla file is and where it came from (kind, shape, scales, method, parents, and for a
prior its most and least likely classes)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from glacli.io.paramfile import read_prior
from glacli.io.summary import summary

EXTREME_CLASSES = 5
"""How many of a prior's most and of its least likely classes ``info`` lists."""


def describe_file(path: Path) -> dict[str, Any]:
    """The file's kind, shape, number of classes and every attribute (provenance included); for a prior
    also its ``EXTREME_CLASSES`` most and least likely classes with their q."""
    kind, attrs, shape, n_classes = summary(path)
    report = {"path": str(path), "kind": kind, "shape": list(shape), "n_classes": n_classes, "attributes": attrs}
    if kind == "prior":
        prior = read_prior(path)
        order = np.argsort(-prior.prior, kind="stable")
        k = min(EXTREME_CLASSES, len(order))
        report["most_likely"] = [[prior.classnames[i], float(prior.prior[i])] for i in order[:k]]
        report["least_likely"] = [[prior.classnames[i], float(prior.prior[i])] for i in order[::-1][:k]]
    return report
