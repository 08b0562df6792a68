"""`evoprune train` with a bf16 teacher asked for in float32: kept mapped as stored (model.bounded=true, or a cached
teacher) it trains the student to the weights the float32 copy does; a budget no path fits is refused before work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evoprune.arch.params import total_params
from evoprune.cli import main
from evoprune.config import load_config
from evoprune.memory_plan import plan_estimates
from evoprune.models import source_shape
from evoprune.recovery import RecoveryRunConfig

SETTINGS = ["--seq-len", "32", "--tokens", "384", "--quiet", "train.batch_size=4", "train.lr=0.003",
            "train.warmup_steps=1", "train.eval_every=0", "train.checkpoint_every=0", "data.eval_blocks=2",
            "data.batch_size=2", "eval.unseen=false"]


@pytest.fixture(scope="module")
def bf16_teacher(recovery_inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bf16") / "dense"
    AutoModelForCausalLM.from_pretrained(recovery_inputs / "dense").to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(recovery_inputs / "dense").save_pretrained(folder)
    return folder


def train(root, teacher, out, *more: str) -> int:
    return main(["train", "--model", str(root / "pruned"), "--teacher", str(teacher), "--data",
                 str(root / "corpus.txt"), "--out", str(out), *SETTINGS, *more])


@pytest.mark.parametrize("source", ["online", "cached"])
def test_a_mapped_teacher_trains_the_student_the_copy_does(recovery_inputs, bf16_teacher, tmp_path, fresh_cache,
                                                           capsys, source):
    trained = {}
    for bounded in (False, True):
        fresh_cache(f"cache_{bounded}")
        out = tmp_path / f"train_{bounded}"
        code = train(recovery_inputs, bf16_teacher, out, f"model.bounded={str(bounded).lower()}",
                     f"train.teacher_source={source}")
        assert code == 0, capsys.readouterr().err
        assert json.loads((out / "metrics.json").read_text())["memory"]["teacher_bounded"] is bounded
        trained[bounded] = load_file(out / "model" / "model.safetensors")
    assert trained[True].keys() == trained[False].keys()
    for name, tensor in trained[False].items():
        assert torch.allclose(trained[True][name], tensor, rtol=1e-5, atol=1e-7), name
    untrained = load_file(recovery_inputs / "pruned" / "model.safetensors")
    assert any(not torch.equal(untrained[n], t) for n, t in trained[False].items())  # it did train


def test_a_cached_teacher_is_kept_mapped_without_a_budget(recovery_inputs, bf16_teacher, tmp_path, fresh_cache,
                                                          capsys):
    fresh_cache("cache")
    out = tmp_path / "train"
    assert train(recovery_inputs, bf16_teacher, out, "train.teacher_source=cached") == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["memory"]["teacher_bounded"] is True


def test_train_refuses_a_budget_no_path_fits_before_work(recovery_inputs, bf16_teacher, tmp_path, capsys):
    out = tmp_path / "train"
    assert train(recovery_inputs, bf16_teacher, out, "--max-memory", "0.01") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage of evoprune train needs about" in err[0] and "--max-memory" in err[0], err
    assert not (out / "model").exists() and not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("source", ["online", "cached"])
def test_the_train_estimate_counts_a_copied_teacher_not_a_mapped_one(recovery_inputs, bf16_teacher, source):
    cfg = load_config(None, [f"model.source={recovery_inputs / 'pruned'}", f"train.teacher={bf16_teacher}",
                             "data.seq_len=32", "train.tokens=384", f"train.teacher_source={source}"],
                      cls=RecoveryRunConfig)
    possible, copied, kept = plan_estimates(cfg, "train", teacher=str(bf16_teacher))
    assert possible and set(copied) == set(kept) == ({"load model", "training"} | ({"teacher cache"} if source ==
                                                                                    "cached" else set()))
    teacher_copy = total_params(source_shape(str(bf16_teacher))) * 4
    assert copied["load model"] - kept["load model"] == teacher_copy
    if source == "cached":  # the teacher is dropped once its cache is written
        assert copied["training"] == kept["training"]
    else:
        assert copied["training"] > kept["training"]
