"""GGUF export of the embedded SmolLM2-135M: its tokenizer as llama.cpp wrote it, and a pruned model that runs."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evoprune.arch.adapter import adapter_for
from evoprune.arch.export import export_checkpoint, register_pruned_classes
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.errors import UserError
from evoprune.serving.gguf_export import export_gguf

pytestmark = pytest.mark.slow

TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token")
TEXT = ("The river rose slowly through the night, and by morning the lower fields were under water. Farmers "
        "moved their animals to the hill behind the church, where the ground stayed dry. In 1888 the same thing "
        "had happened, and the old men said it would happen again. Nobody listened to them then, and few listened "
        "now. The council met on Tuesday to discuss a new wall, which would cost about 40,000 pounds; the vote was "
        "close, 7 to 5, and the work began in spring. Children watched the masons lay the first stones while "
        "their teachers explained how water finds the lowest path. \"It always wins in the end,\" said one of them.")


def fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {key: reader.fields[key].contents() for key in TOKENIZER_KEYS if key in reader.fields}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The embedded model sliced uniformly (6 of 9 heads and half of every MLP, by activation energy on TEXT: a
    usable model, not a good one), exported to HF and to an f16 GGUF."""
    from evoprune.assets import embedded_gguf, embedded_model_dir

    try:
        folder, original = embedded_model_dir(), embedded_gguf()
    except UserError as e:
        pytest.skip(f"embedded model not available: {e}")
    register_pruned_classes()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    adapter = adapter_for(model.config)
    shape = adapter.shape(model)
    energy = []  # per layer, (intermediate,) mean squared input of down_proj over TEXT
    hooks = [adapter.mlp_output(m).register_forward_pre_hook(lambda _, x: energy.append(x[0].pow(2).mean((0, 1))))
             for m in adapter.layers(model)]
    with torch.no_grad():
        model(input_ids=torch.tensor([tokenizer(TEXT)["input_ids"]]))
    for hook in hooks:
        hook.remove()
    layers = [LayerSpec.from_groups(layer, list(range(layer.num_kv_heads)), [0, 1],
                                    sorted(e.topk(layer.intermediate_size // 2).indices.tolist()))
              for layer, e in zip(shape.layers, energy)]
    spec = SubnetSpec(shape, layers, meta={"method": "test"}).validate()
    root = tmp_path_factory.mktemp("embedded")
    hf = export_checkpoint(adapter.slice(model, spec), root / "hf", tokenizer=tokenizer)
    return dict(original=original, hf=hf, result=export_gguf(hf, root / "gguf", quant="f16"))


def test_tokenizer_metadata_equals_llamacpps_own(embedded):
    ours, theirs = fields(embedded["result"].path), fields(embedded["original"])
    assert theirs["tokenizer.ggml.pre"] == "smollm"
    for key in TOKENIZER_KEYS:
        assert ours.get(key) == theirs.get(key), key


def test_pruned_f16_gguf_matches_transformers_perplexity(embedded):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llama.cpp engine) is not installed")
    from evoprune.serving.llamacpp import LlamaCppModel

    ids = AutoTokenizer.from_pretrained(embedded["hf"])(TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(embedded["hf"], dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    with LlamaCppModel(embedded["result"].path, n_ctx=256, threads=1) as gguf_model:
        assert gguf_model.tokenize(TEXT, add_bos=False) == ids  # llama.cpp's "smollm" split = the HF tokenizer
        got = gguf_model.logits(ids)
    ppl = {name: perplexity(logits, ids) for name, logits in (("transformers", expected), ("llama.cpp", got))}
    assert abs(ppl["llama.cpp"] / ppl["transformers"] - 1) < 0.02, ppl
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.95


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    logp = torch.log_softmax(torch.from_numpy(logits[:-1]).double(), -1)
    nll = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean()
    return math.exp(float(nll))
