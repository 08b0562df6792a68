"""bench/compare.py on a tiny model: methods built once and reused, one that fails listed as missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY = ["data.seq_len=32", "data.calibration_blocks=4", "data.batch_size=2", "database.num_levels=5",
        "search.offspring=2", "search.generations=1", "search.init_samples=2", "search.train_tokens=[0,64]",
        "search.fitness_tokens=[64,128]", "search.survivors=[2,1]", "search.lr=0.001", "eval.prompt_len=8",
        "eval.new_tokens=2", "eval.repeats=1", "eval.warmup=0"]


@pytest.fixture
def compare(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("compare", "compare_methods", "compare_report"):
        sys.modules.pop(name, None)
    import compare

    return compare


def run(compare, root: Path, tmp: Path, *extra: str) -> dict:
    compare.main(["--sparsities", "0.4", "--tasks", "none", "--eval-blocks", "2", "--nas-blocks", "2",
                  "--nas-trials", "6", "--work", str(tmp / "work"), "--out", str(tmp / "out"), *extra,
                  f"model.source={root / 'dense'}", f"data.source={root / 'corpus.txt'}", *TINY])
    return {r["key"]: r for r in json.loads((tmp / "out" / "compare.json").read_text())["rows"]}


def checkpoint_times(work: Path) -> dict:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.rglob("*.safetensors")}


@pytest.mark.slow  # about 30 s: builds every method (database, two searches, random search, NAS study)
def test_every_method_is_built_once_and_reused(compare, tiny_run_inputs, tmp_path):
    rows = run(compare, tiny_run_inputs, tmp_path)
    assert list(rows) == ["dense", "uniform-0.4", "depth-0.4", "darwin-kl-0.4", "darwin-ta-0.4", "random-0.4",
                          "nas-0.4"]
    assert all(r["status"] == "ok" for r in rows.values()), {k: r["status"] for k, r in rows.items()}
    dense = rows["dense"]
    assert dense["block_sparsity"] == 0 and dense["ideal_speedup"] == 1 and dense["prefill_speedup"] == 1
    assert dense["kl_to_dense"] == pytest.approx(0, abs=1e-4)
    for key in ("uniform-0.4", "darwin-kl-0.4", "darwin-ta-0.4", "random-0.4"):
        assert rows[key]["block_sparsity"] == pytest.approx(0.4, abs=0.1), key
    nas_limit = dense["params"] - 0.4 * dense["block_params"]
    assert rows["nas-0.4"]["params"] <= nas_limit
    for r in list(rows.values())[1:]:
        assert r["params"] < dense["params"] and r["kl_to_dense"] > 0 and r["ideal_speedup"] > 1
        assert r["prefill_speedup"] > 0 and r["decode_speedup"] > 0
    assert rows["random-0.4"]["evaluations"] <= rows["darwin-ta-0.4"]["evaluations"]
    assert rows["random-0.4"]["matched"] == "DarwinLM training-aware run"
    work = tmp_path / "work"
    assert (work / "darwin-kl-0.4" / "database").resolve() == (work / "database").resolve()
    assert rows["nas-0.4"]["sampler"] == "local"
    assert (work / "nas-local-0.4-1" / "picks").is_dir()  # the study is named by its sampler and range
    out = tmp_path / "out"
    for name in ("compare.md", "compare_perplexity.png", "compare_unseen.png", "compare_speedup.png"):
        assert (out / name).stat().st_size > 0
    built, cached = checkpoint_times(work), {p.name: p.stat().st_mtime_ns for p in (work / "eval").iterdir()}
    assert len(cached) == 7

    again = run(compare, tiny_run_inputs, tmp_path)
    assert checkpoint_times(work) == built  # nothing rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in (work / "eval").iterdir()} == cached  # quality figures reused
    assert all(again[k]["perplexity"] == rows[k]["perplexity"] for k in rows)


def test_a_method_that_cannot_be_built_is_listed_as_missing(compare, tiny_run_inputs, tmp_path, monkeypatch):
    def fail(self, sparsity):
        raise RuntimeError("no such search yet")

    monkeypatch.setattr(compare.MethodBuilder, "_nas", fail)
    rows = run(compare, tiny_run_inputs, tmp_path, "--methods", "uniform,nas", "eval.latency=false")
    assert list(rows) == ["dense", "uniform-0.4", "nas-0.4"]
    assert rows["uniform-0.4"]["status"] == "ok"
    assert rows["nas-0.4"]["status"] == "missing: RuntimeError: no such search yet"
    assert "perplexity" not in rows["nas-0.4"]
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "| 40% | NAS Pareto pick |" in table and "missing: RuntimeError: no such search yet" in table
    assert "| unseen ppl | held-back ppl |" in table and (tmp_path / "out" / "compare_unseen.png").exists()
    for key in ("dense", "uniform-0.4"):  # unseen text beside the held-out figure
        assert set(rows[key]["unseen_perplexity"]) == {"news", "howto", "math"}
        assert {"unseen_ppl_mean", "heldback_perplexity"} <= set(rows[key])
    assert rows["dense"]["unseen_perplexity"] != rows["uniform-0.4"]["unseen_perplexity"]
    work = tmp_path / "work"
    built, cached = checkpoint_times(work), {p.name: p.stat().st_mtime_ns for p in (work / "eval").iterdir()}
    assert list(built) == ["uniform-0.4/model/model.safetensors"] and len(cached) == 2
    again = run(compare, tiny_run_inputs, tmp_path, "--methods", "uniform", "eval.latency=false", "eval.repeats=3")
    assert checkpoint_times(work) == built  # an evaluation setting does not rebuild the baseline
    assert {p.name: p.stat().st_mtime_ns for p in (work / "eval").iterdir()} == cached
    assert again["uniform-0.4"]["perplexity"] == rows["uniform-0.4"]["perplexity"]


def _darwin_bench_dir(compare, root: Path, bench: Path, sparsity: float, **identity_changes) -> dict:
    """What bench/darwin.py leaves: a database and one winners file (here every winner is the uniform genotype)."""
    from evoprune.darwinlm import pipeline as darwin
    from evoprune.config import load_config
    from evoprune.models import load_source
    from evoprune.arch.target import resolve_target
    from evoprune.levels.budget import make_budget, uniform_genotype

    import compare_methods

    cfg = load_config(None, compare_methods.BUILD_DEFAULTS + [f"model.source={root / 'dense'}",
                                                              f"data.source={root / 'corpus.txt'}", *TINY])
    dense = load_source(cfg)
    db = darwin.build_database(cfg, dense, bench / "database", progress=False)
    table = darwin.cost_table(db, "params")
    target = resolve_target(dense.adapter.shape(dense.model), sparsity=sparsity)
    genotype = uniform_genotype(table, make_budget(table, target.block_params)).to_dict()
    winners = {name: {"genotype": genotype, "evaluations": 7, "search_s": 1.0}
               for name in ("evolution, KL-only", "evolution, training-aware", "random search")}
    identity = {**darwin.search_identity(cfg), **identity_changes}
    (bench / f"winners-{sparsity:g}.json").write_text(json.dumps({"identity": identity, "winners": winners}))
    return genotype


def test_darwin_bench_winners_are_exported_instead_of_searched(compare, tiny_run_inputs, tmp_path):
    bench = tmp_path / "bench"
    genotype = _darwin_bench_dir(compare, tiny_run_inputs, bench, 0.4)
    rows = run(compare, tiny_run_inputs, tmp_path, "--methods", "darwin-kl,darwin-ta,random", "--darwin-bench",
               str(bench), "eval.latency=false")
    assert [rows[k]["status"] for k in ("darwin-kl-0.4", "darwin-ta-0.4", "random-0.4")] == ["ok"] * 3
    assert rows["darwin-ta-0.4"]["evaluations"] == 7
    work = tmp_path / "work"
    assert not (work / "database").exists()  # no search ran here
    spec = json.loads((work / "darwin-ta-0.4-from-bench" / "spec.json").read_text())
    assert spec["meta"]["genotype"] == genotype
    assert rows["darwin-ta-0.4"]["perplexity"] == rows["random-0.4"]["perplexity"]  # same genotype, same model


def test_darwin_bench_searched_with_other_settings_is_refused(compare, tiny_run_inputs, tmp_path):
    bench = tmp_path / "bench"
    _darwin_bench_dir(compare, tiny_run_inputs, bench, 0.4, seed=123)
    rows = run(compare, tiny_run_inputs, tmp_path, "--methods", "darwin-ta", "--darwin-bench", str(bench),
               "eval.latency=false")
    assert "searched with other settings" in rows["darwin-ta-0.4"]["status"]


@pytest.mark.parametrize("bad", ["0.9,0.4", "half", "0.4"])
def test_a_malformed_nas_params_range_is_refused(compare, bad, capsys):
    with pytest.raises(SystemExit) as stop:
        compare.parse_args(["--nas-params-range", bad])
    assert stop.value.code == 2
    assert "--nas-params-range" in capsys.readouterr().err
