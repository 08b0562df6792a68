"""Write docs/api.md from the public API: every name in `evoprune.__all__`, its signature and docstring.

    python scripts/api_reference.py            # writes docs/api.md
    python scripts/api_reference.py --check    # exit 1 if docs/api.md is out of date

For each name: the signature, the docstring's first paragraph, and its Args / Returns / Raises /
Attributes sections; for a class, its public methods the same way. tests/test_api_reference.py fails
when the page and the code differ.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generated_page import write_or_check  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
SECTIONS = ("Args", "Arguments common to every call", "Returns", "Raises", "Attributes", "Yields")
WIDTH = 100  # a longer signature is written one parameter a line

HEADER = """# Python API reference

`import evoprune` gives the names below (`evoprune.__all__`, imported on first use). The commands
are one call each, doing what the CLI command of the same name does; the building blocks are the
pieces they share. Config fields are in [config.md](config.md).

Generated from the docstrings by `python scripts/api_reference.py`; do not edit by hand.
"""


def _annotation(annotation) -> str:
    if isinstance(annotation, str):  # as written, less the quotes of a forward reference
        return annotation.strip("'\"")
    return inspect.formatannotation(annotation)


def _default(value) -> str:
    if isinstance(value, type):
        return value.__name__
    return repr(value)


def signature(name: str, obj) -> str:
    """`name(params) -> return` with the annotations as written in the source."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    parts, star_done = [], False
    params = list(sig.parameters.values())
    if params and params[0].name == "self":  # a class, or a method read from its class
        params = params[1:]
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += (" = " if p.annotation is not p.empty else "=") + _default(p.default)
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    ret = sig.return_annotation
    tail = "" if ret is sig.empty or inspect.isclass(obj) else f" -> {_annotation(ret)}"
    one_line = f"{name}({', '.join(parts)}){tail}"
    if len(one_line) <= WIDTH:
        return one_line
    return f"{name}(\n" + "".join(f"    {part},\n" for part in parts) + f"){tail}"


def docstring_parts(obj) -> tuple[str, list[tuple[str, str]]]:
    """(first paragraph, [(section title, section text)]) of `obj`'s Google-style docstring."""
    doc = inspect.getdoc(obj) or ""
    if dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
        doc = ""  # the generated dataclass docstring only repeats the signature
    paragraphs = doc.split("\n\n")
    first = " ".join(paragraphs[0].split()) if paragraphs and not _section_title(paragraphs[0]) else ""
    sections, title, lines = [], None, []
    for line in doc.splitlines():
        heading = _section_title(line)
        if heading:
            if title:
                sections.append((title, "\n".join(lines).rstrip()))
            title, lines = heading, []
        elif title is not None:
            if line and not line.startswith(" "):  # a paragraph after the section ends it
                sections.append((title, "\n".join(lines).rstrip()))
                title, lines = None, []
            else:
                lines.append(line)
    if title:
        sections.append((title, "\n".join(lines).rstrip()))
    return first, sections


def _section_title(line: str) -> str | None:
    stripped = line.strip()
    return stripped[:-1] if stripped.endswith(":") and stripped[:-1] in SECTIONS and line == stripped else None


def section_markdown(title: str, text: str) -> str:
    """A section's entries (`name: text` with indented continuation lines) as a Markdown list."""
    entries: list[str] = []
    for line in inspect.cleandoc(text).splitlines():
        if not line.strip():
            continue
        if line.startswith(" ") and entries:
            entries[-1] += " " + line.strip()
            continue
        key, sep, rest = line.partition(": ")
        if sep and re.fullmatch(r"[\w*.\[\]\"', ]+", key):
            entries.append(f"- `{key}`: {rest.strip()}")
        else:
            entries.append(f"- {line.strip()}")
    return f"**{title}**\n\n" + "\n".join(entries) + "\n"


def entry(name: str, obj, level: str = "###") -> str:
    """A name's heading, signature, first paragraph and sections (and a class's public methods)."""
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else type(obj).__name__
    parts = [f"{level} `{name}` ({kind}, `{obj.__module__}`)\n", f"```python\n{signature(name, obj)}\n```\n"]
    first, sections = docstring_parts(obj)
    if first:
        parts.append(first + "\n")
    parts += [section_markdown(title, text) for title, text in sections]
    if inspect.isclass(obj):
        for method_name, method in vars(obj).items():
            wrapped = isinstance(method, (classmethod, staticmethod))
            if method_name.startswith("_") or not (inspect.isfunction(method) or wrapped):
                continue
            func = method.__func__ if wrapped else method
            parts.append(entry(f"{name}.{method_name}", getattr(obj, method_name), level="####").replace(
                f"(function, `{func.__module__}`)", "(method)"))
    return "\n".join(parts)


def render_reference() -> str:
    """The whole page: the commands (api.py's order), then the other public names alphabetically."""
    import evoprune
    from evoprune import api

    commands = [n for n in api.__all__ if n in evoprune.__all__]
    others = [n for n in evoprune.__all__ if n not in commands]
    common = api.__doc__.split("Arguments common to every call:", 1)[1]
    parts = [HEADER, "## Commands\n", inspect.cleandoc(api.__doc__.split("\n\n")[1]) + "\n",
             section_markdown("Arguments common to every call", common)]
    parts += [entry(n, getattr(evoprune, n)) for n in commands]
    parts.append("## Building blocks\n")
    parts += [entry(n, getattr(evoprune, n)) for n in others]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    return write_or_check(PAGE, render_reference, "scripts/api_reference.py", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
