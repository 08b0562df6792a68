"""Token blocks through a model one decoder layer at a time: every batch through layer i before layer i + 1.

A whole-model forward touches every layer's weights once per batch; for memory-mapped weights larger
than RAM that reads the whole file again for every batch. Here the blocks' hidden states
(n_blocks x seq_len x hidden, a few hundred MB even for an 8B model) go through the layers in order,
so each layer's weights are read (and converted to the compute dtype) once. Then the final norm and
the LM head finish batch by batch, a bounded number of positions at a time (`logprob_chunks`), so the
[batch, seq_len, vocab] logits never exist either.

The layers are the model's own (`own_layers`: a dense model, or a pruned checkpoint loaded from disk)
or the sliced layers of a sub-network of it (`sliced_layers`), built one at a time. Each layer gets
the keyword arguments layer 0 got in a forward pass of the model (masks, positions, RoPE), with the
attention mask of its own attention type (full or sliding window) where the model mixes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..arch.hf.modeling_evoprune import layer_type
from ..arch.spec import SubnetSpec
from ..modes import eval_mode
from ..weights.layerwise import LayerMasks, capture_first_layer_inputs
from ..weights.compute_dtype import cast_floats, compute_dtype_of, weights_in

LOGITS_CHUNK_BYTES = 128 * 2**20  # fp32 logits computed at once per chunk of positions

# head_fn(start, hidden, head): per-block values (float64 [b]) of blocks[start:start + b], from their
# final-normed hidden states [b, seq_len, hidden] and the LM head (weights in the compute dtype).
HeadFn = Callable[[int, torch.Tensor, nn.Module], torch.Tensor]


def own_layers(model: PreTrainedModel, adapter: ModelAdapter) -> Iterator[tuple[nn.Module, str]]:
    """The model's own decoder layers, each with its attention type."""
    for i, layer in enumerate(adapter.layers(model)):
        yield layer, layer_type(model.config, i)


def sliced_layers(dense: PreTrainedModel, adapter: ModelAdapter, spec: SubnetSpec,
                  replace: dict[str, torch.Tensor] | None, dtype: torch.dtype) -> Iterator[tuple[nn.Module, str]]:
    """The kept layers of `adapter.slice(dense, spec, replace)`, built one at a time in `dtype`, with their
    attention types (a sliced layer keeps its source layer's)."""
    layers = adapter.sliced_layers(dense, spec, replace, dtype)
    for source_index, layer in zip(spec.kept_layers(), layers):
        yield layer, layer_type(dense.config, source_index)


@torch.inference_mode()
def stream_blocks(model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor, batch_size: int,
                  head_fn: HeadFn, layers: Iterable[tuple[nn.Module, str]] | None = None,
                  dtype: torch.dtype | None = None, progress: bool = False) -> torch.Tensor:
    """Run `blocks` through the decoder layers one layer at a time, then `head_fn` on every batch.

    Args:
        model: supplies the embeddings, masks, RoPE, final norm and LM head (its weights are only read).
        adapter: the model's adapter.
        blocks: token ids [n_blocks, seq_len], already checked.
        batch_size: blocks per layer call.
        head_fn: per batch, the per-block values (see `HeadFn`).
        layers: (layer, attention type) in order (default: `own_layers(model, adapter)`); each runs in
            `dtype` with its weights converted once, and is dropped after it ran.
        dtype: the compute dtype (default: the model's, see `weights.compute_dtype`).
        progress: show a tqdm bar over the layers.

    Returns:
        float64 [n_blocks]: `head_fn`'s values, block by block.
    """
    dtype = dtype or compute_dtype_of(model)
    layers = own_layers(model, adapter) if layers is None else layers
    with eval_mode(model):
        inputs = capture_first_layer_inputs(model, adapter, blocks, batch_size)
        hidden = [h.to(dtype) for h in inputs.hidden]
        kwargs = [{name: cast_floats(v, dtype) for name, v in k.items()} for k in inputs.kwargs]
        masks = LayerMasks(model, hidden, kwargs, layer_type(model.config, 0), dtype)
        for layer, attention_type in tqdm(layers, desc="layers", disable=not progress):
            with weights_in(layer, dtype):
                for j, h in enumerate(hidden):
                    out = layer(h, **masks.kwargs(j, attention_type))
                    hidden[j] = out[0] if isinstance(out, tuple) else out
            del layer
        norm, head = adapter.final_norm(model), adapter.output_head(model)
        values = torch.zeros(len(blocks), dtype=torch.float64)
        start = 0
        with weights_in(norm, dtype), weights_in(head, dtype):  # converted once, not once per batch
            for h in hidden:
                values[start:start + len(h)] = head_fn(start, norm(h), head)
                start += len(h)
    return values


def logprob_chunks(hidden: torch.Tensor, head: nn.Module, positions: int,
                   chunk_bytes: int = LOGITS_CHUNK_BYTES) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The fp32 log-softmax of the LM head over the first `positions` positions, a chunk of positions at a time.

    Args:
        hidden: final-normed hidden states [b, seq_len, hidden].
        head: the LM head.
        positions: positions to cover, from 0.
        chunk_bytes: fp32 logits held at once (at least one position).

    Yields:
        (p, q, log-probs [b, q - p, vocab]) for consecutive p < q covering 0 .. positions.
    """
    b, vocab = hidden.shape[0], head.weight.shape[0]
    chunk = max(1, chunk_bytes // (4 * vocab * b))
    for p in range(0, positions, chunk):
        q = min(positions, p + chunk)
        yield p, q, torch.log_softmax(head(hidden[:, p:q]).float(), dim=-1)
