"""Run any SubnetSpec of a model inside the model itself: masks through forward hooks, no copies.

A supernet step trains many sub-networks on one set of shared weights, so a sub-network here is
a view: the same forward as the physically sliced model (logits equal, tested), computed in the
full-size model with removed units zeroed.

- Query heads / KV groups: the input columns of the attention output projection are masked per
  head; a removed KV group takes its query heads with it, so its K/V never reach the output.
- MLP neurons: the input of the MLP output projection is masked.
- A removed attention or MLP block contributes zero to the residual stream; a layer without
  either passes its input through unchanged.
- Hidden channels: embeddings and every block's output are masked, so removed channels of the
  residual stream stay zero; every RMSNorm divides by the number of kept channels instead of
  the full width, which is exactly what the sliced model's smaller norm computes.

Written for the Llama family (input_layernorm / post_attention_layernorm / model.norm,
RMSNorm with `variance_epsilon`).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ...arch.adapter import ModelAdapter
from ...arch.spec import SubnetSpec


class MaskedSubnet:
    """Hooks installed once on `model`; `use(spec)` selects the sub-network the next forwards run."""

    def __init__(self, model: PreTrainedModel, adapter: ModelAdapter):
        self.model, self.adapter = model, adapter
        self.shape = adapter.shape(model)
        self.spec: SubnetSpec | None = None
        self._head_masks: list[torch.Tensor | None] = []
        self._neuron_masks: list[torch.Tensor | None] = []
        self._hidden: torch.Tensor | None = None
        self._kept_channels = self.shape.hidden_size
        self._handles: list = []
        self._install()

    # ---- choosing a sub-network ------------------------------------------------------------------
    def use(self, spec: SubnetSpec | None) -> None:
        """Run `spec` from now on (None: the full model)."""
        if spec is not None:
            spec.validate(self.shape)
        self.spec = spec
        param = next(self.model.parameters())
        hd = self.shape.head_dim
        self._head_masks, self._neuron_masks = [], []
        for i, layer in enumerate(self.shape.layers):
            if spec is None:
                self._head_masks.append(None)
                self._neuron_masks.append(None)
                continue
            ls = spec.layers[i]
            heads = torch.zeros(layer.num_heads, dtype=param.dtype, device=param.device)
            heads[ls.heads] = 1
            self._head_masks.append(heads.repeat_interleave(hd))
            neurons = torch.zeros(layer.intermediate_size, dtype=param.dtype, device=param.device)
            neurons[ls.neurons] = 1
            self._neuron_masks.append(neurons)
        if spec is None or spec.hidden is None:
            self._hidden, self._kept_channels = None, self.shape.hidden_size
        else:
            self._hidden = torch.zeros(self.shape.hidden_size, dtype=param.dtype, device=param.device)
            self._hidden[spec.hidden] = 1
            self._kept_channels = len(spec.hidden)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ---- hooks -----------------------------------------------------------------------------------
    def _install(self) -> None:
        add = self._handles.append
        add(self.model.get_input_embeddings().register_forward_hook(self._mask_hidden_output))
        add(self.model.model.norm.register_forward_hook(self._renormalise))
        for i, layer in enumerate(self.adapter.layers(self.model)):
            add(layer.input_layernorm.register_forward_hook(self._renormalise))
            add(layer.post_attention_layernorm.register_forward_hook(self._renormalise))
            add(self.adapter.attention_output(layer).register_forward_pre_hook(self._input_mask(i, "heads")))
            add(self.adapter.mlp_output(layer).register_forward_pre_hook(self._input_mask(i, "neurons")))
            add(self.adapter.attention(layer).register_forward_hook(self._block_output(i, "attention")))
            add(self.adapter.mlp(layer).register_forward_hook(self._block_output(i, "mlp")))

    def _mask_hidden_output(self, module, inputs, output):
        return output if self._hidden is None else output * self._hidden

    def _renormalise(self, module, inputs, output):
        if self._hidden is None:
            return output
        x = inputs[0]
        dtype = x.dtype
        x = x.to(torch.float32) * self._hidden.to(torch.float32)
        variance = x.pow(2).sum(-1, keepdim=True) / self._kept_channels
        normed = x * torch.rsqrt(variance + module.variance_epsilon)
        return module.weight * normed.to(dtype) * self._hidden

    def _input_mask(self, layer: int, kind: str):
        def hook(module, inputs):
            masks = self._head_masks if kind == "heads" else self._neuron_masks
            mask = masks[layer] if masks else None
            return None if mask is None else (inputs[0] * mask,) + tuple(inputs[1:])
        return hook

    def _block_output(self, layer: int, kind: str):
        def hook(module, inputs, output):
            if self.spec is None:
                return output
            ls = self.spec.layers[layer]
            keep = ls.has_attention if kind == "attention" else ls.has_mlp
            first = output[0] if isinstance(output, tuple) else output
            first = first * self._hidden if (keep and self._hidden is not None) else first
            if not keep:
                first = torch.zeros_like(first)
            return (first,) + tuple(output[1:]) if isinstance(output, tuple) else first
        return hook
