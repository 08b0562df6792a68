"""Streamed KL of a model mixing full and sliding-window layers: each layer gets the mask of its own type."""

from __future__ import annotations

import random

import pytest
import torch

from evoprune_tests import CASES_BY_ID, random_spec
from evoprune.arch.adapter import adapter_for
from evoprune.evaluation.streamed_kl import streamed_kl
from evoprune.evaluation.teacher import TeacherCache, kl_to_teacher


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_kl_of_a_hybrid_sliding_window_model_equals_the_sliced_model(seed, tmp_path):
    dense = CASES_BY_ID["qwen2-mha-hybrid-sw4"].build()  # layer 0 full attention, layers 1-2 sliding window 4
    adapter = adapter_for(dense.config)
    blocks = torch.randint(0, 99, (5, 24), generator=torch.Generator().manual_seed(seed))
    teacher = TeacherCache.build(dense, blocks, tmp_path / "teacher.safetensors", top_k=None, batch_size=2)
    spec = random_spec(adapter.shape(dense), random.Random(seed), keep_hidden=True)
    whole = kl_to_teacher(adapter.slice(dense, spec), blocks, teacher, batch_size=2, per_block=True)
    streamed = streamed_kl(dense, adapter, spec, {}, blocks, teacher, batch_size=2, per_block=True)
    assert torch.allclose(streamed, whole, rtol=1e-4, atol=1e-6)
