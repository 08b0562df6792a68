"""docs/api.md is the public API as it is: regenerated, it does not change."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "api_reference.py"


def load_script():
    spec = importlib.util.spec_from_file_location("api_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_is_up_to_date():
    script = load_script()
    assert script.PAGE.read_text() == script.render_reference(), "run python scripts/api_reference.py"


def test_every_public_name_is_on_the_page_with_its_arguments():
    import inspect

    import evoprune

    page = load_script().render_reference()
    for name in evoprune.__all__:
        assert f"### `{name}` (" in page, name
    darwin = page[page.index("### `darwin`"):page.index("### `database`")]
    for arg in inspect.signature(evoprune.darwin).parameters:
        assert arg in darwin.split("```")[1], arg  # in the signature
    assert "- `sparsity`: fraction of the blocks' parameters to remove" in darwin
    assert "#### `Result.load` (method)" in page and "#### `Result.read` (method)" in page


def test_a_google_docstring_is_split_into_its_sections():
    script = load_script()

    def example(a: int, *, b: str = "x") -> float:
        """First line,
        still the first paragraph.

        More detail that stays out.

        Args:
            a: the first
                argument, continued.
            b: the second.

        Raises:
            UserError: when it must.
        """

    first, sections = script.docstring_parts(example)
    assert first == "First line, still the first paragraph."
    assert [title for title, _ in sections] == ["Args", "Raises"]
    assert script.section_markdown(*sections[0]) == "**Args**\n\n- `a`: the first argument, continued.\n- `b`: the second.\n"
    assert script.signature("example", example) == "example(a: int, *, b: str = 'x') -> float"
