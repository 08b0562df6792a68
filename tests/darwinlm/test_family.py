"""darwin with several sizes: one database and one scoring for all, each size equal to its single-size run."""

from __future__ import annotations

import csv
import json

import pytest

from evoprune.api import darwin
from evoprune.cli import main
from evoprune.errors import UserError
from evoprune.obs.database import Database

TINY = {"data.seq_len": 32, "data.calibration_blocks": 4, "data.eval_blocks": 2, "data.batch_size": 2,
        "eval.latency": False, "eval.unseen": False, "database.num_levels": 4, "search.offspring": 2,
        "search.generations": 0, "search.fitness_tokens": [64], "search.train_tokens": [0], "search.survivors": [1],
        "search.replace_one_tokens": 64}


@pytest.fixture
def builds(monkeypatch, tmp_path):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    calls = []
    original = Database.build.__func__
    monkeypatch.setattr(Database, "build", classmethod(lambda cls, *a, **k: calls.append(1) or original(cls, *a, **k)))
    return calls


def test_a_family_equals_its_single_size_runs_and_grows_by_one_size(tiny_run_inputs, tmp_path, builds):
    dense, corpus = str(tiny_run_inputs / "dense"), str(tiny_run_inputs / "corpus.txt")
    family = darwin(dense, tmp_path / "family", sparsity=[0.3, 0.6, 0.3], data=corpus, overrides=TINY,
                    progress=False)
    assert sorted(family.extra["sizes"]) == ["sparsity-0.3", "sparsity-0.6"]  # the repeat merged
    single = darwin(dense, tmp_path / "single", sparsity=0.6, data=corpus, overrides=TINY, progress=False)
    assert family.extra["sizes"]["sparsity-0.6"].spec.to_dict()["layers"] == single.spec.to_dict()["layers"]
    assert family.extra["sizes"]["sparsity-0.6"].metrics["pruned"] == single.metrics["pruned"]
    assert len(builds) == 1
    assert [family.extra["sizes"][s].metrics["search"]["replace_one_reused"] for s in ("sparsity-0.3", "sparsity-0.6")] \
        == [False, True] and single.metrics["search"]["replace_one_reused"]  # scored once, by the first size
    front = json.loads((tmp_path / "family" / "front.json").read_text())["front"]
    assert [r["size"] for r in front] == ["sparsity-0.3", "sparsity-0.6"]  # largest model first
    assert front[0]["params"] > front[1]["params"]
    rows = list(csv.DictReader((tmp_path / "family" / "front.csv").open()))
    assert [r["size"] for r in rows] == ["sparsity-0.3", "sparsity-0.6"]
    assert (tmp_path / "family" / "front.png").stat().st_size > 0
    assert "sparsity-0.6/report.md" in (tmp_path / "family" / "report.md").read_text()
    before = (tmp_path / "family" / "sparsity-0.3" / "metrics.json").stat().st_mtime_ns
    grown = darwin(dense, tmp_path / "family", sparsity=[0.3, 0.6, 0.45], data=corpus, overrides=TINY,
                   progress=False)
    assert sorted(grown.extra["sizes"]) == ["sparsity-0.3", "sparsity-0.45", "sparsity-0.6"]
    assert (tmp_path / "family" / "sparsity-0.3" / "metrics.json").stat().st_mtime_ns == before  # not redone
    assert len(builds) == 1


def test_an_unreachable_size_is_named_before_any_work(tiny_run_inputs, tmp_path, builds):
    dense, corpus = str(tiny_run_inputs / "dense"), str(tiny_run_inputs / "corpus.txt")
    with pytest.raises(UserError, match="size params-10 of the family"):
        darwin(dense, tmp_path / "f", target_params=[20000, 10], data=corpus, overrides=TINY, progress=False)
    assert not (tmp_path / "f").exists() and not builds
    assert main(["darwin", "--model", dense, "--data", corpus, "--sparsity", "0.3,1.5", "--out", str(tmp_path / "g"),
                 "--quiet"]) == 2
    assert main(["prune", "--model", dense, "--data", corpus, "prune.sparsity=[0.3,0.5]", "--out", str(tmp_path / "h"),
                 "--quiet"]) == 2
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()
