"""The one chunking policy: how many rows every streamed loop of gla takes at a time.

Files can hold more rows than fit in memory, so reading, writing and computing all go block by
block. These budgets size the blocks, each in one place:

- ``IO_BYTES``: the values of one block read from or written to a file (64 MiB);
- ``COMPUTE_BYTES``: the working memory of one block of computation, per device type (32 MiB on a
  CPU, where it stays cache friendly; 512 MiB on a GPU, where large matmuls pay);
- ``STORAGE_BYTES``: one HDF5 storage chunk of a row dataset (1 MiB);
- ``TEXT_ROWS`` / ``TEXT_CELLS``: rows of text (ids, CSV records) per block, bounding the Python
  strings alive at once;
- ``ARRAY_ELEMENTS``: the values of one block of a pass over an array already in memory (the
  temperature fits, the prior solver's input), so its float64 temporaries stay bounded (32 MiB);
- ``CACHE_ELEMENTS``: the values of one block of the prior solver's passes on a CPU, small enough
  that its temporaries stay in cache (1 MiB of float32).

No result depends on these numbers (tests shrink them to a few rows); they only trade memory for
speed. Callers use the functions below through the module (``chunking.io_rows``), so a test can
patch one of them and reach every loop. :class:`LogitSource` is the one form of rows that come in
blocks (a file streamed, or an array cut up), as the prior solver and the label-shift estimates take them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

IO_BYTES = 64 * 2**20
COMPUTE_BYTES = {"cpu": 32 * 2**20, "cuda": 512 * 2**20}
STORAGE_BYTES = 2**20
TEXT_ROWS = 65536
TEXT_CELLS = 2**20
ARRAY_ELEMENTS = 2**22
CACHE_ELEMENTS = 2**18


def _rows(budget_bytes: int, row_bytes: int) -> int:
    return max(1, budget_bytes // max(1, row_bytes))


def io_rows(n_cols: int, itemsize: int = 4) -> int:
    """Rows of ``n_cols`` values of ``itemsize`` bytes per block read from or written to a file."""
    return _rows(IO_BYTES, n_cols * itemsize)


def compute_rows(row_bytes: int, device_type: str = "cpu") -> int:
    """Rows per block of computation when one row needs ``row_bytes`` of working memory on
    ``device_type`` (``"cpu"`` or ``"cuda"``)."""
    return _rows(COMPUTE_BYTES.get(device_type, COMPUTE_BYTES["cpu"]), row_bytes)


def storage_rows(n_cols: int, itemsize: int) -> int:
    """Rows per HDF5 storage chunk of a dataset with ``n_cols`` columns."""
    return _rows(STORAGE_BYTES, n_cols * itemsize)


def text_rows(cells_per_row: int = 1) -> int:
    """Rows of text per block: at most ``TEXT_ROWS``, and at most ``TEXT_CELLS`` strings."""
    return min(TEXT_ROWS, _rows(TEXT_CELLS, cells_per_row))


def array_rows(n_cols: int) -> int:
    """Rows of ``n_cols`` values per block of a pass over an in-memory array."""
    return _rows(ARRAY_ELEMENTS, n_cols)


def cache_rows(n_cols: int) -> int:
    """Rows of ``n_cols`` values per cache-sized block of the prior solver on a CPU."""
    return _rows(CACHE_ELEMENTS, n_cols)


@dataclass
class LogitSource:
    """Blocks of [rows, C] logits, the same blocks in the same order on every call of ``blocks()``.
    Streaming a file through it keeps memory at one block whatever ``n_rows`` is. ``like``: an
    empty array of the blocks' kind and device (else the first block is read to learn them)."""

    blocks: Callable[[], Iterable[Any]]
    n_rows: int
    n_classes: int
    like: Any = None

    @classmethod
    def from_array(cls, logits: Any) -> LogitSource:
        n, c = logits.shape
        rows = array_rows(c)
        return cls(lambda: (logits[start:start + rows] for start in range(0, n, rows)), n, c, logits[:0])
