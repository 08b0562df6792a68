"""bench/front.py on a tiny model: every approach at every size, timed once, all models timed in llama.cpp."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from serving.conftest import VOCAB, byte_level_tokenizer  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY = ["data.seq_len=32", "data.calibration_blocks=4", "data.eval_blocks=2", "data.batch_size=2",
        "eval.unseen=false", "database.num_levels=4", "search.offspring=2", "search.generations=0",
        "search.fitness_tokens=[64]", "search.train_tokens=[0]", "search.survivors=[1]",
        "search.replace_one_tokens=64", "eval.prompt_len=8", "eval.new_tokens=2", "eval.repeats=1", "eval.warmup=0",
        "eval.threads=1"]


@pytest.mark.slow  # about a minute: a family of two sizes, four baseline runs, 7 GGUFs timed
def test_every_approach_at_every_size_once(tiny_run_inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("front", None)
    import front

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=48, head_dim=8)).save_pretrained(tmp_path / "m")
    byte_level_tokenizer().save_pretrained(tmp_path / "m")
    argv = ["--sizes", "0.3,0.6", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
            f"model.source={tmp_path / 'm'}", f"data.source={tiny_run_inputs / 'corpus.txt'}", *TINY]
    front.main(argv)
    saved = json.loads((tmp_path / "out" / "front.json").read_text())
    assert sorted((r["approach"], r["size"]) for r in saved["rows"]) == sorted(
        (a, s) for a in ("darwin family", "uniform", "depth") for s in (0.3, 0.6))
    assert all(r["llamacpp_decode_speedup"] > 0 and r["kl_to_teacher"] >= 0 for r in saved["rows"])
    walls = {w["approach"]: w["seconds"] for w in saved["wall"]}
    timings = saved["timings"]
    assert walls["darwin, one run per size"] >= walls["darwin family (one run)"] - 2 * timings["database"]
    front.main(argv)  # everything is read back, nothing is run again
    assert json.loads((tmp_path / "out" / "front.json").read_text())["timings"] == timings
    assert (tmp_path / "out" / "front.png").stat().st_size > 0 and "Wall time" in (tmp_path / "out" / "front.md").read_text()
