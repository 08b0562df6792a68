"""Latency table: one entry per module and level, zero at level 0, monotone, reused on resume."""

from __future__ import annotations

import math

import pytest

from evoprune.errors import UserError
from evoprune.obs.database import Database
from evoprune.darwinlm import latency_table
from evoprune.darwinlm.latency_table import LatencySettings, latency_cost_table, measure_latency_table, shape_key
from evoprune_tests import tiny_dense_and_db


@pytest.fixture(scope="module")
def dense_and_db(tiny_run_inputs, tmp_path_factory):
    return tiny_dense_and_db(tiny_run_inputs, tmp_path_factory.mktemp("db"), num_levels=4)


def raw_ladder(table: dict, db: Database, kind: str, layer: int) -> list[float]:
    """The raw (fastest-sample) milliseconds of each level above 0, read from the table's `block_ms`."""
    return [table["block_ms"]["/".join(map(str, (kind,) + shape_key(kind, lv)))]
            for lv in db.levels[kind][layer][1:]]


def running_max(values: list[float]) -> list[float]:
    return [max(values[:j + 1]) for j in range(len(values))]


def check_ladders_are_the_running_max_of_raw_timings(table: dict, db: Database) -> None:
    wanted = {"/".join(map(str, (kind,) + shape_key(kind, lv)))
              for kind in ("attention", "mlp") for levels in db.levels[kind] for lv in levels[1:]}
    assert set(table["block_ms"]) == wanted  # one raw timing per distinct shape of a level above 0, no other
    for kind in ("attention", "mlp"):
        assert len(table["costs"][kind]) == len(db.levels[kind])
        for i, ladder in enumerate(table["costs"][kind]):
            assert len(ladder) == db.num_levels(kind, i)
            assert ladder[0] == 0.0
            raw = raw_ladder(table, db, kind, i)
            assert all(math.isfinite(r) and r > 0 for r in raw)
            assert ladder[1:] == pytest.approx(running_max(raw), abs=1e-4)  # block_ms is rounded to 4 places
            assert all(c >= r - 1e-4 for c, r in zip(ladder[1:], raw))


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_table_covers_every_level_and_is_monotone(dense_and_db, mode):
    dense, db = dense_and_db
    table = measure_latency_table(dense.model, dense.adapter, db, LatencySettings(mode, 16, repeats=2, warmup=1),
                                  progress=False)
    check_ladders_are_the_running_max_of_raw_timings(table, db)


class ZigzagTimer:
    """Stands in for the block timer: each new shape takes a fixed time from a non-monotone sequence."""

    ZIGZAG_MS = [3.0, 1.0, 2.0, 5.0, 4.0, 0.5, 6.0]
    made = 0

    def __init__(self, model, adapter, kind, settings):
        self.seconds = self.ZIGZAG_MS[ZigzagTimer.made % len(self.ZIGZAG_MS)] / 1000
        ZigzagTimer.made += 1

    def calibrate(self, sample_seconds):
        pass

    def __call__(self):
        return self.seconds


def test_noisy_timings_become_the_running_max_along_each_ladder(dense_and_db, monkeypatch):
    dense, db = dense_and_db
    monkeypatch.setattr(latency_table, "_BlockTimer", ZigzagTimer)
    table = measure_latency_table(dense.model, dense.adapter, db, LatencySettings("prefill", 8, repeats=2, warmup=0),
                                  progress=False)
    raws = [raw_ladder(table, db, kind, i) for kind in ("attention", "mlp") for i in range(len(db.levels[kind]))]
    assert any(b < a for raw in raws for a, b in zip(raw, raw[1:]))  # the input really is non-monotone
    assert set(table["block_ms"].values()) <= set(ZigzagTimer.ZIGZAG_MS)  # the raw timings are kept as measured
    check_ladders_are_the_running_max_of_raw_timings(table, db)


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
