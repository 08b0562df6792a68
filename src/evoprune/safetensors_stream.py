"""Write a safetensors file row-slice by row-slice, without ever holding whole tensors in memory.

The layout is the standard one (8-byte little-endian header length, JSON header padded with
spaces to a multiple of 8, then the tensors back to back), so `safetensors.safe_open` reads it.
Every tensor's shape is declared up front; callers then write consecutive slices along dim 0.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import BinaryIO

import torch

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
                      torch.int64: "I64", torch.float64: "F64"}


class SafetensorsStreamWriter:
    """Declare tensors up front, fill them slice by slice along dim 0, then `close()`.

    Args:
        path: file to create (use with `atomic.staged_file` so a failure leaves nothing behind).
        tensors: name -> (dtype, shape) of every tensor in the file.
        metadata: string key/values stored in the header's `__metadata__`.
    """

    def __init__(self, path: str | os.PathLike, tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str]):
        self._layout: dict[str, tuple[torch.dtype, tuple[int, ...], int]] = {}
        self._rows_written = {name: 0 for name in tensors}
        header: dict[str, dict] = {"__metadata__": dict(metadata)}
        offset = 0
        for name, (dtype, shape) in tensors.items():
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self._layout[name] = (dtype, tuple(shape), offset)
            offset += nbytes
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-len(header_bytes) % 8)
        self._data_start = 8 + len(header_bytes)
        self._file: BinaryIO = open(Path(path), "wb")
        self._file.write(len(header_bytes).to_bytes(8, "little"))
        self._file.write(header_bytes)
        self._file.truncate(self._data_start + offset)

    def write_rows(self, name: str, first_row: int, values: torch.Tensor) -> None:
        """Write `values` (shape [rows, *shape[1:]]) into tensor `name` starting at row `first_row`."""
        dtype, shape, offset = self._layout[name]
        if values.dtype != dtype or tuple(values.shape[1:]) != shape[1:] or first_row + len(values) > shape[0]:
            raise ValueError(f"{name}: cannot write {values.dtype} {list(values.shape)} at row {first_row} "
                             f"into {dtype} {list(shape)}")
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        data = values.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy()
        self._file.seek(self._data_start + offset + first_row * row_bytes)
        self._file.write(memoryview(data))
        self._rows_written[name] += len(values)

    def close(self) -> None:
        """Flush and fsync; raises if any declared row was never written."""
        missing = {n: self._layout[n][1][0] - r for n, r in self._rows_written.items() if r != self._layout[n][1][0]}
        try:
            if missing:
                raise ValueError(f"rows left unwritten: {missing}")
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def discard(self) -> None:
        """Close the file without checks after a failure (the caller deletes it)."""
        self._file.close()


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file` without its copy of every tensor as bytes: each is written from its own memory."""
    writer = SafetensorsStreamWriter(path, {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}, metadata)
    try:
        for name, tensor in tensors.items():
            writer.write_rows(name, 0, tensor)
    except BaseException:
        writer.discard()
        raise
    writer.close()
