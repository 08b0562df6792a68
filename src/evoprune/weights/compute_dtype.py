"""Run a model stored in one dtype in another, one module at a time.

A bf16 checkpoint on a CPU without bf16 matrix units runs many times slower in bf16 than in fp32,
but converting the whole model to fp32 doubles its memory (32 GB for an 8B model). Instead each
decoder layer, the final norm and the LM head get their weights converted when they run and
dropped right after: at most one converted module exists at a time, and the stored weights
(memory-mapped, see `weights.mapped`) are never copied whole.

For inference only: a model that trains must hold its weights in the dtype it computes in.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter

ATTRIBUTE = "evoprune_compute_dtype"  # set on a model whose modules run in another dtype


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


def compute_in(model: PreTrainedModel, adapter: ModelAdapter, dtype: torch.dtype) -> PreTrainedModel:
    """Make every decoder layer, the final norm and the LM head of `model` run in `dtype` (hooks; in place).

    Inputs of these modules are cast to `dtype` too, so hidden states flow in `dtype` from the first
    layer on. A no-op when the model is stored in `dtype` already.
    """
    if getattr(model, ATTRIBUTE, None) is not None or next(model.parameters()).dtype == dtype:
        return model
    for module in [*adapter.layers(model), adapter.final_norm(model), model.get_output_embeddings()]:
        _hook(module, dtype)
    setattr(model, ATTRIBUTE, dtype)
    return model


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
    return compute_in(model, adapter, compute_dtype_of(dense))
