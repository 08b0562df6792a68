"""Run a GGUF model in llama.cpp (through llama-cpp-python): tokenize, and logits for token ids.

The engine is optional: importing this module never imports llama_cpp; `require_llama_cpp` does, and
turns its absence into a one-line UserError.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError

GGML_TYPE_F32 = 0  # ggml_type of an f32 KV cache
GGML_TYPE_F16 = 1


def require_llama_cpp():
    """The llama_cpp module, or a UserError saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError("the llama.cpp engine is not installed: pip install llama-cpp-python") from None
    return llama_cpp


class NativeOutput:
    """What native code wrote to stdout / stderr inside `native_output()`."""

    def __init__(self, file):
        self._file = file

    def text(self) -> str:
        self._file.seek(0)
        return self._file.read().decode("utf-8", errors="replace")


@contextlib.contextmanager
def native_output():
    """Send what C code writes to file descriptors 1 and 2 into a temporary file instead of the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield NativeOutput(sink)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


class LlamaCppModel(contextlib.AbstractContextManager):
    """A GGUF model loaded in llama.cpp for scoring: full-sequence logits of given token ids.

    Args:
        path: the .gguf file.
        n_ctx: longest sequence to score.
        threads: CPU threads for llama.cpp.
        f32_kv: keep the KV cache in f32 (exact comparisons) instead of llama.cpp's default f16.
    """

    def __init__(self, path: str | Path, n_ctx: int = 512, threads: int = 1, f32_kv: bool = False):
        llama_cpp = require_llama_cpp()
        path = Path(path)
        if not path.is_file():
            raise UserError(f"GGUF file not found: {path}")
        kv = GGML_TYPE_F32 if f32_kv else GGML_TYPE_F16
        try:
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                       n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False,
                                       type_k=kv, type_v=kv)
        except ValueError as e:  # llama-cpp-python reports a model llama.cpp cannot load as ValueError
            raise UserError(f"llama.cpp cannot load {path}: {e}") from None
        self.n_ctx = n_ctx

    @property
    def vocab_size(self) -> int:
        return self.llm.n_vocab()

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of `text` by the GGUF file's own tokenizer."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits after every position of one sequence, evaluated from an empty cache. Shape (T, vocab)."""
        ids = [int(i) for i in ids]
        if not 0 < len(ids) <= self.n_ctx:
            raise ValueError(f"cannot score {len(ids)} tokens with a context of {self.n_ctx}")
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def close(self) -> None:
        self.llm.close()

    def __exit__(self, *exc) -> None:
        self.close()
