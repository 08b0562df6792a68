"""The tokenizer keys of the GGUF file, and llama.cpp tokenizing text as the HF tokenizer does."""

from __future__ import annotations

import shutil

import gguf
import pytest

from serving.conftest import byte_fallback_tokenizer
from evoprune.serving.gguf_export import export_gguf
from evoprune.serving.gguf_tokenizer import read_vocab

TEXT = "the cat sat on the mat, 12 times!\nthen: hello world \u00e9t\u00e9"


@pytest.fixture
def spm_folder(gguf_folders, tmp_path):
    folder = tmp_path / "spm"
    shutil.copytree(gguf_folders["mistral-hetero"], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    byte_fallback_tokenizer().save_pretrained(folder)
    return folder


def test_byte_level_vocab(gguf_folders, tiny_tokenizer):
    vocab = read_vocab(gguf_folders["qwen2-tied"], 320)
    assert (vocab.model, vocab.pre) == ("gpt2", "gpt-2")
    assert vocab.tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert vocab.token_types[:3] == [gguf.TokenType.CONTROL] * 3
    assert vocab.tokens[300:] == [f"[PAD{i}]" for i in range(300, 320)]  # ids the tokenizer lacks
    assert set(vocab.token_types[3:300]) == {gguf.TokenType.NORMAL}
    assert len(vocab.special.merges) == 300 - 259
    assert vocab.special.special_token_ids == {"bos": 1, "eos": 2, "unk": 0, "pad": 0}
    assert vocab.special.add_special_token == {"bos": False, "eos": False}


def test_byte_fallback_vocab(spm_folder):
    vocab = read_vocab(spm_folder, 300)
    assert (vocab.model, vocab.pre, vocab.add_space_prefix) == ("llama", "default", True)
    assert vocab.token_types[:4] == [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.BYTE]
    assert vocab.tokens[3] == "<0x00>" and vocab.tokens[259] == "\u2581"
    merged = {t: s for t, s in zip(vocab.tokens, vocab.scores) if t in ("\u2581t", "\u2581the", "\u2581on")}
    assert merged["\u2581t"] > merged["\u2581the"] > merged["\u2581on"]  # earlier merges score higher
    assert vocab.special.add_special_token == {"bos": True, "eos": False}


@pytest.mark.parametrize("kind", ["byte-level", "byte-fallback"])
def test_llamacpp_tokenizes_like_transformers(gguf_folders, spm_folder, tmp_path, kind):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llama.cpp engine) is not installed")
    from transformers import AutoTokenizer

    from evoprune.serving.llamacpp import LlamaCppModel

    folder = spm_folder if kind == "byte-fallback" else gguf_folders["mistral-hetero"]
    result = export_gguf(folder, tmp_path / "gguf", quant="f32")
    expected = AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"]
    with LlamaCppModel(result.path, n_ctx=64) as model:
        assert model.tokenize(TEXT, add_bos=kind == "byte-fallback") == expected
