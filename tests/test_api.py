"""The Python API mirrors the command line: the same run from `evoprune.<command>(...)` and from
`evoprune <command>` gives the same spec and the same metrics (timings aside)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

import evoprune
from evoprune.cli import main
from evoprune.errors import UserError

TINY = {"data.seq_len": 32, "data.calibration_blocks": 4, "data.eval_blocks": 2, "data.batch_size": 2,
        "eval.latency": False, "eval.unseen": False}
TIMING = {"wall_time_s", "memory", "seconds", "search_seconds", "prefill_tokens_per_s", "decode_tokens_per_s",
          "prefill_speedup", "decode_speedup", "latency", "started", "replace_one_seconds",
          "replace_one_reused"}  # and whether an earlier run had scored the same database


def untimed(value):
    """`value` without the keys whose values are measured times or memory."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMING and not k.endswith("_s")}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def words(fields: dict) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in fields.items()]


def same_run(a, b) -> None:
    assert json.loads((a / "spec.json").read_text()) == json.loads((b / "spec.json").read_text())
    assert untimed(json.loads((a / "metrics.json").read_text())) == untimed(json.loads((b / "metrics.json").read_text()))


def test_prune_from_python_is_the_command(tiny_run_inputs, tmp_path):
    dense, corpus = str(tiny_run_inputs / "dense"), str(tiny_run_inputs / "corpus.txt")
    result = evoprune.prune(dense, tmp_path / "api", sparsity=0.4, data=corpus, overrides=TINY, progress=False)
    assert main(["prune", "--model", dense, "--sparsity", "0.4", "--data", corpus, "--out", str(tmp_path / "cli"),
                 "--quiet", *words(TINY)]) == 0
    same_run(tmp_path / "api", tmp_path / "cli")
    assert result.model_dir == tmp_path / "api" / "model" and result.spec is not None
    model = result.load()
    assert sum(p.numel() for p in model.parameters()) == result.metrics["pruned"]["params"]


def test_darwin_from_python_is_the_command(tiny_run_inputs, tmp_path):
    dense, corpus = str(tiny_run_inputs / "dense"), str(tiny_run_inputs / "corpus.txt")
    search = {**TINY, "database.num_levels": 4, "search.offspring": 2, "search.generations": 1,
              "search.train_tokens": [0], "search.fitness_tokens": [64], "search.survivors": [1]}
    result = evoprune.darwin(dense, tmp_path / "api", sparsity=0.4, data=corpus, overrides=search, progress=False)
    assert main(["darwin", "--model", dense, "--sparsity", "0.4", "--data", corpus, "--out", str(tmp_path / "cli"),
                 "--quiet", *words(search)]) == 0
    same_run(tmp_path / "api", tmp_path / "cli")
    assert result.extra["database"] == tmp_path / "api" / "database"
    assert result.metrics["pruned"]["params"] == result.spec.num_params()


def test_slice_and_evaluate_from_python(tiny_run_inputs, tmp_path):
    dense, corpus = str(tiny_run_inputs / "dense"), str(tiny_run_inputs / "corpus.txt")
    pruned = evoprune.prune(dense, tmp_path / "u", sparsity=0.4, data=corpus, overrides=TINY, progress=False)
    again = evoprune.slice(dense, pruned.out / "spec.json", tmp_path / "s", data=corpus, overrides=TINY, progress=False)
    assert again.spec.to_dict()["layers"] == pruned.spec.to_dict()["layers"]
    scored = evoprune.evaluate(str(again.model_dir), tmp_path / "e", teacher=dense, data=corpus, overrides=TINY,
                               progress=False)
    assert scored.metrics["model"]["perplexity"] == pytest.approx(again.metrics["pruned"]["perplexity"], rel=1e-4)
    assert scored.model_dir is None and scored.metrics["teacher"]["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)


def test_a_loaded_model_is_accepted_with_its_tokenizer(tiny_run_inputs, tmp_path):
    folder = tiny_run_inputs / "dense"
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    from_object = evoprune.prune(model, tmp_path / "object", sparsity=0.4, data=str(tiny_run_inputs / "corpus.txt"),
                                 overrides=TINY, progress=False)
    from_folder = evoprune.prune(str(folder), tmp_path / "folder", sparsity=0.4,
                                 data=str(tiny_run_inputs / "corpus.txt"), overrides=TINY, progress=False)
    assert from_object.spec.to_dict()["layers"] == from_folder.spec.to_dict()["layers"]
    model.name_or_path = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="a loaded model needs its tokenizer"):
        evoprune.prune(model, tmp_path / "x", sparsity=0.4, overrides=TINY, progress=False)
    explicit = evoprune.prune(model, tmp_path / "explicit", sparsity=0.4, data=str(tiny_run_inputs / "corpus.txt"),
                              overrides=TINY, progress=False, tokenizer=AutoTokenizer.from_pretrained(folder))
    assert explicit.spec.to_dict()["layers"] == from_folder.spec.to_dict()["layers"]


def test_bad_arguments_are_one_line_errors(tiny_run_inputs, tmp_path):
    with pytest.raises(UserError, match="model must be a folder, a hub id"):
        evoprune.prune(42, tmp_path / "x", overrides=TINY)
    with pytest.raises(UserError, match="prune.method must be"):
        evoprune.prune(str(tiny_run_inputs / "dense"), tmp_path / "x", method="sideways", overrides=TINY)
    with pytest.raises(UserError, match="unknown export format"):
        evoprune.export(str(tiny_run_inputs / "dense"), tmp_path / "x", format="onnx")
    assert not (tmp_path / "x").exists()


def same_weights(a, b) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_slice_and_evaluate_from_python_are_the_commands(tiny_run_inputs, tmp_path):
    dense, corpus = str(tiny_run_inputs / "dense"), str(tiny_run_inputs / "corpus.txt")
    pruned = evoprune.prune(dense, tmp_path / "u", sparsity=0.4, data=corpus, overrides=TINY, progress=False)
    spec = str(pruned.out / "spec.json")
    evoprune.slice(dense, spec, tmp_path / "api", data=corpus, overrides=TINY, progress=False)
    assert main(["slice", "--model", dense, "--spec", spec, "--data", corpus, "--out", str(tmp_path / "cli"),
                 "--quiet", *words(TINY)]) == 0
    same_run(tmp_path / "api", tmp_path / "cli")
    same_weights(tmp_path / "api" / "model", tmp_path / "cli" / "model")
    model = str(tmp_path / "api" / "model")
    evoprune.evaluate(model, tmp_path / "eval-api", teacher=dense, data=corpus, overrides=TINY, progress=False)
    assert main(["eval", "--model", model, "--teacher", dense, "--data", corpus, "--out", str(tmp_path / "eval-cli"),
                 "--quiet", *words(TINY)]) == 0
    assert untimed(json.loads((tmp_path / "eval-api" / "metrics.json").read_text())) == \
        untimed(json.loads((tmp_path / "eval-cli" / "metrics.json").read_text()))


def test_train_from_python_is_the_command(tiny_run_inputs, tmp_path):
    dense, corpus = str(tiny_run_inputs / "dense"), str(tiny_run_inputs / "corpus.txt")
    pruned = evoprune.prune(dense, tmp_path / "u", sparsity=0.4, data=corpus, overrides=TINY, progress=False)
    student = str(pruned.model_dir)
    fields = {**{k: v for k, v in TINY.items() if k != "eval.latency"}, "train.batch_size": 2, "train.eval_every": 2,
              "train.checkpoint_every": 2}
    result = evoprune.train(student, tmp_path / "api", teacher=dense, tokens=256, data=corpus, overrides=fields,
                            progress=False)
    assert main(["train", "--model", student, "--teacher", dense, "--tokens", "256", "--data", corpus, "--out",
                 str(tmp_path / "cli"), "--quiet", *words(fields)]) == 0
    api, cli = (untimed(json.loads((tmp_path / run / "metrics.json").read_text())) for run in ("api", "cli"))
    assert api == cli and api["steps"] == 4
    same_weights(tmp_path / "api" / "model", tmp_path / "cli" / "model")
    assert result.model_dir == tmp_path / "api" / "model" and result.metrics["tokens"] == 256


def test_export_from_python_is_the_command(tiny_run_inputs, tmp_path):
    dense = str(tiny_run_inputs / "dense")
    evoprune.export(dense, tmp_path / "api", format="nemotron-nas")
    assert main(["export", "--model", dense, "--format", "nemotron-nas", "--out", str(tmp_path / "cli"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "api" / "config.json").read_text()) == \
        json.loads((tmp_path / "cli" / "config.json").read_text())
    same_weights(tmp_path / "api", tmp_path / "cli")
