"""Weights loaded as memory-mapped views of their files: equal to a normal load, never copied, never written back."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from evoprune.errors import UserError
from evoprune.models import load_model
from evoprune.weights.mapped import MappedWeights


@pytest.fixture
def model_dir(tiny_run_inputs, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_run_inputs / "dense", folder)
    return folder


def test_a_mapped_model_computes_what_from_pretrained_computes(model_dir):
    mapped = load_model(str(model_dir), with_tokenizer=False).model
    copied = AutoModelForCausalLM.from_pretrained(model_dir)
    assert mapped.mapped_weights.materialized_bytes == 0
    assert mapped.mapped_weights.mapped_bytes == sum(p.numel() * p.element_size() for p in mapped.parameters())
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(mapped(ids).logits, copied(ids).logits)


def test_writing_a_mapped_weight_leaves_the_file_unchanged(model_dir):
    first = load_model(str(model_dir), with_tokenizer=False).model
    with torch.no_grad():
        first.model.layers[0].mlp.down_proj.weight.mul_(2.0)
    again = load_model(str(model_dir), with_tokenizer=False).model
    assert torch.equal(again.model.layers[0].mlp.down_proj.weight * 2.0, first.model.layers[0].mlp.down_proj.weight)


def test_another_dtype_is_converted_and_counted(model_dir):
    weights = MappedWeights(model_dir, torch.bfloat16)
    assert {t.dtype for t in weights.tensors.values() if t.is_floating_point()} == {torch.bfloat16}
    assert weights.materialized_bytes == sum(t.numel() * 2 for t in weights.tensors.values())
    model = load_model(str(model_dir), dtype="bfloat16", with_tokenizer=False).model
    assert next(model.parameters()).dtype == torch.bfloat16


def test_a_truncated_file_is_refused_in_one_line(model_dir):
    file = next(model_dir.glob("*.safetensors"))
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt|not a readable"):
        MappedWeights(model_dir)
