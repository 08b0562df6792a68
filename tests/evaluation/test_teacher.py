"""TeacherCache on disk and KL(teacher ‖ student) against the exact full-vocabulary KL."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from evoprune.errors import UserError
from evoprune.evaluation import TeacherCache, kl_to_teacher

VOCAB = 99


def build(teacher, blocks, path, **kwargs) -> TeacherCache:
    kwargs.setdefault("full_max_bytes", 0)
    return TeacherCache.build(teacher, blocks, path, batch_size=2, **kwargs)


def test_full_logprobs_give_exact_kl(teacher, student, blocks, exact_kl, tmp_path):
    cache = build(teacher, blocks, tmp_path / "t.safetensors", top_k=None)
    assert cache.top_k is None
    exact = exact_kl(teacher, student, blocks)
    assert kl_to_teacher(student, blocks, cache, batch_size=3) == pytest.approx(float(exact.mean()), abs=1e-5)
    per_block = kl_to_teacher(student, blocks, cache, per_block=True)
    torch.testing.assert_close(per_block, exact.mean(-1), atol=1e-5, rtol=0)


def test_top_k_equal_to_vocab_gives_exact_kl(teacher, student, blocks, exact_kl, tmp_path):
    cache = build(teacher, blocks, tmp_path / "t.safetensors", top_k=VOCAB)
    assert cache.top_k == VOCAB
    exact = float(exact_kl(teacher, student, blocks).mean())
    assert kl_to_teacher(student, blocks, cache) == pytest.approx(exact, abs=1e-5)


def test_top_k_kl_is_a_lower_bound_that_grows_with_k(teacher, student, blocks, exact_kl, tmp_path):
    exact = exact_kl(teacher, student, blocks)
    previous = torch.zeros(len(blocks), dtype=torch.float64)
    for k in (1, 4, 16, 64):
        cache = build(teacher, blocks, tmp_path / f"t{k}.safetensors", top_k=k)
        per_block = kl_to_teacher(student, blocks, cache, per_block=True)
        assert (per_block >= 0).all()
        assert (per_block <= exact.mean(-1) + 1e-6).all(), k
        assert (per_block >= previous - 1e-6).all(), k
        previous = per_block
    assert float(previous.mean()) > 0.5 * float(exact.mean())


def test_kl_of_a_model_to_its_own_cache_is_zero(teacher, blocks, tmp_path):
    for top_k, dtype in ((8, torch.float32), (None, torch.float32), (8, torch.float16), (None, torch.float16)):
        cache = build(teacher, blocks, tmp_path / f"t{top_k}{dtype}.safetensors", top_k=top_k, logprob_dtype=dtype)
        assert kl_to_teacher(teacher, blocks, cache) == pytest.approx(0.0, abs=1e-5), (top_k, dtype)


def test_fp16_storage_error_is_small(teacher, student, blocks, tmp_path):
    fp32 = kl_to_teacher(student, blocks, build(teacher, blocks, tmp_path / "a.safetensors", top_k=16))
    fp16 = kl_to_teacher(student, blocks, build(teacher, blocks, tmp_path / "b.safetensors", top_k=16,
                                                    logprob_dtype=torch.float16))
    assert fp16 == pytest.approx(fp32, abs=1e-3)


def test_file_holds_teacher_top_k_and_rest_mass(teacher, blocks, tmp_path):
    path = tmp_path / "t.safetensors"
    build(teacher, blocks, path, top_k=4)
    stored = load_file(path)
    with torch.no_grad():
        logprobs = teacher(input_ids=blocks).logits[:, :-1].float().log_softmax(-1)
    top_logprobs, top_ids = logprobs.topk(4, dim=-1)
    assert stored["token_ids"].dtype == torch.int32
    assert torch.equal(stored["token_ids"].long(), top_ids)
    torch.testing.assert_close(stored["logprobs"], top_logprobs)
    rest_mass = 1 - top_logprobs.double().exp().sum(-1)
    torch.testing.assert_close(stored["rest_logprob"].double().exp(), rest_mass, atol=1e-6, rtol=1e-5)
    n, positions = blocks.shape[0], blocks.shape[1] - 1
    assert path.stat().st_size - n * positions * (4 * 8 + 4) < 2048


def test_small_full_logprobs_are_stored_whole_by_default(teacher, student, blocks, exact_kl, tmp_path):
    cache = TeacherCache.build(teacher, blocks, tmp_path / "t.safetensors", top_k=4)
    assert cache.top_k is None
    assert kl_to_teacher(student, blocks, cache) == pytest.approx(float(exact_kl(teacher, student, blocks).mean()),
                                                                  abs=1e-5)


def test_load_reopens_the_same_distribution(teacher, student, blocks, tmp_path):
    path = tmp_path / "t.safetensors"
    built = build(teacher, blocks, path, top_k=8)
    loaded = TeacherCache.load(path, blocks)
    assert (loaded.top_k, loaded.vocab_size, loaded.n_blocks, loaded.seq_len) == (8, VOCAB, *blocks.shape)
    assert kl_to_teacher(student, blocks, loaded) == kl_to_teacher(student, blocks, built)


def test_other_blocks_raise_user_error(teacher, student, blocks, tmp_path):
    path = tmp_path / "t.safetensors"
    cache = build(teacher, blocks, path, top_k=8)
    changed = blocks.clone()
    changed[2, 5] = (changed[2, 5] + 1) % VOCAB
    for other in (changed, blocks[:4], blocks[:, :8]):
        with pytest.raises(UserError, match="other token blocks"):
            TeacherCache.load(path, other)
        with pytest.raises(UserError, match="other token blocks"):
            kl_to_teacher(student, other, cache)


def test_truncated_file_raises_user_error_saying_to_rebuild(teacher, blocks, tmp_path):
    path = tmp_path / "t.safetensors"
    build(teacher, blocks, path, top_k=8)
    data = path.read_bytes()
    for cut in (len(data) - 7, len(data) // 2, 20, 3):
        path.write_bytes(data[:cut])
        with pytest.raises(UserError, match="delete"):
            TeacherCache.load(path, blocks)


def test_foreign_or_missing_file_raises_user_error(blocks, tmp_path):
    foreign = tmp_path / "other.safetensors"
    save_file({"logprobs": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not a teacher cache"):
        TeacherCache.load(foreign, blocks)
    with pytest.raises(UserError, match="does not exist"):
        TeacherCache.load(tmp_path / "missing.safetensors", blocks)


def test_student_with_other_vocabulary_raises_user_error(teacher, blocks, make_llama, tmp_path):
    cache = build(teacher, blocks, tmp_path / "t.safetensors", top_k=8)
    with pytest.raises(UserError, match="vocabulary"):
        kl_to_teacher(make_llama(vocab_size=VOCAB + 5), blocks, cache)


def test_failed_build_leaves_no_file(teacher, blocks, tmp_path):
    class FailsOnSecondBatch(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, **kwargs):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("out of memory")
            return self.inner(**kwargs)

    with pytest.raises(RuntimeError):
        build(FailsOnSecondBatch(teacher), blocks, tmp_path / "t.safetensors", top_k=8)
    assert list(tmp_path.iterdir()) == []


def test_rebuild_replaces_an_existing_cache(teacher, student, blocks, tmp_path):
    path = tmp_path / "t.safetensors"
    build(copy.deepcopy(student), blocks, path, top_k=8)
    cache = build(teacher, blocks, path, top_k=8)
    assert kl_to_teacher(teacher, blocks, cache) == pytest.approx(0.0, abs=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_bad_top_k_raises_user_error(teacher, blocks, tmp_path):
    with pytest.raises(UserError, match="top_k"):
        build(teacher, blocks, tmp_path / "t.safetensors", top_k=0)
