"""The tokenizer part of a GGUF file, read from the model folder's own HF tokenizer files.

Two kinds of tokenizer.json are supported, the two llama.cpp implements for Llama-family models:

* byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM ...): GGUF tokenizer model "gpt2", plus the name of
  llama.cpp's matching pre-tokenizer (see `gguf_pretokenizers`);
* BPE with byte fallback, SentencePiece style (Llama-2, Mistral): GGUF tokenizer model "llama",
  read from tokenizer.json (tokenizer.model, SentencePiece's own file, is not needed).

Token types follow llama.cpp's converter: added tokens that are special (or look like `<|...|>`) are
CONTROL, other added tokens USER_DEFINED, ids the tokenizer lacks below the model's vocabulary size
are written as `[PAD<id>]` UNUSED tokens.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import gguf

from ..errors import UserError
from .gguf_pretokenizers import CHECK_TEXT, KNOWN_HASHES, check_hash

log = logging.getLogger(__name__)

PRE_HINT = "name llama.cpp's pre-tokenizer for it with --tokenizer-pre (e.g. llama-bpe, qwen2, smollm, gpt-2)"


@dataclass
class GgufVocab:
    """Everything the GGUF tokenizer keys hold."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (byte-fallback BPE)
    pre: str  # llama.cpp pre-tokenizer name
    tokens: list[str | bytes]
    token_types: list[int]
    scores: list[float] | None  # only for "llama"
    special: gguf.SpecialVocab  # merges, bos/eos/unk/pad ids, add_bos/eos flags, chat template
    add_space_prefix: bool | None = None  # "llama": whether text gets a leading "\u2581" before splitting

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


def read_vocab(folder: Path, vocab_size: int, pre: str | None = None) -> GgufVocab:
    """Read the tokenizer of a HF model folder for a model with `vocab_size` embedding rows.

    Args:
        folder: model folder holding tokenizer.json (and tokenizer_config.json).
        vocab_size: rows of the embedding matrix; the GGUF token list has exactly this length.
        pre: llama.cpp pre-tokenizer name, for a byte-level tokenizer llama.cpp's converter does not
            recognize; by default it is found like the converter does.

    Raises:
        UserError: no tokenizer.json, a tokenizer kind llama.cpp cannot run, more tokens than
            embedding rows, or an unrecognized pre-tokenizer without `pre`.
    """
    file = folder / "tokenizer.json"
    if not file.is_file():
        raise UserError(f"{folder} has no tokenizer.json; save the model's (fast) tokenizer beside its weights")
    spec = json.loads(file.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"GGUF export supports BPE tokenizers (byte-level or with byte fallback); "
                        f"{file} holds a {model.get('type')} tokenizer")
    if model.get("byte_fallback"):
        return _byte_fallback_vocab(folder, spec, vocab_size)
    return _byte_level_vocab(folder, spec, vocab_size, pre)


def _byte_level_vocab(folder: Path, spec: dict, vocab_size: int, pre: str | None) -> GgufVocab:
    tokenizer = hf_tokenizer(folder)
    vocab = tokenizer.get_vocab()
    _check_fits(vocab.values(), vocab_size, folder)
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            token, kind = _added_token(tokenizer, added[i])
            tokens.append(token)
            types.append(kind)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise UserError(f"{folder}/tokenizer.json has no BPE merges")
    special.add_special_token.update(added_specials(tokenizer))
    if pre is not None and pre not in KNOWN_HASHES.values():
        log.warning("pre-tokenizer %r is not in llama.cpp's converter table; llama.cpp refuses to load the file "
                    "unless its own version knows the name", pre)
    return GgufVocab("gpt2", pre or pretokenizer_name(tokenizer, spec), tokens, types, None, special)


def hf_tokenizer(folder: Path):
    """The folder's tokenizer as transformers loads it (evoprune's pruned configs known without remote code)."""
    from transformers import AutoTokenizer

    from ..arch.export import register_pruned_classes

    register_pruned_classes()
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:  # transformers raises many types for unreadable tokenizer files
        raise UserError(f"cannot load the tokenizer in {folder}: {str(e).splitlines()[0] if str(e) else e!r}") from None


def _added_token(tokenizer, added) -> tuple[str, int]:
    """An added token as llama.cpp expects it: pre-normalized text, CONTROL or USER_DEFINED."""
    token = added.content
    if not added.normalized:
        token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
    if added.special or looks_special(token):
        return token, gguf.TokenType.CONTROL
    return token.replace("\u2581", " "), gguf.TokenType.USER_DEFINED


def added_specials(tokenizer) -> dict[str, bool]:
    """Whether encoding text prepends BOS / appends EOS, measured on the tokenizer itself."""
    plain, full = tokenizer.encode("a", add_special_tokens=False), tokenizer.encode("a")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {"bos": bos is not None and full[:1] == [bos] and plain[:1] != [bos],
            "eos": eos is not None and full[-1:] == [eos] and plain[-1:] != [eos]}


def looks_special(token: str) -> bool:
    """Control-token spellings that some tokenizers forget to mark special (as llama.cpp's converter checks)."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def pretokenizer_name(tokenizer, spec: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer.

    First by llama.cpp's own test (the hash of the ids of a fixed text, `gguf_pretokenizers`); failing
    that, a tokenizer whose only pre-tokenizer is GPT-2's byte-level regex split is "gpt-2".

    Raises:
        UserError: neither applies.
    """
    digest = check_hash(tokenizer.encode(CHECK_TEXT))
    if digest in KNOWN_HASHES:
        return KNOWN_HASHES[digest]
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not spec.get("normalizer"):
        log.info("tokenizer not in llama.cpp's table; its pre-tokenizer is GPT-2's byte-level split: 'gpt-2'")
        return "gpt-2"
    raise UserError(f"llama.cpp does not recognize this tokenizer's pre-tokenizer (check hash {digest[:16]}...); "
                    + PRE_HINT)


def _byte_fallback_vocab(folder: Path, spec: dict, vocab_size: int) -> GgufVocab:
    """A SentencePiece-style vocabulary: llama.cpp merges the adjacent pair whose result scores highest, so a
    token made by BPE merge number r scores -r, which reproduces BPE's lowest-rank-first merge order."""
    model = spec["model"]
    vocab = model["vocab"]
    _check_fits(vocab.values(), vocab_size, folder)
    rank: dict[str, int] = {}
    for r, merge in enumerate(model.get("merges") or []):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(a + b, r)
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: token for token, i in vocab.items()}
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        token = added[i]["content"] if i in added else by_id.get(i)
        score = -float(rank.get(token, len(rank)))
        if token is None:
            token, score, kind = f"[PAD{i}]", -1000.0, gguf.TokenType.UNUSED
        elif i in added:
            kind = gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
        elif token == model.get("unk_token"):
            kind = gguf.TokenType.UNKNOWN
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
        tokens.append(token)
        scores.append(score)
        types.append(kind)
    tokenizer = hf_tokenizer(folder)
    special = gguf.SpecialVocab(folder, n_vocab=vocab_size)
    special.add_special_token.update(added_specials(tokenizer))
    first = tokenizer.convert_ids_to_tokens(tokenizer.encode("a", add_special_tokens=False))[:1]
    space_prefix = first[0].startswith("\u2581") if first else True
    return GgufVocab("llama", "default", tokens, types, scores, special, space_prefix)


def _check_fits(ids, vocab_size: int, folder: Path) -> None:
    largest = max(ids, default=-1)
    if largest >= vocab_size:
        raise UserError(f"the tokenizer in {folder} has token id {largest}, beyond the model's {vocab_size} "
                        f"embedding rows")
