"""`evoprune train` reports perplexity on unseen text where it starts and where it ends, like every other command;
the start figures survive a kill and resume, and `eval.unseen=false` turns them off."""

from __future__ import annotations

import json
import math
import random

import pytest
from test_recovery import config, records
from test_recovery_rundir import SHORT

from evoprune_tests import CORPUS_WORDS

from evoprune.config import ConfigError, load_config
from evoprune.data import unseen as unseen_module
from evoprune.data.unseen_sources import UnseenSource
from evoprune.evaluation.unseen import load_unseen, unseen_metrics
from evoprune.models import load_model
from evoprune.recovery import RecoveryRunConfig, recover
from evoprune.recovery.config import run_identity

DOMAINS = {"news", "howto", "math"}  # the dev genres
TEST_DOMAINS = {"austen", "policy"}  # the test genres


def short(root, *extra):
    return config(root, *SHORT, *extra)


def summary(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def straight(recovery_inputs, tmp_path_factory):
    return recover(short(recovery_inputs), tmp_path_factory.mktemp("unseen") / "straight", progress=False)


@pytest.fixture(scope="module")
def resumed(recovery_inputs, tmp_path_factory):
    """Killed after step 3 (its checkpoint is step 2), then run to the end in the same directory."""
    out = tmp_path_factory.mktemp("unseen") / "resumed"
    recover(short(recovery_inputs), out, progress=False, stop_after_steps=3)
    assert (out / "unseen_start.json").is_file() and not (out / "metrics.json").exists()
    return recover(short(recovery_inputs), out, progress=False)


def flat(figures: dict) -> dict:
    """unseen_metrics' figures as one flat mapping, for pytest.approx."""
    return {**figures["unseen_perplexity"], "mean": figures["unseen_ppl_mean"],
            **{f"test {k}": v for k, v in figures["test_perplexity"].items()}, "test mean": figures["test_ppl_mean"],
            "heldback": figures["heldback_perplexity"]}


def measured_as_text_allows(figures: dict, text: dict) -> None:
    """Each domain's perplexity is a finite number > 1 where its text is here, None (with a note) where not."""
    for name, value in [*figures["unseen_perplexity"].items(), *figures["test_perplexity"].items()]:
        if text[name]["blocks"] > 0:
            assert math.isfinite(value) and value > 1, name
        else:
            assert value is None and text[name]["notes"], name
    measured = [v for v in figures["unseen_perplexity"].values() if v is not None]
    assert (figures["unseen_ppl_mean"] is None) == (not measured)
    assert (figures["test_ppl_mean"] is None) == (None in figures["test_perplexity"].values())


def test_unseen_section_validates_and_is_not_part_of_the_run_identity(recovery_inputs):
    with pytest.raises(ConfigError, match="eval.unseen_blocks must be positive, got 0"):
        load_config(None, ["eval.unseen_blocks=0"], cls=RecoveryRunConfig)
    off = short(recovery_inputs, "eval.unseen=false", "eval.unseen_blocks=3")
    assert not off.eval.unseen and off.eval.unseen_blocks == 3
    assert run_identity(off) == run_identity(short(recovery_inputs))  # it measures, never changes the training


def test_metrics_hold_unseen_figures_at_the_start_and_the_end(straight):
    metrics = summary(straight)
    text = metrics["unseen_text"]
    assert set(text) == DOMAINS | TEST_DOMAINS and text["austen"]["split"] == text["policy"]["split"] == "test"
    for figures in (metrics["unseen_start"], metrics["unseen_final"]):
        assert set(figures) == {"unseen_perplexity", "unseen_ppl_mean", "heldback_perplexity", "unseen_ci95",
                                "unseen_ppl_mean_ci95", "heldback_ci95", "test_perplexity", "test_ppl_mean",
                                "test_ci95", "test_ppl_mean_ci95"}  # each figure with its 95% interval
        assert set(figures["test_perplexity"]) == TEST_DOMAINS
        assert figures["heldback_perplexity"] == figures["test_perplexity"]["austen"]
        assert set(figures["unseen_perplexity"]) == DOMAINS
        measured_as_text_allows(figures, text)
    assert metrics["start_unseen_ppl_mean"] == metrics["unseen_start"]["unseen_ppl_mean"]
    assert metrics["final_heldback_ppl"] == metrics["unseen_final"]["heldback_perplexity"]
    assert metrics["final_test_ppl_mean"] == metrics["unseen_final"]["test_ppl_mean"]
    if any(text[d]["blocks"] for d in DOMAINS):
        assert metrics["unseen_start"]["unseen_ppl_mean"] != metrics["unseen_final"]["unseen_ppl_mean"]
    report = (straight / "report.md").read_text()
    for column in ("start_unseen_ppl_mean", "final_unseen_ppl_mean", "start_heldback_ppl", "final_heldback_ppl",
                   "final_test_ppl_mean", "## Unseen text", "austen (test)", "policy (test)", "test mean"):
        assert column in report, column
    assert (straight / "unseen.png").is_file()


def test_start_and_final_figures_are_those_of_the_student_and_of_the_exported_model(recovery_inputs, straight):
    cfg = short(recovery_inputs)
    student = load_model(str(recovery_inputs / "pruned"))
    domains = load_unseen(cfg, student.tokenizer)
    metrics = summary(straight)
    start = unseen_metrics(student.model, domains, cfg.data.batch_size)
    assert flat(metrics["unseen_start"]) == pytest.approx(flat(start), rel=1e-6)
    final = unseen_metrics(load_model(str(straight / "model")).model, domains, cfg.data.batch_size)
    assert flat(metrics["unseen_final"]) == pytest.approx(flat(final), rel=1e-5)


def test_a_killed_and_resumed_run_keeps_the_start_figures_of_an_uninterrupted_one(straight, resumed):
    a, b = summary(straight), summary(resumed)
    assert b["unseen_start"] == a["unseen_start"]  # kept from the first attempt: bit for bit
    assert flat(b["unseen_final"]) == pytest.approx(flat(a["unseen_final"]), rel=1e-5)
    assert b["unseen_text"] == a["unseen_text"]
    assert "not known" not in (resumed / "report.md").read_text()


def test_unseen_off_writes_no_unseen_figures(recovery_inputs, tmp_path):
    out = recover(short(recovery_inputs, "eval.unseen=false"), tmp_path / "run", progress=False)
    metrics = summary(out)
    assert not {k for k in metrics if "unseen" in k or "heldback" in k or "test_" in k}
    assert "nseen" not in (out / "report.md").read_text()
    assert not (out / "unseen.png").exists() and not (out / "unseen_start.json").exists()
    assert metrics["steps"] == 4 and len(records(out)) == 5


def test_a_run_begun_without_unseen_text_resumes_with_it_and_says_the_start_is_not_known(recovery_inputs, tmp_path):
    out = tmp_path / "run"
    recover(short(recovery_inputs, "eval.unseen=false"), out, progress=False, stop_after_steps=3)
    recover(short(recovery_inputs), out, progress=False)
    metrics = summary(out)
    assert metrics["unseen_start"] is None and metrics["start_unseen_ppl_mean"] is None
    assert set(metrics["unseen_final"]["unseen_perplexity"]) == DOMAINS
    assert "perplexity on unseen text at the start is not known" in (out / "report.md").read_text()


def made_up_source(folder, name: str, seed: int, split: str = "dev") -> UnseenSource:
    """Documents of the tiny vocabulary, of other lengths and seeds than the run's corpus."""
    rng = random.Random(seed)
    documents = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(20, 30))) for _ in range(40)]
    path = folder / f"{name}.txt"
    path.write_text("\n\n".join(documents))
    return UnseenSource(name, "made-up genre", "made up", lambda: documents, lambda: [path], split)


def test_made_up_unseen_text_is_measured_and_a_missing_domain_noted(recovery_inputs, tmp_path, monkeypatch):
    """Whatever assets this machine holds: two dev genres with text, one without, one test genre."""
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(unseen_module, "UNSEEN_SOURCES", {
        "letters": made_up_source(tmp_path, "letters", 1), "diaries": made_up_source(tmp_path, "diaries", 2),
        "gone": UnseenSource("gone", "genre", "nowhere", lambda: [], lambda: []),
        "kept": made_up_source(tmp_path, "kept", 3, split="test")})
    out = recover(short(recovery_inputs, "eval.unseen_blocks=4"), tmp_path / "run", progress=False)
    metrics = summary(out)
    assert metrics["unseen_text"]["letters"]["blocks"] == 4 and metrics["unseen_text"]["gone"]["blocks"] == 0
    for figures in (metrics["unseen_start"], metrics["unseen_final"]):
        assert set(figures["unseen_perplexity"]) == {"letters", "diaries", "gone"}
        measured_as_text_allows(figures, metrics["unseen_text"])
        assert figures["test_perplexity"]["kept"] is not None and figures["unseen_perplexity"]["gone"] is None
        assert figures["test_ppl_mean"] == pytest.approx(figures["test_perplexity"]["kept"])
        assert figures["heldback_perplexity"] is None  # the name of the `austen` genre alone
        letters, diaries = figures["unseen_perplexity"]["letters"], figures["unseen_perplexity"]["diaries"]
        assert figures["unseen_ppl_mean"] == pytest.approx(math.sqrt(letters * diaries))
    assert metrics["unseen_final"]["unseen_ppl_mean"] != metrics["unseen_start"]["unseen_ppl_mean"]
    assert "kept (test)" in (out / "report.md").read_text()


def test_resumed_into_a_new_directory_measures_the_start_where_its_curves_start(recovery_inputs, straight, tmp_path):
    stopped = tmp_path / "stopped"
    recover(short(recovery_inputs), stopped, progress=False, stop_after_steps=3)
    out = recover(short(recovery_inputs), tmp_path / "new", progress=False,
                  resume_from=stopped / "checkpoints" / "step-0000002")
    metrics = summary(out)
    assert [r["step"] for r in records(out)] == [2, 3, 4]
    if metrics["unseen_start"]["unseen_ppl_mean"] is not None:  # the checkpoint, not the untrained student
        assert metrics["unseen_start"] != summary(straight)["unseen_start"]
    assert flat(metrics["unseen_final"]) == pytest.approx(flat(summary(straight)["unseen_final"]), rel=1e-5)
