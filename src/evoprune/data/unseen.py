"""Blocks of unseen text: each unseen domain minus anything the run's own data holds, packed and cached.

A run calibrates, scores fitness, trains and evaluates on splits of one source, `data.source`.
An unseen document is dropped when its text, or any paragraph or line of it of at least
`MIN_OVERLAP_WORDS` words, has the same `document_digest` as a document, paragraph or line of that
source (all splits). So `--data` pointed at the same text, whole or cut into other documents
along paragraphs, leaves none of it in the unseen set. The rest is ordered by digest (a prefix
samples the whole domain) and packed into the first `n_blocks` blocks.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from itertools import chain

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..atomic import staged_file
from ..errors import UserError
from ..fingerprint import files_fingerprint
from .cache import CACHE_VERSION, blocks_path, source_fingerprint, tokenizer_identity
from .packing import separator_id, tokenize_documents
from .hub import HubDataset, hub_documents, hub_fingerprint, hub_of, is_hub_source
from .sources import PARAGRAPH_BREAK, load_documents
from .splits import document_digest
from .unseen_sources import UNSEEN_SOURCES, UNSEEN_VERSION, UnseenSource

log = logging.getLogger(__name__)

MIN_OVERLAP_WORDS = 8  # shorter lines ("CHAPTER 1", "The answer is 6.") are common to unrelated texts
TOKENIZE_BATCH = 64


@dataclass(frozen=True)
class UnseenDomain:
    """One unseen domain as measured in this run; `blocks` is None when it could not be had (see `note`)."""

    name: str
    genre: str
    origin: str
    split: str  # dev (settings are chosen on it) or test (nothing is ever chosen on it): see unseen_sources
    blocks: torch.Tensor | None
    documents: int = 0  # documents packed into the blocks
    dropped: int = 0  # documents left out because the run's data holds them
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        """What metrics.json records about the domain."""
        return {"genre": self.genre, "origin": self.origin, "split": self.split,
                "blocks": 0 if self.blocks is None else int(self.blocks.shape[0]),
                "tokens": 0 if self.blocks is None else int(self.blocks.numel()),
                "documents": self.documents, "dropped_as_in_run_data": self.dropped, "notes": self.notes}


def overlap_digests(text: str) -> set[str]:
    """Digests of `text` and of its paragraphs and lines of at least `MIN_OVERLAP_WORDS` words."""
    parts = chain(PARAGRAPH_BREAK.split(text), text.splitlines())
    return {document_digest(text)} | {document_digest(p) for p in parts if len(p.split()) >= MIN_OVERLAP_WORDS}


def source_digests(documents: list[str]) -> set[str]:
    return set().union(*(overlap_digests(d) for d in documents)) if documents else set()


def disjoint_documents(documents: list[str], taken: set[str]) -> tuple[list[str], int]:
    """`documents` that share no digest with `taken`, deduplicated and ordered by digest; and how many were dropped."""
    by_digest = {}
    dropped = 0
    for text in documents:
        if overlap_digests(text) & taken:
            dropped += 1
        else:
            by_digest.setdefault(document_digest(text), text)
    return [by_digest[d] for d in sorted(by_digest)], dropped


def pack_prefix(tokenizer, documents: list[str], seq_len: int, n_blocks: int) -> tuple[torch.Tensor, int]:
    """The first `n_blocks` blocks of `documents` packed like `pack_documents`, tokenizing only what they need.

    Returns:
        blocks `[<= n_blocks, seq_len]` and the number of documents tokenized.
    """
    tail = [t] if (t := separator_id(tokenizer)) is not None else []
    target = n_blocks * seq_len
    stream: list[int] = []
    used = 0
    for start in range(0, len(documents), TOKENIZE_BATCH):
        for ids in tokenize_documents(tokenizer, documents[start:start + TOKENIZE_BATCH]):
            if len(stream) >= target:
                break
            stream.extend(ids + tail)
            used += 1
        if len(stream) >= target:
            break
    n = min(n_blocks, len(stream) // seq_len)
    return torch.tensor(stream[:n * seq_len], dtype=torch.long).reshape(n, seq_len), used


def _key(source: UnseenSource, run_source_id: str, tokenizer_id: str, seq_len: int, n_blocks: int) -> str:
    fields = [f"unseen-v{CACHE_VERSION}.{UNSEEN_VERSION}", source.name, files_fingerprint(source.files()),
              run_source_id, tokenizer_id, str(seq_len), str(n_blocks)]
    return hashlib.sha256("|".join(fields).encode()).hexdigest()[:32]


def _read_cached(source: UnseenSource, key: str) -> UnseenDomain | None:
    path = blocks_path(key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != key:
            raise ValueError("written for another key")
        blocks = load_file(str(path))["blocks"]
        notes = [n for n in meta.get("notes", "").split("\n") if n]
        return UnseenDomain(source.name, source.genre, source.origin, source.split, blocks,
                            int(meta["documents"]), int(meta["dropped"]), notes)
    except Exception as e:  # any damage means: rebuild
        log.warning("rebuilding unseen-text cache %s: %s", path, e)
        return None


def _write_cached(key: str, domain: UnseenDomain) -> None:
    meta = {"key": key, "documents": str(domain.documents), "dropped": str(domain.dropped),
            "notes": "\n".join(domain.notes)}
    with staged_file(blocks_path(key)) as tmp:
        save_file({"blocks": domain.blocks.contiguous()}, str(tmp), metadata=meta)


def _unavailable(source: UnseenSource, note: str, dropped: int = 0) -> UnseenDomain:
    log.warning("unseen text %s left out: %s", source.name, note)
    return UnseenDomain(source.name, source.genre, source.origin, source.split, None, 0, dropped, [note])


def unseen_domains(tokenizer, run_source: str, text_field: str, seq_len: int, n_blocks: int,
                   hub: HubDataset | None = None) -> list[UnseenDomain]:
    """Every unseen domain, disjoint from `run_source`, as at most `n_blocks` blocks of `seq_len` tokens.

    A domain whose text is not on this machine, or that the run's data holds entirely, comes back
    with `blocks=None` and a note instead of failing the run. `hub`: how a hub dataset `run_source` is read.
    """
    hub = (hub or hub_of(run_source, text_field=text_field)) if is_hub_source(run_source) else None
    run_id = hub_fingerprint(hub) if hub else source_fingerprint(run_source, text_field)
    tokenizer_id = tokenizer_identity(tokenizer)
    taken: set[str] | None = None
    domains = []
    for source in UNSEEN_SOURCES.values():
        try:
            files = source.files()
            if not files:
                domains.append(_unavailable(source, f"{source.origin} is not on this machine; run "
                                                    "`evoprune fetch-assets` (it needs apt-get) to add it"))
                continue
            key = _key(source, run_id, tokenizer_id, seq_len, n_blocks)
            cached = _read_cached(source, key)
            if cached is not None:
                domains.append(cached)
                continue
            texts = source.documents()
        except (UserError, OSError) as e:  # missing or damaged asset files: the run goes on without this domain
            domains.append(_unavailable(source, str(e)))
            continue
        if taken is None:
            taken = source_digests(hub_documents(hub, tokenizer) if hub else load_documents(run_source, text_field))
        documents, dropped = disjoint_documents(texts, taken)
        blocks, used = pack_prefix(tokenizer, documents, seq_len, n_blocks)
        if blocks.shape[0] == 0:
            domains.append(_unavailable(source, f"no block of {seq_len} tokens left after dropping {dropped} "
                                                f"documents that {run_source} holds", dropped))
            continue
        notes = []
        if dropped:
            notes.append(f"{dropped} documents left out because {run_source} holds them")
        if blocks.shape[0] < n_blocks:
            notes.append(f"only {blocks.shape[0]} of {n_blocks} blocks of {seq_len} tokens available")
        domain = UnseenDomain(source.name, source.genre, source.origin, source.split, blocks, used, dropped, notes)
        _write_cached(key, domain)
        domains.append(domain)
    return domains
