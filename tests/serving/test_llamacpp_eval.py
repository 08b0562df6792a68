"""`evoprune eval --engine llamacpp`: perplexity from llama.cpp's logits, agreement with transformers at f32,
the run directory, and one-line errors for bad GGUF inputs."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("llama_cpp")

from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

from evoprune.arch.adapter import adapter_for  # noqa: E402
from evoprune.arch.export import export_checkpoint, register_pruned_classes  # noqa: E402
from evoprune.arch.spec import LayerSpec, SubnetSpec  # noqa: E402
from evoprune.cli import main  # noqa: E402
from evoprune.config import load_config  # noqa: E402
from evoprune.errors import UserError  # noqa: E402
from evoprune.evaluation.perplexity import mean_nll  # noqa: E402
from evoprune.data import data_blocks  # noqa: E402
from evoprune.serving.engine_eval import engine_scores, evaluate_gguf  # noqa: E402
from evoprune.serving.gguf_export import export_gguf  # noqa: E402
from evoprune.serving.llamacpp import LlamaCppModel  # noqa: E402
from evoprune_tests import TinyCase  # noqa: E402

from .conftest import VOCAB, byte_level_tokenizer  # noqa: E402

DENSE = TinyCase("llama-eval", LlamaConfig, LlamaForCausalLM, dict(vocab_size=VOCAB, num_key_value_heads=2))
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "pruned", "model", "llama", "hello",
         "world", "numbers", "123", "456", "words", "speak", "still", "has"]
TINY = ["data.seq_len=32", "data.eval_blocks=3", "eval.prompt_len=8", "eval.new_tokens=4", "eval.repeats=2",
        "eval.warmup=1", "eval.threads=1", "eval.unseen=false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny dense Llama and a pruned (heterogeneous) copy: HF folders, f32 GGUF files and a text corpus."""
    root = tmp_path_factory.mktemp("llamacpp_eval")
    tokenizer = byte_level_tokenizer()
    dense = DENSE.build()
    adapter = adapter_for(dense.config)
    shape = adapter.shape(dense)
    l0, l1, l2 = shape.layers
    spec = SubnetSpec(shape, [LayerSpec.from_groups(l0, [1], None, list(range(20))), LayerSpec([], [], list(range(30))),
                              LayerSpec.from_groups(l2, [0, 1], [0], [])]).validate()
    export_checkpoint(dense, root / "dense-hf", tokenizer=tokenizer)
    export_checkpoint(adapter.slice(dense, spec), root / "pruned-hf", tokenizer=tokenizer, spec=spec)
    for name in ("dense", "pruned"):
        export_gguf(root / f"{name}-hf", root / f"{name}-gguf", quant="f32")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 60))) for _ in range(300)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    return {"root": root, "dense_hf": root / "dense-hf", "pruned_hf": root / "pruned-hf",
            "dense": root / "dense-gguf" / "model.gguf", "pruned": root / "pruned-gguf" / "model.gguf",
            "corpus": root / "corpus.txt"}


def cfg_for(files, *extra):
    return load_config(None, [f"data.source={files['corpus']}", *TINY, *extra])


def eval_blocks(files) -> torch.Tensor:
    from transformers import AutoTokenizer

    return data_blocks(cfg_for(files), AutoTokenizer.from_pretrained(files["dense_hf"]), "eval", 3)


def test_perplexity_is_exp_of_the_mean_nll_of_the_engines_own_logits(files):
    blocks = eval_blocks(files)
    with LlamaCppModel(files["pruned"], n_ctx=32) as model:
        scores = engine_scores({"model": model}, blocks)["model"]
        total = 0.0
        for block in blocks.tolist():
            logits = torch.tensor(model.logits(block)[:-1], dtype=torch.float64)
            total -= float(torch.log_softmax(logits, -1).gather(1, torch.tensor(block[1:])[:, None]).sum())
    nll = total / (blocks.shape[0] * (blocks.shape[1] - 1))
    assert scores["eval_nll"] == pytest.approx(nll, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)


@pytest.mark.parametrize("name", ["dense", "pruned"])
def test_f32_gguf_perplexity_matches_transformers(files, name):
    register_pruned_classes()
    blocks = eval_blocks(files)
    hf = AutoModelForCausalLM.from_pretrained(files[f"{name}_hf"], dtype=torch.float32).eval()
    with LlamaCppModel(files[name], n_ctx=32) as model:
        ours = engine_scores({"model": model}, blocks)["model"]["eval_nll"]
    assert ours == pytest.approx(mean_nll(hf, blocks, batch_size=3), rel=2e-3)  # llama.cpp keeps K/V in f16


def test_eval_run_writes_metrics_and_report_with_teacher(files, tmp_path):
    out = evaluate_gguf(cfg_for(files), str(files["pruned"]), tmp_path / "run", teacher=str(files["dense"]),
                        tokenizer=str(files["dense_hf"]), progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("teacher", "model"):
        row = metrics[name]
        for key in ("perplexity", "eval_nll", "kl_to_teacher", "file_mb", "params", "prefill_tokens_per_s",
                    "decode_tokens_per_s", "prefill_speedup", "decode_speedup", "params_ratio", "file_type"):
            assert key in row, (name, key)
    assert metrics["teacher"]["kl_to_teacher"] == 0.0 and metrics["model"]["kl_to_teacher"] > 0
    assert metrics["model"]["params_ratio"] < 1 and metrics["teacher"]["decode_speedup"] == 1.0
    assert metrics["engine"]["threads"] == 1 and metrics["engine"]["tokenizer_agrees"] == {"teacher": True,
                                                                                            "model": True}
    assert len(metrics["latency"]["model"]["decode_runs"]) == 2 and metrics["eval_tokens"] == 3 * 32
    report = (out / "report.md").read_text()
    assert "## Result" in report and "| teacher |" in report and "| model |" in report
    assert (out / "config.yaml").is_file() and (out / "perplexity.png").is_file()


def test_cli_eval_engine_llamacpp_takes_a_gguf_folder(files, tmp_path, capsys):
    code = main(["eval", "--engine", "llamacpp", "--model", str(files["pruned"].parent), "--tokenizer",
                 str(files["pruned_hf"]), "--data", str(files["corpus"]), "--out", str(tmp_path / "run"), "--quiet",
                 "eval.latency=false", *TINY])
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) >= {"model", "engine", "eval_tokens"} and "decode_tokens_per_s" not in metrics["model"]
    assert "evoprune eval (llama.cpp)" in capsys.readouterr().out


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evoprune")]
    assert len(ours) == 1 and ours[0].startswith("evoprune: error:")  # (llama.cpp may log above it)
    return ours[0]


def test_bad_gguf_inputs_are_one_line_errors(files, tmp_path, capsys):
    base = ["eval", "--engine", "llamacpp", "--data", str(files["corpus"]), "--tokenizer", str(files["dense_hf"]),
            "--out", str(tmp_path / "run"), "--quiet", *TINY]
    assert "not found" in _one_line_error(capsys, base + ["--model", str(tmp_path / "missing.gguf")])
    text = tmp_path / "notes.gguf"
    text.write_text("just some text, not a model")
    assert "is not a GGUF file" in _one_line_error(capsys, base + ["--model", str(text)])
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(files["dense"].read_bytes()[:4096])
    assert "cannot load" in _one_line_error(capsys, base + ["--model", str(truncated)])
    (tmp_path / "empty").mkdir()
    assert "holds no .gguf file" in _one_line_error(capsys, base + ["--model", str(tmp_path / "empty")])
    assert not (tmp_path / "run").exists()


def test_a_deci_gguf_without_tokenizer_files_asks_for_tokenizer(files, tmp_path, capsys):
    bare = tmp_path / "bare" / "model.gguf"  # the GGUF alone, without the tokenizer files export_gguf copies
    bare.parent.mkdir()
    bare.write_bytes(files["dense"].read_bytes())
    err = _one_line_error(capsys, ["eval", "--engine", "llamacpp", "--model", str(bare), "--data",
                                   str(files["corpus"]), "--out", str(tmp_path / "run"), "--quiet", *TINY])
    assert "--tokenizer" in err


def test_teacher_with_another_vocabulary_is_refused(files, tmp_path):
    other = TinyCase("llama-other", LlamaConfig, LlamaForCausalLM, dict(vocab_size=VOCAB + 20)).build()
    export_checkpoint(other, tmp_path / "hf", tokenizer=byte_level_tokenizer())
    export_gguf(tmp_path / "hf", tmp_path / "gguf", quant="f32")
    with pytest.raises(UserError, match="different vocabularies"):
        evaluate_gguf(cfg_for(files), str(files["pruned"]), tmp_path / "run", teacher=str(tmp_path / "gguf"),
                      tokenizer=str(files["dense_hf"]), progress=False)


@pytest.mark.slow  # about a minute: the embedded 135M model in llama.cpp (Q4_1) and in transformers (f32)
def test_embedded_gguf_perplexity_is_close_to_its_transformers_conversion(tmp_path):
    from evoprune.assets import embedded_gguf
    from evoprune.models import load_source

    cfg = load_config(None, ["data.seq_len=256", "data.eval_blocks=4", "eval.latency=false", "eval.unseen=false"])
    out = evaluate_gguf(cfg, "smollm2-135m", tmp_path / "run", progress=False)
    ours = json.loads((out / "metrics.json").read_text())["model"]["perplexity"]
    dense = load_source(cfg)
    blocks = data_blocks(cfg, dense.tokenizer, "eval", 4)
    theirs = math.exp(mean_nll(dense.model, blocks))
    assert embedded_gguf().name.endswith(".gguf") and ours == pytest.approx(theirs, rel=0.03)


def test_a_pruned_model_folder_gives_the_tokenizer_without_remote_code(files):
    from evoprune.serving.engine_gguf import eval_tokenizer

    assert "auto_map" in json.loads((files["pruned_hf"] / "config.json").read_text())  # an evoprune folder
    tokenizer, label = eval_tokenizer(files["pruned"], str(files["pruned_hf"]))
    assert label == str(files["pruned_hf"]) and len(tokenizer) == VOCAB
