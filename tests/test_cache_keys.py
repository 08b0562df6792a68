"""Caches are keyed by content: a model or file replaced at the same path is recomputed, never read stale."""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from evoprune.cli import main
from evoprune.fingerprint import files_fingerprint, weights_fingerprint
from evoprune_tests import tiny_gqa_llama

EVAL = ["data.seq_len=32", "data.eval_blocks=4", "eval.latency=false", "--quiet"]


def perturbed_copy(src, dst, scale: float = 0.5) -> None:
    """A copy of the model folder `src` at `dst` (tokenizer included) whose every weight carries noise."""
    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(dst)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * param.std() * torch.randn(param.shape, generator=generator))
    model.save_pretrained(dst)


def eval_kl(capsys, model, teacher, corpus, out) -> float:
    code = main(["eval", "--model", str(model), "--teacher", str(teacher), "--data", str(corpus),
                 "--out", str(out), *EVAL])
    assert code == 0, capsys.readouterr().err
    return json.loads((out / "metrics.json").read_text())["model"]["kl_to_teacher"]


def test_eval_recomputes_the_teacher_when_the_model_at_its_path_is_replaced(tiny_run_inputs, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    shutil.copytree(tiny_run_inputs / "dense", teacher)
    perturbed_copy(teacher, student)
    corpus = tiny_run_inputs / "corpus.txt"
    before = eval_kl(capsys, student, teacher, corpus, tmp_path / "before")
    assert before > 1e-3
    shutil.copytree(student, teacher, dirs_exist_ok=True)  # the teacher path now holds the student itself
    after = eval_kl(capsys, student, teacher, corpus, tmp_path / "after")
    assert after == pytest.approx(0.0, abs=1e-6)
    assert len(list((tmp_path / "cache" / "teacher").glob("*.safetensors"))) == 2


def test_weights_fingerprint_follows_weights_dtype_and_config_not_the_path():
    model = tiny_gqa_llama(seed=0)
    first = weights_fingerprint(model)
    twin = copy.deepcopy(model)
    twin.config._name_or_path = "/somewhere/else"
    assert weights_fingerprint(twin) == first
    assert weights_fingerprint(tiny_gqa_llama(seed=1)) != first
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] += 1e-3  # in place, on the memoized model
    assert weights_fingerprint(model) != first
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] -= 1e-3
    assert weights_fingerprint(model) == first
    assert weights_fingerprint(copy.deepcopy(twin).to(torch.bfloat16)) != first
    twin.config.rope_theta = 1234.0
    assert weights_fingerprint(twin) != first


def test_weights_fingerprint_sees_a_replaced_parameter():
    model = tiny_gqa_llama(seed=0)
    first = weights_fingerprint(model)
    o_proj = model.model.layers[0].self_attn.o_proj
    o_proj.weight = torch.nn.Parameter(o_proj.weight.detach().clone() * 2)
    assert weights_fingerprint(model) != first


def test_files_fingerprint_reads_bytes_not_size_and_time(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("alpha beta gamma")
    first = files_fingerprint([path])
    stat = path.stat()
    path.write_text("alpha beta gamMa")  # same size, then the old modification time put back
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert files_fingerprint([path]) != first
    path.write_text("alpha beta gamma")
    assert files_fingerprint([path]) == first
    elsewhere = tmp_path / "copy" / "corpus.txt"
    elsewhere.parent.mkdir()
    shutil.copy(path, elsewhere)
    assert files_fingerprint([elsewhere]) == first
