"""One split of a text source as packed token blocks, built once and then read from the cache."""

from __future__ import annotations

import logging
from typing import Mapping

import torch

from ..errors import UserError
from .hub import HubDataset, hub_documents, hub_fingerprint, hub_of, is_hub_source
from .cache import blocks_key, blocks_path, read_cached, source_fingerprint, tokenizer_identity, write_cached
from .packing import PackedSplit, pack_documents
from .sources import load_documents
from .splits import DEFAULT_FRACTIONS, SplitFractions, check_split, split_documents

log = logging.getLogger(__name__)


def check_seq_len(seq_len: int, max_positions: int | None) -> None:
    """Refuse a block length that is not positive or longer than the model's position limit.

    Raises:
        UserError: naming `data.seq_len`, the limit and the fix.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise UserError(f"data.seq_len must be a positive integer, got {seq_len!r}")
    if max_positions is not None and seq_len > max_positions:
        raise UserError(f"data.seq_len={seq_len} is longer than the model's {max_positions} positions "
                        f"(max_position_embeddings); use data.seq_len={max_positions} or less")


def pack_split(tokenizer, source: str, split: str, seq_len: int, text_field: str = "text",
               fractions: SplitFractions | Mapping[str, float] = DEFAULT_FRACTIONS,
               hub: HubDataset | None = None) -> PackedSplit:
    """All of one split of `source`, tokenized and packed, from the cache when possible.

    Args:
        tokenizer: a HF tokenizer; its EOS token separates documents.
        source: a text source string (see `load_documents`), or a hub dataset id (see `data.hub`).
        split: `calibration`, `train` or `eval`.
        seq_len: tokens per block.
        text_field: the text column of json, parquet and datasets sources.
        fractions: share of documents per split.
        hub: how a hub dataset `source` is read (configuration, split, streaming, token budget); None: its whole
            train split.

    Raises:
        UserError: for a bad source, split or length, or when the split holds less than one block.
    """
    check_split(split)
    check_seq_len(seq_len, None)
    fractions = SplitFractions.coerce(fractions)
    hub = (hub or hub_of(source, text_field=text_field)) if is_hub_source(source) else None
    fingerprint = hub_fingerprint(hub) if hub else source_fingerprint(source, text_field)
    key = blocks_key(fingerprint, tokenizer_identity(tokenizer), split, seq_len, fractions)
    path = blocks_path(key)
    cached = read_cached(path, key)
    if cached is not None:
        return cached
    documents = hub_documents(hub, tokenizer) if hub else load_documents(source, text_field)
    documents = split_documents(documents, fractions)[split]
    packed = pack_documents(tokenizer, documents, split, seq_len)
    if packed.blocks.shape[0] == 0:
        raise UserError(f"the {split} split of {source} has {packed.tokens} tokens ({packed.documents} documents) "
                        f"but one block needs data.seq_len={seq_len}; give more text or a smaller data.seq_len")
    write_cached(path, key, packed)
    log.info("%s split of %s: %d documents, %d tokens, %d blocks of %d (cached in %s)", split, source,
             packed.documents, packed.tokens, packed.blocks.shape[0], seq_len, path)
    return packed


def token_blocks(tokenizer, source: str, split: str, seq_len: int, max_blocks: int | None = None,
                 text_field: str = "text", fractions: SplitFractions | Mapping[str, float] = DEFAULT_FRACTIONS,
                 hub: HubDataset | None = None) -> torch.Tensor:
    """The first `max_blocks` (default all) `[n, seq_len]` LongTensor blocks of one split of `source`.

    Splits never share a document (see `split_documents`), and blocks are ordered by document
    hash, so any prefix samples the whole split. See `pack_split` for the arguments.
    """
    if max_blocks is not None and (isinstance(max_blocks, bool) or not isinstance(max_blocks, int)
                                   or max_blocks <= 0):
        raise UserError(f"the number of {split} blocks must be a positive integer, got {max_blocks!r}")
    packed = pack_split(tokenizer, source, split, seq_len, text_field, fractions, hub)
    available = packed.blocks.shape[0]
    if max_blocks is not None and max_blocks > available:
        log.warning("the %s split of %s has only %d blocks of %d tokens (%d asked); using all of them",
                    split, source, available, seq_len, max_blocks)
    return packed.blocks[:max_blocks]


def data_blocks(cfg, tokenizer, split: str, n: int) -> torch.Tensor:
    """`n` blocks of `cfg.data.seq_len` tokens of `cfg.data.source`'s `split` (a RunConfig's data section)."""
    return token_blocks(tokenizer, cfg.data.source, split, cfg.data.seq_len, max_blocks=n,
                        text_field=cfg.data.text_field, hub=hub_of(cfg.data.source, cfg.data))
