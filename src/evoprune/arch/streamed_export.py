"""Export a sliced model shard by shard, straight from the dense weights: the pruned model never exists whole.

The result is the same checkpoint folder `export_checkpoint(adapter.slice(...))` writes (same
config, remote code for heterogeneous shapes, tokenizer, spec), with the weights in standard
sharded safetensors (`model-0000k-of-0000N.safetensors` + `model.safetensors.index.json`, or one
`model.safetensors` when they fit one shard). Peak memory is one shard plus one sliced layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel
from transformers.dynamic_module_utils import custom_object_save

from ..atomic import staged_dir, write_json
from .adapter import ModelAdapter
from .export import _check_complete, is_pruned_class
from .slicing import take
from .spec import SubnetSpec

DEFAULT_SHARD_BYTES = 2 * 2**30


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
    dtype = next(dense.parameters()).dtype
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
            shard = {}
            for name in names:
                while name not in pending:
                    pending.update(next(tensors))
                shard[name] = pending.pop(name).to(dtype).contiguous()
            save_file(shard, tmp / file, metadata={"format": "pt"})
            del shard
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
