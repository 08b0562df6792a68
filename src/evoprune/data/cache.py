"""On-disk cache of packed token blocks, keyed by everything that determines them.

A cache file is `cache_dir()/tokens/<key>.safetensors` holding the `blocks` tensor and, as
metadata, the key and the split's document and token counts. Files are written atomically;
an unreadable or inconsistent file is treated as missing and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..assets import cache_dir
from ..atomic import staged_file
from .packing import PackedSplit
from .splits import SplitFractions

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when splitting, tokenizing or packing changes
TOKENIZER_PROBE = ("The quick brown fox jumps over the lazy dog. 1234567890 +-*/=<>[]{}\n\tdef f(x): return x**2\n"
                   "Ünïcödé façade naïve, Größe, 東京タワー, москва, 😀 — “quotes” …")


def tokenizer_identity(tokenizer) -> str:
    """A digest of the tokenizer: class, name, vocabulary, separator tokens and a probe encoding."""
    vocab = sorted(tokenizer.get_vocab().items())
    probe = tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    parts = [type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")), str(len(tokenizer)),
             str(getattr(tokenizer, "eos_token_id", None)), str(getattr(tokenizer, "bos_token_id", None)),
             json.dumps(probe), json.dumps(vocab, ensure_ascii=False)]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def blocks_key(source_id: str, tokenizer_id: str, split: str, seq_len: int, fractions: SplitFractions) -> str:
    fields = [f"v{CACHE_VERSION}", source_id, tokenizer_id, split, str(seq_len),
              f"{fractions.eval!r},{fractions.calibration!r},{fractions.train!r}"]
    return hashlib.sha256("|".join(fields).encode()).hexdigest()[:32]


def blocks_path(key: str) -> Path:
    return cache_dir() / "tokens" / f"{key}.safetensors"


def read_cached(path: Path, key: str) -> PackedSplit | None:
    """The packed split stored at `path`, or None if it is missing, unreadable or not for `key`."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        blocks = load_file(str(path))["blocks"]
        packed = PackedSplit(blocks, meta["split"], int(meta["seq_len"]), int(meta["documents"]), int(meta["tokens"]))
        consistent = (meta["key"] == key and blocks.dim() == 2 and blocks.dtype == torch.long
                      and blocks.shape[1] == packed.seq_len and 0 < blocks.numel() <= packed.tokens)
        if not consistent:
            raise ValueError("contents do not match the cache key")
    except Exception as e:  # any damage means: rebuild
        log.warning("rebuilding token cache %s: %s", path, e)
        return None
    log.debug("token cache hit %s", path)
    return packed


def write_cached(path: Path, key: str, packed: PackedSplit) -> None:
    meta = {"key": key, "split": packed.split, "seq_len": str(packed.seq_len), "documents": str(packed.documents),
            "tokens": str(packed.tokens)}
    with staged_file(path) as tmp:
        save_file({"blocks": packed.blocks.contiguous()}, str(tmp), metadata=meta)
