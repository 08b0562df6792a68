"""`evoprune eval` of bf16 checkpoints asked for in float32: kept mapped as stored (model.bounded=true) it measures
what the float32 copy measures; latency of a mapped model is skipped with a note; a budget no path fits is refused
in one line before any weight is read."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evoprune.cli import main
from evoprune.evaluation.harness import run_tasks
from evoprune.models import load_model

TINY = ["data.seq_len=32", "data.eval_blocks=3", "data.batch_size=2", "eval.unseen_blocks=1", "--quiet"]
FIGURES = ("perplexity", "eval_nll", "kl_to_teacher", "unseen_ppl_mean", "test_ppl_mean", "unseen_perplexity",
           "test_perplexity")


def figures(row: dict) -> dict[str, float]:
    """The row's quality figures, the per-genre perplexities flattened as `figure.genre`."""
    flat = {}
    for figure in FIGURES:
        value = row.get(figure)
        if isinstance(value, dict):
            flat.update({f"{figure}.{genre}": v for genre, v in value.items() if v is not None})
        elif value is not None:
            flat[figure] = value
    return flat


@pytest.fixture(scope="module")
def bf16_pair(tiny_run_inputs, tmp_path_factory):
    """(teacher, model): the tiny dense model and a perturbed copy of it, both stored in bf16, with the tokenizer."""
    root = tmp_path_factory.mktemp("bf16")
    tokenizer = AutoTokenizer.from_pretrained(tiny_run_inputs / "dense")
    folders = []
    for name, noise in (("teacher", 0.0), ("model", 0.02)):
        model = AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "dense")
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=generator))
        model.to(torch.bfloat16).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        folders.append(root / name)
    return tuple(folders)


def run_eval(inputs, model, out, *more: str, teacher=None) -> int:
    return main(["eval", "--model", str(model), *(["--teacher", str(teacher)] if teacher else []), "--data",
                 str(inputs / "corpus.txt"), "--out", str(out), *TINY, *more])


@pytest.mark.parametrize("with_teacher", [True, False])
def test_bounded_eval_measures_what_the_copy_does(tiny_run_inputs, bf16_pair, tmp_path, fresh_cache, capsys,
                                                  with_teacher):
    teacher, model = bf16_pair
    metrics = {}
    for bounded in (False, True):
        fresh_cache(f"cache_{bounded}")
        out = tmp_path / f"eval_{bounded}"
        code = run_eval(tiny_run_inputs, model, out, "eval.latency=false", f"model.bounded={str(bounded).lower()}",
                        teacher=teacher if with_teacher else None)
        assert code == 0, capsys.readouterr().err
        metrics[bounded] = json.loads((out / "metrics.json").read_text())
    copied, kept = metrics[False], metrics[True]
    assert copied["memory"]["bounded"] is False and kept["memory"]["bounded"] is True
    names = ["teacher", "model"] if with_teacher else ["model"]
    for name in names:
        measured, bounded = figures(copied[name]), figures(kept[name])
        assert {"perplexity", "unseen_ppl_mean", "unseen_perplexity.news", "test_perplexity.austen"} <= set(measured)
        assert ("kl_to_teacher" in measured) is with_teacher
        assert bounded.keys() == measured.keys()
        for figure, value in measured.items():
            assert bounded[figure] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, figure)


def test_bounded_eval_skips_latency_with_a_note(tiny_run_inputs, bf16_pair, tmp_path, fresh_cache, capsys):
    teacher, model = bf16_pair
    fresh_cache("cache")
    out = tmp_path / "eval"
    assert run_eval(tiny_run_inputs, model, out, "model.bounded=true", "eval.latency=true", "eval.unseen=false",
                    "eval.repeats=1", "eval.warmup=0", "eval.new_tokens=2", teacher=teacher) == 0, \
        capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "model.bounded=false" in metrics["latency_skipped"]
    assert "prefill_tokens_per_s" not in metrics["model"] and "perplexity" in metrics["model"]
    assert "Latency not measured" in (out / "report.md").read_text()


def test_eval_refuses_a_budget_no_path_fits_before_loading(tiny_run_inputs, bf16_pair, tmp_path, capsys):
    teacher, model = bf16_pair
    out = tmp_path / "eval"
    assert run_eval(tiny_run_inputs, model, out, "--max-memory", "0.01", teacher=teacher) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage of evoprune eval needs about" in err[0] and "--max-memory" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--tasks", "arc_easy"], ["--paper-ppl", "wikitext2"]])
def test_eval_refuses_unestimated_figures_under_a_budget(tiny_run_inputs, bf16_pair, tmp_path, capsys, flags):
    teacher, model = bf16_pair
    assert run_eval(tiny_run_inputs, model, tmp_path / "eval", "--max-memory", "8", *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flags[0] in err[0] and "--max-memory does not bound" in err[0], err
    assert not (tmp_path / "eval").exists()


def test_lm_eval_tasks_score_a_mapped_model_as_its_copy(bf16_pair):
    _, model = bf16_pair
    scores = {}
    for bounded in (False, True):
        loaded = load_model(str(model), bounded=bounded)
        assert (next(loaded.model.parameters()).dtype == torch.bfloat16) is bounded
        scores[bounded] = run_tasks(loaded.model, loaded.tokenizer, "piqa,lambada_openai", limit=2, batch_size=2)
    for task in ("piqa", "lambada_openai"):
        assert scores[True][task]["acc"] == scores[False][task]["acc"], task
        assert scores[True][task]["samples"] == 2
    copied = scores[False]["lambada_openai"]["perplexity"]  # a log-likelihood, not a count
    assert copied > 1 and scores[True]["lambada_openai"]["perplexity"] == pytest.approx(copied, rel=1e-6)
