"""The tensors of a deci GGUF file: names, shapes and how to produce each from the HF checkpoint.

Tensors are listed with their shapes first (read from the safetensors headers) and loaded one at a
time only when written, so exporting never holds more than one weight matrix in memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import torch
from safetensors import safe_open

from ..errors import UserError
from .gguf_layout import DeciLayer, DeciLayout

T = gguf.MODEL_TENSOR

# HF parameter name inside a decoder layer -> (GGUF tensor, block it belongs to)
LAYER_TENSORS = {
    "input_layernorm": (T.ATTN_NORM, "attention"),
    "self_attn.q_proj": (T.ATTN_Q, "attention"),
    "self_attn.k_proj": (T.ATTN_K, "attention"),
    "self_attn.v_proj": (T.ATTN_V, "attention"),
    "self_attn.o_proj": (T.ATTN_OUT, "attention"),
    "post_attention_layernorm": (T.FFN_NORM, "mlp"),
    "mlp.gate_proj": (T.FFN_GATE, "mlp"),
    "mlp.up_proj": (T.FFN_UP, "mlp"),
    "mlp.down_proj": (T.FFN_DOWN, "mlp"),
}


@dataclass(frozen=True)
class GgufTensor:
    """One tensor to write: values come from `load()` as float32, already in GGUF row order."""

    name: str  # GGUF name, e.g. "blk.3.ffn_down.weight"
    shape: tuple[int, ...]  # row-major (numpy) shape, i.e. (out, in) for a projection
    load: Callable[[], torch.Tensor]
    layer: int | None = None  # GGUF layer index (None for embeddings, final norm, rope factors)
    stand_in: bool = False  # an all-zero block written in place of a missing one

    @property
    def kind(self) -> str:
        """The tensor's role without layer and suffix, e.g. "ffn_down"."""
        return self.name.split(".")[-2]


def gguf_name(tensor: gguf.MODEL_TENSOR, layer: int | None = None, suffix: str = "weight") -> str:
    base = gguf.TENSOR_NAMES[tensor]
    return f"{base.format(bid=layer) if layer is not None else base}.{suffix}"


def rope_interleave(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection (weight or bias) from HF's RoPE layout to llama.cpp's.

    HF rotates dimension `i` of each head together with `i + head_dim/2` (rotate-half); llama.cpp's
    "normal" RoPE rotates `2i` with `2i + 1`. So row `i` of a head moves to `2i` and row `i + head_dim/2`
    to `2i + 1`. `t` is (n_heads * head_dim, ...); the result has the same shape.
    """
    half = t.shape[0] // n_heads // 2
    return t.reshape(n_heads, 2, half, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


class CheckpointWeights(contextlib.AbstractContextManager):
    """Lazy access to every tensor of a folder's safetensors files, by name."""

    def __init__(self, folder: Path):
        self._stack = contextlib.ExitStack()
        self._files: dict[str, object] = {}
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise UserError(f"{folder} has no *.safetensors weights; GGUF export reads safetensors only")
        for file in files:
            handle = self._stack.enter_context(safe_open(file, framework="pt"))
            self._files.update(dict.fromkeys(handle.keys(), handle))

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name).to(torch.float32)

    def _handle(self, name: str):
        if name not in self._files:
            raise UserError(f"the checkpoint lacks tensor {name!r} that its config.json implies")
        return self._files[name]


def tensor_plan(layout: DeciLayout, weights: CheckpointWeights, rope_freqs: torch.Tensor | None) -> list[GgufTensor]:
    """Every tensor of the GGUF file, in writing order."""
    plan = [_copy(weights, "model.embed_tokens.weight", gguf_name(T.TOKEN_EMBD))]
    if rope_freqs is not None:
        plan.append(GgufTensor(gguf_name(T.ROPE_FREQS), tuple(rope_freqs.shape), lambda: rope_freqs))
    for index, layer in enumerate(layout.layers):
        plan += _layer_tensors(layout, weights, index, layer)
    plan.append(_copy(weights, "model.norm.weight", gguf_name(T.OUTPUT_NORM)))
    if not layout.tied_embeddings:
        plan.append(_copy(weights, "lm_head.weight", gguf_name(T.OUTPUT)))
    return plan


def _layer_tensors(layout: DeciLayout, weights: CheckpointWeights, index: int, layer: DeciLayer) -> list[GgufTensor]:
    prefix = f"model.layers.{layer.source}."
    out = []
    for hf_name, (tensor, block) in LAYER_TENSORS.items():
        if not (layer.has_attention if block == "attention" else layer.has_mlp):
            continue
        for suffix in ("weight", "bias"):
            source = f"{prefix}{hf_name}.{suffix}"
            if suffix == "bias" and source not in weights:
                continue
            heads = {T.ATTN_Q: layer.n_head, T.ATTN_K: layer.n_head_kv}.get(tensor)
            out.append(_copy(weights, source, gguf_name(tensor, index, suffix), index, heads))
    if layer.attention_stand_in:
        out += _stand_in(index, layout.hidden_size, {T.ATTN_NORM: None, T.ATTN_OUT: (layout.hidden_size,
                                                                                    layout.hidden_size)})
    if layer.mlp_stand_in:
        h = layout.hidden_size
        out += _stand_in(index, h, {T.FFN_NORM: None, T.FFN_GATE: (1, h), T.FFN_UP: (1, h), T.FFN_DOWN: (h, 1)})
    return out


def _copy(weights: CheckpointWeights, source: str, name: str, layer: int | None = None,
          rope_heads: int | None = None) -> GgufTensor:
    def load() -> torch.Tensor:
        t = weights.get(source)
        return rope_interleave(t, rope_heads) if rope_heads else t

    return GgufTensor(name, weights.shape(source), load, layer)


def _stand_in(index: int, hidden: int, tensors: dict) -> list[GgufTensor]:
    """Norms of ones and all-zero matrices: a block that adds exactly zero to the residual stream."""
    out = []
    for tensor, shape in tensors.items():
        if shape is None:  # the block's RMSNorm weight
            out.append(GgufTensor(gguf_name(tensor, index), (hidden,), lambda: torch.ones(hidden), index, True))
        else:
            out.append(GgufTensor(gguf_name(tensor, index), shape, lambda s=shape: torch.zeros(s), index, True))
    return out
