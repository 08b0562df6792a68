"""Nemotron-NAS export: mlx-lm loads the folder and computes the evoprune model's logits; the rest is refused.

mlx-lm's `nemotron-nas` model is one of the engines that serve the format (with vLLM, SGLang and
TensorRT-LLM); it runs on CPU here, so it checks the export end to end: config fields, weight
names, zero-padded MLPs, zero biases, tied embeddings and sharded files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from evoprune.arch.adapter import adapter_for
from evoprune.arch.export import export_checkpoint
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.errors import UserError
from evoprune.serving import nemotron_nas
from evoprune.serving.nemotron_nas import export_nemotron_nas
from evoprune_tests import CASES_BY_ID, TinyCase

IN_SPACE_CASES = [CASES_BY_ID["llama-gqa"], CASES_BY_ID["llama-mha-bias-tied"], CASES_BY_ID["llama-gqa-bias"],
                  CASES_BY_ID["qwen2-gqa-tied"],
                  TinyCase("mistral-gqa", MistralConfig, MistralForCausalLM,
                           dict(num_key_value_heads=2, sliding_window=None))]
TOLERANCE = 1e-3  # max |logit difference| in float32


def mlx_logits(folder, ids: torch.Tensor) -> np.ndarray:
    """Logits of the checkpoint in `folder` as mlx-lm computes them on CPU, [batch, tokens, vocab]."""
    mx = pytest.importorskip("mlx.core", reason="mlx is not importable (on Linux it needs mlx[cpu])")
    utils = pytest.importorskip("mlx_lm.utils", reason="mlx-lm is not installed")
    mx.set_default_device(mx.cpu)
    model, _ = utils.load_model(folder)
    return np.array(model(mx.array(ids.numpy())).astype(mx.float32))


def assert_same_logits(expected: torch.Tensor, got: np.ndarray, tolerance: float = TOLERANCE) -> float:
    """Largest |difference| of the logits, after checking it is at most `tolerance` and the argmax is the same."""
    expected = expected.detach().float().numpy()
    delta = float(np.abs(expected - got).max())
    assert delta <= tolerance, delta
    assert (expected.argmax(-1) == got.argmax(-1)).all()
    return delta


def in_space_spec(shape) -> SubnetSpec:
    """Layer 0 whole attention and 20 of 37 neurons (padded to 256), layer 1 no attention, layer 2 no MLP."""
    l0, l1, l2 = shape.layers
    return SubnetSpec(shape, [LayerSpec(list(range(l0.num_heads)), list(range(l0.num_kv_heads)), list(range(3, 23))),
                              LayerSpec([], [], list(range(l1.intermediate_size))),
                              LayerSpec(list(range(l2.num_heads)), list(range(l2.num_kv_heads)), [])]).validate()


def pruned_folder(case: TinyCase, tmp_path, spec_of=in_space_spec):
    model = case.build()
    adapter = adapter_for(model.config)
    spec = spec_of(adapter.shape(model))
    sliced = adapter.slice(model, spec)
    export_checkpoint(sliced, tmp_path / "pruned", spec=spec)
    return sliced, tmp_path / "pruned"


@pytest.mark.parametrize("case", IN_SPACE_CASES, ids=[c.id for c in IN_SPACE_CASES])
def test_pruned_model_exports_and_mlx_computes_the_same_logits(case, tmp_path):
    sliced, folder = pruned_folder(case, tmp_path)
    out = export_nemotron_nas(folder, tmp_path / "nemotron")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
    attention = [b["attention"] for b in config["block_configs"]]
    ffn = [b["ffn"] for b in config["block_configs"]]
    assert [a["no_op"] for a in attention] == [False, True, False] and [f["no_op"] for f in ffn] == [False, False, True]
    kv = case.config().num_key_value_heads
    assert attention[0]["n_heads_in_group"] == 4 // kv and config["num_attention_heads"] == 4
    assert config["evoprune_export"]["zero_padded_mlp"] == {"0": [20, 256], "1": [37, 256]}
    ids = torch.randint(0, 99, (2, 12))
    with torch.no_grad():
        expected = sliced(input_ids=ids).logits
    assert_same_logits(expected, mlx_logits(out, ids))


def test_stock_sharded_folder_exports_to_sharded_files(tmp_path, monkeypatch):
    model = CASES_BY_ID["llama-gqa"].build()
    model.save_pretrained(tmp_path / "dense", max_shard_size="20KB")
    assert (tmp_path / "dense" / "model.safetensors.index.json").is_file()
    monkeypatch.setattr(nemotron_nas, "SHARD_BYTES", 16_000)
    out = export_nemotron_nas(tmp_path / "dense", tmp_path / "nemotron")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and (out / "configuration_decilm.py").is_file()
    ids = torch.randint(0, 99, (1, 10))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    assert_same_logits(expected, mlx_logits(out, ids))


def test_the_config_reads_through_trust_remote_code_as_engines_read_it(tmp_path):
    _, folder = pruned_folder(CASES_BY_ID["llama-gqa"], tmp_path)
    out = export_nemotron_nas(folder, tmp_path / "nemotron")
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert config.model_type == "nemotron-nas" and len(config.block_configs) == 3
    assert config.block_configs[0].attention.n_heads_in_group == 2 and config.block_configs[1].attention.no_op
    assert hasattr(config.block_configs[0].ffn, "ffn_mult") and not hasattr(config.block_configs[0].ffn, "hidden_act")


def _partial_heads(shape):
    return SubnetSpec(shape, [LayerSpec.full(layer) for layer in shape.layers[:2]]
                      + [LayerSpec.from_groups(shape.layers[2], [1])])


def _pruned_hidden(shape):
    return SubnetSpec(shape, [LayerSpec.full(layer) for layer in shape.layers], hidden=list(range(24)))


@pytest.mark.parametrize("case_id, spec_of, message", [
    ("llama-gqa", _partial_heads, "layer 2 keeps 2 of 4 query heads; Nemotron-NAS engines keep all query heads"),
    ("llama-gqa", _pruned_hidden, "hidden size was pruned"),
    ("qwen3-gqa", in_space_spec, "q/k norms"),
    ("phi3-gqa", in_space_spec, "Phi-3's fused qkv_proj"),
    ("olmo2-gqa", in_space_spec, "OLMo-2's norms after each block"),
    ("mistral-gqa-sw4", in_space_spec, "layer 0 attends through a sliding window of 4 tokens"),
])
def test_what_the_format_cannot_hold_is_refused_in_one_line(case_id, spec_of, message, tmp_path):
    _, folder = pruned_folder(CASES_BY_ID[case_id], tmp_path, spec_of)
    with pytest.raises(UserError, match=message) as error:
        export_nemotron_nas(folder, tmp_path / "nemotron")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "nemotron").exists()


def test_an_existing_output_is_kept_unless_forced(tmp_path):
    _, folder = pruned_folder(CASES_BY_ID["llama-gqa"], tmp_path)
    (tmp_path / "nemotron").mkdir()
    (tmp_path / "nemotron" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--force"):
        export_nemotron_nas(folder, tmp_path / "nemotron")
    export_nemotron_nas(folder, tmp_path / "nemotron", force=True)
    assert not (tmp_path / "nemotron" / "keep.txt").exists() and (tmp_path / "nemotron" / "model.safetensors").is_file()


def test_a_stray_tensor_is_refused_not_dropped(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                         intermediate_size=256)).eval()
    model.register_buffer("extra", torch.zeros(3), persistent=True)
    model.save_pretrained(tmp_path / "dense")
    with pytest.raises(UserError, match="tensor extra has no place in the format"):
        export_nemotron_nas(tmp_path / "dense", tmp_path / "nemotron")


def test_the_cli_exports_and_refuses_in_one_line_with_exit_2(tmp_path, capsys):
    from evoprune.cli import main

    _, folder = pruned_folder(CASES_BY_ID["llama-gqa"], tmp_path)
    assert main(["export", "--model", str(folder), "--format", "nemotron-nas", "--out", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["model_type"] == "nemotron-nas"
    partial = tmp_path / "partial"
    partial.mkdir()
    _, folder = pruned_folder(CASES_BY_ID["llama-gqa"], partial, _partial_heads)
    capsys.readouterr()
    assert main(["export", "--model", str(folder), "--format", "nemotron-nas", "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "layer 2 keeps 2 of 4 query heads" in err
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_smollm2_pruned_in_the_space_exports_with_the_same_logits(tmp_path):
    """The embedded SmolLM2-135M with attention removed in 6 layers, one MLP removed and 10 MLPs cut to 1000 neurons
    (zero-padded to 1024 on export), written by the streamed exporter as darwin writes its result."""
    from evoprune.arch.streamed_export import export_sliced
    from evoprune.models import load_model

    dense = load_model("smollm2-135m")
    shape = dense.adapter.shape(dense.model)
    layers = []
    for i, layer in enumerate(shape.layers):
        heads = [] if i % 5 == 4 else list(range(layer.num_heads))
        neurons = [] if i == 7 else list(range(1000 if i % 3 == 0 else layer.intermediate_size))
        layers.append(LayerSpec(heads, list(range(layer.num_kv_heads)) if heads else [], neurons))
    spec = SubnetSpec(shape, layers).validate()
    export_sliced(dense.model, dense.adapter, spec, {}, tmp_path / "pruned", tokenizer=dense.tokenizer)
    out = export_nemotron_nas(tmp_path / "pruned", tmp_path / "nemotron")
    ids = dense.tokenizer("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                          "must be in want of a wife.", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = dense.adapter.slice(dense.model, spec)(input_ids=ids).logits
    # mlx-lm's own float32 error is this large: 9.8e-4 from a float64 run of the same model, where transformers'
    # is 1.8e-4; the two differ by 8.3e-4 on this text (1.2e-4 for the dense model). Logits reach 27.
    delta = assert_same_logits(expected, mlx_logits(out, ids), tolerance=2e-3)
    print(f"SmolLM2-135M pruned, Nemotron-NAS export in mlx-lm: max |logit delta| {delta:.2e}")
