"""bench/papers.py on a tiny model: the papers' perplexity of dense and pruned models, models made once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evoprune.evaluation.paper_perplexity import PAPER_SETS, paper_perplexity
from evoprune.models import load_model
from serving.conftest import VOCAB, byte_level_tokenizer

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY = ["data.seq_len=32", "data.calibration_blocks=4", "data.eval_blocks=2", "data.batch_size=2",
        "eval.unseen=false", "database.num_levels=4"]


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("papers", None)
    import papers

    return papers


def _tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=48, head_dim=8)).save_pretrained(path)
    byte_level_tokenizer().save_pretrained(path)
    return path


@pytest.mark.slow  # two pruned tiny models and three scorings, about a minute
def test_dense_and_pruned_models_scored_and_made_once(tiny_run_inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    papers = _bench(monkeypatch)
    model = _tiny_model(tmp_path / "m")
    text = tmp_path / "wiki.txt"
    text.write_text((tiny_run_inputs / "corpus.txt").read_text()[:20_000])
    argv = ["--model", str(model), "--wikitext2", str(text), "--seq-len", "64", "--methods", "uniform,depth",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out" / "papers"),
            f"data.source={tiny_run_inputs / 'corpus.txt'}", *TINY]
    assert papers.main(argv) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "out" / "papers.json").read_text())["rows"]}
    assert list(rows) == ["dense", "uniform", "depth"]
    assert rows["uniform"]["params"] < rows["dense"]["params"] and rows["depth"]["params"] < rows["dense"]["params"]
    for name, folder in [("dense", model), ("uniform", tmp_path / "work" / "uniform-0.5" / "model")]:
        loaded = load_model(str(folder))
        expected = paper_perplexity(loaded.model, loaded.tokenizer, PAPER_SETS["wikitext2"], text.read_text(), 64)
        assert abs(rows[name]["wikitext2_ppl"] - expected["perplexity"]) < 1e-3 * expected["perplexity"]
        assert rows[name]["wikitext2_windows"] == expected["windows"] and rows[name]["seq_len"] == 64
    stamp = (tmp_path / "work" / "uniform-0.5" / "model" / "config.json").stat().st_mtime_ns
    assert papers.main(argv) == 0  # the pruned models are reused, not made again
    assert (tmp_path / "work" / "uniform-0.5" / "model" / "config.json").stat().st_mtime_ns == stamp


def test_missing_wikitext_copy_stops_before_any_work(tmp_path, monkeypatch, capsys):
    papers = _bench(monkeypatch)
    argv = ["--wikitext2", str(tmp_path / "absent.parquet"), "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "out" / "papers")]
    assert papers.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "absent.parquet" in err
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()
