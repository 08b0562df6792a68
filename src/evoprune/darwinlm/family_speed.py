"""How fast each size of a family runs where it would be served: llama.cpp, all sizes and the dense model
timed side by side (interleaved repeat by repeat in one engine process, so machine noise hits them alike).

Measured when the serving extra (llama-cpp-python) is installed and `eval.latency` is on; every model is
written as an f16 GGUF beside its HF folder (`model-gguf/`), or the run's own GGUF is used when
`export.format` is gguf. Speed is never cached: a rerun that adds a size measures every size again.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..config import RunConfig
from ..errors import UserError
from ..serving.engine_gguf import default_threads

log = logging.getLogger(__name__)
DENSE = "dense"


def gguf_of(model_dir: Path, out: Path) -> Path:
    """`out/model.gguf` (f16) of the HF folder `model_dir`, written unless a complete one is there."""
    from ..serving.gguf_export import export_gguf

    path = out / "model.gguf"
    if path.is_file() and path.stat().st_size > 0:
        return path
    return export_gguf(model_dir, out, quant="f16", force=True).path


def run_gguf(folder: Path) -> Path:
    """The GGUF of one size's run folder: the run's own export, else an f16 one written for timing."""
    existing = sorted((folder / "model-gguf").glob("*.gguf"))
    return existing[0] if existing else gguf_of(folder / "model", folder / "model-gguf")


def llamacpp_speeds(cfg: RunConfig, dense_dir: Path, out: Path, labels: list[str]) -> dict[str, dict] | None:
    """{label (and "dense"): llama.cpp prefill/decode tokens/s and speedups over dense}, or None when llama.cpp is
    not installed, latency is off, or the engine fails (a warning says why: the front is still written)."""
    if not cfg.eval.latency or importlib.util.find_spec("llama_cpp") is None:
        return None
    from ..serving.engine_timing import measure_ggufs

    ev = cfg.eval
    try:
        paths = {DENSE: gguf_of(dense_dir, out / "dense-gguf"), **{label: run_gguf(out / label) for label in labels}}
        speed = measure_ggufs(paths, ev.prompt_len, ev.new_tokens, ev.warmup, ev.repeats,
                              ev.threads or default_threads(), ev.repack, seed=cfg.seed)
    except UserError as e:  # a model llama.cpp cannot express, or the engine died: report it, keep the front
        log.warning("llama.cpp speed of the family not measured: %s", e)
        return None
    base = speed[DENSE]
    return {name: {"llamacpp_prefill_tokens_per_s": s.prefill_tokens_per_s,
                   "llamacpp_decode_tokens_per_s": s.decode_tokens_per_s,
                   "llamacpp_prefill_speedup": s.prefill_tokens_per_s / base.prefill_tokens_per_s,
                   "llamacpp_decode_speedup": s.decode_tokens_per_s / base.decode_tokens_per_s}
            for name, s in speed.items()}
