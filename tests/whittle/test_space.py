"""Search space: every configuration is a legal SubnetSpec with exact counts; every value is reachable."""

from __future__ import annotations

import random

import pytest
import torch

from evoprune.arch.adapter import adapter_for
from evoprune.errors import UserError
from evoprune.whittle.space import SearchSpace


@pytest.mark.parametrize("per_layer", [False, True])
def test_sampled_configs_run_and_count_exactly(tiny_model, per_layer):
    adapter = adapter_for(tiny_model.config)
    shape = adapter.shape(tiny_model)
    space = SearchSpace(shape, tuple(reversed(range(len(shape.layers)))), per_layer=per_layer, multiple=2)
    rng = random.Random(0)
    ids = torch.randint(0, tiny_model.config.vocab_size, (1, 6))
    for _ in range(4):
        spec = space.to_spec(space.sample(rng))
        sliced = adapter.slice(tiny_model, spec)
        assert sum(p.numel() for p in sliced.parameters()) == spec.num_params()
        assert torch.isfinite(sliced(input_ids=ids).logits).all()


def test_largest_is_the_dense_model_and_every_value_is_reachable(tiny_llama):
    shape = adapter_for(tiny_llama.config).shape(tiny_llama)
    space = SearchSpace(shape, tuple(range(len(shape.layers))), multiple=5)
    assert space.to_spec(space.largest()).is_identity()
    dims = space.dimensions()
    assert dims["hidden"][-1] == shape.hidden_size and dims["mlp"][-1] == shape.layers[0].intermediate_size
    rng = random.Random(1)
    seen = {k: set() for k in dims}
    for _ in range(400):
        for k, v in space.sample(rng).items():
            seen[k].add(v)
    assert all(seen[k] == set(v) for k, v in dims.items())


def test_layers_are_kept_by_importance_not_position(tiny_llama):
    shape = adapter_for(tiny_llama.config).shape(tiny_llama)
    rank = tuple(reversed(range(len(shape.layers))))
    space = SearchSpace(shape, rank)
    spec = space.to_spec({**space.largest(), "layers": 1})
    assert spec.kept_layers() == [rank[0]]


def test_bad_configurations_are_named(tiny_llama):
    shape = adapter_for(tiny_llama.config).shape(tiny_llama)
    space = SearchSpace(shape, tuple(range(len(shape.layers))))
    with pytest.raises(UserError, match="kv_groups=99"):
        space.to_spec({**space.largest(), "kv_groups": 99})
    with pytest.raises(UserError, match="min_layers"):
        SearchSpace(shape, tuple(range(len(shape.layers))), min_layers=0)


def test_supernet_trains_on_the_sorted_space(tiny_llama, tmp_path):
    from evoprune.whittle.importance import importance_from_stats, permute_model
    from evoprune.obs.calibration import collect_stats
    from evoprune.whittle.supernet.train import SupernetConfig, train_supernet

    adapter = adapter_for(tiny_llama.config)
    blocks = torch.randint(0, tiny_llama.config.vocab_size, (4, 12), generator=torch.Generator().manual_seed(0))
    imp = importance_from_stats(collect_stats(tiny_llama, adapter, blocks, 2, progress=False), adapter, tiny_llama)
    permute_model(tiny_llama, adapter, imp)
    space = SearchSpace(adapter.shape(tiny_llama), tuple(imp.layer_rank), multiple=4)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    result = train_supernet(tiny_llama, adapter, blocks, space.sample_spec, space.to_spec(space.smallest()),
                            SupernetConfig(steps=3, random_subnets=1, lr=1e-3, checkpoint_every=3), tmp_path / "ck",
                            progress=False)
    assert result.steps == 3 and set(result.history[0]) == {"step", "largest", "smallest", "random"}
    assert any(not torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())
