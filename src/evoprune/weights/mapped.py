"""Model weights as memory-mapped views of their safetensors files: nothing is copied into RAM.

Every tensor is a zero-copy view of a private (copy-on-write) mapping of its file, in its stored
dtype. Pages are read from disk when first touched and count as file-backed memory, which the
kernel can drop again under pressure and which every process mapping the same file shares
through the page cache (two `torchrun` ranks do not hold two copies). A write into a mapped
tensor (e.g. applying a database level in place) copies only the touched pages, privately.

`MappedWeights.materialized_bytes` counts what had to be copied instead (a dtype conversion or a
misaligned tensor): that is the loader's own account of the anonymous memory it caused.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from ..arch.slicing import instantiate
from ..errors import UserError

log = logging.getLogger(__name__)

STORED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
                 "I32": torch.int32, "U8": torch.uint8, "I8": torch.int8, "BOOL": torch.bool, "F64": torch.float64}


def read_header(file: Path) -> tuple[int, dict]:
    """(byte offset of the data section, header dict) of a safetensors file."""
    try:
        with open(file, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length <= file.stat().st_size - 8:
                raise ValueError(f"header length {length}")
            header = json.loads(f.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is not a readable safetensors file ({e})") from None
    return 8 + length, header


def stored_dtype(folder: Path) -> torch.dtype | None:
    """The dtype most floating-point weights of `folder`'s safetensors files are stored in, from their headers
    alone; None without safetensors files."""
    counts: dict[torch.dtype, int] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        for name, entry in read_header(file)[1].items():
            dtype = STORED_DTYPES.get(entry.get("dtype")) if name != "__metadata__" else None
            if dtype is not None and dtype.is_floating_point:
                counts[dtype] = counts.get(dtype, 0) + math.prod(entry["shape"])
    return max(counts, key=counts.get) if counts else None


class MappedWeights:
    """The tensors of a folder's `*.safetensors` files, mapped, in stored dtype.

    Args:
        folder: a model folder (single file or sharded with an index).
        dtype: convert floating tensors to this dtype (copies them); None keeps the stored dtype.
    """

    def __init__(self, folder: Path, dtype: torch.dtype | None = None):
        self.folder = Path(folder)
        self.dtype = dtype
        self.materialized_bytes = 0
        self.mapped_bytes = 0
        self.tensors: dict[str, torch.Tensor] = {}
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise UserError(f"{self.folder} has no weight files (*.safetensors)")
        for file in files:
            self._map_file(file)

    def _map_file(self, file: Path) -> None:
        data_start, header = read_header(file)
        size = file.stat().st_size
        with open(file, "rb") as f:  # the mapping outlives the file handle
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = STORED_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise UserError(f"{file.name}: tensor {name} has dtype {entry['dtype']}, which evoprune cannot read")
            begin, end = (data_start + o for o in entry["data_offsets"])
            shape = tuple(entry["shape"])
            if end > size or end - begin != math.prod(shape) * dtype.itemsize:
                raise UserError(f"{file.name} is truncated or corrupt: tensor {name} does not fit the file")
            if end == begin:
                tensor = torch.empty(shape, dtype=dtype)
            elif begin % dtype.itemsize == 0:  # a storage of its own per tensor: savers see no shared memory
                tensor = torch.frombuffer(mapping, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                          offset=begin).view(shape)
                self.mapped_bytes += end - begin
            else:  # misaligned in the file: a copy is the only way to view it
                tensor = torch.frombuffer(mapping, dtype=torch.uint8, count=end - begin, offset=begin).clone()
                tensor = tensor.view(dtype).reshape(shape)
                self.materialized_bytes += end - begin
            if self.dtype is not None and dtype.is_floating_point and dtype != self.dtype:
                tensor = tensor.to(self.dtype)
                self.materialized_bytes += tensor.numel() * tensor.element_size()
            self.tensors[name] = tensor

    def stored_dtype(self) -> torch.dtype:
        """The dtype most of the floating-point weights are stored in."""
        counts: dict[torch.dtype, int] = {}
        for t in self.tensors.values():
            if t.dtype.is_floating_point:
                counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
        return max(counts, key=counts.get) if counts else torch.float32


def load_mapped_model(weights: MappedWeights, config: PretrainedConfig) -> PreTrainedModel | None:
    """The causal LM of `config` with parameters that are the mapped `weights` of its folder.

    Returns None when the files' tensor names do not match the model class exactly (checkpoints
    that transformers renames on load): the caller then loads them the usual way.
    """
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    expected = set(skeleton.state_dict())
    tied = {"lm_head.weight"} if getattr(config.get_text_config(), "tie_word_embeddings", False) else set()
    names = set(weights.tensors)
    if names - expected or expected - names - tied:
        log.debug("mapped load of %s skipped: names differ (%s)", weights.folder, sorted(names ^ expected)[:3])
        return None
    state = {k: v for k, v in weights.tensors.items() if k not in tied}
    model = instantiate(type(skeleton), config, state)
    model.config.dtype = weights.dtype or weights.stored_dtype()
    model.mapped_weights = weights  # keeps the accounting reachable (the tensors keep the mapping alive)
    return model
