"""Unseen-text perplexity: per genre, equal to a direct computation; the dev and the test means apart."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from evoprune.data.unseen import UnseenDomain
from evoprune.evaluation.perplexity import block_nlls
from evoprune.evaluation.unseen import geometric_mean_interval, read_test_figures, unseen_metrics
from evoprune.evaluation.unseen_report import unseen_columns, unseen_section, unseen_table_rows
from evoprune_tests import tiny_gqa_llama


def direct_perplexity(model, blocks: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=blocks).logits[:, :-1]
    return math.exp(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1)).item())


def domain(name: str, blocks: torch.Tensor | None, split: str = "dev") -> UnseenDomain:
    return UnseenDomain(name, "genre", "origin", split, blocks)


def random_blocks(names: list[str]) -> dict[str, torch.Tensor]:
    return {name: torch.randint(0, 99, (3, 16), generator=torch.Generator().manual_seed(i))
            for i, name in enumerate(names)}


def test_each_genre_is_the_perplexity_of_its_blocks_and_each_mean_covers_its_own_set():
    model = tiny_gqa_llama()
    blocks = random_blocks(["news", "math", "austen", "policy"])
    domains = [domain("news", blocks["news"]), domain("math", blocks["math"]), domain("gone", None),
               domain("austen", blocks["austen"], "test"), domain("policy", blocks["policy"], "test")]
    metrics = unseen_metrics(model, domains, batch_size=2)
    expected = {name: direct_perplexity(model, b) for name, b in blocks.items()}
    assert metrics["unseen_perplexity"] == pytest.approx({"news": expected["news"], "math": expected["math"],
                                                          "gone": None})
    assert metrics["unseen_ppl_mean"] == pytest.approx(math.sqrt(expected["news"] * expected["math"]))
    assert metrics["test_perplexity"] == pytest.approx({"austen": expected["austen"], "policy": expected["policy"]})
    assert metrics["test_ppl_mean"] == pytest.approx(math.sqrt(expected["austen"] * expected["policy"]))
    assert metrics["heldback_perplexity"] == pytest.approx(expected["austen"])  # the name earlier runs used
    assert len(set(expected.values())) == 4  # different blocks, different figures: the mapping is tested
    nlls = {name: block_nlls(model, blocks[name], 2) for name in ("austen", "policy")}
    assert metrics["test_ppl_mean_ci95"] == pytest.approx(geometric_mean_interval(list(nlls.values())))
    low, high = metrics["test_ppl_mean_ci95"]
    assert low < metrics["test_ppl_mean"] < high
    assert set(metrics["test_ci95"]) == {"austen", "policy"}
    assert metrics["heldback_ci95"] == metrics["test_ci95"]["austen"]


def test_test_mean_needs_every_test_genre_and_none_means_none():
    blocks = random_blocks(["news", "austen"])
    domains = [domain("news", blocks["news"]), domain("austen", blocks["austen"], "test"),
               domain("policy", None, "test")]
    partial = unseen_metrics(tiny_gqa_llama(), domains, batch_size=1)
    assert partial["test_perplexity"]["austen"] is not None and partial["test_perplexity"]["policy"] is None
    assert partial["test_ppl_mean"] is None and partial["test_ppl_mean_ci95"] is None  # not a mean over fewer genres
    alone = unseen_metrics(tiny_gqa_llama(), [domain("news", blocks["news"])], batch_size=1)
    assert alone["heldback_perplexity"] is None and alone["test_ppl_mean"] is None and alone["test_perplexity"] == {}
    assert alone["unseen_ppl_mean"] is not None


def test_report_names_the_split_and_reads_rows_of_earlier_runs(tmp_path):
    blocks = random_blocks(["news", "austen", "policy"])
    domains = [domain("news", blocks["news"]), domain("austen", blocks["austen"], "test"),
               domain("policy", blocks["policy"], "test")]
    assert unseen_columns(domains) == ["held-out (in-distribution)", "news", "dev mean", "austen (test)",
                                       "policy (test)", "test mean"]
    new = {"perplexity": 30.0, **unseen_metrics(tiny_gqa_llama(), domains, batch_size=2)}
    old = {"perplexity": 31.0, "unseen_perplexity": {"news": 20.0}, "unseen_ppl_mean": 20.0,
           "heldback_perplexity": 50.0, "unseen_ppl_mean_ci95": [18.0, 22.0], "heldback_ci95": [45.0, 55.0]}
    assert read_test_figures(old) == ({"austen": 50.0}, None)
    table = {row["model"]: row for row in unseen_table_rows({"new": new, "old": old}, domains)}
    assert table["old"]["austen (test)"] == 50.0 and table["old"]["policy (test)"] == "n/a"
    assert table["old"]["test mean"] == "n/a" and table["old"]["dev mean"] == 20.0
    assert table["new"]["test mean"] == pytest.approx(new["test_ppl_mean"])
    text = unseen_section({"new": new, "old": old}, domains, tmp_path / "unseen.png")
    assert "95% intervals of the test mean" in text and "95% intervals of the dev mean" in text
    assert "`policy` (test)" in text and "`news` (dev)" in text and (tmp_path / "unseen.png").is_file()
