"""A bf16 checkpoint computed in fp32 one module at a time: same results as converting it whole, weights stay bf16."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from evoprune.arch.adapter import adapter_for
from evoprune.models import load_model
from evoprune.weights.layerwise import capture_first_layer_inputs
from evoprune.weights.compute_dtype import compute_dtype_of, weights_in


@pytest.fixture
def bf16_dir(tiny_run_inputs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "dense", dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    return tmp_path / "bf16"


def test_layers_run_in_fp32_and_give_the_logits_of_the_fp32_converted_model(bf16_dir):
    hooked = load_model(str(bf16_dir), dtype="bfloat16", with_tokenizer=False).model
    assert compute_dtype_of(hooked) == torch.float32
    converted = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16).float()
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = hooked(ids).logits
        expected = converted(ids).logits
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert {p.dtype for p in hooked.parameters()} == {torch.bfloat16}


def test_an_exception_inside_a_layer_call_restores_the_stored_weights(bf16_dir):
    loaded = load_model(str(bf16_dir), dtype="bfloat16", with_tokenizer=False)
    blocks = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    inputs = capture_first_layer_inputs(loaded.model, loaded.adapter, blocks, batch_size=2)  # raises in layer 0
    assert inputs.hidden[0].dtype == torch.float32
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_compute_dtype_can_be_the_stored_one(bf16_dir):
    model = load_model(str(bf16_dir), dtype="bfloat16", compute_dtype="bfloat16", with_tokenizer=False).model
    assert compute_dtype_of(model) == torch.bfloat16


def test_weights_in_converts_only_inside_the_block(tiny_run_inputs):
    model = AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "dense", dtype=torch.bfloat16)
    head = model.get_output_embeddings()
    stored = head.weight.data_ptr()
    with weights_in(head, torch.float32):
        assert head.weight.dtype == torch.float32
    assert head.weight.data_ptr() == stored and head.weight.dtype == torch.bfloat16
    assert adapter_for(model.config) is not None
