"""Parameter and FLOP formulas against real (dense and sliced) models."""

from __future__ import annotations

import copy
import random

import pytest

from evoprune_tests import CASES_BY_ID, TINY_CASES, random_spec
from evoprune.arch import params
from evoprune.arch.adapter import adapter_for
from evoprune.arch.shape import LayerShape
from evoprune.arch.spec import LayerSpec, SubnetSpec


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once


def test_dense_count_matches_formula(tiny_model):
    shape = adapter_for(tiny_model.config).shape(tiny_model)
    assert params.total_params(shape) == numel(tiny_model)
    assert SubnetSpec.full(shape).num_params() == numel(tiny_model)
    emb = shape.vocab_size * shape.hidden_size
    assert params.embedding_params(shape) == emb + shape.hidden_size + (0 if shape.tied_embeddings else emb)
    blocks = sum(p.numel() for n, p in tiny_model.named_parameters() if ".layers." in n)
    assert params.block_params(shape) == blocks


def test_sliced_count_matches_formula(tiny_model):
    adapter = adapter_for(tiny_model.config)
    shape = adapter.shape(tiny_model)
    rng = random.Random(1234)
    for _ in range(8):
        spec = random_spec(shape, rng)
        sliced = adapter.slice(tiny_model, spec)
        assert numel(sliced) == spec.num_params(), spec.to_dict()["layers"]
        blocks = sum(p.numel() for n, p in sliced.named_parameters() if ".layers." in n)
        assert blocks == spec.block_params()
        # the sliced model reads back as exactly the shape the spec promised
        assert adapter_for(sliced.config).shape(sliced) == spec.result_shape()


def test_slice_of_slice_count(tiny_model):
    """A sliced (possibly heterogeneous) model is itself a valid source for a second slice."""
    adapter = adapter_for(tiny_model.config)
    rng = random.Random(99)
    first = random_spec(adapter.shape(tiny_model), rng, keep_hidden=True)
    sliced = adapter.slice(tiny_model, first)
    shape2 = adapter_for(sliced.config).shape(sliced)
    second = random_spec(shape2, rng)
    again = adapter_for(sliced.config).slice(sliced, second)
    assert numel(again) == second.num_params()


def test_flops_by_hand():
    """The documented formula on the llama-gqa shape, computed by hand."""
    shape = _shape("llama-gqa")
    d, q, kv, m, v, n_layers = 32, 32, 16, 37, 99, 3
    macs = v * d + n_layers * (2 * d * q + 2 * d * kv + 3 * d * m)
    for context in (1, 1024):
        assert params.flops_per_token(shape, context) == 2 * macs + n_layers * 4 * q * context
    assert SubnetSpec.full(shape).flops_per_token(1024) == params.flops_per_token(shape, 1024)


def _shape(case_id):
    model = CASES_BY_ID[case_id].build()
    return adapter_for(model.config).shape(model)


def _smaller_neighbours(spec: SubnetSpec) -> list[tuple[str, SubnetSpec]]:
    """Specs that keep exactly one unit fewer than `spec` (still valid)."""
    out = []
    for i, (ls, layer) in enumerate(zip(spec.layers, spec.source.layers)):
        def with_layer(new: LayerSpec, what: str):
            s = copy.deepcopy(spec)
            s.layers[i] = new
            if s.kept_layers():
                out.append((f"layer {i}: {what}", s))

        if ls.neurons:
            with_layer(LayerSpec(ls.heads, ls.kv_heads, ls.neurons[1:]), "one neuron")
        if ls.kv_heads:
            rep = layer.heads_per_group
            slots = sorted({h % rep for h in ls.heads})
            with_layer(LayerSpec.from_groups(layer, ls.kv_heads[1:], slots, ls.neurons), "one KV group")
            if len(slots) > 1:
                with_layer(LayerSpec.from_groups(layer, ls.kv_heads, slots[1:], ls.neurons), "one query slot")
            with_layer(LayerSpec([], [], ls.neurons), "attention block")
    if spec.hidden is None or len(spec.hidden) > 1:
        s = copy.deepcopy(spec)
        s.hidden = list(range(1, spec.source.hidden_size)) if spec.hidden is None else spec.hidden[1:]
        out.append(("one hidden channel", s))
    return out


@pytest.mark.parametrize("case_id", ["llama-gqa", "llama-mha-bias-tied", "qwen3-gqa"])
def test_flops_and_params_monotone_in_kept_units(case_id):
    shape = _shape(case_id)
    rng = random.Random(7)
    specs = [SubnetSpec.full(shape)] + [random_spec(shape, rng) for _ in range(30)]
    checked = 0
    for spec in specs:
        for context in (1, 256):
            f = spec.flops_per_token(context)
            for what, smaller in _smaller_neighbours(spec):
                smaller.validate()
                assert smaller.flops_per_token(context) < f, what
                assert smaller.num_params() < spec.num_params(), what
                assert smaller.block_sparsity() >= spec.block_sparsity(), what
                checked += 1
        assert spec.flops_per_token(512) > spec.flops_per_token(256)  # longer context costs more
    assert checked > 100


def test_block_sparsity_full_and_extremes():
    shape = _shape("llama-gqa-bias")
    full = SubnetSpec.full(shape)
    assert full.block_sparsity() == 0.0
    assert full.is_identity()
    assert full.block_params() == params.block_params(shape)
    # keep one neuron of one layer only (plus an attention block, which slicing needs)
    layers = [LayerSpec([], [], []) for _ in shape.layers]
    layers[0] = LayerSpec([0], [0], [5])
    tiny = SubnetSpec(shape, layers).validate()
    assert 0.0 < tiny.block_sparsity() < 1.0
    assert tiny.block_params() == params.layer_params(shape, LayerShape(1, 1, 1))
    # dropping a hidden channel does not change block sparsity's denominator (the source)
    narrower = SubnetSpec(shape, full.layers, list(range(31)))
    assert 0.0 < narrower.block_sparsity() < 0.1
    assert narrower.num_params() < full.num_params()


@pytest.mark.parametrize("case", TINY_CASES[:1], ids=lambda c: c.id)
def test_summary_consistent(case):
    model = case.build()
    shape = adapter_for(model.config).shape(model)
    spec = random_spec(shape, random.Random(3))
    summary = spec.summary()
    assert summary["params"] == spec.num_params()
    assert summary["block_params"] == spec.block_params()
    assert summary["layers_kept"] == len(spec.kept_layers())
    assert summary["attention_blocks"] == sum(bool(ls.kv_heads) for ls in spec.layers)
