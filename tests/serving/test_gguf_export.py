"""GGUF export of tiny pruned models: llama.cpp reproduces transformers' logits in every special case."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from serving.conftest import CASE_IDS, eval_ids, transformers_logits
from evoprune.cli import main
from evoprune.serving.gguf_export import TOKENIZER_FILES, export_gguf
from evoprune.serving.gguf_tensors import rope_interleave

ATOL = 1e-3  # f32 weights and f32 KV cache


@pytest.fixture(scope="session")
def gguf_files(gguf_folders, tmp_path_factory):
    """Every case exported at f32."""
    root = tmp_path_factory.mktemp("gguf_f32")
    return {name: export_gguf(folder, root / name, quant="f32") for name, folder in gguf_folders.items()}


def llamacpp_logits(path, ids) -> np.ndarray:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llama.cpp engine) is not installed")
    from evoprune.serving.llamacpp import LlamaCppModel

    with LlamaCppModel(path, n_ctx=64, threads=1, f32_kv=True) as model:
        return model.logits(ids)


@pytest.mark.parametrize("case", CASE_IDS)
def test_llamacpp_logits_equal_transformers(case, gguf_folders, gguf_files):
    ids = eval_ids()
    expected = transformers_logits(gguf_folders[case], ids).numpy()
    got = llamacpp_logits(gguf_files[case].path, ids)
    assert got.shape == expected.shape
    delta = float(np.abs(got - expected).max())
    assert delta <= ATOL, f"{case}: max |logit difference| {delta:.2e}"
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_deci_layout_of_the_heterogeneous_case(gguf_folders, gguf_files):
    """Per-layer arrays, the two stand-in blocks (all zero) and the removed layer left out."""
    config = json.loads((gguf_folders["llama-hetero"] / "config.json").read_text())
    assert config["num_hidden_layers"] == 5  # the removed layer is already gone from the checkpoint
    reader = gguf.GGUFReader(gguf_files["llama-hetero"].path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "deci"
    assert field("deci.block_count") == 5
    assert field("deci.attention.head_count") == [4, 2, 4, 0, 2]  # layer 0: linear-attention stand-in
    assert field("deci.attention.head_count_kv") == [0, 2, 2, 0, 1]
    assert field("deci.feed_forward_length") == [19, 5, 1, 37, 30]  # layer 2: 1-neuron stand-in
    assert field("deci.attention.key_length") == field("deci.rope.dimension_count") == 8
    tensors = {t.name: t for t in reader.tensors}
    for name in ("blk.0.attn_output.weight", "blk.2.ffn_gate.weight", "blk.2.ffn_up.weight", "blk.2.ffn_down.weight"):
        assert not np.any(tensors[name].data), name
    assert "blk.0.attn_q.weight" not in tensors and "blk.3.attn_norm.weight" not in tensors
    assert "output.weight" in tensors  # untied


def test_tied_embeddings_write_no_output_matrix(gguf_files):
    names = {t.name for t in gguf.GGUFReader(gguf_files["qwen2-tied"].path).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= names


def test_llama3_rope_factors_are_written(gguf_files):
    tensors = {t.name: t for t in gguf.GGUFReader(gguf_files["llama3-rope-uniform"].path).tensors}
    factors = np.asarray(tensors["rope_freqs.weight"].data)
    # head_dim 8, theta 1e4: wavelengths 2 pi * (1, 10, 100, 1000). Original context 64 with frequency factors
    # 1 and 4: below 64 / 4 kept, above 64 divided by 8, in between a blend with weight s on "kept"
    s = (64 / (2 * np.pi * 10) - 1) / (4 - 1)
    np.testing.assert_allclose(factors, [1.0, 1 / ((1 - s) / 8 + s), 8.0, 8.0], rtol=1e-6)


def test_rope_interleave_turns_rotate_half_into_pairwise_rope():
    """Permuted rows, rotated pairwise (llama.cpp), equal HF's rotate-half RoPE, permuted."""
    heads, head_dim, positions = 3, 8, torch.arange(5.0)
    q = torch.randn(heads * head_dim, 4)  # (rows, in) of a q projection
    theta = positions[:, None] * 10000.0 ** (-torch.arange(0, head_dim, 2) / head_dim)  # (P, head_dim/2)

    def hf_rope(x):  # x: (heads*head_dim, ...) -> (P, heads*head_dim, ...)
        x = x.reshape(heads, head_dim, -1)
        half = head_dim // 2
        cos, sin = torch.cat([theta.cos()] * 2, -1), torch.cat([theta.sin()] * 2, -1)
        rotated = torch.cat([-x[:, half:], x[:, :half]], 1)
        return (x * cos[:, None, :, None] + rotated * sin[:, None, :, None]).reshape(len(positions), -1, x.shape[-1])

    def pairwise_rope(x):
        x = x.reshape(heads, head_dim // 2, 2, -1)
        cos, sin = theta.cos()[:, None, :, None], theta.sin()[:, None, :, None]
        even, odd = x[:, :, 0], x[:, :, 1]
        out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], 3)
        return out.reshape(len(positions), -1, x.shape[-1])

    expected = torch.stack([rope_interleave(p, heads) for p in hf_rope(q)])
    torch.testing.assert_close(pairwise_rope(rope_interleave(q, heads)), expected)


def test_cli_exports_and_reports(gguf_folders, tmp_path, capsys):
    out = tmp_path / "gguf"
    code = main(["export", "--model", str(gguf_folders["qwen2-tied"]), "--format", "gguf", "--out", str(out),
                 "--quant", "f32", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "model.gguf").is_file()  # beside it only the source's tokenizer files (see test_deploy_format)
    assert {p.name for p in out.iterdir()} - {"model.gguf"} <= set(TOKENIZER_FILES)
    assert "deci, f32, 3 layers" in captured.out


@pytest.mark.parametrize("argv, message", [
    (["--quant", "q3"], "invalid choice"),
    (["--format", "onnx"], "invalid choice"),
])
def test_cli_usage_errors(gguf_folders, tmp_path, capsys, argv, message):
    base = {"--model": str(gguf_folders["qwen2-tied"]), "--format": "gguf", "--out": str(tmp_path / "o")}
    base.update(dict(zip(argv[::2], argv[1::2])))
    code = main(["export", *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_refusals_are_one_line(gguf_folders, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    for argv, message in (
        (["--format", "gguf", "--out", str(out)], "--force"),
        (["--format", "nemotron-nas", "--out", str(tmp_path / "n"), "--quant", "q8_0"], "--format gguf only"),
        (["--format", "gguf", "--out", str(tmp_path / "x"), "--model", str(tmp_path / "nowhere")], "not found"),
    ):
        model = [] if "--model" in argv else ["--model", str(gguf_folders["qwen2-tied"])]
        code = main(["export", *model, *argv])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
