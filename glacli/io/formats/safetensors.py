"""``.safetensors`` files: a JSON header naming each tensor's dtype, shape and byte range, then the bytes.

Read here with NumPy alone (no torch, no code in the file can run): the header is parsed once, and a
tensor is read from its byte range only when asked for, so taking one head out of a checkpoint of
hundreds of megabytes reads only that head. bfloat16 is widened to float32 exactly.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base.errors import GlaInputError

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
          "U8": "u1", "BOOL": "?", "BF16": "<u2"}
"""safetensors dtype -> the NumPy dtype its bytes are read as (bfloat16 as raw 16-bit words)."""
HEADER_LIMIT = 100 * 2**20
"""The largest header accepted (the format caps it at 100 MB)."""


class SafetensorsEntries(dict):
    """The tensors of a ``.safetensors`` file by name, each read from disk when indexed."""

    def __init__(self, path: Path, header: dict[str, Any], data_start: int):
        super().__init__((name, None) for name in header if name != "__metadata__")
        self._path, self._header, self._start = path, header, data_start
        self.metadata = header.get("__metadata__") or {}

    def __getitem__(self, name: str) -> np.ndarray:
        info = self._header[name]
        if info.get("dtype") not in DTYPES:
            raise GlaInputError(f"tensor {name!r} has dtype {info.get('dtype')!r}, which gla does not read", self._path)
        begin, end = info["data_offsets"]
        shape = tuple(int(n) for n in info["shape"])
        dtype = np.dtype(DTYPES[info["dtype"]])
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise GlaInputError(f"tensor {name!r}: byte range does not fit its shape {shape}", self._path)
        with open(self._path, "rb") as fh:
            fh.seek(self._start + begin)
            raw = fh.read(end - begin)
        if len(raw) != end - begin:
            raise GlaInputError(f"tensor {name!r} is cut short (truncated file)", self._path)
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


def load_entries(path: Path) -> SafetensorsEntries:
    """The tensors of ``path`` by name (read lazily); a file that is not safetensors is one line."""
    try:
        with open(path, "rb") as fh:
            size_bytes = fh.read(8)
            if len(size_bytes) != 8:
                raise ValueError("shorter than its 8-byte header size")
            (size,) = struct.unpack("<Q", size_bytes)
            if size > HEADER_LIMIT:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(fh.read(size).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        for name, info in header.items():
            if name != "__metadata__" and not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)):
                raise ValueError(f"entry {name!r} has no dtype, shape and data_offsets")
    except (ValueError, UnicodeDecodeError) as exc:
        raise GlaInputError(f"cannot be read as .safetensors ({exc})", path) from exc
    except OSError as exc:
        raise GlaInputError(f"cannot be read: {exc.strerror or exc}", path) from exc
    return SafetensorsEntries(path, header, 8 + size)
