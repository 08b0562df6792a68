"""Level ladders: GQA shapes by KV groups and query heads, or query heads only (K/V kept, DarwinLM)."""

from __future__ import annotations

import pytest

from evoprune.arch.shape import LayerShape, ModelShape
from evoprune.config import load_config
from evoprune.errors import UserError
from evoprune.obs.database import DatabaseSettings
from evoprune.obs.levels import attention_cost, attention_ladder

LAYER = LayerShape(9, 3, 1536)
SHAPE = ModelShape(family="llama", vocab_size=100, hidden_size=576, head_dim=64, layers=(LAYER,) * 2, tied_embeddings=True)


def test_query_head_levels_keep_every_kv_group():
    ladder = attention_ladder(SHAPE, LAYER, 11, "params", units="query_heads")
    assert ladder[0] == []
    shapes = [a for level in ladder[1:] for a in level]
    assert shapes and all(a.groups == 3 for a in shapes)
    assert [a.heads_per_group for level in ladder[1:] for a in level] == [1, 2, 3]


def test_group_levels_include_shapes_with_fewer_kv_groups_and_are_ordered_by_cost():
    ladder = attention_ladder(SHAPE, LAYER, 11, "params")
    assert any(a.groups < 3 for level in ladder[1:] for a in level)
    costs = [attention_cost(SHAPE, LAYER, level[0], "params") for level in ladder[1:]]
    assert costs == sorted(costs) and len(costs) > 3


def test_unknown_attention_units_are_refused():
    with pytest.raises(UserError, match="attention_units"):
        DatabaseSettings(attention_units="kv").check()
    with pytest.raises(UserError, match="attention_units"):
        load_config(None, ["database.attention_units=kv"])
