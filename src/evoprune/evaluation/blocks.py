"""Shared plumbing for evaluating a causal LM on token blocks: checks, batching, eval mode, log-probs."""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
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


def next_token_logprobs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax of `next_token_logits`, shape [batch, seq_len - 1, vocab]."""
    return torch.log_softmax(next_token_logits(model, batch), dim=-1)
