"""Hidden-state distillation term of compute_loss."""

from __future__ import annotations

import pytest

from evoprune.errors import UserError
from evoprune.training import TrainConfig, compute_loss


def test_hidden_term_is_added_and_zero_for_a_copy(make_llama, blocks):
    student, teacher = make_llama(seed=0), make_llama(seed=1)
    plain = compute_loss(student, blocks[:2], TrainConfig(loss="lm+kd"), teacher)
    parts = compute_loss(student, blocks[:2], TrainConfig(loss="lm+kd", hidden_weight=2.0), teacher)
    assert parts.hidden is not None and float(parts.hidden) > 0
    assert float(parts.total) == pytest.approx(float(plain.total) + 2.0 * float(parts.hidden), rel=1e-5)
    same = compute_loss(student, blocks[:2], TrainConfig(loss="kd", hidden_weight=1.0), make_llama(seed=0))
    assert float(same.hidden) == pytest.approx(0.0, abs=1e-10)


def test_hidden_term_needs_equal_hidden_sizes_and_a_teacher(make_llama, blocks):
    with pytest.raises(UserError, match="equal hidden sizes"):
        compute_loss(make_llama(), blocks[:1], TrainConfig(loss="kd", hidden_weight=1.0),
                     make_llama(hidden_size=16, num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(UserError, match="needs a teacher loss"):
        TrainConfig(loss="lm", hidden_weight=1.0)
