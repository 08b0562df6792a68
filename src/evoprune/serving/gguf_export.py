"""`evoprune export --format gguf`: a (pruned) HF checkpoint folder as a GGUF file that llama.cpp runs.

Every model is written with llama.cpp's `deci` architecture, whose per-layer head counts and MLP
widths express heterogeneous pruned models (see `gguf_layout`). Weights are written as f32 or f16
one tensor at a time; q8_0 and q4_k_m are then made from the f16 file by llama.cpp's own quantizer.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from ..atomic import check_output_dir, staged_dir
from ..errors import UserError
from ..models import check_weight_files, check_weight_shapes, read_config
from .gguf_layout import DeciLayout, deci_layout, llama3_rope_factors
from .gguf_quant import Quant, fallback_advice, predict_fallbacks, quant_by_name, quantize
from .gguf_tensors import CheckpointWeights, GgufTensor, tensor_plan
from .gguf_tokenizer import GgufVocab, read_vocab

log = logging.getLogger(__name__)

GGUF_FILE = "model.gguf"
# copied beside the GGUF, so that `evoprune eval --engine llamacpp` makes the same token ids as transformers
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.DECI]


@dataclass(frozen=True)
class GgufExport:
    """What `export_gguf` wrote."""

    path: Path  # the .gguf file
    size_bytes: int
    arch: str  # GGUF architecture ("deci")
    quant: str  # f32 | f16 | q8_0 | q4_k_m
    n_layers: int  # layers in the file (layers with neither block are left out)
    tokenizer_pre: str  # llama.cpp pre-tokenizer name written
    fallback_layers: list[int] = field(default_factory=list)  # layers with matrices not quantized to `quant`
    fallback_tensors: dict[str, str] = field(default_factory=dict)  # GGUF name -> type it falls back to


def export_gguf(model_dir: str | Path, out: str | Path, quant: str = "f16", force: bool = False,
                tokenizer_pre: str | None = None) -> GgufExport:
    """Write the HF checkpoint in `model_dir` as `out/model.gguf`, atomically.

    The folder's tokenizer files (`TOKENIZER_FILES`, those present) are copied beside it.

    Args:
        model_dir: HF folder (config.json, *.safetensors, tokenizer.json), dense or pruned by evoprune.
        out: output folder; refused if it exists and is not empty, unless `force`.
        quant: f32 | f16 | q8_0 | q4_k_m.
        force: replace an existing `out` (only once the new one is complete).
        tokenizer_pre: llama.cpp pre-tokenizer name, for a byte-level BPE tokenizer that llama.cpp's
            converter does not recognize.

    Returns:
        The path, size, architecture, type and the layers whose matrices fall back to another type.

    Raises:
        UserError: a bad folder, an existing `out`, or a model llama.cpp's deci graph cannot express.
    """
    q = quant_by_name(quant)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"model folder not found: {model_dir}")
    check_output_dir(out, force)
    config = read_config(model_dir)
    check_weight_files(model_dir, allow_pickle=False)
    check_weight_shapes(model_dir, config)
    layout = deci_layout(config)
    vocab = read_vocab(model_dir, layout.vocab_size, tokenizer_pre)
    with staged_dir(out, force=force) as tmp, CheckpointWeights(model_dir) as weights:
        plan = tensor_plan(layout, weights, llama3_rope_factors(config))
        fallbacks = predict_fallbacks(plan, q)
        if fallbacks:
            log.warning(fallback_advice(plan, fallbacks, q))
        target = tmp / GGUF_FILE
        if q.quantized:
            full = tmp / f".{GGUF_FILE}.f16"
            write_gguf(full, layout, vocab, plan, quant_by_name("f16"), name=model_dir.name)
            quantize(full, target, q)
            full.unlink()
        else:
            write_gguf(target, layout, vocab, plan, q, name=model_dir.name)
        size = target.stat().st_size
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, tmp / name)
        fallback_layers = sorted({t.layer for t in plan if t.name in fallbacks})
    path = Path(out) / GGUF_FILE
    log.info("wrote %s (%s, %s, %d layers, %.1f MiB)", path, ARCH, q.name, len(layout.layers), size / 2**20)
    return GgufExport(path, size, ARCH, q.name, len(layout.layers), vocab.pre,
                      fallback_layers, fallbacks)


def write_gguf(path: Path, layout: DeciLayout, vocab: GgufVocab, plan: list[GgufTensor], quant: Quant,
               name: str) -> None:
    """Write metadata, tokenizer and tensors; matrices as `quant` (f32 or f16), vectors as f32."""
    writer = gguf.GGUFWriter(path, ARCH)
    add_metadata(writer, layout, quant, name)
    vocab.add_to(writer)
    dtypes = [np.dtype(np.float16 if quant.name == "f16" and len(t.shape) > 1 else np.float32) for t in plan]
    for t, dtype in zip(plan, dtypes):
        writer.add_tensor_info(t.name, t.shape, dtype, int(np.prod(t.shape)) * dtype.itemsize)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, dtype in zip(plan, dtypes):
            values = t.load()
            assert tuple(values.shape) == t.shape, (t.name, tuple(values.shape), t.shape)
            writer.write_tensor_data(values.numpy().astype(dtype, copy=False))
    finally:
        writer.close()


def add_metadata(writer: gguf.GGUFWriter, layout: DeciLayout, quant: Quant, name: str) -> None:
    """The deci hyper-parameters: per-layer head counts and MLP widths, one head size, RoPE, norm eps."""
    layers = layout.layers
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(len(layers))
    writer.add_context_length(layout.context_length)
    writer.add_embedding_length(layout.hidden_size)
    writer.add_vocab_size(layout.vocab_size)
    writer.add_head_count([layer.n_head for layer in layers])
    writer.add_head_count_kv([layer.n_head_kv for layer in layers])
    writer.add_feed_forward_length([layer.n_ff for layer in layers])
    writer.add_key_length(layout.head_dim)
    writer.add_value_length(layout.head_dim)
    writer.add_rope_dimension_count(layout.head_dim)
    writer.add_rope_freq_base(layout.rope_theta)
    if layout.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(layout.rope_factor)
    writer.add_layer_norm_rms_eps(layout.rms_norm_eps)
    writer.add_file_type(quant.file_type)
