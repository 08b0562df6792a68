"""GGUF weight types: written directly (f32, f16) or made by llama.cpp's own quantizer (q8_0, q4_k_m).

A quantized type packs each row in blocks (32 values for q8_0, 256 for the k-quants). llama.cpp
cannot quantize a matrix whose row length (its input width) is not a multiple of the block: it
falls back to a 32-block type (q5_0 / q8_0) for the k-quants, or to f16 when even 32 does not
divide the width. Pruned MLP widths often cause this, so the fallbacks are predicted before
quantizing, and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf

from ..errors import UserError
from .gguf_tensors import GgufTensor
from .llamacpp import quantize_gguf


@dataclass(frozen=True)
class Quant:
    """One `--quant` choice."""

    name: str
    file_type: gguf.LlamaFileType  # general.file_type, and the quantizer's target
    block: int  # values per quantization block along a row (1: not quantized)

    @property
    def quantized(self) -> bool:
        return self.block > 1


QUANTS = {q.name: q for q in (
    Quant("f32", gguf.LlamaFileType.ALL_F32, 1),
    Quant("f16", gguf.LlamaFileType.MOSTLY_F16, 1),
    Quant("q8_0", gguf.LlamaFileType.MOSTLY_Q8_0, 32),
    Quant("q4_k_m", gguf.LlamaFileType.MOSTLY_Q4_K_M, 256),
)}
LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# what the input width (row length) of a layer matrix is; every other one reads the hidden state
WIDTH_NAMES = {"ffn_down": "MLP widths", "attn_output": "attention widths (heads x head_dim)"}


def quant_by_name(name: str) -> Quant:
    if name not in QUANTS:
        raise UserError(f"unknown GGUF quantization {name!r}; choose one of {', '.join(QUANTS)}")
    return QUANTS[name]


def predict_fallbacks(plan: list[GgufTensor], quant: Quant) -> dict[str, str]:
    """Layer matrices llama.cpp will not quantize to `quant`: GGUF name -> the type it falls back to.

    Only real layer weights count; the zero stand-in blocks are left out.
    """
    if not quant.quantized:
        return {}
    out = {}
    for t in plan:
        width = t.shape[-1]
        real_matrix = t.layer is not None and not t.stand_in and t.kind in LAYER_MATRICES
        if real_matrix and width % quant.block:
            out[t.name] = "f16" if width % 32 else "32-block type (q5_0 / q8_0)"
    return out


def fallback_advice(plan: list[GgufTensor], fallbacks: dict[str, str], quant: Quant) -> str:
    """One line naming the widths that are not multiples of the block, and what would make them so."""
    by_name = {t.name: t for t in plan}
    widths: dict[str, set[int]] = {}
    for name in fallbacks:
        t = by_name[name]
        widths.setdefault(WIDTH_NAMES.get(t.kind, "hidden size"), set()).add(t.shape[-1])
    layers = sorted({by_name[name].layer for name in fallbacks})
    fixes = {"MLP widths": f"prune with --multiple {quant.block}",
             "attention widths (heads x head_dim)": "keep head counts whose width is a multiple",
             "hidden size": "the hidden size changes only with hidden-channel pruning"}
    return (f"{quant.name}: {len(fallbacks)} matrices in layers {layers} stay in a larger type, as their "
            + "; ".join(f"{group} {sorted(w)}" for group, w in widths.items())
            + f" are not multiples of {quant.block} ({'; '.join(fixes[group] for group in widths)})")


def quantize(source: Path, target: Path, quant: Quant, threads: int = 0) -> None:
    """Quantize the f16/f32 GGUF `source` into `target` with llama.cpp's quantizer (its default settings),
    in a child process (`llamacpp.quantize_gguf`).

    Raises:
        UserError: llama-cpp-python missing, or llama.cpp crashed.
        RuntimeError: the quantizer failed.
    """
    quantize_gguf(source, target, int(quant.file_type), threads)


def tensor_types(path: Path) -> dict[str, str]:
    """GGUF tensor name -> its stored type name (lower case, e.g. "q4_k"), read from the file."""
    reader = gguf.GGUFReader(path)
    return {t.name: t.tensor_type.name.lower() for t in reader.tensors}
