"""A run ends in the serving format asked for: `--format gguf | nemotron-nas` beside the HF `model/` folder."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from serving.conftest import TEXT, byte_level_tokenizer
from evoprune.cli import main
from evoprune.serving.gguf_export import TOKENIZER_FILES

TINY = ["data.seq_len=32", "data.calibration_blocks=4", "data.eval_blocks=4", "eval.latency=false",
        "eval.unseen=false", "--quiet"]


@pytest.fixture(scope="module")
def bpe_run_inputs(tmp_path_factory):
    """A tiny GQA Llama with a byte-level BPE tokenizer (which GGUF holds), and a text corpus, on disk."""
    root = tmp_path_factory.mktemp("deploy")
    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, head_dim=8, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(root / "dense")
    tokenizer.save_pretrained(root / "dense")
    words = " ".join(TEXT).split()
    rng = random.Random(0)
    docs = [" ".join(rng.choice(words) for _ in range(60)) for _ in range(200)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    return root


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prune_writes_a_gguf_that_llamacpp_loads(bpe_run_inputs, tmp_path, capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llama.cpp engine) is not installed")
    from evoprune.serving.llamacpp import LlamaCppModel

    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "prune", "--model", str(bpe_run_inputs / "dense"), "--data",
                                str(bpe_run_inputs / "corpus.txt"), "--sparsity", "0.5", "--format", "gguf",
                                "--quant", "f32", "--out", str(out), *TINY)
    assert code == 0, err
    gguf_file = out / "model-gguf" / "model.gguf"
    assert (out / "model" / "config.json").exists() and gguf_file.is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["serving"] == {"format": "gguf", "path": "model-gguf/model.gguf", "quant": "f32",
                                  "size_bytes": gguf_file.stat().st_size}
    assert "`model-gguf/model.gguf`" in (out / "report.md").read_text() and "model-gguf" in stdout
    for name in TOKENIZER_FILES:  # copied from model/, so `eval --engine llamacpp` needs no --tokenizer
        if (out / "model" / name).exists():
            assert (out / "model-gguf" / name).read_bytes() == (out / "model" / name).read_bytes()
    assert (out / "model-gguf" / "tokenizer.json").is_file()
    with LlamaCppModel(gguf_file, n_ctx=32) as llm:
        logits = llm.logits(llm.tokenize("the quick brown fox"))
    assert logits.shape[-1] == llm.vocab_size and np.isfinite(logits).all()


def test_default_format_writes_the_hf_folder_only(bpe_run_inputs, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "prune", "--model", str(bpe_run_inputs / "dense"), "--data",
                           str(bpe_run_inputs / "corpus.txt"), "--method", "depth", "--sparsity", "0.5",
                           "--out", str(out), *TINY)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("model")) == ["model"]
    assert "serving" not in json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("command", ["darwin", "nas"])
def test_nemotron_nas_outside_its_space_is_refused_before_work(bpe_run_inputs, tmp_path, capsys, command):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, command, "--model", str(bpe_run_inputs / "dense"), "--data",
                           str(bpe_run_inputs / "corpus.txt"), "--format", "nemotron-nas", "--out", str(out), *TINY)
    assert code == 2
    assert err.count("\n") == 1 and "--space nemotron-nas" in err and "Traceback" not in err
    assert not out.exists()


def test_quant_without_gguf_is_refused(bpe_run_inputs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "prune", "--model", str(bpe_run_inputs / "dense"), "--quant", "q8_0",
                           "--out", str(tmp_path / "run"), *TINY)
    assert code == 2 and "export.quant" in err and err.count("\n") == 1


def test_export_gguf_copies_the_tokenizer_files(bpe_run_inputs, tmp_path):
    from evoprune.serving.engine_gguf import eval_tokenizer
    from evoprune.serving.gguf_export import export_gguf

    result = export_gguf(bpe_run_inputs / "dense", tmp_path / "out", quant="f32")
    present = [n for n in TOKENIZER_FILES if (bpe_run_inputs / "dense" / n).exists()]
    assert "tokenizer.json" in present
    assert sorted(p.name for p in result.path.parent.iterdir()) == sorted(["model.gguf", *present])
    tokenizer, label = eval_tokenizer(result.path)  # what `evoprune eval --engine llamacpp --model OUT` reads
    assert label == str(result.path.parent) and len(tokenizer) == 300


def test_format_is_not_part_of_a_runs_resume_identity():
    from evoprune.darwinlm import pipeline as darwin
    from evoprune.config import RunConfig
    from evoprune.whittle.arguments import check_arguments
    from evoprune.whittle.run_settings import run_settings

    plain, served = RunConfig(), RunConfig()
    served.export.format, served.export.quant = "gguf", "q8_0"
    assert darwin.search_config(plain) == darwin.search_config(served)
    assert run_settings(plain, check_arguments(plain)) == run_settings(served, check_arguments(served))
