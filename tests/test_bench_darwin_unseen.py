"""bench/darwin_unseen.py and bench/database_quality.py on a tiny model: rows per variant and seed, composable."""

from __future__ import annotations

import json
import sys

import pytest

from test_bench_compare import BENCH, TINY


@pytest.fixture
def benches(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("darwin_unseen", "database_quality"):
        sys.modules.pop(name, None)
    import darwin_unseen
    import database_quality

    return darwin_unseen, database_quality


@pytest.mark.slow  # about a minute: three searches, a database per setting
def test_variants_seeds_trajectory_and_database_settings(benches, tiny_run_inputs, tmp_path):
    darwin_unseen, database_quality = benches
    data = [f"model.source={tiny_run_inputs / 'dense'}", f"data.source={tiny_run_inputs / 'corpus.txt'}", *TINY,
            "search.replace_one_tokens=32", "search.fitness_pool=64"]
    common = ["--sparsities", "0.4", "--eval-blocks", "2", "--work", str(tmp_path / "work"),
              "--out", str(tmp_path / "out")]
    darwin_unseen.main([*common, "--variants", "mip,kl-mip,reference", "--seeds", "0", "--minutes", "0.02", *data])
    darwin_unseen.main([*common, "--variants", "kl-mip", "--seeds", "1", "--minutes", "0.02", "--no-baselines",
                        *data])
    rows = json.loads((tmp_path / "out" / "darwin_unseen.json").read_text())["rows"]
    runs = {(r["method"], r["seed"]) for r in rows}
    assert {("mip", 0), ("kl-mip", 0), ("kl-mip", 1), ("reference", 0), ("uniform (activation)", ""),
            ("depth (ShortGPT)", "")} <= runs
    assert sum(r["method"].startswith("uniform genotype") for r in rows) == 2  # one per database
    dense = [r for r in rows if r["method"] == "dense"]
    assert len(dense) == 1 and dense[0]["block_sparsity"] == 0 and dense[0]["KL"] < 1e-6
    for r in rows:
        assert r["method"] == "dense" or (0.3 < r["block_sparsity"] <= 0.5 and r["KL"] >= 0)
    timed = [r for r in rows if r["method"] == "kl-mip"]
    assert all(r["search s"] >= 0.02 * 60 for r in timed)  # stopped by the time limit, not by generations
    summary = json.loads((tmp_path / "out" / "darwin_unseen.json").read_text())["summary"]
    assert next(s for s in summary if s["method"] == "kl-mip")["seeds"] == 2
    assert (tmp_path / "out" / "darwin_unseen.md").exists()

    darwin_unseen.main([*common, "--seeds", "0", "--trajectory", "kl-mip", *data])
    trajectory = json.loads((tmp_path / "out" / "darwin_unseen_trajectory-kl-mip.json").read_text())
    generations = next(r["generations"] for r in rows if (r["method"], r["seed"]) == ("kl-mip", 0))
    assert trajectory[0]["generation"] == 0 and trajectory[-1]["generation"] == generations

    database_quality.main(["--settings", "default,damp-1", "--sparsities", "0.4", "--eval-blocks", "2",
                           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *data])
    quality = json.loads((tmp_path / "out" / "database_quality.json").read_text())["rows"]
    assert [r["setting"] for r in quality] == ["default", "damp-1"]
    assert quality[0]["unseen ppl"] != quality[1]["unseen ppl"]
