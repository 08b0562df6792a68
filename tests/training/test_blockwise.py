"""Blockwise local distillation: the spec and shapes stay, nothing happens without tokens, every layer gets closer
to the dense layer, the dense model and the stitched weights are left alone, and a seed fixes the result."""

from __future__ import annotations

import random

import pytest
import torch

from evoprune.arch.adapter import adapter_for
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.config import RunConfig, bld_problems
from evoprune.darwinlm import pipeline as darwin
from evoprune.training.blockwise import BlockwiseSettings, blockwise_distill
from evoprune.weights.compute_dtype import inference_slice
from evoprune_tests import random_spec, stitched_first_mlp


def _logits(model, blocks):
    with torch.no_grad():
        return model(input_ids=blocks).logits


def _pruned(model, seed=3, drop=None):
    adapter = adapter_for(model.config)
    spec = random_spec(adapter.shape(model), random.Random(seed), keep_hidden=True, p_no_attention=0.2,
                       p_no_mlp=0.2)
    if drop is not None:  # a whole layer removed: the pruned model's layer k is not the dense layer k
        spec = SubnetSpec(spec.source, [LayerSpec([], [], []) if i == drop else ls
                                        for i, ls in enumerate(spec.layers)], None, spec.meta).validate()
    return adapter, spec, inference_slice(model, adapter, spec, {})


def _distill(dense, pruned, adapter, spec, blocks, layers=None, **settings):
    settings = {"tokens": 4 * 16 * 12, "lr": 3e-3, **settings}  # 12 steps of 4 blocks
    return blockwise_distill(dense, pruned, adapter, spec.kept_layers(), blocks, 4, BlockwiseSettings(**settings),
                             layers=layers, progress=False)


@pytest.mark.parametrize("inputs", ["dense", "pruned"])
def test_every_layer_moves_towards_the_dense_layer_and_the_weights_rebuild_the_model(tiny_model, inputs):
    adapter, spec, pruned = _pruned(tiny_model)
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    blocks = torch.randint(0, 99, (8, 16))
    result = _distill(tiny_model, pruned, adapter, spec, blocks, inputs=inputs)
    assert [r.layer for r in result.layers] == spec.kept_layers()
    # a layer pruned little starts near the dense one: Adam's steps of about lr move it as much as any other
    assert all(r.error_after < 0.9 * r.error_before for r in result.layers if r.error_before > 0.01)
    assert sum(r.error_after for r in result.layers) < 0.8 * sum(r.error_before for r in result.layers)
    assert all(r.steps == 12 and r.tokens == 12 * 4 * 16 for r in result.layers)
    assert {k: v.shape for k, v in pruned.state_dict().items()} == shapes
    rebuilt = inference_slice(tiny_model, adapter, spec, result.weights)  # dense names, sliced shapes
    assert torch.allclose(_logits(rebuilt, blocks), _logits(pruned, blocks), atol=1e-5)


def test_a_dropped_layer_keeps_the_other_layers_paired_with_their_dense_layers(tiny_llama):
    adapter, spec, pruned = _pruned(tiny_llama, seed=5, drop=1)
    result = _distill(tiny_llama, pruned, adapter, spec, torch.randint(0, 99, (8, 16)))
    assert [r.layer for r in result.layers] == [0, 2]
    assert not any(name.startswith("model.layers.1.") for name in result.weights)
    assert all(r.error_after < r.error_before for r in result.layers)


def test_no_tokens_is_a_no_op_and_an_unpruned_model_stays_as_it_is(tiny_llama):
    adapter, spec, pruned = _pruned(tiny_llama)
    blocks = torch.randint(0, 99, (4, 16))
    before = _logits(pruned, blocks)
    assert _distill(tiny_llama, pruned, adapter, spec, blocks, tokens=0).weights == {}
    assert torch.equal(_logits(pruned, blocks), before)
    full = SubnetSpec.full(adapter.shape(tiny_llama))
    copy = inference_slice(tiny_llama, adapter, full, {})
    result = _distill(tiny_llama, copy, adapter, full, blocks)
    assert all(r.error_before < 1e-10 for r in result.layers)
    assert torch.allclose(_logits(copy, blocks), _logits(tiny_llama, blocks), atol=1e-5)


def test_the_dense_model_and_the_stitched_weights_are_left_unchanged(tiny_llama):
    adapter, spec, name, replace, stitched, dense_state = stitched_first_mlp(tiny_llama)
    pruned = inference_slice(tiny_llama, adapter, spec, replace)
    result = _distill(tiny_llama, pruned, adapter, spec, torch.randint(0, 99, (4, 16)))
    assert torch.equal(replace[name], stitched)
    assert all(torch.equal(v, dense_state[k]) for k, v in tiny_llama.state_dict().items())
    assert not torch.equal(adapter.mlp_output(adapter.layers(pruned)[0]).weight, stitched)
    assert not torch.equal(result.weights[name], stitched)


def test_the_same_seed_gives_the_same_weights_and_layers_can_be_split_over_workers(tiny_llama):
    blocks = torch.randint(0, 99, (16, 16))  # 4 batches: the seed orders them
    runs = []
    for seed in (0, 0, 1):
        adapter, spec, pruned = _pruned(tiny_llama)
        runs.append(_distill(tiny_llama, pruned, adapter, spec, blocks, seed=seed, tokens=3 * 4 * 16).weights)
    assert runs[0].keys() == runs[1].keys() and all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])  # another batch order
    merged = {}
    for part in ([0], [1, 2]):  # two workers, each some layers: the same weights as one run
        adapter, spec, pruned = _pruned(tiny_llama)
        merged.update(_distill(tiny_llama, pruned, adapter, spec, blocks, tokens=3 * 4 * 16,
                               layers=[i for i in part if i in spec.kept_layers()]).weights)
    assert merged.keys() == runs[0].keys() and all(torch.equal(merged[k], runs[0][k]) for k in merged)


def test_outputs_only_trains_the_output_projections(tiny_llama):
    adapter, spec, pruned = _pruned(tiny_llama)
    result = _distill(tiny_llama, pruned, adapter, spec, torch.randint(0, 99, (8, 16)), weights="outputs")
    assert result.weights and all(k.endswith(("o_proj.weight", "down_proj.weight")) for k in result.weights)
    assert all(r.error_after < r.error_before for r in result.layers if r.error_before > 0.01)


def test_bad_settings_are_refused_together():
    cfg = RunConfig()
    cfg.bld.tokens, cfg.bld.lr, cfg.bld.weights, cfg.bld.inputs = -1, 0.0, "qkv", "teacher"
    assert len(bld_problems(cfg.bld)) == 4
    with pytest.raises(ValueError, match="weights"):
        BlockwiseSettings(100, weights="qkv")


def test_run_settings_leave_bld_out_at_its_defaults():
    assert "bld" not in darwin.search_config(RunConfig())
    changed = RunConfig()
    changed.bld.tokens = 4096
    assert darwin.search_config(changed)["bld"] == {"tokens": 4096}
    assert "bld" not in darwin.search_identity(changed)
