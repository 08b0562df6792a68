"""Activation statistics gathered on calibration tokens, used by importance scores.

One pass over the calibration blocks with forward hooks. Per layer it keeps:
- the second-moment matrix of each query head's input to o_proj, `(heads, hd, hd)`,
- the second moment of each MLP neuron's input to down_proj, `(neurons,)`,
- the mean cosine similarity between the layer's input and output hidden states (ShortGPT),
- the mean square of each hidden channel at the layer input (for hidden-size pruning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..modes import eval_mode
from ..weights.final_hidden import final_hidden


@dataclass
class LayerStats:
    head_moments: torch.Tensor | None = None  # (heads, hd, hd) sum of x_h x_hᵀ over tokens
    neuron_moments: torch.Tensor | None = None  # (neurons,) sum of x_j² over tokens
    hidden_moments: torch.Tensor | None = None  # (hidden,) sum of h_c² over tokens at the layer input
    cosine_sum: float = 0.0  # sum over tokens of cos(layer input, layer output)
    tokens: int = 0


@dataclass
class CalibrationStats:
    layers: list[LayerStats] = field(default_factory=list)
    tokens: int = 0

    def head_energy(self, adapter: ModelAdapter, model: PreTrainedModel) -> list[torch.Tensor]:
        """Mean squared norm of each query head's contribution to the layer output, per layer.

        E‖W_h x_h‖² = tr(W_h E[x_h x_hᵀ] W_hᵀ), with W_h the o_proj columns of head h.
        """
        out = []
        for layer, st in zip(adapter.layers(model), self.layers):
            if st.head_moments is None:
                out.append(torch.zeros(0))
                continue
            w = adapter.attention_output(layer).weight.detach().float()  # (d, heads*hd)
            heads, hd, _ = st.head_moments.shape
            w_h = w.reshape(w.shape[0], heads, hd).permute(1, 0, 2)  # (heads, d, hd)
            sigma = st.head_moments / max(st.tokens, 1)
            out.append(torch.einsum("hdi,hij,hdj->h", w_h, sigma, w_h))
        return out

    def neuron_energy(self, adapter: ModelAdapter, model: PreTrainedModel) -> list[torch.Tensor]:
        """Mean squared norm of each MLP neuron's contribution: ‖W_down[:, j]‖² E[x_j²]."""
        out = []
        for layer, st in zip(adapter.layers(model), self.layers):
            if st.neuron_moments is None:
                out.append(torch.zeros(0))
                continue
            w = adapter.mlp_output(layer).weight.detach().float()
            out.append(w.pow(2).sum(0) * st.neuron_moments / max(st.tokens, 1))
        return out

    def block_influence(self) -> list[float]:
        """ShortGPT block influence, 1 − E[cos(input, output)] per layer: low means removable."""
        return [1.0 - st.cosine_sum / max(st.tokens, 1) for st in self.layers]


@torch.inference_mode()
def collect_stats(model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor, batch_size: int = 4,
                  progress: bool = True) -> CalibrationStats:
    """Run `blocks` (LongTensor [n, seq_len]) through `model` and gather CalibrationStats."""
    head_dim = adapter.shape(model).head_dim
    layers = adapter.layers(model)
    stats = CalibrationStats([LayerStats() for _ in layers])
    handles = []

    def on_attention_input(st: LayerStats):
        def hook(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, heads*hd)
            x = x.reshape(x.shape[0], -1, head_dim).transpose(0, 1)  # (heads, tokens, hd)
            m = x.transpose(1, 2) @ x
            st.head_moments = m if st.head_moments is None else st.head_moments + m
        return hook

    def on_mlp_input(st: LayerStats):
        def hook(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            m = x.pow(2).sum(0)
            st.neuron_moments = m if st.neuron_moments is None else st.neuron_moments + m
        return hook

    def on_layer(st: LayerStats):
        def hook(module, args, kwargs, output):
            x_in = (args[0] if args else kwargs["hidden_states"]).detach().float()
            x_out = (output[0] if isinstance(output, tuple) else output).detach().float()
            x_in, x_out = x_in.reshape(-1, x_in.shape[-1]), x_out.reshape(-1, x_out.shape[-1])
            st.cosine_sum += torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1).sum().item()
            m = x_in.pow(2).sum(0)
            st.hidden_moments = m if st.hidden_moments is None else st.hidden_moments + m
            st.tokens += x_in.shape[0]
        return hook

    try:
        for layer, st in zip(layers, stats.layers):
            if adapter.attention(layer) is not None:
                handles.append(adapter.attention_output(layer).register_forward_pre_hook(on_attention_input(st)))
            if adapter.mlp(layer) is not None:
                handles.append(adapter.mlp_output(layer).register_forward_pre_hook(on_mlp_input(st)))
            handles.append(layer.register_forward_hook(on_layer(st), with_kwargs=True))
        device = next(model.parameters()).device
        with eval_mode(model):
            for start in tqdm(range(0, len(blocks), batch_size), desc="calibration", disable=not progress):
                batch = blocks[start:start + batch_size].to(device)
                if final_hidden(model, batch) is None:  # the hooks see every layer; the logits are not needed
                    model(input_ids=batch, use_cache=False)
                stats.tokens += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return stats
