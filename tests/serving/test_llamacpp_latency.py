"""The latency table timed in llama.cpp: one entry per distinct shape, monotone ladders, reused from cache,
and `search.latency_engine` / `--latency-engine` wiring."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from evoprune.darwinlm import pipeline as darwin  # noqa: E402
from evoprune.cli import _overrides, parse_args  # noqa: E402
from evoprune.config import ConfigError, RunConfig, load_config  # noqa: E402
from evoprune.darwinlm.latency_table import LatencySettings, distinct_shapes, shape_key  # noqa: E402
from evoprune.darwinlm import llamacpp_latency as engine_latency  # noqa: E402
from evoprune.darwinlm.llamacpp_latency import COPIES, llamacpp_cost_table  # noqa: E402
from evoprune_tests import tiny_dense_and_db

def llamacpp_darwin_config(run_inputs):
    """A tiny darwin run whose budget is latency timed in llama.cpp."""
    return load_config(None, [f"model.source={run_inputs / 'dense'}", f"data.source={run_inputs / 'corpus.txt'}",
                              "data.seq_len=32", "data.calibration_blocks=4", "data.eval_blocks=2",
                              "data.batch_size=2", "eval.latency=false", "eval.unseen=false", "eval.threads=1",
                              "database.num_levels=4", "search.offspring=2", "search.generations=1",
                              "search.train_tokens=[0]", "search.fitness_tokens=[64]", "search.survivors=[1]",
                              "prune.sparsity=0.4", "search.metric=latency", "search.latency_engine=llamacpp",
                              "search.latency_tokens=8"])


SETTINGS = {"prefill": LatencySettings("prefill", 16, repeats=2, warmup=1),
            "decode": LatencySettings("decode", 16, repeats=2, warmup=1)}


@pytest.fixture(scope="module")
def dense_and_db(tiny_run_inputs, tmp_path_factory):
    return tiny_dense_and_db(tiny_run_inputs, tmp_path_factory.mktemp("db"), num_levels=4)


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_one_entry_per_distinct_shape_and_monotone_ladders(dense_and_db, tmp_path, mode):
    dense, db = dense_and_db
    path = tmp_path / "latency_table.json"
    costs = llamacpp_cost_table(dense.model, dense.adapter, db, path, SETTINGS[mode], threads=1, progress=False)
    table = json.loads(path.read_text())
    assert set(table["block_ms"]) == {"/".join(map(str, key)) for key in distinct_shapes(db)}
    assert table["engine"] == "llamacpp" and table["key"]["engine"] == "llamacpp"
    assert table["key"]["llama_cpp_python"] and table["copies"] == COPIES
    for kind in ("attention", "mlp"):
        for i, ladder in enumerate(table["costs"][kind]):
            assert len(ladder) == db.num_levels(kind, i) and ladder[0] == 0.0
            assert all(b >= a for a, b in zip(ladder, ladder[1:]))
            raw = [table["block_ms"]["/".join(map(str, (kind,) + shape_key(kind, lv)))]
                   for lv in db.levels[kind][i][1:]]
            assert all(r > 0 for r in raw) and all(c >= r - 1e-4 for c, r in zip(ladder[1:], raw))
    assert costs.metric == "latency"


def test_a_saved_table_is_reused_and_measured_again_for_another_llama_cpp(dense_and_db, tmp_path, monkeypatch):
    dense, db = dense_and_db
    path = tmp_path / "latency_table.json"
    llamacpp_cost_table(dense.model, dense.adapter, db, path, SETTINGS["prefill"], threads=1, progress=False)
    first = json.loads(path.read_text())
    measured = []
    monkeypatch.setattr(engine_latency, "shape_files", lambda *a, **k: {})
    monkeypatch.setattr(engine_latency, "measure_llamacpp_table",
                        lambda *a, **k: measured.append(1) or {**first, "block_ms": {"remeasured": 1.0}})
    llamacpp_cost_table(dense.model, dense.adapter, db, path, SETTINGS["prefill"], threads=1, progress=False)
    assert measured == [] and json.loads(path.read_text()) == first  # same key: read back, nothing built
    path.write_text(json.dumps({**first, "key": {**first["key"], "llama_cpp_python": "0.0.0"}}))
    llamacpp_cost_table(dense.model, dense.adapter, db, path, SETTINGS["prefill"], threads=1, progress=False)
    assert measured == [1] and json.loads(path.read_text())["block_ms"] == {"remeasured": 1.0}
    assert json.loads(path.read_text())["key"] == first["key"]


def test_engine_setting_and_flag(tmp_path):
    assert RunConfig().search.latency_engine == "transformers"
    assert "latency_engine" not in darwin.search_config(RunConfig())["search"]  # old runs stay valid
    cfg = load_config(None, ["search.latency_engine=llamacpp"])
    assert darwin.search_config(cfg)["search"]["latency_engine"] == "llamacpp"
    with pytest.raises(ConfigError, match=r"search.latency_engine \(--latency-engine\) must be transformers or "
                                          "llamacpp"):
        load_config(None, ["search.latency_engine=onnx"])
    args = parse_args(["darwin", "--metric", "latency", "--latency-engine", "llamacpp", "--out", str(tmp_path / "r")])
    assert _overrides(args)["search.latency_engine"] == "llamacpp"
    args = parse_args(["eval", "--engine", "llamacpp", "--threads", "3", "--out", str(tmp_path / "r")])
    assert _overrides(args) == {"eval.engine": "llamacpp", "eval.threads": 3}


def test_darwin_with_a_llamacpp_latency_budget_runs_end_to_end(tiny_run_inputs, tmp_path):
    cfg = llamacpp_darwin_config(tiny_run_inputs)
    darwin.run(cfg, tmp_path / "run", progress=False)
    table = json.loads((tmp_path / "run" / "search" / "latency_table.json").read_text())
    assert table["engine"] == "llamacpp" and table["threads"] == 1
    state = json.loads((tmp_path / "run" / "search" / "state.json").read_text())
    full = sum(ladder[-1] for kind in ("attention", "mlp") for ladder in table["costs"][kind])
    assert state["history"][-1]["cost"] <= 0.6 * full + 1e-9
    assert (tmp_path / "run" / "model" / "config.json").exists()
