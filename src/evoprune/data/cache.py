"""On-disk cache of packed token blocks, keyed by everything that determines them.

The key is made of contents, never of paths: the text source's bytes (`source_fingerprint`), the
tokenizer's vocabulary, model and special tokens (`tokenizer_identity`), the split, the block
length and the split fractions. A corpus or tokenizer replaced at the same path gets a new key.

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
from ..errors import UserError
from ..fingerprint import files_fingerprint
from .embedded import EMBEDDED_VERSION, embedded_files, is_embedded
from .packing import PackedSplit
from .sources import ACCEPTED
from .splits import SplitFractions

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when splitting, tokenizing or packing changes (2: keyed by contents, not paths)
TOKENIZER_PROBE = ("The quick brown fox jumps over the lazy dog. 1234567890 +-*/=<>[]{}\n\tdef f(x): return x**2\n"
                   "Ünïcödé façade naïve, Größe, 東京タワー, москва, 😀 — “quotes” …")


def tokenizer_identity(tokenizer) -> str:
    """A digest of what the tokenizer computes, not of where it was loaded from: its class, special
    tokens, full definition (vocabulary, merges, normalizer, pre-tokenizer) and a probe encoding."""
    probe = tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    parts = [type(tokenizer).__name__, str(len(tokenizer)),
             str(getattr(tokenizer, "eos_token_id", None)), str(getattr(tokenizer, "bos_token_id", None)),
             json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str),
             json.dumps(probe), _tokenizer_definition(tokenizer)]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _tokenizer_definition(tokenizer) -> str:
    """A fast tokenizer's serialized JSON; else the vocabulary and, if any, the sentencepiece model's digest."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.to_str()
    parts = [json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)]
    sp_model = getattr(tokenizer, "sp_model", None)
    if sp_model is not None and hasattr(sp_model, "serialized_model_proto"):
        parts.append(hashlib.sha256(sp_model.serialized_model_proto()).hexdigest())
    return "\n".join(parts)


def source_fingerprint(source: str, text_field: str = "text") -> str:
    """A digest of the text `source` holds: its files' bytes and names relative to the source, and `text_field`.

    Raises:
        UserError: if the source does not exist.
    """
    if is_embedded(source):
        files = embedded_files(source)
        return files_fingerprint(files) + f"|{source}|v{EMBEDDED_VERSION}|{text_field}"
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"data source not found: {source}; give {ACCEPTED}")
    if path.is_dir():
        return files_fingerprint(sorted(p for p in path.rglob("*") if p.is_file()), path) + f"|dir|{text_field}"
    return files_fingerprint([path]) + f"|{text_field}"


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
