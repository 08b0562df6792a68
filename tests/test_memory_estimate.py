"""The per-stage memory estimate of docs/memory.md and the `--max-memory` refusal built on it."""

from __future__ import annotations

import dataclasses

import pytest

from evoprune.arch.shape import LayerShape, ModelShape
from evoprune.config import DataConfig, RunConfig, SearchConfig, load_config
from evoprune.errors import UserError
from evoprune.memory_estimate import (GIB, STAGES, check_memory_budget, estimate_stages, estimate_table,
                                      format_gib)

from test_bad_inputs import FAST, assert_nothing_written, refused, source  # noqa: F401  (fixtures)

GB = 1e9  # docs/memory.md's table is in decimal GB

LLAMA_8B = ModelShape(family="llama", vocab_size=128_256, hidden_size=4096, head_dim=128,
                      layers=tuple(LayerShape(32, 8, 14_336) for _ in range(32)), tied_embeddings=False)


def paper() -> RunConfig:
    return RunConfig(search=SearchConfig(profile="paper"))


def quick() -> RunConfig:
    return RunConfig(search=SearchConfig(profile="quick"))


def test_teacher_replace_one_selection_and_export_match_the_8b_table_on_cpu():
    e = estimate_stages(LLAMA_8B, quick(), "cpu", stored_bytes=2, compute_bytes=4)
    assert list(e) == ["database", "teacher caches", "replace-one", "selection", "export"]
    assert e["teacher caches"] == pytest.approx(3.2 * GB, rel=0.05)
    assert e["replace-one"] == pytest.approx((0.1 + 0.9 + 2.1) * GB, rel=0.05)
    assert e["selection"] == pytest.approx((0.1 + 0.9 + 2.1) * GB + 128 * 2**20, rel=0.05)
    assert e["export"] <= 2.9 * GB


def test_database_of_the_8b_on_cpu_and_gpu():
    # docs/memory.md: 0.9 + 3.3 + 0.5 GB (Hessians and OBS: 3·I²·4 + d·I·8 + 3·(h·h_d)²·8 = 2.47 + 0.47 + 0.40)
    cpu = estimate_stages(LLAMA_8B, quick(), "cpu", stored_bytes=2, compute_bytes=4)["database"]
    assert cpu == pytest.approx((0.87 + 3.34 + 0.54) * GB, rel=0.01)
    dense = 16.1 * GB
    gpu = estimate_stages(LLAMA_8B, quick(), "cuda", stored_bytes=2, compute_bytes=2)["database"]
    assert gpu - dense == pytest.approx((3.34 + 0.27) * GB, rel=0.02)  # no converted layer when c == s


def test_training_aware_stage_of_the_8b_paper_profile_on_one_gpu():
    e = estimate_stages(LLAMA_8B, paper(), "cuda", stored_bytes=2, compute_bytes=2)
    assert "replace-one" not in e  # the paper profile starts from the uniform parent
    dense = 16.1 * GB  # (P_b + 2·P_e)·2, on the GPU in every stage
    assert e["teacher caches"] == pytest.approx(dense + 3.2 * GB, rel=0.05)
    # candidate 7.0 + gradients 7.0 + AdamW 14.0 + activations B·S·d·54·L·c/2 = 14.5 + logits 1.1 GB
    training = e["training-aware selection"]
    assert training - dense == pytest.approx((7.0 + 7.0 + 14.0 + 14.5 + 1.05) * GB, rel=0.01)
    assert training == pytest.approx(dense + 44 * GB, rel=0.02)
    assert 58 * GB <= training <= 66 * GB  # the page's total for one 80 GB GPU, before slack


def test_train_embeddings_adds_the_untied_8b_embeddings_and_their_training():
    cfg = paper()
    cfg.search.train_embeddings = True
    base = estimate_stages(LLAMA_8B, paper(), "cuda", 2, 2)["training-aware selection"]
    more = estimate_stages(LLAMA_8B, cfg, "cuda", 2, 2)["training-aware selection"]
    assert more - base == pytest.approx(8.4 * GB, rel=0.05)


@pytest.mark.parametrize("field", ["seq_len", "batch_size"])
def test_estimates_grow_with_block_length_and_batch(field):
    small = paper()
    large = dataclasses.replace(small, data=dataclasses.replace(small.data, **{field: 2 * getattr(small.data, field)}))
    a = estimate_stages(LLAMA_8B, small, "cpu", 2, 4)
    b = estimate_stages(LLAMA_8B, large, "cpu", 2, 4)
    assert b["teacher caches"] > a["teacher caches"]
    assert b["training-aware selection"] > a["training-aware selection"]
    assert all(b[k] >= a[k] for k in a)
    if field == "seq_len":
        assert b["database"] > a["database"]  # more calibration tokens


def test_phases_check_only_their_stages():
    cfg = RunConfig(data=DataConfig(), search=SearchConfig(profile="paper"))
    assert list(check_memory_budget(LLAMA_8B, cfg, "cpu", 2, 4, 1000 * GIB, "database")) == ["database"]
    search = check_memory_budget(LLAMA_8B, cfg, "cpu", 2, 4, 1000 * GIB, "search")
    assert "database" not in search and "training-aware selection" in search
    # a budget only the training-aware stage exceeds: database passes, search is refused naming that stage
    check_memory_budget(LLAMA_8B, cfg, "cpu", 2, 4, 24 * GIB, "database")
    with pytest.raises(UserError, match=r"training-aware selection stage of evoprune search needs about 83\.\d GiB"
                                        r".*more than --max-memory 24 GiB; lower data\.batch_size"):
        check_memory_budget(LLAMA_8B, cfg, "cpu", 2, 4, 24 * GIB, "search")


def test_a_generous_budget_passes_and_the_first_stage_over_it_is_named():
    estimates = check_memory_budget(LLAMA_8B, quick(), "cpu", 2, 4, 64 * GIB, "darwin")
    assert set(estimates) <= set(STAGES)
    with pytest.raises(UserError, match="the database stage of evoprune darwin") as refused_:
        check_memory_budget(LLAMA_8B, quick(), "cpu", 2, 4, 4 * GIB, "darwin")
    assert "\n" not in str(refused_.value) and "docs/memory.md" in str(refused_.value)


def test_format_and_table():
    assert format_gib(41.23 * GIB) == "41.2 GiB"
    assert format_gib(24 * GIB) == "24 GiB"
    assert format_gib(0.001 * GIB) == "0.001 GiB"
    assert format_gib(128.4 * GIB) == "128 GiB"
    table = estimate_table({"database": 3 * GIB, "export": GIB // 2})
    assert table.splitlines() == ["| stage | estimated GiB |", "|---|---:|", "| database | 3.00 |", "| export | 0.50 |"]


def test_max_memory_must_be_positive():
    with pytest.raises(UserError, match="max_memory_gib .* must be a positive, finite number of GiB, got 0.0"):
        load_config(overrides=["max_memory_gib=0"])


def test_darwin_over_the_budget_is_refused_before_anything_is_written(refused, source, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    line = refused("darwin", *source, "--max-memory", "0.001", "--out", out, "search.fitness_tokens=[16,32,64]",
                   *FAST)
    # the tiny model's database and teacher caches are well under 1 MiB; a selection holds 128 MiB of logits
    assert "the selection stage of evoprune darwin needs about 0.12" in line, line
    assert "more than --max-memory 0.001 GiB" in line
    assert_nothing_written(out)


def test_max_memory_flag_sets_the_config(refused, source, tmp_path):  # noqa: F811
    line = refused("database", *source, "--max-memory", "-2", "--out", tmp_path / "run", *FAST)
    assert "max_memory_gib (--max-memory) must be a positive, finite number of GiB, got -2.0" in line
    assert_nothing_written(tmp_path / "run")
