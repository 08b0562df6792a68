"""Gemma-2 and Gemma-3 text models: slicing equals the masked dense model, the KV cache equals no cache,
exports load in stock transformers, parameter counts match, and the formats that cannot hold them refuse."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

from evoprune_tests import random_spec
from evoprune.arch.adapter import adapter_for
from evoprune.arch.export import export_checkpoint
from evoprune.arch.shape import ModelShape
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.errors import UserError

from .test_export import LOADER
from .test_slicing import GEN, greedy, greedy_by_hand, logits, masked_copy, tokens

ATOL = 1e-5
WINDOW = 8  # sliding window; the test sequences are longer
GEMMA_SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=4, intermediate_size=37, head_dim=16,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, sliding_window=WINDOW,
                   query_pre_attn_scalar=24, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                   initializer_range=0.2)  # large enough weights for the soft-caps to bite
GEMMA3_ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
               "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}}  # a local base unlike the global


@dataclass(frozen=True)
class GemmaCase:
    id: str
    config_class: type
    model_class: type
    kwargs: dict

    def config(self):
        return self.config_class(**{**GEMMA_SIZES, **self.kwargs})

    def build(self, seed: int = 0):
        torch.manual_seed(seed)
        model = self.model_class(self.config()).eval()
        with torch.no_grad():  # Gemma norms start at 0 (scale 1 + w): perturb them so slicing mistakes show
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(0.3 * torch.randn_like(p))
        return model


GEMMA_CASES = [
    # layers alternate sliding / full; soft-capping small enough to bite on random weights
    GemmaCase("gemma2-softcap", Gemma2Config, Gemma2ForCausalLM,
              dict(attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
    GemmaCase("gemma3-local-rope", Gemma3TextConfig, Gemma3ForCausalLM,
              dict(rope_parameters=copy.deepcopy(GEMMA3_ROPE),
                   layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"])),
    GemmaCase("gemma3-untied", Gemma3TextConfig, Gemma3ForCausalLM,
              dict(rope_parameters=copy.deepcopy(GEMMA3_ROPE), sliding_window_pattern=2, tie_word_embeddings=False)),
]
CASES = {c.id: c for c in GEMMA_CASES}


@pytest.fixture(params=GEMMA_CASES, ids=[c.id for c in GEMMA_CASES])
def gemma(request):
    return request.param.build()


def hetero_spec(shape, seed):
    """Layer 0 without attention, layer 2 without MLP, random heads, KV groups and neurons elsewhere."""
    spec = random_spec(shape, random.Random(seed), keep_hidden=True, p_no_attention=0, p_no_mlp=0)
    spec.layers[0] = LayerSpec([], [], spec.layers[0].neurons)
    spec.layers[2] = LayerSpec(spec.layers[2].heads, spec.layers[2].kv_heads, [])
    return spec.validate()


def uniform_spec(shape):
    layers = [LayerSpec.from_groups(layer, [1], [0, 1], list(range(0, 37, 2))) for layer in shape.layers]
    return SubnetSpec(shape, layers).validate()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- the fixtures exercise what makes Gemma Gemma --------------------------------------------------

def test_fixtures_exercise_windows_softcaps_and_local_rope():
    """Each Gemma feature changes these models' logits on the test tokens, so a slicing bug in it would show."""
    ids = tokens(length=14)
    changes = {"gemma2-softcap": [dict(sliding_window=64), dict(attn_logit_softcapping=None),
                                  dict(final_logit_softcapping=None), dict(query_pre_attn_scalar=16)],
               "gemma3-local-rope": [dict(sliding_window=64), dict(rope_parameters={**GEMMA3_ROPE, "sliding_attention":
                                                                                   GEMMA3_ROPE["full_attention"]})]}
    for case_id, variants in changes.items():
        case = CASES[case_id]
        base = logits(case.build(), ids)
        for change in variants:
            variant = GemmaCase(case.id, case.config_class, case.model_class, {**case.kwargs, **change})
            assert not torch.allclose(logits(variant.build(), ids), base, atol=1e-3), (case_id, change)


# ---- exactness ---------------------------------------------------------------------------------

def test_identity_spec_reproduces_dense_logits(gemma):
    adapter = adapter_for(gemma.config)
    shape = adapter.shape(gemma)
    sliced = adapter.slice(gemma, SubnetSpec.full(shape))
    assert type(sliced) is type(gemma)
    ids = tokens(length=14)
    torch.testing.assert_close(logits(sliced, ids), logits(gemma, ids), atol=ATOL, rtol=0)
    assert adapter_for(sliced.config).shape(sliced) == shape
    for attr in ("sliding_window", "layer_types", "tie_word_embeddings", "rope_parameters", "query_pre_attn_scalar",
                 "attn_logit_softcapping", "final_logit_softcapping", "hidden_activation"):
        assert getattr(sliced.config, attr) == getattr(gemma.config, attr), attr


def test_random_spec_equals_masked_dense(gemma):
    adapter = adapter_for(gemma.config)
    shape = adapter.shape(gemma)
    rng = random.Random(42)
    ids = tokens(length=14)
    for _ in range(4):
        spec = random_spec(shape, rng, keep_hidden=True)
        sliced = adapter.slice(gemma, spec)
        expected = logits(masked_copy(gemma, spec), ids)
        torch.testing.assert_close(logits(sliced, ids), expected, atol=ATOL, rtol=0,
                                   msg=lambda m: f"{spec.to_dict()['layers']}\n{m}")
        assert n_params(sliced) == spec.num_params()
        if not spec.is_identity():
            assert not torch.allclose(expected, logits(gemma, ids), atol=1e-3)


def test_whole_blocks_and_layers_removed_equal_masked_dense(gemma):
    adapter = adapter_for(gemma.config)
    shape = adapter.shape(gemma)
    full = SubnetSpec.full(shape).layers
    no_attn, no_mlp, gone = (LayerSpec([], [], full[0].neurons), LayerSpec(full[1].heads, full[1].kv_heads, []),
                             LayerSpec([], [], []))
    cases = [[no_attn, *full[1:]], [full[0], no_mlp, *full[2:]], [full[0], full[1], gone, full[3]],
             [gone, LayerSpec([], [], full[1].neurons), LayerSpec(full[2].heads, full[2].kv_heads, []), full[3]]]
    ids = tokens(batch=1, length=13)
    for layers in cases:
        spec = SubnetSpec(shape, copy.deepcopy(layers)).validate()
        sliced = adapter.slice(gemma, spec)
        assert len(adapter.layers(sliced)) == len(spec.kept_layers())
        assert n_params(sliced) == spec.num_params()
        torch.testing.assert_close(logits(sliced, ids), logits(masked_copy(gemma, spec), ids), atol=ATOL, rtol=0)


def test_dense_parameter_count_matches_the_formula(gemma):
    assert n_params(gemma) == SubnetSpec.full(adapter_for(gemma.config).shape(gemma)).num_params()


def test_shape_records_two_norms_per_block_and_llama_shapes_keep_their_keys(gemma, tiny_llama):
    shape = adapter_for(gemma.config).shape(gemma)
    assert shape.norms_per_block == 2 and ModelShape.from_dict(shape.to_dict()) == shape
    llama = adapter_for(tiny_llama.config).shape(tiny_llama)
    assert "norms_per_block" not in llama.to_dict()  # database fingerprints and cache keys of Llama models unchanged
    assert ModelShape.from_dict(llama.to_dict()) == llama


# ---- which class comes out -----------------------------------------------------------------------

def test_uniform_spec_gives_the_stock_class_and_heterogeneous_the_evoprune_one(gemma):
    adapter = adapter_for(gemma.config)
    shape = adapter.shape(gemma)
    uniform = adapter.slice(gemma, uniform_spec(shape))
    assert type(uniform) is type(gemma) and not getattr(uniform.config, "auto_map", None)
    assert uniform.config.num_attention_heads == 2 and uniform.config.intermediate_size == 19
    hetero = adapter.slice(gemma, hetero_spec(shape, 1))
    prefix = {"gemma2": "Gemma2", "gemma3_text": "Gemma3"}[shape.family]
    assert type(hetero).__name__ == f"Evoprune{prefix}ForCausalLM"
    assert hetero.config.model_type == f"evoprune_{shape.family}"
    assert hetero.config.layer_types[0] == "mlp" and hetero.model.layers[0].post_attention_layernorm is None
    assert hetero.model.layers[2].post_feedforward_layernorm is None
    assert adapter_for(hetero.config).shape(hetero) == hetero_spec(shape, 1).result_shape()


def test_hidden_size_pruning_is_refused(gemma):
    adapter = adapter_for(gemma.config)
    shape = adapter.shape(gemma)
    spec = SubnetSpec(shape, SubnetSpec.full(shape).layers, list(range(16))).validate()
    with pytest.raises(UserError, match="hidden-size pruning is not supported for gemma"):
        adapter.slice(gemma, spec)


# ---- generation --------------------------------------------------------------------------------

def test_cached_generation_equals_uncached_and_masked_dense(gemma):
    adapter = adapter_for(gemma.config)
    spec = hetero_spec(adapter.shape(gemma), 5)
    sliced = adapter.slice(gemma, spec)
    ids = tokens(batch=1, length=6, seed=1)  # 6 + 8 generated tokens: past the window of 8
    seq_cached, scores_cached = greedy(sliced, ids, use_cache=True)
    seq_plain, scores_plain = greedy(sliced, ids, use_cache=False)
    assert seq_cached.shape == (1, 6 + GEN["max_new_tokens"])
    assert torch.equal(seq_cached, seq_plain)
    torch.testing.assert_close(scores_cached, scores_plain, atol=1e-4, rtol=0)
    assert torch.equal(seq_cached, greedy_by_hand(sliced, ids, GEN["max_new_tokens"]))
    seq_dense, scores_dense = greedy(masked_copy(gemma, spec), ids, use_cache=True)
    assert torch.equal(seq_cached, seq_dense)
    torch.testing.assert_close(scores_cached, scores_dense, atol=1e-4, rtol=0)


# ---- export, and loading in a process without evoprune ---------------------------------------------

IDS = tokens(length=14)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma_export")
    out = {}
    for name, case_id, uniform in (("hetero_gemma2", "gemma2-softcap", False),
                                   ("hetero_gemma3", "gemma3-local-rope", False),
                                   ("hetero_gemma3_untied", "gemma3-untied", False),
                                   ("uniform_gemma2", "gemma2-softcap", True),
                                   ("uniform_gemma3", "gemma3-local-rope", True)):
        dense = CASES[case_id].build()
        adapter = adapter_for(dense.config)
        shape = adapter.shape(dense)
        spec = uniform_spec(shape) if uniform else hetero_spec(shape, len(out))
        sliced = adapter.slice(dense, spec)
        with torch.no_grad():
            expected = sliced(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits
        out[name] = dict(folder=export_checkpoint(sliced, root / name, spec=spec), spec=spec, logits=expected)
    torch.save(IDS, root / "ids.pt")
    return out


@pytest.fixture(scope="module")
def loaded_elsewhere(exported, tmp_path_factory):
    work = tmp_path_factory.mktemp("gemma_subprocess")
    jobs = [dict(folder=str(e["folder"]), trust=name.startswith("hetero"), out=str(work / f"{name}.pt"))
            for name, e in exported.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(work / "modules"),
           "PYTHONPATH": ""}
    ids_file = next(iter(exported.values()))["folder"].parent / "ids.pt"
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(jobs), str(ids_file)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {name: dict(line, logits=torch.load(job["out"])) for name, line, job in zip(exported, lines, jobs)}


def test_heterogeneous_export_ships_its_code(exported):
    for name in ("hetero_gemma2", "hetero_gemma3"):
        folder = exported[name]["folder"]
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_evoprune_gemma.")
        assert config["auto_map"]["AutoConfig"].startswith("configuration_evoprune_gemma.")
        assert config["layer_num_attention_heads"][0] == 0 and config["layer_intermediate_sizes"][2] == 0
        for f in ("modeling_evoprune_gemma.py", "configuration_evoprune_gemma.py", "modeling_evoprune.py",
                  "configuration_evoprune.py"):
            assert (folder / f).is_file(), f


def test_uniform_export_is_a_plain_checkpoint(exported):
    for name, model_type in (("uniform_gemma2", "gemma2"), ("uniform_gemma3", "gemma3_text")):
        folder = exported[name]["folder"]
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == model_type and "auto_map" not in config
        assert not list(folder.glob("*.py"))


def test_stock_transformers_reproduces_logits(exported, loaded_elsewhere):
    for name, e in exported.items():
        got = loaded_elsewhere[name]
        torch.testing.assert_close(got["logits"], e["logits"], atol=ATOL, rtol=0, msg=lambda m: f"{name}: {m}")
        if name.startswith("uniform"):
            assert got["module"].startswith("transformers.models.gemma")
        else:
            assert got["module"].startswith("transformers_modules") and got["cls"].startswith("EvopruneGemma")


def test_evoprune_loads_heterogeneous_export_without_remote_code(exported):
    from evoprune.models import load_model

    e = exported["hetero_gemma3_untied"]
    loaded = load_model(str(e["folder"]), trust_remote_code=False, with_tokenizer=False)
    assert type(loaded.model).__module__.startswith("evoprune.")
    assert loaded.adapter.shape(loaded.model) == e["spec"].result_shape()
    with torch.no_grad():
        got = loaded.model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits
    torch.testing.assert_close(got, e["logits"], atol=ATOL, rtol=0)


# ---- serving formats that cannot hold Gemma refuse in one line ---------------------------------------

def test_gguf_and_nemotron_refuse_gemma(exported):
    from evoprune.models import read_config
    from evoprune.serving.gguf_layout import deci_layout
    from evoprune.serving.nemotron_nas import export_nemotron_nas

    for name in ("uniform_gemma2", "hetero_gemma3"):
        folder = exported[name]["folder"]
        with pytest.raises(UserError, match="one head count and MLP width for every layer") as info:
            deci_layout(read_config(folder))
        assert "\n" not in str(info.value)
        with pytest.raises(UserError, match="cannot export .* as Nemotron-NAS: Gemma's norms") as info:
            export_nemotron_nas(folder, folder.parent / f"{name}_nemotron")
        assert "\n" not in str(info.value)
        assert not (folder.parent / f"{name}_nemotron").exists()


# ---- layer by layer (databases, streamed evaluation) --------------------------------------------------

@pytest.mark.parametrize("case_id", list(CASES))
def test_streamed_perplexity_equals_the_whole_model(case_id):
    """The replayed layer inputs carry each attention type's RoPE and mask, and the head its soft-cap."""
    from evoprune.evaluation.perplexity import mean_nll
    from evoprune.evaluation.streamed_perplexity import streamed_mean_nll

    dense = CASES[case_id].build()
    blocks = torch.randint(0, 99, (3, 20), generator=torch.Generator().manual_seed(0))
    assert streamed_mean_nll(dense, blocks, batch_size=2) == pytest.approx(mean_nll(dense, blocks, 2), rel=1e-6)
    adapter = adapter_for(dense.config)
    spec = hetero_spec(adapter.shape(dense), 3)  # layer 0 without attention: every type's inputs are rebuilt
    whole = mean_nll(adapter.slice(dense, spec), blocks, 2)
    assert streamed_mean_nll(dense, blocks, batch_size=2, spec=spec) == pytest.approx(whole, rel=1e-6)
