"""What the GGUF export refuses, each in one line, before anything is written."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from evoprune_tests import CASES_BY_ID
from evoprune.arch.export import export_checkpoint
from evoprune.errors import UserError
from evoprune.serving.gguf_export import export_gguf
from evoprune.serving.llamacpp import require_llama_cpp


def refused(folder, out, match, **kwargs):
    with pytest.raises(UserError, match=match) as info:
        export_gguf(folder, out, quant="f32", **kwargs)
    assert "\n" not in str(info.value)
    assert not out.exists()


@pytest.mark.parametrize("case_id, match", [
    ("qwen3-gqa", "Qwen3 .*q_norm/k_norm"),
    ("phi3-gqa", "llama.cpp's phi3 architecture has one attention width .* fused qkv"),
    ("olmo2-gqa", "llama.cpp's olmo2 architecture has one attention width .* norms after the blocks"),
    ("mistral-gqa-sw4", r"sliding attention window of 4 tokens"),
    ("qwen2-mha-hybrid-sw4", r"layers \[1, 2\] use a sliding attention window"),
])
def test_models_deci_cannot_express(tmp_path, tiny_tokenizer, case_id, match):
    folder = export_checkpoint(CASES_BY_ID[case_id].build(), tmp_path / "model", tokenizer=tiny_tokenizer)
    refused(folder, tmp_path / "out", match)


def test_existing_output_needs_force(gguf_folders, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="already exists.*--force"):
        export_gguf(gguf_folders["qwen2-tied"], out, quant="f32")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    export_gguf(gguf_folders["qwen2-tied"], out, quant="f32", force=True)
    assert "mine.txt" not in {p.name for p in out.iterdir()} and (out / "model.gguf").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging leftovers


def test_folder_without_config_or_weights(gguf_folders, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, tmp_path / "out", "no config.json")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(gguf_folders["qwen2-tied"], no_weights)
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    refused(no_weights, tmp_path / "out", "no weight files|safetensors")
    refused(tmp_path / "nowhere", tmp_path / "out", "not found")


def test_unknown_quant(gguf_folders, tmp_path):
    with pytest.raises(UserError, match="unknown GGUF quantization 'q3'.*q4_k_m"):
        export_gguf(gguf_folders["qwen2-tied"], tmp_path / "out", quant="q3")


def _with_tokenizer(gguf_folders, tmp_path, tokenizer):
    folder = tmp_path / "model"
    shutil.copytree(gguf_folders["qwen2-tied"], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def test_folder_without_tokenizer(gguf_folders, tmp_path):
    refused(_with_tokenizer(gguf_folders, tmp_path, None), tmp_path / "out", "no tokenizer.json")


def test_word_level_tokenizer(gguf_folders, tmp_path):
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = _with_tokenizer(gguf_folders, tmp_path, PreTrainedTokenizerFast(tokenizer_object=tok))
    refused(folder, tmp_path / "out", "BPE tokenizers .* WordLevel")


def test_unknown_pre_tokenizer_needs_a_name(gguf_folders, tmp_path, tiny_tokenizer):
    spec = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                                   spec["pre_tokenizer"]]}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<|im_start|>",
                                  eos_token="<|im_end|>")
    folder = _with_tokenizer(gguf_folders, tmp_path, tok)
    refused(folder, tmp_path / "out", "does not recognize this tokenizer's pre-tokenizer.*--tokenizer-pre")
    result = export_gguf(folder, tmp_path / "out", quant="f32", tokenizer_pre="smollm")
    assert result.tokenizer_pre == "smollm"


def test_missing_engine_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(UserError, match="pip install llama-cpp-python"):
        require_llama_cpp()

