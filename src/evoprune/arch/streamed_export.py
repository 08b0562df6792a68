"""Export a sliced model shard by shard, straight from the dense weights: the pruned model never exists whole.

The result is the same checkpoint folder `export_checkpoint(adapter.slice(...))` writes (same
config, remote code for heterogeneous shapes, tokenizer, spec), with the weights in standard
sharded safetensors (`model-0000k-of-0000N.safetensors` + `model.safetensors.index.json`, or one
`model.safetensors` when they fit one shard). Each tensor is written as it comes, converted to the export
dtype a chunk of rows at a time: peak memory is one sliced layer plus one chunk.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.dynamic_module_utils import custom_object_save

from ..atomic import staged_dir, write_json
from ..safetensors_stream import SafetensorsStreamWriter
from .adapter import ModelAdapter
from .export import _check_complete, is_pruned_class
from .slicing import take
from .spec import SubnetSpec

DEFAULT_SHARD_BYTES = 2 * 2**30
CONVERT_CHUNK_BYTES = 64 * 2**20  # converted to the export dtype at once


def export_sliced(dense: PreTrainedModel, adapter: ModelAdapter, spec: SubnetSpec, replace: dict[str, torch.Tensor],
                  out: str | Path, tokenizer=None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                  force: bool = False) -> Path:
    """Write `adapter.slice(dense, spec, replace)` to `out` without building it.

    Args:
        dense: the source model (weights may be memory-mapped; only read).
        spec, replace: what to keep, and the database's updated projections.
        out: target folder; refused if it exists and is not empty unless `force`.
        tokenizer: saved beside the weights when given.
        max_shard_bytes: largest shard (a tensor larger than this gets a shard of its own).
    """
    config, lm_class = adapter.pruned_config(dense.config, spec)
    # a bounded model (models.load_model(bounded=True)) is exported in the dtype it was asked for
    dtype = getattr(dense, "evoprune_loaded_dtype", None) or next(dense.parameters()).dtype
    config.dtype = str(dtype).removeprefix("torch.")
    with torch.device("meta"):
        skeleton = lm_class(config)
    layout = {k: v.shape for k, v in skeleton.state_dict().items()}
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        layout.pop("lm_head.weight", None)
    shards = _plan_shards(layout, dtype.itemsize, max_shard_bytes)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    if len(shards) == 1:
        files = ["model.safetensors"]
    out = Path(out)
    with staged_dir(out, force=force) as tmp:
        tensors = _sliced_tensors(dense, adapter, spec, replace)
        pending: dict[str, torch.Tensor] = {}
        for names, file in zip(shards, files):
            writer = SafetensorsStreamWriter(tmp / file, {name: (dtype, tuple(layout[name])) for name in names},
                                             metadata={"format": "pt"})
            for name in names:
                while name not in pending:
                    pending.update(next(tensors))
                write_converted(writer, name, pending.pop(name), dtype)
            writer.close()
        if len(files) > 1:
            write_json(tmp / "model.safetensors.index.json", {
                "metadata": {"total_size": sum(math.prod(s) * dtype.itemsize for s in layout.values())},
                "weight_map": {name: file for names, file in zip(shards, files) for name in names}})
        _save_config(skeleton, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / "evoprune_spec.json", spec.to_dict())
        _check_complete(tmp, needs_code=is_pruned_class(skeleton))
    return out


def write_converted(writer: SafetensorsStreamWriter, name: str, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """Write `tensor` as `dtype`, converted CONVERT_CHUNK_BYTES at a time (an fp32 copy of a 128k-row embedding is
    1 GiB; a chunk of its rows is all that exists at once)."""
    if tensor.dim() == 0:
        tensor = tensor.reshape(1)
    row_bytes = max(1, math.prod(tensor.shape[1:]) * dtype.itemsize)
    rows = max(1, CONVERT_CHUNK_BYTES // row_bytes)
    for first in range(0, len(tensor), rows):
        writer.write_rows(name, first, tensor[first:first + rows].to(dtype))


def _plan_shards(layout: dict[str, torch.Size], itemsize: int, max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in layout.items():
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _sliced_tensors(dense: PreTrainedModel, adapter: ModelAdapter, spec: SubnetSpec,
                    replace: dict[str, torch.Tensor]):
    """Yields dicts of the sliced model's tensors: the outer ones first, then one layer at a time."""
    src = dense.state_dict()
    hidden = None if spec.hidden is None else torch.tensor(spec.hidden)
    outer = {"model.embed_tokens.weight": take(src["model.embed_tokens.weight"], None, hidden) if hidden is not None
             else src["model.embed_tokens.weight"],
             "model.norm.weight": take(src["model.norm.weight"], hidden)}
    if not spec.source.tied_embeddings:
        outer["lm_head.weight"] = (src["lm_head.weight"] if hidden is None
                                   else take(src["lm_head.weight"], None, hidden))
    yield outer
    if hidden is not None:
        yield adapter.slice(dense, spec, replace).state_dict()  # channel pruning: not streamed
        return
    for i, layer in enumerate(adapter.sliced_layers(dense, spec, replace)):
        yield {f"model.layers.{i}.{name}": t for name, t in layer.state_dict().items()}


def _save_config(skeleton: PreTrainedModel, folder: Path) -> None:
    """What `save_pretrained` writes besides the weights: config (with the remote code and auto_map of a
    heterogeneous model) and generation config."""
    skeleton.config.architectures = [type(skeleton).__name__]
    if is_pruned_class(skeleton):
        type(skeleton.config).register_for_auto_class()
        type(skeleton).register_for_auto_class("AutoModelForCausalLM")
        custom_object_save(skeleton, folder, config=skeleton.config)
    skeleton.config.save_pretrained(folder)
    if skeleton.can_generate():
        skeleton.generation_config.save_pretrained(folder)
