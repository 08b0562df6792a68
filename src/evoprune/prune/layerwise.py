"""Run calibration data through a model one decoder layer at a time.

The inputs of layer 0 are captured once; then each layer runs on all calibration batches with
the caller's hooks attached, and its outputs become the next layer's inputs. Memory stays near
one layer's activations for the whole calibration set, which is what lets a second-order
database be built for models far larger than the activations of a full forward pass would allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..modes import eval_mode


class _Captured(Exception):
    pass


@dataclass
class LayerInputs:
    """Per batch: the hidden states entering the current layer and the keyword arguments of the call."""

    hidden: list[torch.Tensor]  # each (batch, seq_len, hidden)
    kwargs: list[dict[str, Any]]  # attention_mask, position_embeddings, position_ids ...


@torch.inference_mode()
def capture_first_layer_inputs(model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor,
                               batch_size: int) -> LayerInputs:
    first = adapter.layers(model)[0]
    captured = LayerInputs([], [])

    def stop(module: nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(hidden.detach())
        captured.kwargs.append({k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values")})
        raise _Captured

    handle = first.register_forward_pre_hook(stop, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for start in range(0, len(blocks), batch_size):
            try:
                model(input_ids=blocks[start:start + batch_size].to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


@torch.inference_mode()
def run_layer_by_layer(model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor, batch_size: int,
                       attach: Callable[[int, nn.Module], list], finish: Callable[[int, nn.Module], None],
                       progress: bool = True, desc: str = "layers") -> None:
    """For each layer: `attach(i, layer)` returns hook handles, the layer runs on every batch, then `finish(i, layer)`.

    Hooks see the layer exactly as in a full forward pass of the dense model (same masks,
    positions and RoPE), because the captured keyword arguments of layer 0 are replayed.
    """
    with eval_mode(model):
        inputs = capture_first_layer_inputs(model, adapter, blocks, batch_size)
        for i, layer in enumerate(tqdm(adapter.layers(model), desc=desc, disable=not progress)):
            handles = attach(i, layer)
            try:
                outputs = []
                for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
                    out = layer(hidden, **kwargs)
                    outputs.append((out[0] if isinstance(out, tuple) else out).detach())
            finally:
                for h in handles:
                    h.remove()
            finish(i, layer)
            inputs.hidden = outputs
