"""Distillation losses: KL(teacher ‖ student) at temperature T, and lm+kd."""

from __future__ import annotations

import copy

import pytest
import torch

from evoprune.errors import UserError
from evoprune.evaluation.blocks import next_token_logits
from evoprune.evaluation.perplexity import mean_nll
from evoprune.training import TrainConfig, compute_loss, kd_loss, train_on_blocks


def test_kd_against_an_identical_teacher_starts_at_zero(llama, blocks):
    teacher = copy.deepcopy(llama)
    result = train_on_blocks(llama, blocks, 3 * 32, TrainConfig(lr=1e-3, loss="kd", batch_size=2), teacher=teacher)
    assert abs(result.losses[0]) < 1e-6
    assert result.steps == 3
    assert all(loss < 1e-3 for loss in result.losses)


def test_lm_plus_kd_runs_and_mixes(make_llama, blocks):
    student, teacher = make_llama(seed=0), make_llama(seed=1)
    cfg = TrainConfig(lr=1e-3, loss="lm+kd", kd_weight=0.25, kd_temperature=2.0, batch_size=2)
    batch = blocks[:2]
    parts = compute_loss(student, batch, cfg, teacher)
    assert parts.kd > 0 and parts.total.item() == pytest.approx(0.75 * parts.lm.item() + 0.25 * parts.kd.item())
    assert parts.lm.item() == pytest.approx(mean_nll(student, batch), abs=1e-5)
    result = train_on_blocks(student, blocks, 4 * 32, cfg, teacher=teacher)
    assert result.steps == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[0] == pytest.approx(parts.total.item(), abs=1e-5)
    assert not teacher.training


def test_kd_loss_matches_reference(make_llama, blocks):
    s = next_token_logits(make_llama(seed=0), blocks)
    t = next_token_logits(make_llama(seed=1), blocks) * 3
    for temp in (1.0, 2.0):
        p = (t.double() / temp).log_softmax(-1)
        q = (s.double() / temp).log_softmax(-1)
        expected = (p.exp() * (p - q)).sum(-1).mean() * temp**2
        assert kd_loss(s, t, temp).item() == pytest.approx(expected.item(), rel=1e-5)


def test_teacher_and_loss_must_agree(make_llama, llama, blocks):
    with pytest.raises(UserError, match="needs a teacher"):
        train_on_blocks(llama, blocks, 16, TrainConfig(loss="kd"))
    with pytest.raises(UserError, match="teacher was given"):
        train_on_blocks(llama, blocks, 16, TrainConfig(), teacher=copy.deepcopy(llama))
    with pytest.raises(UserError, match="vocabulary"):
        train_on_blocks(llama, blocks, 16, TrainConfig(loss="kd"), teacher=make_llama(vocab_size=120))
