"""``info``: what a gla file is and where it came from (kind, shape, scales, method, parents)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from glacli.io import store


def describe_file(path: Path) -> dict[str, Any]:
    """The file's kind, shape, number of classes and every attribute (provenance included)."""
    kind, attrs, shape, n_classes = store.summary(path)
    return {"path": str(path), "kind": kind, "shape": list(shape), "n_classes": n_classes, "attributes": attrs}
