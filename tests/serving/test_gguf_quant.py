"""Quantized GGUF export: llama.cpp's quantizer, and the fallbacks predicted before it runs."""

from __future__ import annotations

import pytest

from transformers import LlamaConfig, LlamaForCausalLM

from evoprune_tests import TinyCase
from serving.conftest import VOCAB, GgufCase, build_folder, eval_ids
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.serving.gguf_export import export_gguf
from evoprune.serving.gguf_quant import LAYER_MATRICES, tensor_types

pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llama.cpp engine) is not installed")

from evoprune.serving.llamacpp import LlamaCppModel  # noqa: E402

K_QUANTS = {"q4_k", "q5_k", "q6_k"}


def layer_matrix_types(path, stand_ins=()) -> dict[str, str]:
    return {name: kind for name, kind in tensor_types(path).items()
            if name.startswith("blk.") and name.split(".")[2] in LAYER_MATRICES and name not in stand_ins}


STAND_INS = {"blk.0.attn_output.weight", "blk.2.ffn_gate.weight", "blk.2.ffn_up.weight", "blk.2.ffn_down.weight"}


@pytest.mark.parametrize("quant, native", [("q8_0", {"q8_0"}), ("q4_k_m", K_QUANTS)])
def test_predicted_fallbacks_are_the_real_ones(gguf_folders, tmp_path, quant, native):
    result = export_gguf(gguf_folders["llama-hetero"], tmp_path / quant, quant=quant)
    types = layer_matrix_types(result.path, STAND_INS)
    actual = {name for name, kind in types.items() if kind not in native}
    assert set(result.fallback_tensors) == actual
    assert result.fallback_layers == sorted({int(name.split(".")[1]) for name in actual})
    for name, predicted in result.fallback_tensors.items():
        assert (types[name] == "f16") == (predicted == "f16"), name
    if quant == "q8_0":  # MLP widths 19, 5, 37, 30 and attention width 2 x 8 are not multiples of 32
        assert result.fallback_layers == [0, 1, 3, 4]
        assert "blk.2.attn_output.weight" not in actual  # 4 heads x 8 = 32
    with LlamaCppModel(result.path, n_ctx=64) as model:
        assert model.logits(eval_ids()).shape == (40, VOCAB)


def test_widths_at_multiples_of_32_quantize_fully_to_q8_0(tmp_path, tiny_tokenizer):
    def spec(shape):
        layers = [LayerSpec.from_groups(layer, [0, 1], None, list(range(32))) for layer in shape.layers]
        return SubnetSpec(shape, layers).validate()

    dense = TinyCase("llama", LlamaConfig, LlamaForCausalLM, dict(vocab_size=VOCAB, num_key_value_heads=2))
    case = GgufCase("q8", dense, spec, "MLP 32, attention 4 x 8")
    result = export_gguf(build_folder(case, tmp_path / "hf", tiny_tokenizer), tmp_path / "gguf", quant="q8_0")
    assert result.fallback_layers == [] and result.fallback_tensors == {}
    assert set(layer_matrix_types(result.path).values()) == {"q8_0"}
    assert not list((tmp_path / "gguf").glob("*f16*"))  # the f16 step is gone
