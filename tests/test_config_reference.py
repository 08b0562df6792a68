"""docs/config.md is the config dataclasses as they are: regenerated, it does not change."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "config_reference.py"


def load_script():
    spec = importlib.util.spec_from_file_location("config_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_is_up_to_date():
    script = load_script()
    assert script.PAGE.read_text() == script.render_reference(), "run python scripts/config_reference.py"


def test_every_field_is_on_the_page_with_its_comment():
    import dataclasses

    from evoprune.config import RunConfig

    script = load_script()
    page = script.render_reference()
    for section in dataclasses.fields(RunConfig):
        factory = section.default_factory
        if factory is dataclasses.MISSING:
            assert f"| `{section.name}` |" in page
            continue
        for field in dataclasses.fields(factory):
            assert f"| `{field.name}` |" in page, f"{section.name}.{field.name}"
    assert "| `repack` | `str` | `'auto'` | llama.cpp weight repacking" in page


def test_comments_above_and_beside_a_field_are_both_kept():
    from dataclasses import dataclass

    script = load_script()

    @dataclass
    class Example:
        # first line
        # second line
        a: int = 1  # beside
        b: str = "x"

    assert script.field_comments(Example) == {"a": "first line second line beside", "b": ""}


def test_a_comment_continued_below_its_field_stays_with_it():
    from evoprune.config import EvalConfig, SearchConfig

    comments = load_script().field_comments(SearchConfig)
    assert comments["trade"] == "let attention and MLP (and depth, via level 0) trade budget with each other"
    assert comments["train_embeddings"].endswith("(else shared with the dense model, frozen, never copied)")
    assert comments["latency_engine"].startswith("--metric latency: the latency table is timed in transformers")
    assert load_script().field_comments(EvalConfig)["repack"].startswith("llama.cpp weight repacking")
