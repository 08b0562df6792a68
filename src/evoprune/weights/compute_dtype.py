"""Run a model stored in one dtype in another, one module at a time.

A bf16 checkpoint on a CPU without bf16 matrix units runs many times slower in bf16 than in fp32,
but converting the whole model to fp32 doubles its memory (32 GB for an 8B model). Instead each
decoder layer, the final norm and the LM head get their weights converted when they run and
dropped right after: at most one converted module exists at a time, and the stored weights
(memory-mapped, see `weights.mapped`) are never copied whole.

For inference only: a model that trains must hold its weights in the dtype it computes in.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter

ATTRIBUTE = "evoprune_compute_dtype"  # set on a model whose modules run in another dtype
# set on a model kept in its stored dtype although it was asked for in another (`models.load_model(bounded=True)`):
# the dtype whose numbers it must give, in which its database levels and its export are written
LOADED_AS = "evoprune_loaded_dtype"
HEAD_SLICE_BYTES = 64 * 2**20  # LM head rows converted at once


def cast_floats(value, dtype: torch.dtype):
    """`value` with its floating tensors (also inside tuples, e.g. RoPE cos/sin) in `dtype`."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(cast_floats(v, dtype) for v in value)
    return value


@contextmanager
def weights_in(module: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """`module`'s floating-point parameters converted to `dtype` inside the block, restored after."""
    stored = [(p, p.data) for p in module.parameters() if p.is_floating_point() and p.dtype != dtype]
    for p, data in stored:
        p.data = data.to(dtype)
    try:
        yield
    finally:
        for p, data in stored:
            p.data = data


def compute_in(model: PreTrainedModel, adapter: ModelAdapter, dtype: torch.dtype,
               embeddings: bool = False) -> PreTrainedModel:
    """Make every decoder layer, the final norm and the LM head of `model` run in `dtype` (hooks; in place).

    Inputs of these modules are cast to `dtype` too, so hidden states flow in `dtype` from the first
    layer on. A no-op when the model is stored in `dtype` already.

    Args:
        embeddings: also cast the input embeddings' output to `dtype`, so that the RoPE tables and masks
            the model derives from it are made in `dtype` too: the numbers are then those of the model
            loaded in `dtype` (when `dtype` holds the stored values exactly, e.g. bf16 stored, fp32 computed).
    """
    if getattr(model, ATTRIBUTE, None) is not None or next(model.parameters()).dtype == dtype:
        return model
    for module in [*adapter.layers(model), adapter.final_norm(model)]:
        _hook(module, dtype)
    head = model.get_output_embeddings()  # never converted whole: 1 GiB in fp32 for 128k x 2048
    setattr(head, ATTRIBUTE, dtype)
    head.forward = types.MethodType(_sliced_head_forward, head)  # a bound method: a deepcopy rebinds it
    if embeddings:
        model.get_input_embeddings().register_forward_hook(lambda mod, args, output: cast_floats(output, dtype))
    setattr(model, ATTRIBUTE, dtype)
    return model


def head_logits(head: nn.Linear, hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`head(hidden)` computed in `dtype`, its weight converted HEAD_SLICE_BYTES of vocabulary rows at a time."""
    weight, bias = head.weight, head.bias
    rows = max(1, HEAD_SLICE_BYTES // (weight.shape[1] * dtype.itemsize))
    hidden = hidden.to(dtype)
    out = hidden.new_empty(*hidden.shape[:-1], weight.shape[0])
    for first in range(0, weight.shape[0], rows):
        part = slice(first, first + rows)
        out[..., part] = F.linear(hidden, weight[part].to(dtype), None if bias is None else bias[part].to(dtype))
    return out


def _sliced_head_forward(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    return head_logits(head, hidden, getattr(head, ATTRIBUTE))


def loaded_dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype `model` was asked for in (`LOADED_AS`), else its parameters' dtype."""
    return getattr(model, LOADED_AS, None) or next(model.parameters()).dtype


def compute_dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype `model` computes in: the one `compute_in` set, else its parameters'."""
    return getattr(model, ATTRIBUTE, None) or next(model.parameters()).dtype


def _hook(module: nn.Module, dtype: torch.dtype) -> None:
    active: list = []

    def before(mod, args, kwargs):
        context = weights_in(mod, dtype)
        context.__enter__()
        active.append(context)
        return cast_floats(args, dtype), {k: cast_floats(v, dtype) for k, v in kwargs.items()}

    def after(mod, args, kwargs, output):
        if active:
            active.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(before, with_kwargs=True)
    module.register_forward_hook(after, with_kwargs=True, always_call=True)


def inference_slice(dense: PreTrainedModel, adapter: ModelAdapter, spec, replace: dict[str, torch.Tensor]
                    ) -> PreTrainedModel:
    """`adapter.slice(dense, spec, replace)` for inference: the dense embeddings, LM head and final norm are
    shared (not copied) and it computes in the dense model's compute dtype."""
    model = adapter.slice(dense, spec, replace, share_embeddings=True)
    bounded = getattr(dense, LOADED_AS, None)
    if bounded is not None:
        setattr(model, LOADED_AS, bounded)
        _dense_buffers(model, dense)
    return compute_in(model, adapter, compute_dtype_of(dense), embeddings=bounded is not None)


def _dense_buffers(model: nn.Module, dense: nn.Module) -> None:
    """Give `model` the dense model's buffers of the same name and shape (RoPE frequencies), which slicing made
    in the stored dtype of a bounded model's parameters."""
    source = dict(dense.named_buffers())
    for name, buffer in list(model.named_buffers()):
        same = source.get(name)
        if same is not None and same.shape == buffer.shape and same.dtype != buffer.dtype:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = same
