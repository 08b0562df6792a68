"""Each selection draws its fitness blocks from a pool: reproducible per seed, fresh across seeds."""

from __future__ import annotations

import pytest
import torch

from evoprune.errors import UserError
from evoprune.evaluation.teacher import TeacherCache
from evoprune.darwinlm.fitness import FitnessPool
from evoprune_tests import tiny_gqa_llama


@pytest.fixture
def pool(tmp_path):
    blocks = torch.randint(0, 99, (12, 8), generator=torch.Generator().manual_seed(0))
    cache = TeacherCache.build(tiny_gqa_llama(), blocks, tmp_path / "t.safetensors", top_k=5, batch_size=4)
    return FitnessPool(blocks, cache, [2, 4])


def test_draws_are_subsets_of_the_pool_fixed_by_the_seed(pool):
    blocks, teachers = pool.draw(3)
    assert [len(b) for b in blocks] == [2, 4]
    for b, t in zip(blocks, teachers):
        assert torch.equal(b, pool.blocks[t.indices])
        t.check_blocks(b)
    again, _ = pool.draw(3)
    assert all(torch.equal(x, y) for x, y in zip(blocks, again))
    draws = {tuple(t.indices) for seed in range(20) for t in pool.draw(seed)[1][1:]}
    assert len(draws) > 10  # fresh blocks from one selection to the next


def test_a_stage_larger_than_the_pool_is_refused(pool):
    with pytest.raises(UserError, match="fitness_pool"):
        FitnessPool(pool.blocks, pool.teacher, [13])
