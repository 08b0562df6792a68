"""Layer-by-layer KL of a stitched genotype equals the KL of the whole sliced model."""

from __future__ import annotations

import random

import pytest
import torch

from evoprune.evaluation.streamed_kl import streamed_kl
from evoprune.evaluation.teacher import kl_to_teacher
from evoprune.levels.genotype import Genotype


def _random_genotype(db, seed: int) -> Genotype:
    rng = random.Random(seed)
    n = db.shape.num_layers
    return Genotype(tuple(rng.randrange(db.num_levels("attention", i)) for i in range(n)),
                    tuple(rng.randrange(db.num_levels("mlp", i)) for i in range(n)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_streamed_kl_equals_the_kl_of_the_sliced_model(tiny_db, seed):
    cfg, dense, db, blocks, teacher = tiny_db
    g = _random_genotype(db, seed)
    spec, replace = db.stitch(list(g.attention), list(g.mlp), dense.adapter)
    whole = kl_to_teacher(dense.adapter.slice(dense.model, spec, replace), blocks, teacher, batch_size=2,
                          per_block=True)
    streamed = streamed_kl(dense.model, dense.adapter, spec, replace, blocks, teacher, batch_size=2, per_block=True)
    assert torch.allclose(streamed, whole, rtol=1e-4, atol=1e-6)


def test_sliced_layers_are_built_one_at_a_time(tiny_db):
    cfg, dense, db, blocks, teacher = tiny_db
    g = _random_genotype(db, 5)
    spec, replace = db.stitch(list(g.attention), list(g.mlp), dense.adapter)
    whole = dense.adapter.slice(dense.model, spec, replace)
    layers = dense.adapter.sliced_layers(dense.model, spec, replace)
    for i, expected in enumerate(dense.adapter.layers(whole)):
        layer = next(layers)
        got = layer.state_dict()
        assert got.keys() == expected.state_dict().keys()
        assert all(torch.equal(got[k], v) for k, v in expected.state_dict().items()), f"layer {i}"
    assert next(layers, None) is None


def test_streamed_kl_in_another_compute_dtype_is_close(tiny_db):
    cfg, dense, db, blocks, teacher = tiny_db
    g = _random_genotype(db, 7)
    spec, replace = db.stitch(list(g.attention), list(g.mlp), dense.adapter)
    fp32 = streamed_kl(dense.model, dense.adapter, spec, replace, blocks, teacher, batch_size=2)
    fp64 = streamed_kl(dense.model, dense.adapter, spec, replace, blocks, teacher, batch_size=2,
                       compute_dtype=torch.float64)
    assert fp64 == pytest.approx(fp32, rel=1e-3)
