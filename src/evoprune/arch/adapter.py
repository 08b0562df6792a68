"""Model adapters: what the rest of evoprune needs to know about one architecture family.

Algorithms (importance, OBS, search) talk to models only through an adapter, so supporting a
new family (GPT-2, GPT-NeoX, Phi ...) means writing one more adapter and registering it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import UserError
from .shape import ModelShape
from .spec import SubnetSpec


class ModelAdapter(ABC):
    """Names the prunable parts of one architecture family and builds pruned models."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.model_type values this adapter handles
    block_outputs_normalized: ClassVar[bool] = False  # a norm sits between o_proj / down_proj and the residual add
    prunes_hidden: ClassVar[bool] = True  # whether `slice` can remove hidden channels

    def matches(self, config: PretrainedConfig) -> bool:
        return config.model_type in self.model_types

    @abstractmethod
    def shape(self, model: PreTrainedModel) -> ModelShape:
        """Read the exact shape of `model` (per-layer heads, KV groups, neurons, biases ...)."""

    @abstractmethod
    def layers(self, model: PreTrainedModel) -> list[nn.Module]:
        """The decoder layers, in order."""

    @abstractmethod
    def attention(self, layer: nn.Module) -> nn.Module | None:
        """The attention block of a layer (None when the layer has none)."""

    @abstractmethod
    def mlp(self, layer: nn.Module) -> nn.Module | None:
        """The MLP block of a layer (None when the layer has none)."""

    @abstractmethod
    def attention_output(self, layer: nn.Module) -> nn.Linear:
        """The projection whose input columns are the attention heads (o_proj)."""

    @abstractmethod
    def mlp_output(self, layer: nn.Module) -> nn.Linear:
        """The projection whose input columns are the MLP neurons (down_proj)."""

    @abstractmethod
    def slice(self, model: PreTrainedModel, spec: SubnetSpec,
              replace: dict[str, "torch.Tensor"] | None = None, share_embeddings: bool = False) -> PreTrainedModel:
        """Build the physically smaller model that keeps exactly what `spec` lists.

        `replace` maps source parameter names (e.g. `model.layers.3.mlp.down_proj.weight`) to
        tensors already in the sliced shape, used instead of the sliced source weights (the
        second-order database's compensated output projections). With `share_embeddings` (and the
        hidden size kept), the embeddings, LM head and final norm are the dense model's own tensors,
        not copies: treat them as read-only.
        """

    @abstractmethod
    def sliced_layers(self, model: PreTrainedModel, spec: SubnetSpec, replace: dict[str, "torch.Tensor"] | None = None,
                      dtype: "torch.dtype | None" = None) -> "Iterator[nn.Module]":
        """The kept decoder layers of `slice(model, spec, replace)`, built one at a time (in `dtype`), so that a
        caller running them in order never holds more than one sliced layer; the hidden size must be kept."""

    @abstractmethod
    def parameter_name(self, layer: int, part: str) -> str:
        """Source parameter name of `part` ("attention_output" or "mlp_output") in layer `layer`."""

    @abstractmethod
    def final_norm(self, model: PreTrainedModel) -> nn.Module:
        """The normalization between the last decoder layer and the LM head."""

    def output_head(self, model: PreTrainedModel) -> nn.Module:
        """Final-normed hidden states -> logits, exactly as the model's forward computes them (LM head, soft-cap)."""
        return model.get_output_embeddings()

    @abstractmethod
    def position_embeddings(self, model: PreTrainedModel, hidden: torch.Tensor, position_ids: torch.Tensor) -> object:
        """What an attention block takes as `position_embeddings` (RoPE cos/sin), to run one block alone."""


_REGISTRY: list[ModelAdapter] = []


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    _REGISTRY.append(adapter)
    return adapter


def registered_adapters() -> list[ModelAdapter]:
    _load_builtin()
    return list(_REGISTRY)


def supported_model_types() -> list[str]:
    _load_builtin()
    return sorted(t for a in _REGISTRY for t in a.model_types if not t.startswith("evoprune_"))


def can_prune_hidden(family: str) -> bool:
    """Whether models of `family` (a ModelShape's family, e.g. "gemma2") can lose hidden channels."""
    _load_builtin()
    return all(a.prunes_hidden for a in _REGISTRY if family in a.model_types)


def adapter_for(config: PretrainedConfig) -> ModelAdapter:
    """The adapter for `config`, or a UserError naming the supported architectures."""
    _load_builtin()
    for adapter in _REGISTRY:
        if adapter.matches(config):
            return adapter
    classes = f" ({', '.join(config.architectures)})" if config.architectures else ""
    raise UserError(
        f"unsupported architecture {config.model_type!r}{classes}; "
        f"supported: {', '.join(supported_model_types())}; pass a model of one of these families"
    )


def _load_builtin() -> None:
    """Import every built-in adapter module (each registers itself once, on import), whichever was imported first."""
    from . import gemma, llama, olmo2, phi3  # noqa: F401
