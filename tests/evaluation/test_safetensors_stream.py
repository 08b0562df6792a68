"""The streaming safetensors writer produces files the safetensors library reads back exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from evoprune.safetensors_stream import SafetensorsStreamWriter


def test_slices_written_out_of_order_read_back_exactly(tmp_path):
    ids = torch.arange(5 * 3 * 2, dtype=torch.int32).reshape(5, 3, 2)
    values = torch.randn(5, 3, dtype=torch.float16)
    writer = SafetensorsStreamWriter(tmp_path / "x.safetensors", {"ids": (torch.int32, (5, 3, 2)),
                                                                   "values": (torch.float16, (5, 3))}, {"k": "v"})
    writer.write_rows("values", 2, values[2:])
    writer.write_rows("ids", 3, ids[3:])
    writer.write_rows("ids", 0, ids[:3])
    writer.write_rows("values", 0, values[:2])
    writer.close()
    loaded = load_file(tmp_path / "x.safetensors")
    assert torch.equal(loaded["ids"], ids)
    assert torch.equal(loaded["values"], values)


def test_close_refuses_unwritten_rows(tmp_path):
    writer = SafetensorsStreamWriter(tmp_path / "x.safetensors", {"a": (torch.float32, (4,))}, {})
    writer.write_rows("a", 0, torch.zeros(2))
    with pytest.raises(ValueError, match="unwritten"):
        writer.close()


def test_write_rows_refuses_wrong_dtype_or_overflow(tmp_path):
    writer = SafetensorsStreamWriter(tmp_path / "x.safetensors", {"a": (torch.float32, (4, 2))}, {})
    with pytest.raises(ValueError):
        writer.write_rows("a", 0, torch.zeros(2, 2, dtype=torch.float16))
    with pytest.raises(ValueError):
        writer.write_rows("a", 3, torch.zeros(2, 2))
    writer.discard()
