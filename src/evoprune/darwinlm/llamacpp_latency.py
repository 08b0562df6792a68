"""The latency table of `search.metric=latency`, timed in llama.cpp instead of torch.

The torch table (`latency_table.py`) times each distinct block shape of the database alone.
llama.cpp runs whole GGUF files, so each shape becomes two small GGUF files, one with `COPIES`
layers of that shape and one with twice as many, and its cost is the difference of their times
divided by `COPIES`: the embedding, output head, graph set-up, a last layer of one attention head
(a model needs some attention) and the stand-in blocks of the deci layout (`gguf_layout`) are in
both files and cancel. A shape's layers are attention-only (query
heads x KV groups) or MLP-only (kept neurons).

The files are built the way `evoprune export --format gguf` builds any model (HF folder ->
`export_gguf`), from a random-weight stand-in of the dense model with its hidden size, head size,
RoPE and biases but a small vocabulary, so the output head does not drown the blocks (weights'
values do not change llama.cpp's speed). Timing follows the torch table: `prefill` runs `tokens`
tokens at batch 1 into an empty cache; `decode` runs one token against a cache of `tokens`
positions; files are timed round-robin (warm-up first), a sample makes enough calls to last a few
milliseconds, a file's time is its fastest sample, and costs never decrease along a ladder.

A saved table is reused only for the same block shapes, settings, GGUF type, threads, machine and
llama.cpp (llama-cpp-python version and system info).
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..arch.adapter import ModelAdapter
from ..arch.export import export_checkpoint
from ..arch.spec import LayerSpec, SubnetSpec
from ..errors import UserError
from ..obs.database import Database
from ..levels.budget import CostTable
from .latency_table import (MODES, SAMPLE_SECONDS, LatencySettings, cached_cost_table, distinct_shapes,
                                    machine_description, monotone_costs)
from ..serving.engine_gguf import default_threads, llama_cpp_version
from ..serving.engine_process import run_isolated
from ..serving.engine_timing import sample_gguf_calls
from ..serving.llamacpp import repack_setting, require_llama_cpp

log = logging.getLogger(__name__)

COPIES = 4  # layers of one shape in the smaller file; the larger has 2 x COPIES
PROXY_VOCAB = 288  # 256 bytes + 2 special tokens + 30 merges: an output head of negligible cost
QUANT = "f16"  # the GGUF type the blocks are timed in (evoprune export's default)


def proxy_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of `PROXY_VOCAB` tokens, enough for a GGUF file llama.cpp loads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=PROXY_VOCAB, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog and then the other one"] * 8,
                            trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def proxy_model(dense: PreTrainedModel, n_layers: int, tokenizer) -> PreTrainedModel:
    """A random-weight model of `dense`'s class and layer shape with `n_layers` layers and a small vocabulary."""
    settings = dense.config.to_dict()
    for per_layer in ("layer_types", "auto_map", "architectures"):
        settings.pop(per_layer, None)
    settings.update(num_hidden_layers=n_layers, vocab_size=PROXY_VOCAB, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = type(dense.config).from_dict(settings)
    torch.manual_seed(0)
    return type(dense)(config).to(torch.float32).eval()


def shape_spec(proxy_shape, kind: str, level, n: int) -> SubnetSpec:
    """The first `n` layers of the stand-in hold one block of `level`'s shape, the last one head of attention
    (every file has it: a model needs some attention), the rest are removed."""
    if kind == "attention":
        block = LayerSpec(list(level.heads), list(level.kv_heads), [])
    else:
        block = LayerSpec([], [], list(range(level.width)))
    last = proxy_shape.layers[-1]
    layers = [block if i < n else LayerSpec([], [], []) for i in range(proxy_shape.num_layers - 1)]
    return SubnetSpec(proxy_shape, layers + [LayerSpec.from_groups(last, [0], [0], [])])


def shape_files(dense: PreTrainedModel, adapter: ModelAdapter, db: Database, folder: Path,
                progress: bool = True) -> dict[tuple, tuple[Path, Path]]:
    """Per distinct shape, the GGUF files with COPIES and 2 x COPIES layers of it, written under `folder`.

    Raises:
        UserError: the dense model's layers differ in shape (one stand-in layer must fit every level).
    """
    from ..serving.gguf_export import export_gguf

    if len(set(db.shape.layers)) != 1:
        raise UserError("the llama.cpp latency table needs a dense model whose layers share one shape; "
                        "use --latency-engine transformers for this model")
    tokenizer = proxy_tokenizer()
    proxy = proxy_model(dense, 2 * COPIES + 1, tokenizer)
    proxy_shape = adapter.shape(proxy)
    files = {}
    with quiet_writers():
        for key, (kind, layer, level) in tqdm(distinct_shapes(db).items(), desc="latency table: GGUF files",
                                              disable=not progress):
            lv = db.levels[kind][layer][level]
            name = "-".join(map(str, key))
            pair = []
            for n in (COPIES, 2 * COPIES):
                spec = shape_spec(proxy_shape, kind, lv, n)
                hf = export_checkpoint(adapter.slice(proxy, spec), folder / f"hf-{name}-{n}", tokenizer=tokenizer)
                pair.append(export_gguf(hf, folder / f"gguf-{name}-{n}", quant=QUANT, tokenizer_pre="gpt-2").path)
            files[key] = (pair[0], pair[1])
    return files


@contextmanager
def quiet_writers():
    """The stand-in files are scaffolding: no per-file log lines or shard progress bars beside the table's own bar."""
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(name) for name in ("gguf", "evoprune.serving.gguf_export", "evoprune.arch.export")]
    levels = [logger.level for logger in loggers]
    bars = hf_logging.is_progress_bar_enabled()
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def measure_llamacpp_table(files: dict[tuple, tuple[Path, Path]], db: Database, settings: LatencySettings,
                           threads: int, repack: bool = True, progress: bool = True) -> dict:
    """Milliseconds per distinct block shape in llama.cpp, and the ladders of costs built from them.

    The files are timed in an engine child process (`engine_timing.sample_gguf_calls`), so that a crash
    in llama.cpp is a one-line error, not the end of the run.
    """
    if settings.mode not in MODES:
        raise UserError(f"latency mode must be one of {', '.join(MODES)}, got {settings.mode!r}")
    if settings.tokens <= 0 or settings.repeats <= 0 or settings.warmup < 0:
        raise UserError("latency tokens and repeats must be positive and warm-up >= 0")
    by_file = {(key, n): path for key, pair in files.items() for n, path in zip((COPIES, 2 * COPIES), pair)}
    label = f"the latency table's {len(by_file)} stand-in {QUANT} GGUF files"
    samples = run_isolated(sample_gguf_calls, by_file, settings.mode, settings.tokens, settings.warmup,
                           settings.repeats, SAMPLE_SECONDS, threads, repack, progress, label=label, repack=repack)
    floor = 1e-6  # ms: a block is never free, even when noise swallows its time
    ms = {key: max(floor, 1000 * (min(samples[key, 2 * COPIES]) - min(samples[key, COPIES])) / COPIES)
          for key in files}
    median_ms = {key: 1000 * (statistics.median(samples[key, 2 * COPIES]) - statistics.median(samples[key, COPIES]))
                 / COPIES for key in files}
    return {"settings": asdict(settings), "engine": "llamacpp", "quant": QUANT, "threads": threads,
            "repack": repack, "copies": COPIES, "llama_cpp_python": llama_cpp_version(),
            "block_ms": {"/".join(map(str, k)): float(f"{v:.4g}") for k, v in ms.items()},  # the floor stays > 0
            "block_ms_median": {"/".join(map(str, k)): float(f"{v:.4g}") for k, v in median_ms.items()},
            "costs": monotone_costs(db, ms)}


def llamacpp_table_key(db: Database, settings: LatencySettings, threads: int, repack: bool = True) -> dict:
    """Everything a table measured in llama.cpp depends on (JSON types)."""
    llama_cpp = require_llama_cpp()
    blocks = sorted("/".join(map(str, key)) for key in distinct_shapes(db))
    key = {"settings": asdict(settings), "shape": db.shape.to_dict(), "blocks": blocks, "engine": "llamacpp",
           "quant": QUANT, "copies": COPIES, "proxy_vocab": PROXY_VOCAB, "threads": threads, "repack": repack,
           "llama_cpp_python": llama_cpp_version(),
           "system": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
           "machine": machine_description(torch.device("cpu"))}
    return json.loads(json.dumps(key))


def llamacpp_cost_table(dense: PreTrainedModel, adapter: ModelAdapter, db: Database, path: Path,
                        settings: LatencySettings, threads: int | None = None, repack: str | bool = "auto",
                        progress: bool = True) -> CostTable:
    """The latency CostTable timed in llama.cpp: measured once, then read back from `path` (resume).

    Args:
        threads: llama.cpp CPU threads (None: this process's cores).
        repack: llama.cpp's weight repacking (`llamacpp.repack_setting`); the table is timed as served.

    Raises:
        UserError: llama.cpp is not installed, the model's layers differ in shape, or the saved
            table at `path` is corrupt or was measured with other settings.
    """
    require_llama_cpp()
    threads = threads or default_threads()
    repack = repack_setting(repack)

    def measure() -> dict:
        with tempfile.TemporaryDirectory(prefix="evoprune-latency-") as tmp:
            files = shape_files(dense, adapter, db, Path(tmp), progress)
            return measure_llamacpp_table(files, db, settings, threads, repack, progress)

    return cached_cost_table(path, settings, llamacpp_table_key(db, settings, threads, repack), measure)
