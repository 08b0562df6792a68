"""Tokenize documents and pack them into fixed-length blocks of token ids."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import chain

import torch

log = logging.getLogger(__name__)

TOKENIZE_BATCH = 256


@dataclass(frozen=True)
class PackedSplit:
    """One split of a source, tokenized and packed.

    Attributes:
        blocks: `[n, seq_len]` token ids; the documents joined by a separator token, cut into
            consecutive blocks, the incomplete tail dropped.
        split: `calibration`, `train` or `eval`.
        seq_len: tokens per block.
        documents: documents in the split.
        tokens: tokens in the split including separators, before the tail was dropped.
    """

    blocks: torch.Tensor
    split: str
    seq_len: int
    documents: int
    tokens: int

    @property
    def dropped_tokens(self) -> int:
        return self.tokens - self.blocks.numel()


def separator_id(tokenizer) -> int | None:
    """The token put after every document: EOS, else BOS, else none (with a warning)."""
    for name in ("eos_token_id", "bos_token_id"):
        token = getattr(tokenizer, name, None)
        if isinstance(token, int):
            return token
    log.warning("tokenizer has neither EOS nor BOS token; documents are packed without a separator")
    return None


def tokenize_documents(tokenizer, documents: list[str]) -> list[list[int]]:
    """Token ids of each document, without special tokens."""
    ids: list[list[int]] = []
    for start in range(0, len(documents), TOKENIZE_BATCH):
        batch = documents[start:start + TOKENIZE_BATCH]
        ids.extend(tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"])
    return ids


def pack_documents(tokenizer, documents: list[str], split: str, seq_len: int) -> PackedSplit:
    """Tokenize `documents`, append the separator to each, concatenate and cut into blocks."""
    separator = separator_id(tokenizer)
    tail = [separator] if separator is not None else []
    stream = torch.tensor(list(chain.from_iterable(ids + tail for ids in tokenize_documents(tokenizer, documents))),
                          dtype=torch.long)
    n_blocks = stream.numel() // seq_len
    blocks = stream[: n_blocks * seq_len].reshape(n_blocks, seq_len).clone()
    return PackedSplit(blocks, split, seq_len, len(documents), stream.numel())
