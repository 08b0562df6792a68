"""Run GGUF models in llama.cpp (through llama-cpp-python), always in a child process.

`LlamaCppModel` is the parent's handle of one model loaded in an `EngineProcess`: tokenize, logits
of token ids, the file's facts. `open_llama` is the one place a `llama_cpp.Llama` is made, and runs
only inside a child. Importing this module never imports llama_cpp; `require_llama_cpp` does, and
turns its absence into a one-line UserError.

Weight repacking (llama.cpp's "extra buffer types": rows of quantized matrices interleaved for the
CPU's SIMD width, or handed to the AMX backend) is on by default in llama.cpp. evoprune keeps it on,
except on CPUs with AMX, where llama.cpp's AMX backend crashes on quantized GGUFs (`repack_setting`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from .engine_process import EngineProcess, cpu_has_amx, run_isolated

GGML_TYPE_F32 = 0  # ggml_type of an f32 KV cache
GGML_TYPE_F16 = 1
REPACK_CHOICES = ("auto", "on", "off")


def require_llama_cpp():
    """The llama_cpp module, or a UserError saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError("the llama.cpp engine is not installed: pip install llama-cpp-python") from None
    return llama_cpp


def repack_setting(setting: str | bool | None = "auto") -> bool:
    """Whether llama.cpp repacks weights: `auto` (or None) = yes, unless this CPU has AMX; `on` / `off` as said."""
    if isinstance(setting, bool):
        return setting
    if setting in (None, "auto"):
        return not cpu_has_amx()
    if setting not in REPACK_CHOICES:
        raise UserError(f"eval.repack must be one of {', '.join(REPACK_CHOICES)}, got {setting!r}")
    return setting == "on"


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


@contextlib.contextmanager
def _model_defaults(**fields):
    """Make `llama_model_default_params()` return `fields` set, while a `Llama` is built.

    `Llama.__init__` starts from these defaults and has no argument for some fields (`use_extra_bufts`).
    Only ever used inside an engine child process, which builds one model at a time.
    """
    bindings = require_llama_cpp().llama_cpp
    original = bindings.llama_model_default_params

    def defaults():
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    bindings.llama_model_default_params = defaults
    try:
        yield
    finally:
        bindings.llama_model_default_params = original


def open_llama(path: str | Path, n_ctx: int, threads: int, n_batch: int | None = None, logits_all: bool = False,
               f32_kv: bool = False, repack: bool = True):
    """Load `path` into llama.cpp on the CPU (call it in an engine child process only).

    Args:
        n_ctx: KV cache positions (the longest sequence this context will see).
        threads: CPU threads for prefill and decode alike.
        n_batch: tokens per llama_decode call; default `n_ctx`, so a block goes in at once.
        logits_all: keep the logits of every position (perplexity), not just the last (speed).
        f32_kv: keep the KV cache in f32 (exact comparisons) instead of llama.cpp's default f16.
        repack: llama.cpp's weight repacking (extra buffer types), see `repack_setting`.

    Raises:
        UserError: llama.cpp cannot load the file (corrupt, truncated or an unknown architecture).
    """
    from .engine_gguf import route_llama_cpp_logs

    llama_cpp = require_llama_cpp()
    route_llama_cpp_logs()
    n_batch = n_batch or n_ctx
    kv = GGML_TYPE_F32 if f32_kv else GGML_TYPE_F16
    try:
        with _model_defaults(use_extra_bufts=repack):
            return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                   n_threads=threads, n_threads_batch=threads, logits_all=logits_all,
                                   n_gpu_layers=0, verbose=False, type_k=kv, type_v=kv)
    except (ValueError, RuntimeError, OSError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"llama.cpp cannot load {path} ({reason}); the file is corrupt, truncated or not a "
                        "model llama.cpp runs; export it again") from None


class LlamaCppModel(contextlib.AbstractContextManager):
    """A GGUF model loaded in llama.cpp, in a child process of its own, for scoring.

    Args:
        path: the .gguf file.
        n_ctx: longest sequence to score.
        threads: CPU threads for llama.cpp.
        f32_kv: keep the KV cache in f32 (exact comparisons) instead of llama.cpp's default f16.
        repack: weight repacking, `auto` | `on` | `off` (see `repack_setting`).

    Raises:
        UserError: llama-cpp-python missing, no such file, or a file llama.cpp cannot load.
        EngineCrashed: llama.cpp died in native code (on any call).
    """

    def __init__(self, path: str | Path, n_ctx: int = 512, threads: int = 1, f32_kv: bool = False,
                 repack: str | bool | None = "auto"):
        require_llama_cpp()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"GGUF file not found: {self.path}")
        self.n_ctx, self.repack = n_ctx, repack_setting(repack)
        self._engine = EngineProcess(str(self.path), self.repack)
        try:
            self.vocab_size = self._engine.call(_load, self.path, n_ctx, threads, f32_kv, self.repack)
        except BaseException:
            self._engine.close()
            raise

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of `text` by the GGUF file's own tokenizer."""
        return self._engine.call(_tokenize, text, add_bos, special)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits after every position of one sequence, evaluated from an empty cache. Shape (T, vocab)."""
        ids = [int(i) for i in ids]
        if not 0 < len(ids) <= self.n_ctx:
            raise ValueError(f"cannot score {len(ids)} tokens with a context of {self.n_ctx}")
        return self._engine.call(_logits, ids)

    def facts(self):
        """The file's `engine_gguf.GgufFacts` (size, storage type, layers, parameters, vocabulary, context)."""
        return self._engine.call(_facts, self.path)

    def uses_repacking(self) -> bool:
        """Whether the loaded model was built with llama.cpp's extra buffer types (as llama.cpp reports it)."""
        return self._engine.call(_uses_repacking)

    def close(self) -> None:
        self._engine.close()

    def __exit__(self, *exc) -> None:
        self.close()


# In the child process: the one model a LlamaCppModel's child holds.
_loaded = None


def _load(path: Path, n_ctx: int, threads: int, f32_kv: bool, repack: bool) -> int:
    global _loaded
    _loaded = open_llama(path, n_ctx, threads, logits_all=True, f32_kv=f32_kv, repack=repack)
    return _loaded.n_vocab()


def _tokenize(text: str, add_bos: bool, special: bool) -> list[int]:
    return _loaded.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)


def _logits(ids: list[int]) -> np.ndarray:
    _loaded.reset()
    _loaded.eval(ids)
    return np.array(_loaded.scores[: len(ids)], dtype=np.float32)


def _facts(path: Path):
    from .engine_gguf import gguf_facts

    return gguf_facts(_loaded, path)


def _uses_repacking() -> bool:
    return bool(_loaded.model_params.use_extra_bufts)


def quantize_gguf(source: Path, target: Path, file_type: int, threads: int = 0) -> None:
    """Quantize the GGUF `source` into `target` with llama.cpp's quantizer, in a child process.

    Raises:
        UserError: llama-cpp-python missing.
        RuntimeError: the quantizer failed.
        EngineCrashed: it died in native code.
    """
    require_llama_cpp()
    status, tail = run_isolated(_quantize, source, target, file_type, threads, label=str(source))
    if status != 0:
        raise RuntimeError(f"llama.cpp failed to quantize {source} (status {status}): {tail}")


def _quantize(source: Path, target: Path, file_type: int, threads: int) -> tuple[int, str]:
    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = threads
    with native_output() as output:  # llama.cpp prints a line per tensor; keep it for failures only
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
        tail = " | ".join(output.text().strip().splitlines()[-3:])
    return status, tail
