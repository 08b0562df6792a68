"""Perplexity and KL from one pass equal the two separate measurements; their intervals are the t-intervals."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from evoprune.errors import UserError
from evoprune.evaluation import TeacherCache, kl_to_teacher
from evoprune.evaluation.heldout import heldout_figures, interval95
from evoprune.evaluation.perplexity import mean_nll


@pytest.mark.parametrize("top_k", [None, 7])
def test_one_pass_equals_perplexity_and_kl_measured_apart(teacher, student, blocks, tmp_path, top_k):
    cache = TeacherCache.build(teacher, blocks, tmp_path / "t.safetensors", top_k=top_k, batch_size=2,
                               full_max_bytes=0)
    figures = heldout_figures(student, blocks, cache, batch_size=3)
    row = figures.row()
    assert row["eval_nll"] == pytest.approx(mean_nll(student, blocks, batch_size=2), rel=1e-6)
    assert row["perplexity"] == pytest.approx(math.exp(row["eval_nll"]))
    assert row["kl_to_teacher"] == pytest.approx(kl_to_teacher(student, blocks, cache, batch_size=2), rel=1e-6)
    torch.testing.assert_close(figures.per_block_kl, kl_to_teacher(student, blocks, cache, per_block=True),
                               atol=1e-7, rtol=1e-6)
    low, high = row["perplexity_ci95"]
    assert low < row["perplexity"] < high
    assert heldout_figures(teacher, blocks, cache).row()["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)


def test_other_blocks_than_the_teachers_are_refused(teacher, student, blocks, tmp_path):
    cache = TeacherCache.build(teacher, blocks, tmp_path / "t.safetensors", top_k=7, batch_size=2)
    with pytest.raises(UserError, match="other token blocks"):
        heldout_figures(student, blocks[:-1], cache)


@pytest.mark.parametrize("n", [2, 5, 31, 40])
def test_interval_is_students_t_interval_of_the_block_means(n):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    low, high = interval95(values)
    expected = stats.t.interval(0.95, n - 1, loc=float(values.mean()), scale=stats.sem(values.numpy()))
    assert (low, high) == pytest.approx(expected, rel=1e-9)
    assert interval95(values[:1]) == (float(values[0]), float(values[0]))


def test_unseen_mean_interval_combines_the_domains_standard_errors():
    from evoprune.evaluation.unseen import geometric_mean_interval

    a = torch.tensor([2.0, 2.2, 2.4, 2.6], dtype=torch.float64)
    b = torch.tensor([3.0, 3.5], dtype=torch.float64)
    low, high = geometric_mean_interval([a, b])
    centre = (float(a.mean()) + float(b.mean())) / 2
    half = 1.96 * math.sqrt((float(a.var()) / 4 + float(b.var()) / 2) / 4)
    assert (low, high) == pytest.approx((math.exp(centre - half), math.exp(centre + half)))
