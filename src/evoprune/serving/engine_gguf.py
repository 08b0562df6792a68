"""A GGUF model as the llama.cpp engine sees it: found, checked, opened, described, and given token ids.

A source is a `.gguf` file, a folder holding `model.gguf` (what `evoprune export` writes) or exactly
one `.gguf` file, or `smollm2-135m` (the embedded model's own GGUF). Every problem with it ends in
a one-line UserError before any work starts: a missing file, a file that is not GGUF (checked by
its magic bytes), or one llama.cpp cannot load.

Token ids come from a Hugging Face tokenizer, so that the held-out blocks are the very ids
evoprune's transformers evaluation scores (`data.data_blocks`): `--tokenizer`, else the
tokenizer files beside the GGUF, else the GGUF's own vocabulary read by transformers.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .llamacpp import require_llama_cpp

log = logging.getLogger(__name__)
_llama_log = logging.getLogger("evoprune.llama_cpp")
_log_callback = None
GGML_LOG_ERROR = 4

GGUF_MAGIC = b"GGUF"
MODEL_FILE = "model.gguf"
# A few sentences of ordinary text: the HF tokenizer and the GGUF's own must split them alike.
PROBE_TEXT = ("The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon; "
              "its crew returned safely. Prices rose 3.5% while rates fell.\n\nWhy? Nobody knows!")


def route_llama_cpp_logs() -> None:
    """Send llama.cpp's log lines to the `evoprune.llama_cpp` logger: errors as errors, the rest as debug.

    llama-cpp-python's own callback reads ggml's log levels one off (DEBUG 1, INFO 2, WARN 3, ERROR 4 in
    the llama.cpp it bundles) and prints every warning to stderr even with `verbose=False`; the deci
    layout triggers harmless ones (e.g. V cache padding) in every context.
    """
    global _log_callback
    if _log_callback is not None:
        return
    llama_cpp = require_llama_cpp()

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data) -> None:
        message = text.decode("utf-8", errors="replace").rstrip()
        if message:
            _llama_log.log(logging.ERROR if level == GGML_LOG_ERROR else logging.DEBUG, message)

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _log_callback = callback  # kept alive: llama.cpp holds only the C pointer


def llama_cpp_version() -> str:
    """The llama-cpp-python version (it pins the llama.cpp it bundles)."""
    return getattr(require_llama_cpp(), "__version__", "unknown")


def default_threads() -> int:
    """The cores this process may run on (the machine's cores unless pinned with taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_gguf(source: str | os.PathLike) -> Path:
    """The GGUF file a model source names, checked to start with the GGUF magic bytes.

    Raises:
        UserError: missing path, a folder without (or with several) GGUF files, or a file that is not GGUF.
    """
    from ..assets import EMBEDDED_MODEL, embedded_gguf

    if str(source) == EMBEDDED_MODEL:
        return embedded_gguf()
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            path = path / MODEL_FILE
        else:
            found = sorted(path.glob("*.gguf"))
            if len(found) != 1:
                names = ", ".join(f.name for f in found)
                what = f"{len(found)} .gguf files ({names})" if found else "no .gguf file"
                raise UserError(f"{path} holds {what}; pass the GGUF file itself (e.g. {path}/{MODEL_FILE})")
            path = found[0]
    elif not path.exists():
        raise UserError(f"GGUF model not found: {path}")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise UserError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                        "export one with `evoprune export` or pass a .gguf file")
    return path


@dataclass(frozen=True)
class GgufFacts:
    """What one GGUF file holds, as llama.cpp reads it."""

    path: str
    file_bytes: int
    file_type: str  # the weights' storage type (F16, Q8_0, Q4_K_M ...)
    architecture: str
    layers: int
    params: int
    vocab_size: int
    context_length: int | None  # positions the model was trained for (None when the file does not say)


def gguf_facts(llm, path: Path) -> GgufFacts:
    """Size, storage type, parameters and vocabulary of a GGUF loaded as `llm` (a `llama_cpp.Llama`, in the
    engine child process)."""
    import gguf

    llama_cpp = require_llama_cpp()
    meta = llm.metadata
    arch = meta.get("general.architecture", "?")
    try:
        file_type = gguf.LlamaFileType(int(meta["general.file_type"])).name.removeprefix("MOSTLY_")
    except (KeyError, ValueError):
        file_type = "?"
    return GgufFacts(path=str(path), file_bytes=path.stat().st_size, file_type=file_type, architecture=arch,
                     layers=int(meta.get(f"{arch}.block_count", 0)),
                     params=int(llama_cpp.llama_model_n_params(llm.model)), vocab_size=llm.n_vocab(),
                     context_length=int(meta.get(f"{arch}.context_length", 0)) or None)


def eval_tokenizer(gguf_path: Path, tokenizer: str | None = None):
    """The HF tokenizer that makes the evaluation's token ids, and a label saying where it came from.

    Args:
        gguf_path: the GGUF file; its folder is searched for tokenizer files.
        tokenizer: `--tokenizer`: a HF model folder (or `smollm2-135m`), overriding the search.

    Raises:
        UserError: the tokenizer cannot be read.
    """
    from transformers import AutoTokenizer

    from ..arch.export import register_pruned_classes
    from ..assets import EMBEDDED_MODEL, GGUF_FILE, embedded_model_dir

    register_pruned_classes()  # a pruned model's folder names evoprune's config class: read it without remote code
    if tokenizer is None and gguf_path.name == GGUF_FILE:  # the embedded model, whose HF copy was converted from it
        tokenizer = EMBEDDED_MODEL
    try:
        if tokenizer is not None:
            folder = embedded_model_dir() if tokenizer == EMBEDDED_MODEL else Path(tokenizer).expanduser()
            if not folder.is_dir():
                raise UserError(f"--tokenizer {tokenizer}: not a folder with tokenizer files")
            return AutoTokenizer.from_pretrained(folder, trust_remote_code=False), str(folder)
        if (gguf_path.parent / "tokenizer.json").is_file() or (gguf_path.parent / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(gguf_path.parent, trust_remote_code=False), str(gguf_path.parent)
    except UserError:
        raise
    except Exception as e:  # transformers raises many types for unreadable tokenizers
        raise UserError(f"cannot read the tokenizer for {gguf_path} ({_short(e)}); pass --tokenizer with the HF "
                        "folder the GGUF was exported from") from None
    log.info("no tokenizer files beside %s: reading the GGUF's own vocabulary with transformers", gguf_path)
    try:
        return (AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, trust_remote_code=False),
                f"{gguf_path} (its own)")
    except Exception as e:  # e.g. an architecture transformers does not read from GGUF (deci)
        log.debug("transformers cannot read the tokenizer of %s: %s", gguf_path, _short(e, 400))
        raise UserError(f"{gguf_path} has no tokenizer files beside it and transformers cannot read the GGUF's own "
                        "tokenizer; pass --tokenizer with the HF folder the GGUF was exported from") from None


def _short(error: Exception, limit: int = 100) -> str:
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return first if len(first) <= limit else first[:limit] + "..."


def check_tokenizer(model, tokenizer, label: str, name: str) -> bool:
    """Refuse a tokenizer with more tokens than the GGUF's vocabulary; warn when the two split text differently.

    Args:
        model: a `llamacpp.LlamaCppModel`.

    Returns:
        whether the GGUF's own tokenizer turns `PROBE_TEXT` into the same ids as `tokenizer`.

    Raises:
        UserError: `tokenizer` has ids the GGUF's embedding has no row for.
    """
    if len(tokenizer) > model.vocab_size:
        raise UserError(f"tokenizer {label} has {len(tokenizer)} tokens but {name} has a vocabulary of "
                        f"{model.vocab_size}; pass --tokenizer with the HF folder the GGUF was exported from")
    ours = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    theirs = model.tokenize(PROBE_TEXT, add_bos=False, special=False)
    if list(ours) != list(theirs):
        log.warning("%s: its own tokenizer splits text differently from %s (%d vs %d ids on a probe sentence); "
                    "perplexity is measured on %s's ids", name, label, len(theirs), len(ours), label)
        return False
    return True
