"""A physically sliced evoprune model trains in place and keeps its (smaller) shapes."""

from __future__ import annotations

import copy

import torch

from evoprune.arch.adapter import adapter_for
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.training import TrainConfig, train_on_blocks


def test_sliced_model_trains_and_keeps_its_shapes(llama, blocks):
    adapter = adapter_for(llama.config)
    shape = adapter.shape(llama)
    layers = [LayerSpec.full(layer) for layer in shape.layers]
    first = shape.layers[0]
    layers[0] = LayerSpec.from_groups(first, kv_heads=[1], neurons=list(range(0, first.intermediate_size, 2)))
    spec = SubnetSpec(shape, layers).validate()
    sliced = adapter.slice(llama, spec)
    shapes = {k: v.shape for k, v in sliced.state_dict().items()}
    n_params = sum(p.numel() for p in sliced.parameters())
    assert n_params == spec.num_params() < sum(p.numel() for p in llama.parameters())
    before = copy.deepcopy(sliced.state_dict())

    result = train_on_blocks(sliced, blocks, 4 * 32, TrainConfig(lr=1e-2, batch_size=2, weight_decay=0.1))

    assert result.steps == 4 and result.losses[-1] < result.losses[0]
    after = sliced.state_dict()
    assert {k: v.shape for k, v in after.items()} == shapes
    assert sum(p.numel() for p in sliced.parameters()) == n_params
    assert after["model.layers.0.mlp.down_proj.weight"].shape == (32, 19)
    assert not torch.equal(after["model.layers.0.mlp.down_proj.weight"], before["model.layers.0.mlp.down_proj.weight"])
