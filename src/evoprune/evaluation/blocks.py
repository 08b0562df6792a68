"""Shared plumbing for evaluating a causal LM on token blocks: checks, batching, eval mode, log-probs."""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from ..weights.compute_dtype import compute_dtype_of, head_logits
from ..weights.final_hidden import final_hidden
from .streamed_layers import LOGITS_CHUNK_BYTES
from ..modes import eval_mode  # noqa: F401  (re-exported for the evaluate modules)


def check_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Validate token blocks and return them as a contiguous int64 CPU tensor.

    Args:
        blocks: token ids, shape [n_blocks, seq_len], integer dtype, no padding.

    Raises:
        UserError: if `blocks` is not a non-empty 2-D integer tensor with seq_len >= 2 and ids >= 0.
    """
    if not isinstance(blocks, torch.Tensor):
        raise UserError(f"token blocks must be a torch.LongTensor [n_blocks, seq_len], got {type(blocks).__name__}")
    if blocks.dtype.is_floating_point or blocks.dtype.is_complex or blocks.dtype == torch.bool:
        raise UserError(f"token blocks must hold integer token ids, got dtype {blocks.dtype}; pass a LongTensor")
    if blocks.dim() != 2 or blocks.shape[0] < 1 or blocks.shape[1] < 2:
        raise UserError(f"token blocks must have shape [n_blocks >= 1, seq_len >= 2], got {list(blocks.shape)}")
    if int(blocks.min()) < 0:
        raise UserError("token blocks contain negative token ids; they must be produced by the model's tokenizer")
    return blocks.detach().to("cpu", torch.int64).contiguous()


def check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")


def check_vocab(model: nn.Module, blocks: torch.Tensor) -> None:
    """Refuse token ids that the model's input embedding has no row for."""
    try:
        n_embeddings = model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):
        return
    top = int(blocks.max())
    if top >= n_embeddings:
        raise UserError(f"token id {top} is outside the model's vocabulary of {n_embeddings}; "
                        "tokenize the data with this model's tokenizer")


def fingerprint(blocks: torch.Tensor) -> str:
    """sha256 hex digest of the blocks' int64 bytes (shape is checked separately)."""
    return hashlib.sha256(check_blocks(blocks).numpy().tobytes()).hexdigest()


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.float32


def batches(blocks: torch.Tensor, batch_size: int, device: torch.device, progress: bool,
            desc: str) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield `(first_block_index, batch)` with batch of shape [<= batch_size, seq_len] on `device`."""
    with tqdm(total=len(blocks), desc=desc, unit="block", disable=not progress) as bar:
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start:start + batch_size]
            yield start, batch.to(device)
            bar.update(len(batch))


def next_token_logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """fp32 logits at the positions that predict a next token inside the block.

    Args:
        batch: token ids, shape [batch, seq_len].

    Returns:
        logits of shape [batch, seq_len - 1, vocab] in float32.
    """
    logits = model(input_ids=batch, use_cache=False).logits
    return logits[:, :-1].float()


def next_token_logit_chunks(model: nn.Module, batch: torch.Tensor, chunk_bytes: int = LOGITS_CHUNK_BYTES
                            ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """`next_token_logits` a chunk of positions at a time, so the [batch, seq_len, vocab] logits never exist.

    The layers run once (`final_hidden`); the LM head, in the model's compute dtype and converted a slice of
    rows at a time (`head_logits`), then runs on at most `chunk_bytes` of fp32 logits at a time. A model of no supported family (no adapter) gives its
    logits in one chunk.

    Yields:
        (p, q, fp32 logits [batch, q - p, vocab]) for consecutive p < q covering 0 .. seq_len - 1.
    """
    positions = batch.shape[1] - 1
    hidden = final_hidden(model, batch) if hasattr(model, "get_output_embeddings") else None
    if hidden is None:
        yield 0, positions, next_token_logits(model, batch)
        return
    head, dtype = model.get_output_embeddings(), compute_dtype_of(model)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)  # Gemma-2: as its forward does
    chunk = max(1, chunk_bytes // (4 * head.weight.shape[0] * len(batch)))
    for p in range(0, positions, chunk):
        q = min(positions, p + chunk)
        logits = head_logits(head, hidden[:, p:q], dtype).float()
        yield p, q, torch.tanh(logits / cap) * cap if cap else logits


def next_token_logprob_chunks(model: nn.Module, batch: torch.Tensor, chunk_bytes: int = LOGITS_CHUNK_BYTES
                              ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(p, q, fp32 log-softmax of `next_token_logit_chunks`' logits [batch, q - p, vocab])."""
    for p, q, logits in next_token_logit_chunks(model, batch, chunk_bytes):
        yield p, q, torch.log_softmax(logits, dim=-1)


def next_token_logprobs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax of `next_token_logits`, shape [batch, seq_len - 1, vocab]."""
    return torch.log_softmax(next_token_logits(model, batch), dim=-1)
