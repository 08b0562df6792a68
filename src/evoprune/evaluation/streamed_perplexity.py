"""Next-token NLL and perplexity computed layer by layer, for models whose weights do not fit in RAM.

`evaluation.perplexity.mean_nll` runs the whole model per batch, which reads every layer's weights
once per batch. Here every batch goes through layer i before layer i + 1 (`streamed_layers`), so each
layer is read once, and the LM head's log-softmax is taken over chunks of positions, so full
[batch, seq_len, vocab] logits never exist. The result equals `mean_nll` to float rounding (tested).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter, adapter_for
from ..arch.spec import SubnetSpec
from ..weights.compute_dtype import compute_dtype_of
from .blocks import check_batch_size, check_blocks, check_vocab
from .streamed_layers import LOGITS_CHUNK_BYTES, logprob_chunks, sliced_layers, stream_blocks

log = logging.getLogger(__name__)


def streamed_mean_nll(model: PreTrainedModel, blocks: torch.Tensor, batch_size: int = 4,
                      adapter: ModelAdapter | None = None, spec: SubnetSpec | None = None,
                      replace: dict[str, torch.Tensor] | None = None, compute_dtype: torch.dtype | None = None,
                      chunk_bytes: int = LOGITS_CHUNK_BYTES, progress: bool = False) -> float:
    """Token-weighted mean next-token NLL in nats, as `mean_nll`, computed one decoder layer at a time.

    Args:
        model: a causal LM of a supported family: a dense model, an unpruned stock model or a pruned
            checkpoint loaded from disk (its own layers run), or with `spec` the dense source of a sub-network.
        blocks: token ids, shape [n_blocks, seq_len].
        batch_size: blocks per layer call.
        adapter: the model's adapter (default: looked up from its config).
        spec: measure the sub-network `adapter.slice(model, spec, replace)` without building it
            (the hidden size must be kept); None measures `model` itself.
        replace: with `spec`, source parameter name -> tensor in the sliced shape.
        compute_dtype: dtype the layers run in (default: the model's compute dtype).
        chunk_bytes: fp32 logits held at once per chunk of positions.
        progress: show a tqdm bar over the layers.

    Returns:
        sum of -log p(token | prefix) over all predicted tokens divided by n_blocks * (seq_len - 1).
    """
    blocks = check_blocks(blocks)
    check_batch_size(batch_size)
    check_vocab(model, blocks)
    adapter = adapter or adapter_for(model.config)
    dtype = compute_dtype or compute_dtype_of(model)
    positions = blocks.shape[1] - 1

    def head_nll_sums(start: int, hidden: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """Per block of `hidden` ([b, seq, hidden], after the final norm): the summed NLL of its next tokens."""
        targets = blocks[start:start + len(hidden), 1:].to(hidden.device)  # (b, P)
        sums = torch.zeros(len(hidden), dtype=torch.float64)
        for p, q, logprobs in logprob_chunks(hidden, head, positions, chunk_bytes):
            picked = logprobs.gather(-1, targets[:, p:q, None]).squeeze(-1)  # (b, q - p)
            sums -= picked.double().sum(dim=-1).cpu()
        return sums

    layers = None if spec is None else sliced_layers(model, adapter, spec, replace, dtype)
    block_sums = stream_blocks(model, adapter, blocks, batch_size, head_nll_sums, layers, dtype, progress)
    result = float(block_sums.sum()) / (len(blocks) * positions)
    log.debug("mean NLL %.5f nats over %d tokens, layer by layer", result, len(blocks) * positions)
    return result


def streamed_perplexity(model: PreTrainedModel, blocks: torch.Tensor, batch_size: int = 4, **kwargs) -> float:
    """exp(`streamed_mean_nll`): the perplexity of `model` (or of its sub-network `spec`) on `blocks`."""
    return math.exp(streamed_mean_nll(model, blocks, batch_size, **kwargs))
