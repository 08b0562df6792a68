"""Objectives: exact counts, finite quality, cached latency, named errors."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from evoprune.arch.adapter import adapter_for
from evoprune.errors import UserError
from evoprune.evaluation.teacher import TeacherCache
from evoprune.whittle.objectives import check_objectives, make_objectives
from evoprune.whittle.space import SearchSpace


def test_objectives_of_sampled_configs(tiny_llama, tmp_path):
    adapter = adapter_for(tiny_llama.config)
    shape = adapter.shape(tiny_llama)
    space = SearchSpace(shape, tuple(range(len(shape.layers))), multiple=8)
    blocks = torch.randint(0, tiny_llama.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    teacher = TeacherCache.build(tiny_llama, blocks, tmp_path / "t.safetensors", top_k=None)
    evaluate = make_objectives(tiny_llama, adapter, space, ["kl", "params", "latency"], blocks, teacher,
                               tmp_path / "latency.json", batch_size=2,
                               latency_workload={"prompt_len": 8, "new_tokens": 4, "repeats": 1, "warmup": 0})
    full = evaluate(space.largest())
    assert abs(full[0]) < 1e-5 and full[1] == sum(p.numel() for p in tiny_llama.parameters())
    config = space.sample(random.Random(3))
    kl, params, seconds = evaluate(config)
    assert kl > 0 and params == sum(p.numel() for p in adapter.slice(tiny_llama, space.to_spec(config)).parameters())
    assert math.isfinite(seconds) and seconds > 0
    assert json.loads((tmp_path / "latency.json").read_text())[json.dumps(config, sort_keys=True)] == seconds
    assert evaluate(config)[2] == seconds  # cached, not timed again


def test_bad_objectives_are_named():
    with pytest.raises(UserError, match="unknown: speed"):
        check_objectives(["kl", "speed"])
    with pytest.raises(UserError, match="2 or 3"):
        check_objectives(["kl"])
