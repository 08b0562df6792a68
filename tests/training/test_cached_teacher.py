"""Distillation from a cached teacher: equal to the online loss at k = vocab, exact bucket KL below it, never stale."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

from evoprune.arch.adapter import adapter_for
from evoprune.config import EvalConfig
from evoprune.errors import UserError
from evoprune.evaluation.blocks import next_token_logits
from evoprune.evaluation.suite import teacher_for
from evoprune.evaluation.teacher import TeacherCache, kl_to_teacher
from evoprune.evaluation.teacher_subset import TeacherSubset
from evoprune.models import LoadedModel
from evoprune.training import CachedTeacher, TrainConfig, cached_kd_loss, kd_loss, train_on_blocks
from evoprune.training.cached_teacher import teacher_identity

VOCAB = 99


@pytest.fixture
def teacher(make_llama):
    model = make_llama(seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaked, like a trained LM
    return model


def build_cache(teacher, blocks, path, mode: str, temperature: float) -> CachedTeacher:
    """mode "full": full log-probs; "top-vocab": top-k storage with k = vocab; "top-k=N": k = N."""
    top_k = None if mode == "full" else VOCAB if mode == "top-vocab" else int(mode.split("=")[1])
    cache = TeacherCache.build(teacher, blocks, path, top_k=top_k, batch_size=4, full_max_bytes=0,
                               temperature=temperature)
    assert cache.top_k == top_k and cache.temperature == temperature
    return CachedTeacher(cache, blocks)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("mode", ["full", "top-vocab"])
def test_loss_and_gradient_equal_the_online_ones_when_k_is_the_vocabulary(llama, teacher, blocks, tmp_path, mode,
                                                                            temperature):
    cached = build_cache(teacher, blocks, tmp_path / "t.safetensors", mode, temperature)
    batch = blocks[[3, 4, 0]]  # out of order and not contiguous: read back by content
    with torch.no_grad():
        teacher_logits = next_token_logits(teacher, batch)
    params = [p for p in llama.parameters()]
    online = kd_loss(next_token_logits(llama, batch), teacher_logits, temperature)
    online_grads = torch.autograd.grad(online, params)
    offline = cached.kd_loss(next_token_logits(llama, batch), batch, temperature)
    offline_grads = torch.autograd.grad(offline, params)
    assert online.item() > 0.1
    assert offline.item() == pytest.approx(online.item(), rel=1e-5)
    for a, b in zip(online_grads, offline_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_loss_is_the_bucket_kl_of_the_tempered_distributions(llama, teacher, blocks, tmp_path, temperature):
    k = 5
    cached = build_cache(teacher, blocks, tmp_path / "t.safetensors", f"top-k={k}", temperature)
    with torch.no_grad():
        s, t = next_token_logits(llama, blocks).double(), next_token_logits(teacher, blocks).double()
    p, q = (t / temperature).softmax(-1), (s / temperature).softmax(-1)
    top = p.topk(k, dim=-1).indices
    p_b = torch.cat([p.gather(-1, top), 1 - p.gather(-1, top).sum(-1, keepdim=True)], -1)
    q_b = torch.cat([q.gather(-1, top), 1 - q.gather(-1, top).sum(-1, keepdim=True)], -1)
    expected = (p_b * (p_b / q_b).log()).sum(-1).mean() * temperature**2
    got = cached.kd_loss(s.float(), blocks, temperature)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    assert 0 < got.item() < kd_loss(s.float(), t.float(), temperature).item()


@pytest.mark.parametrize("mode", ["full", "top-vocab"])
def test_training_on_the_cached_teacher_reaches_the_online_weights(make_llama, teacher, blocks, tmp_path, mode):
    cfg = TrainConfig(lr=3e-3, loss="lm+kd", kd_temperature=2.0, batch_size=2, grad_accum=2)
    online, offline = make_llama(seed=0), make_llama(seed=0)
    cached = build_cache(teacher, blocks, tmp_path / "t.safetensors", mode, 2.0)
    a = train_on_blocks(online, blocks, 6 * 2 * 16, cfg, teacher=teacher)
    b = train_on_blocks(offline, blocks, 6 * 2 * 16, cfg, teacher=cached)
    assert a.steps == b.steps == 3
    assert b.losses == pytest.approx(a.losses, rel=1e-5)
    for (name, x), y in zip(online.named_parameters(), offline.parameters()):
        assert torch.allclose(x, y, rtol=0, atol=1e-5), name
    assert not torch.equal(online.model.layers[0].mlp.down_proj.weight,
                           make_llama(seed=0).model.layers[0].mlp.down_proj.weight)


def test_other_blocks_or_temperature_are_refused(llama, teacher, blocks, blocks_of, tmp_path):
    cached = build_cache(teacher, blocks, tmp_path / "t.safetensors", "top-k=5", 2.0)
    other = blocks_of(6, 16, seed=7)
    with pytest.raises(UserError, match="other token blocks"):
        CachedTeacher(cached.cache, other)
    cfg = TrainConfig(loss="kd", kd_temperature=2.0, batch_size=2)
    with pytest.raises(UserError, match="not in the teacher cache"):
        train_on_blocks(llama, torch.cat([blocks[:2], other[:1]]), 32, cfg, teacher=cached)
    with pytest.raises(UserError, match="temperature 2, but the distillation temperature is 1"):
        train_on_blocks(llama, blocks, 32, TrainConfig(loss="kd", batch_size=2), teacher=cached)
    with pytest.raises(UserError, match="hidden-state distillation needs the teacher model"):
        train_on_blocks(llama, blocks, 32, TrainConfig(loss="kd", kd_temperature=2.0, hidden_weight=1.0,
                                                       batch_size=2), teacher=cached)
    for cache, its_blocks in ((cached.cache, blocks), (TeacherSubset(cached.cache, blocks, [1, 2]), blocks[1:3])):
        with pytest.raises(UserError, match="temperature 2, not 1"):  # KL is measured at T = 1 only
            kl_to_teacher(llama, its_blocks, cache)


def _loaded(model) -> LoadedModel:
    return LoadedModel(model, None, adapter_for(model.config), Path("/nowhere"), "teacher")


def test_user_cache_is_reused_only_for_the_same_teacher_blocks_and_temperature(teacher, blocks, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    first = CachedTeacher.for_blocks(_loaded(teacher), blocks, top_k=5, temperature=2.0)
    expected = first.cache.read(0, 6).logprobs.clone()
    stamp = first.cache.path.stat().st_mtime_ns
    again = CachedTeacher.for_blocks(_loaded(teacher), blocks, top_k=5, temperature=2.0)
    assert again.cache.path == first.cache.path and again.cache.path.stat().st_mtime_ns == stamp  # reused
    assert again.cache.teacher_id == teacher_identity(_loaded(teacher))
    paths = {first.cache.path,
             CachedTeacher.for_blocks(_loaded(teacher), blocks, top_k=5, temperature=1.0).cache.path,
             CachedTeacher.for_blocks(_loaded(teacher), blocks[:4], top_k=5, temperature=2.0).cache.path}
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        changed.model.layers[0].self_attn.o_proj.weight.add_(0.5)
    other = CachedTeacher.for_blocks(_loaded(changed), blocks, top_k=5, temperature=2.0)
    paths.add(other.cache.path)
    assert len(paths) == 4  # temperature, blocks and teacher weights each give their own cache
    # a file of another teacher or temperature found at a teacher's path is rebuilt, not used
    shutil.copy(other.cache.path, first.cache.path)
    rebuilt = teacher_for(teacher, teacher_identity(_loaded(teacher)), blocks, EvalConfig(top_k=5), 4,
                          progress=False, temperature=2.0)
    assert rebuilt.teacher_id == teacher_identity(_loaded(teacher)) != other.cache.teacher_id
    assert torch.equal(rebuilt.read(0, 6).logprobs, expected)


def test_user_cache_follows_the_teachers_weights_not_its_path(teacher, blocks, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    here = LoadedModel(teacher, None, adapter_for(teacher.config), Path("/models/teacher"), "teacher")
    first = CachedTeacher.for_blocks(here, blocks, top_k=5, temperature=2.0)
    elsewhere = LoadedModel(copy.deepcopy(teacher), None, adapter_for(teacher.config), Path("/copy"), "copy")
    assert CachedTeacher.for_blocks(elsewhere, blocks, top_k=5, temperature=2.0).cache.path == first.cache.path
    with torch.no_grad():  # the same object at the same path, changed in place
        teacher.model.layers[1].mlp.down_proj.weight.mul_(2.0)
    changed = CachedTeacher.for_blocks(here, blocks, top_k=5, temperature=2.0)
    assert changed.cache.path != first.cache.path
    assert changed.cache.teacher_id == teacher_identity(here) != first.cache.teacher_id
    logits = next_token_logits(teacher, blocks[:2])
    assert changed.kd_loss(logits, blocks[:2], 2.0).item() == pytest.approx(0.0, abs=1e-5)
    assert first.kd_loss(logits, blocks[:2], 2.0).item() > 1e-4


def test_cached_kd_loss_checks_positions(llama, teacher, blocks, tmp_path):
    cached = build_cache(teacher, blocks, tmp_path / "t.safetensors", "top-k=5", 1.0)
    logits = next_token_logits(llama, blocks[:2])
    with pytest.raises(UserError, match="positions"):
        cached_kd_loss(logits, cached.slice_for(blocks[:3]), 1.0)
