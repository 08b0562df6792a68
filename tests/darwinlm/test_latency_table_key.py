"""A saved latency table is reused only for the block shapes, dtype and machine it was measured for."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from evoprune.errors import UserError
from evoprune.obs.database import Database
from evoprune.darwinlm import latency_table
from evoprune.darwinlm.latency_table import LatencySettings, latency_cost_table
from evoprune_tests import tiny_dense_and_db

SETTINGS = LatencySettings("prefill", 8, repeats=1, warmup=0)


@pytest.fixture(scope="module")
def dense_and_db(tiny_run_inputs, tmp_path_factory):
    return tiny_dense_and_db(tiny_run_inputs, tmp_path_factory.mktemp("db"), num_levels=3)


@pytest.fixture
def measurements(monkeypatch) -> list[LatencySettings]:
    """The settings of every table actually measured during the test."""
    measured = []
    real = latency_table.measure_latency_table

    def counting(dense, adapter, db, settings, progress=True):
        measured.append(settings)
        return real(dense, adapter, db, settings, progress)

    monkeypatch.setattr(latency_table, "measure_latency_table", counting)
    return measured


def narrower_mlp(db: Database) -> Database:
    """The database with the first compressed MLP level of layer 0 one neuron narrower."""
    other = copy.copy(db)
    other.levels = {kind: [list(levels) for levels in ladders] for kind, ladders in db.levels.items()}
    level = other.levels["mlp"][0][1]
    other.levels["mlp"][0][1] = dataclasses.replace(level, width=level.width - 1)
    return other


def test_table_is_remeasured_for_other_block_shapes(dense_and_db, tmp_path, measurements):
    dense, db = dense_and_db
    path = tmp_path / "latency.json"
    latency_cost_table(dense.model, dense.adapter, db, path, SETTINGS, progress=False)
    latency_cost_table(dense.model, dense.adapter, db, path, SETTINGS, progress=False)
    assert len(measurements) == 1
    narrow = narrower_mlp(db)
    latency_cost_table(dense.model, dense.adapter, narrow, path, SETTINGS, progress=False)
    assert len(measurements) == 2
    width = narrow.levels["mlp"][0][1].width
    assert f"mlp/{width}" in json.loads(path.read_text())["block_ms"]


def test_table_is_remeasured_for_another_dtype_or_machine(dense_and_db, tmp_path, measurements, monkeypatch):
    dense, db = dense_and_db
    path = tmp_path / "latency.json"
    latency_cost_table(dense.model, dense.adapter, db, path, SETTINGS, progress=False)
    bf16 = copy.deepcopy(dense.model).to(torch.bfloat16)
    latency_cost_table(bf16, dense.adapter, db, path, SETTINGS, progress=False)
    assert len(measurements) == 2
    assert json.loads(path.read_text())["key"]["dtype"] == "torch.bfloat16"
    machine = latency_table.machine_description
    monkeypatch.setattr(latency_table, "machine_description", lambda device: {**machine(device), "cpu": "another CPU"})
    latency_cost_table(bf16, dense.adapter, db, path, SETTINGS, progress=False)
    assert len(measurements) == 3


def test_a_table_saved_without_its_key_is_remeasured_but_other_settings_are_refused(dense_and_db, tmp_path,
                                                                                  measurements):
    dense, db = dense_and_db
    path = tmp_path / "latency.json"
    latency_cost_table(dense.model, dense.adapter, db, path, SETTINGS, progress=False)
    saved = json.loads(path.read_text())
    del saved["key"]
    path.write_text(json.dumps(saved))
    latency_cost_table(dense.model, dense.adapter, db, path, SETTINGS, progress=False)
    assert len(measurements) == 2 and "key" in json.loads(path.read_text())
    with pytest.raises(UserError, match="other settings"):
        latency_cost_table(dense.model, dense.adapter, db, path, dataclasses.replace(SETTINGS, tokens=9),
                           progress=False)
    assert len(measurements) == 2
