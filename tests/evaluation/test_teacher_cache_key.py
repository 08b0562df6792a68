"""teacher_for keys the user cache by the teacher's weights; the label (a path) names it only."""

from __future__ import annotations

import copy

import pytest
import torch

from evoprune.config import EvalConfig
from evoprune.evaluation import kl_to_teacher
from evoprune.evaluation.suite import teacher_for


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "teacher"


def test_a_teacher_changed_under_the_same_label_is_recomputed(teacher, student, blocks, user_cache):
    cfg = EvalConfig(top_k=8)
    first = teacher_for(teacher, "/models/dense", blocks, cfg, 2, progress=False)
    assert kl_to_teacher(student, blocks, first) > 1e-3
    with torch.no_grad():  # in place, on the very object whose fingerprint is memoized
        for mine, theirs in zip(teacher.parameters(), student.parameters()):
            mine.copy_(theirs)
    second = teacher_for(teacher, "/models/dense", blocks, cfg, 2, progress=False)
    assert second.path != first.path
    assert kl_to_teacher(student, blocks, second) == pytest.approx(0.0, abs=1e-6)
    assert len(list(user_cache.glob("*.safetensors"))) == 2


def test_the_same_weights_under_another_label_reuse_the_cache(teacher, blocks, user_cache):
    cfg = EvalConfig(top_k=8)
    first = teacher_for(teacher, "/models/dense", blocks, cfg, 2, progress=False)
    stamp = first.path.stat().st_mtime_ns
    again = teacher_for(copy.deepcopy(teacher), "/elsewhere/dense-copy", blocks, cfg, 2, progress=False)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
    assert again.teacher_id == first.teacher_id


def test_a_teacher_in_another_dtype_gets_its_own_cache(teacher, blocks, user_cache):
    cfg = EvalConfig(top_k=8)
    fp32 = teacher_for(teacher, "dense", blocks, cfg, 2, progress=False)
    bf16 = teacher_for(copy.deepcopy(teacher).to(torch.bfloat16), "dense", blocks, cfg, 2, progress=False)
    assert bf16.path != fp32.path and bf16.teacher_id != fp32.teacher_id
