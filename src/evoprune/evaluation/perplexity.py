"""Next-token negative log-likelihood and perplexity of a causal LM on token blocks."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from .blocks import (batches, check_batch_size, check_blocks, check_vocab, eval_mode, model_device,
                     next_token_logprob_chunks)
from .streamed_perplexity import streamed_mean_nll

log = logging.getLogger(__name__)


def mean_nll(model: nn.Module, blocks: torch.Tensor, batch_size: int = 4, progress: bool = False,
             streamed: bool = False) -> float:
    """Token-weighted mean next-token negative log-likelihood, in nats.

    Every block of length L contributes its L - 1 next-token predictions (the first token is only
    context). Log-probabilities are computed in float32 from the logits, one batch at a time.

    Args:
        model: a causal LM; only `model(input_ids=..., use_cache=False).logits` is used, unless `streamed`.
        blocks: token ids, shape [n_blocks, seq_len].
        batch_size: blocks per forward pass.
        progress: show a tqdm bar.
        streamed: run all batches through one decoder layer before the next (`streamed_mean_nll`, for
            weights larger than RAM; the model must be of a supported family); same result to float rounding.

    Returns:
        sum of -log p(token | prefix) over all predicted tokens divided by n_blocks * (seq_len - 1).
    """
    if streamed:
        return streamed_mean_nll(model, blocks, batch_size, progress=progress)
    result = float(block_nlls(model, blocks, batch_size, progress).mean())
    log.debug("mean NLL %.5f nats over %d blocks", result, len(blocks))
    return result


def block_nlls(model: nn.Module, blocks: torch.Tensor, batch_size: int = 4, progress: bool = False) -> torch.Tensor:
    """Each block's mean next-token NLL in nats, float64 [n_blocks] (their mean is `mean_nll`)."""
    blocks = check_blocks(blocks)
    check_batch_size(batch_size)
    check_vocab(model, blocks)
    device = model_device(model)
    out = torch.zeros(len(blocks), dtype=torch.float64)
    with eval_mode(model), torch.inference_mode():
        for start, batch in batches(blocks, batch_size, device, progress, desc="perplexity"):
            nll = torch.empty(len(batch), batch.shape[1] - 1)
            for p, q, logprobs in next_token_logprob_chunks(model, batch):
                nll[:, p:q] = -logprobs.gather(-1, batch[:, p + 1:q + 1, None]).squeeze(-1).cpu()
            out[start:start + len(batch)] = nll.double().mean(dim=-1)
    return out


def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 4, progress: bool = False,
               streamed: bool = False) -> float:
    """exp(`mean_nll`): the perplexity of `model` on `blocks`."""
    return math.exp(mean_nll(model, blocks, batch_size=batch_size, progress=progress, streamed=streamed))
