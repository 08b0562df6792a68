"""The MIP as a front generator: each point the MIP at its size with its summed scores as prediction, resumable,
unreachable sizes named, the rank correlation right; and the darwin family writes it beside its front."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from evoprune.api import darwin
from evoprune.config import ConfigError, RunConfig, load_config
from evoprune.darwinlm import pipeline
from evoprune.levels.budget import KINDS, CostTable, make_budget
from evoprune.levels.genotype import Genotype
from evoprune.darwinlm.predicted_front import (DEFAULT_SPARSITIES, predicted_front, report_section, spearman,
                                               spread)
from evoprune.errors import UserError

from darwinlm.test_family import TINY


def synthetic(layers: int, levels: int, seed: int = 0) -> tuple[dict, CostTable]:
    """Scores falling to 0 at the full level and costs rising to it, different in every module."""
    rng = np.random.default_rng(seed)
    scores, costs = {}, {}
    for k, width in (("attention", 40.0), ("mlp", 100.0)):
        costs[k] = [[width * (0.8 + 0.4 * rng.random()) * lv / (levels - 1) for lv in range(levels)]
                    for _ in range(layers)]
        steps = rng.random((layers, levels - 1))  # what each level up saves
        scores[k] = [[float(row[lv:].sum()) for lv in range(levels)] for row in steps]
    return scores, CostTable("params", costs)


def summed(scores: dict, g: Genotype) -> float:
    return sum(scores[k][i][lv] for k in KINDS for i, lv in enumerate(g.genes(k)))


def fake_kl(scores):
    """A stand-in measurement that ranks genotypes almost as their summed scores do."""
    return lambda g: summed(scores, g) * (1 + 0.05 * sum(g.attention))


def test_each_point_is_the_least_summed_score_inside_its_band(tmp_path):
    scores, table = synthetic(layers=3, levels=3)
    front = predicted_front(scores, table, fake_kl(scores), tmp_path, {}, sparsities=[0.2, 0.35, 0.5, 0.65],
                            measured=0, progress=False)
    everything = [Genotype(g[:3], g[3:]) for g in itertools.product(range(3), repeat=6)]
    assert [p.sparsity for p in front.points] == [0.2, 0.35, 0.5, 0.65]
    for p in front.points:
        budget = make_budget(table, (1 - p.sparsity) * table.full())
        assert budget.admits(p.block_params) and p.block_params == pytest.approx(table.cost(p.genotype))
        assert p.predicted_kl == pytest.approx(summed(scores, p.genotype))
        inside = [g for g in everything if budget.admits(table.cost(g)) and any(g.attention)]
        assert p.predicted_kl == pytest.approx(min(summed(scores, g) for g in inside))  # brute force agrees


def test_the_front_falls_in_cost_and_rises_in_predicted_kl_with_sparsity(tmp_path):
    scores, table = synthetic(layers=8, levels=6, seed=1)
    front = predicted_front(scores, table, fake_kl(scores), tmp_path, {}, measured=5, progress=False)
    assert [p.sparsity for p in front.points] == list(DEFAULT_SPARSITIES) and not front.skipped
    costs = [p.block_params for p in front.points]
    kls = [p.predicted_kl for p in front.points]
    assert all(a > b for a, b in zip(costs, costs[1:]))
    assert all(a <= b + 1e-9 for a, b in zip(kls, kls[1:]))
    assert [p.sparsity for p in front.measured()] == [0.2, 0.35, 0.5, 0.65, 0.8]
    rows = (tmp_path / "predicted_front.csv").read_text().splitlines()
    assert rows[0] == "sparsity,achieved_sparsity,block_params,predicted_kl,measured_kl" and len(rows) == 26
    assert (tmp_path / "predicted_front.png").stat().st_size > 0
    saved = json.loads((tmp_path / "predicted_front.json").read_text())
    assert saved["rho"] == front.rho and saved["measured"] == 5


def test_tiny_kls_give_the_front_of_the_same_scores_scaled_up(tmp_path):
    scores, table = synthetic(layers=8, levels=6, seed=3)
    tiny = {k: [[v * 1e-6 for v in row] for row in rows] for k, rows in scores.items()}  # a tiny model's KLs
    front = predicted_front(scores, table, fake_kl(scores), tmp_path / "a", {}, measured=0, progress=False)
    small = predicted_front(tiny, table, fake_kl(tiny), tmp_path / "b", {}, measured=0, progress=False)
    assert [p.predicted_kl * 1e-6 for p in front.points] == pytest.approx([p.predicted_kl for p in small.points])


def test_a_resumed_front_equals_an_uninterrupted_one(tmp_path):
    scores, table = synthetic(layers=6, levels=5, seed=2)
    whole = predicted_front(scores, table, fake_kl(scores), tmp_path / "whole", {"blocks": "a"}, measured=7,
                            progress=False)
    calls = []

    def killed_after_three(g):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(g)
        return fake_kl(scores)(g)

    with pytest.raises(KeyboardInterrupt):
        predicted_front(scores, table, killed_after_three, tmp_path / "resumed", {"blocks": "a"}, measured=7,
                        progress=False)
    half = json.loads((tmp_path / "resumed" / "predicted_front.json").read_text())
    assert half["measured"] == 3 and half["rho"] is None
    calls.clear()
    resumed = predicted_front(scores, table, lambda g: calls.append(g) or fake_kl(scores)(g), tmp_path / "resumed",
                              {"blocks": "a"}, measured=7, progress=False)
    assert len(calls) == 4  # only the points the killed run had not measured
    assert resumed == whole and resumed.rho is not None
    for name in ("predicted_front.json", "predicted_front.csv"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "whole" / name).read_text()
    calls.clear()  # measured on other blocks: nothing saved is reused
    predicted_front(scores, table, lambda g: calls.append(g) or 1.0 + len(calls), tmp_path / "resumed",
                    {"blocks": "b"}, measured=7, progress=False)
    assert len(calls) == 7


def test_an_unreachable_sparsity_is_skipped_and_named(tmp_path):
    scores, table = synthetic(layers=4, levels=4)
    front = predicted_front(scores, table, fake_kl(scores), tmp_path, {}, sparsities=[0.3, 0.999, 0.5], measured=3,
                            progress=False)
    assert [p.sparsity for p in front.points] == [0.3, 0.5] and len(front.measured()) == 2
    assert list(front.skipped) == ["0.999"] and "out of reach" in front.skipped["0.999"]
    assert front.rho is None  # two measured points rank nothing
    assert "Not reachable: sparsity 0.999" in report_section(front, table.full(), "predicted_front")
    assert json.loads((tmp_path / "predicted_front.json").read_text())["skipped"] == front.skipped
    with pytest.raises(UserError, match="strictly between 0 and 1; got 1.5"):
        predicted_front(scores, table, fake_kl(scores), tmp_path, {}, sparsities=[0.3, 1.5], progress=False)


def test_spearman_and_the_measured_points_on_known_examples():
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))  # the 7s share rank 3.5
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([0.1, 0.2, 0.3], [1.0, 100.0, 1000.0]) == pytest.approx(1.0)  # ranks only, not values
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 2, 3], [4, 4, 4]) is None
    assert spread(25, 13) == list(range(0, 25, 2))
    assert spread(10, 4) == [0, 3, 6, 9] and spread(5, 10) == [0, 1, 2, 3, 4] and spread(5, 0) == []


def test_the_front_settings_are_checked_and_leave_a_family_resumable():
    with pytest.raises(ConfigError, match="search.predicted_front must be 0 .* got 2"):
        load_config(None, ["search.predicted_front=2"])
    with pytest.raises(ConfigError, match="search.predicted_front_tokens must be positive"):
        load_config(None, ["search.predicted_front_tokens=0"])
    changed = load_config(None, ["search.predicted_front=0", "search.predicted_front_tokens=512"])
    assert pipeline.search_config(changed) == pipeline.search_config(RunConfig())


def test_a_family_writes_the_predicted_front_measured_as_its_sizes_are(tiny_run_inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    dense, corpus = str(tiny_run_inputs / "dense"), str(tiny_run_inputs / "corpus.txt")
    family = darwin(dense, tmp_path / "family", sparsity=[0.2, 0.5], data=corpus,
                    overrides={**TINY, "search.predicted_front": 3}, progress=False)
    saved = json.loads(family.extra["predicted_front"].read_text())
    points = {p["sparsity"]: p for p in saved["points"]}
    assert [s for s, p in points.items() if p["measured_kl"] is not None] == [0.2, 0.5, 0.8]
    assert saved["measured"] == 3 and -1 <= saved["rho"] <= 1
    kls = [p["predicted_kl"] for p in saved["points"]]
    assert all(a <= b for a, b in zip(kls, kls[1:]))  # KLs of 1e-5: the MIP solved to optimality all the same
    scores = json.loads((tmp_path / "family" / "predicted_front" / "replace_one.json").read_text())
    assert scores == json.loads((tmp_path / "family" / "sparsity-0.2" / "search" / "replace_one.json").read_text())
    matched = 0
    for label, size in family.extra["sizes"].items():
        point = points[float(label.split("-")[1])]
        if size.spec.meta["genotype"] == point["genotype"]:  # the size kept the MIP genotype: same held-out KL
            matched += 1
            assert point["measured_kl"] == pytest.approx(size.metrics["pruned"]["kl_to_teacher"], rel=1e-4)
    assert matched
    report = (tmp_path / "family" / "report.md").read_text()
    assert "## Predicted front" in report and f"{saved['rho']:.3f}" in report
    assert "![predicted front](predicted_front/predicted_front.png)" in report
