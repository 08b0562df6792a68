"""A teacher subset reads some blocks of a cache and scores them as a cache of their own would."""

from __future__ import annotations

import pytest

from evoprune.errors import UserError
from evoprune.evaluation.teacher import TeacherCache, kl_to_teacher
from evoprune.evaluation.teacher_subset import TeacherSubset


@pytest.mark.parametrize("top_k", [None, 7])
def test_subset_kl_equals_the_full_caches_per_block_kl(teacher, student, blocks, tmp_path, top_k):
    cache = TeacherCache.build(teacher, blocks, tmp_path / "t.safetensors", top_k=top_k, batch_size=2)
    per_block = kl_to_teacher(student, blocks, cache, batch_size=2, per_block=True)
    indices = [0, 2, 3]  # a gap and a run: reads are split into runs
    subset = TeacherSubset(cache, blocks, indices)
    kl = kl_to_teacher(student, blocks[indices], subset, batch_size=2)
    assert kl == pytest.approx(float(per_block[indices].mean()), rel=1e-6)
    own = TeacherCache.build(teacher, blocks[indices], tmp_path / "own.safetensors", top_k=top_k, batch_size=2)
    assert kl == pytest.approx(kl_to_teacher(student, blocks[indices], own, batch_size=2), rel=1e-5)


def test_subset_refuses_other_blocks_and_bad_indices(teacher, blocks, tmp_path):
    cache = TeacherCache.build(teacher, blocks, tmp_path / "t.safetensors", top_k=7, batch_size=2)
    subset = TeacherSubset(cache, blocks, [1, 4])
    with pytest.raises(UserError, match="not blocks"):
        subset.check_blocks(blocks[[1, 3]])
    with pytest.raises(UserError, match="indices"):
        TeacherSubset(cache, blocks, [0, 5])
    with pytest.raises(UserError, match="other token blocks"):
        TeacherSubset(cache, blocks[:4], [0])
