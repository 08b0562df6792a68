"""The database store: built once per model, calibration tokens and settings, reused by every run and target."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evoprune.api import darwin
from evoprune.models import load_model
from evoprune.obs import store
from evoprune.obs.database import Database, DatabaseSettings
from evoprune.rundir import remove_stale_partials

SETTINGS = DatabaseSettings(num_levels=4, calibration="test")
TINY = {"data.seq_len": 32, "data.calibration_blocks": 4, "data.eval_blocks": 2, "data.batch_size": 2,
        "eval.latency": False, "eval.unseen": False, "database.num_levels": 4, "search.offspring": 2,
        "search.generations": 0, "search.fitness_tokens": [64], "search.train_tokens": [0], "search.survivors": [1],
        "search.replace_one_tokens": 64}


def calibration(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50, (4, 32), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def builds(monkeypatch):
    """The list of folders `Database.build` was called on, in order."""
    calls = []
    original = Database.build.__func__

    def counted(cls, model, adapter, blocks, settings, path, *args, **kwargs):
        calls.append(Path(path))
        return original(cls, model, adapter, blocks, settings, path, *args, **kwargs)

    monkeypatch.setattr(Database, "build", classmethod(counted))
    return calls


def test_the_same_model_tokens_and_settings_are_built_once(model_dir, tmp_path, builds):
    dense = load_model(str(model_dir))
    first = store.shared_database(dense.model, dense.adapter, calibration(), SETTINGS, 2, False, tmp_path)
    again = store.shared_database(dense.model, dense.adapter, calibration(), SETTINGS, 2, False, tmp_path)
    assert len(builds) == 1 and again.path == first.path
    assert torch.equal(again.weight("mlp", 1, 1), first.weight("mlp", 1, 1))
    store.shared_database(dense.model, dense.adapter, calibration(1), SETTINGS, 2, False, tmp_path)
    store.shared_database(dense.model, dense.adapter, calibration(), DatabaseSettings(num_levels=5, calibration="test"),
                          2, False, tmp_path)
    with torch.no_grad():
        dense.model.model.layers[1].mlp.up_proj.weight.mul_(1.5)
    store.shared_database(dense.model, dense.adapter, calibration(), SETTINGS, 2, False, tmp_path)
    assert len(builds) == 4 and len({p.name for p in builds}) == 4  # other tokens, settings, weights: new databases


def test_a_damaged_stored_database_is_rebuilt_not_reused(model_dir, tmp_path, builds, caplog):
    dense = load_model(str(model_dir))
    first = store.shared_database(dense.model, dense.adapter, calibration(), SETTINGS, 2, False, tmp_path)
    weight = first.weight("attention", 2, 1).clone()
    (first.path / "layer_002.safetensors").write_bytes(b"cut short")
    rebuilt = store.shared_database(dense.model, dense.adapter, calibration(), SETTINGS, 2, False, tmp_path)
    assert len(builds) == 2 and "building it again" in caplog.text
    assert torch.equal(rebuilt.weight("attention", 2, 1), weight)


WAITER = """
import sys, torch
from evoprune.models import load_model
from evoprune.obs import store
from evoprune.obs.database import Database, DatabaseSettings
built = []
original = Database.build.__func__
Database.build = classmethod(lambda cls, *a, **k: built.append(1) or original(cls, *a, **k))
dense = load_model(sys.argv[1])
blocks = torch.randint(0, 50, (4, 32), generator=torch.Generator().manual_seed(0))
db = store.shared_database(dense.model, dense.adapter, blocks, DatabaseSettings(num_levels=4, calibration="test"), 2,
                           False, store.Path(sys.argv[2]))
print("built" if built else "reused", db.path)
"""


def test_a_second_builder_waits_for_the_first_then_reuses_its_database(model_dir, tmp_path, builds):
    dense = load_model(str(model_dir))
    folder = tmp_path / store.database_key(dense.model, dense.adapter, calibration(), SETTINGS)
    with store.building(folder):  # this process is the first builder
        waiter = subprocess.Popen([sys.executable, "-c", WAITER, str(model_dir), str(tmp_path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(8)  # long enough to import and reach the lock
        assert waiter.poll() is None, waiter.communicate()  # still waiting for the lock
        Database.build(dense.model, dense.adapter, calibration(), SETTINGS, folder, 2, progress=False)
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert out.split() == ["reused", str(folder)]
    assert len(builds) == 1


def test_darwin_runs_at_two_targets_build_the_database_and_scores_once(tiny_run_inputs, tmp_path, builds,
                                                                      monkeypatch):
    import evoprune.levels.replace_one as replace_one

    scored = []
    original = replace_one._score
    monkeypatch.setattr(replace_one, "_score", lambda *a, **k: scored.append(1) or original(*a, **k))
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    dense, corpus = str(tiny_run_inputs / "dense"), str(tiny_run_inputs / "corpus.txt")
    fields = {**TINY, "eval.unseen": False}
    a = darwin(dense, tmp_path / "a", sparsity=0.4, data=corpus, overrides=fields, progress=False)
    first_scores = len(scored)
    b = darwin(dense, tmp_path / "b", sparsity=0.6, data=corpus, overrides=fields, progress=False)
    assert len(builds) == 1 and first_scores > 0 and len(scored) == first_scores  # the second run built nothing
    assert (tmp_path / "a" / "database").resolve() == (tmp_path / "b" / "database").resolve()
    assert (tmp_path / "a" / "database").resolve().parent == tmp_path / "cache" / "databases"
    assert json.loads((tmp_path / "a" / "search" / "replace_one.json").read_text()) == \
        json.loads((tmp_path / "b" / "search" / "replace_one.json").read_text())
    assert a.spec.num_params() > b.spec.num_params()
    in_run = darwin(dense, tmp_path / "c", sparsity=0.4, data=corpus, overrides={**fields, "database.store": "run"},
                    progress=False)
    assert (tmp_path / "c" / "database").is_dir() and not (tmp_path / "c" / "database").is_symlink()
    assert in_run.spec.to_dict()["layers"] == a.spec.to_dict()["layers"]  # where it is kept changes nothing


def test_sweeping_a_run_folder_leaves_the_store_alone(tmp_path):
    shared = tmp_path / "store" / "abc"
    shared.mkdir(parents=True)
    building = shared / ".layer_003.safetensors.123-abcdef12.tmp"  # another run's file being written
    building.write_text("")
    run = tmp_path / "run"
    run.mkdir()
    store.link_run_database(run / "database", shared)
    remove_stale_partials(run)
    assert building.exists() and (run / "database").resolve() == shared
