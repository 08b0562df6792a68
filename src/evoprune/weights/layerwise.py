"""Run calibration data through a model one decoder layer at a time.

The inputs of layer 0 are captured once; then each layer runs on all calibration batches with
the caller's hooks attached, and its outputs become the next layer's inputs. Each layer gets layer 0's
keyword arguments (positions, RoPE), with the attention mask of its own attention type where the model
mixes them (`LayerMasks`). Memory stays near one layer's activations for the whole calibration set,
which is what lets a second-order database be built for models far larger than the activations of a
full forward pass would allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from ..arch.adapter import ModelAdapter
from ..arch.hf.configuration_evoprune import NO_ATTENTION
from ..arch.hf.modeling_evoprune import CACHE_ARG, layer_type
from ..modes import eval_mode
from .compute_dtype import cast_floats


class _Captured(Exception):
    pass


@dataclass
class LayerInputs:
    """Per batch: the hidden states entering the current layer and the keyword arguments of the call."""

    hidden: list[torch.Tensor]  # each (batch, seq_len, hidden)
    kwargs: list[dict[str, Any]]  # attention_mask, position_embeddings, position_ids ...


class LayerMasks:
    """Per batch, the keyword arguments of a layer of a given attention type.

    Layer 0's are captured from the model's forward; a layer of another type (a Qwen2 hybrid's sliding
    layers after full ones, or any layer of a pruned model whose layer 0 lost its attention) gets the
    mask its decoder stack would make for that type, made as the stack makes it (and the RoPE of that
    type, where the model keeps one per type).
    """

    def __init__(self, model: PreTrainedModel, hidden: list[torch.Tensor], kwargs: list[dict[str, Any]],
                 first_type: str, dtype: torch.dtype):
        self.config, self.hidden, self.captured, self.first_type, self.dtype = (model.config, hidden, kwargs,
                                                                                 first_type, dtype)
        self.model = model
        self.made: dict[tuple[int, str], dict[str, Any]] = {}

    def kwargs(self, batch: int, attention_type: str) -> dict[str, Any]:
        if attention_type in (self.first_type, NO_ATTENTION):
            return self.captured[batch]
        if (batch, attention_type) not in self.made:
            make = create_sliding_window_causal_mask if attention_type == "sliding_attention" else create_causal_mask
            k = self.captured[batch]
            mask = make(config=self.config, inputs_embeds=self.hidden[batch], attention_mask=None,
                        position_ids=k.get("position_ids"), **{CACHE_ARG: None})
            self.made[batch, attention_type] = {**k, "attention_mask": cast_floats(mask, self.dtype)}
            rope = rope_of_type(self.model, self.hidden[batch], k.get("position_ids"), attention_type)
            if rope is not None:
                self.made[batch, attention_type]["position_embeddings"] = cast_floats(rope, self.dtype)
        return self.made[batch, attention_type]


def rope_of_type(model: PreTrainedModel, hidden: torch.Tensor, position_ids: torch.Tensor | None,
                 attention_type: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """RoPE (cos, sin) of `attention_type` where the model keeps one per type (Gemma-3: a local base for sliding
    layers), else None: layer 0's captured RoPE serves every layer."""
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if position_ids is None or attention_type not in getattr(rotary, "layer_types", ()):
        return None
    return rotary(hidden, position_ids, attention_type)


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
    positions and RoPE): the captured keyword arguments of layer 0 are replayed, with the attention
    mask of each layer's own attention type (`LayerMasks`).
    """
    with eval_mode(model):
        inputs = capture_first_layer_inputs(model, adapter, blocks, batch_size)
        masks = LayerMasks(model, list(inputs.hidden), inputs.kwargs, layer_type(model.config, 0),
                           inputs.hidden[0].dtype if inputs.hidden else torch.float32)
        for i, layer in enumerate(tqdm(adapter.layers(model), desc=desc, disable=not progress)):
            attention_type = layer_type(model.config, i)
            handles = attach(i, layer)
            try:
                outputs = []
                for j, hidden in enumerate(inputs.hidden):
                    out = layer(hidden, **masks.kwargs(j, attention_type))
                    outputs.append((out[0] if isinstance(out, tuple) else out).detach())
            finally:
                for h in handles:
                    h.remove()
            finish(i, layer)
            inputs.hidden = outputs
