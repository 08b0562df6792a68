"""Latency table: one entry per module and level, zero at level 0, monotone, reused on resume."""

from __future__ import annotations

import math

import pytest
import torch

from evoprune import darwin
from evoprune.config import load_config
from evoprune.errors import UserError
from evoprune.models import load_model
from evoprune.prune.database import Database
from evoprune.search.latency_table import LatencySettings, latency_cost_table, measure_latency_table


@pytest.fixture(scope="module")
def dense_and_db(tiny_run_inputs, tmp_path_factory):
    cfg = load_config(None, [f"model.source={tiny_run_inputs / 'dense'}", "database.num_levels=4"])
    dense = load_model(cfg.model.source)
    db = Database.build(dense.model, dense.adapter, torch.randint(0, 50, (4, 32)), darwin.database_settings(cfg),
                        tmp_path_factory.mktemp("db"), batch_size=2, progress=False)
    return dense, db


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_table_covers_every_level_and_is_monotone(dense_and_db, mode):
    dense, db = dense_and_db
    table = measure_latency_table(dense.model, dense.adapter, db, LatencySettings(mode, 16, repeats=2, warmup=1),
                                  progress=False)
    for kind in ("attention", "mlp"):
        assert len(table["costs"][kind]) == len(db.levels[kind])
        for i, ladder in enumerate(table["costs"][kind]):
            assert len(ladder) == db.num_levels(kind, i)
            assert ladder[0] == 0.0
            assert all(math.isfinite(c) and c > 0 for c in ladder[1:])
            assert all(a <= b for a, b in zip(ladder, ladder[1:]))


def test_table_is_reused_and_checked(dense_and_db, tmp_path):
    dense, db = dense_and_db
    path = tmp_path / "latency.json"
    settings = LatencySettings("prefill", 8, repeats=1, warmup=0)
    first = latency_cost_table(dense.model, dense.adapter, db, path, settings, progress=False)
    assert latency_cost_table(dense.model, dense.adapter, db, path, settings, progress=False).costs == first.costs
    with pytest.raises(UserError, match="other settings"):
        latency_cost_table(dense.model, dense.adapter, db, path, LatencySettings("prefill", 9, 1, 0), progress=False)
    path.write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        latency_cost_table(dense.model, dense.adapter, db, path, settings, progress=False)
