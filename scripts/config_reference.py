"""Write docs/config.md from the config dataclasses: every field with its type, default and comment.

    python scripts/config_reference.py            # writes docs/config.md
    python scripts/config_reference.py --check    # exit 1 if docs/config.md is out of date

tests/test_config_reference.py fails when the page and the dataclasses differ, so the reference
cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import sys
import tokenize
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generated_page import write_or_check  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"

HEADER = """# Configuration reference

Every run is configured by one YAML file (`--config FILE`, or a shipped config's name such as `smollm2_uniform50`:
`src/evoprune/configs/*.yaml`) whose sections map
one to one to the dataclasses below; any field can also be set on the command line as
`section.field=value` (e.g. `search.generations=6 data.seq_len=256`) or from Python as
`overrides={"section.field": value}`. Flags such as `--sparsity` set the fields they name. Unknown
fields and bad values are refused together, in one line, before anything runs.

Generated from `src/evoprune/config.py` and `src/evoprune/recovery/config.py` by
`python scripts/config_reference.py`; do not edit by hand.
"""


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment: the one on its line, with the comment lines that belong to it.

    config.py writes a long comment two ways: continued on the lines below a field's own comment, or,
    for a field without one on its line, on the lines just above it. So a block of comment lines
    between two fields continues the field above when that one has a comment on its line and the
    field below has one too (or there is none below); otherwise it introduces the field below.
    """
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    fields = [node for node in ast.parse(source).body[0].body
              if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]
    own = {node.target.id: comments.get(node.lineno, "") if "#" in lines[node.lineno - 1] else "" for node in fields}
    above: dict[str, list[str]] = {node.target.id: [] for node in fields}
    below: dict[str, list[str]] = {node.target.id: [] for node in fields}
    for i, node in enumerate(fields + [None]):
        previous = fields[i - 1] if i else None
        first = (previous.end_lineno + 1) if previous else 1
        last = node.lineno - 1 if node else len(lines)
        block = [comments[row] for row in range(first, last + 1)
                 if row in comments and lines[row - 1].strip().startswith("#")]
        if not block:
            continue
        continues_above = previous is not None and own[previous.target.id] and (node is None or own[node.target.id])
        if continues_above:
            below[previous.target.id] += block
        elif node is not None:
            above[node.target.id] += block
    return {name: " ".join(part for part in above[name] + [own[name]] + below[name] if part) for name in own}


def _type_name(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "")


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`" if field.default is not None else "`null`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "(required)"


def section_table(cls: type) -> str:
    """One Markdown table row per plain field of `cls`."""
    comments = field_comments(cls)
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            continue
        meaning = comments.get(f.name, "").replace("|", "\\|")
        kind, default = _type_name(f.type).replace("|", "\\|"), _default(f).replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{kind}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def command_reference(title: str, cls: type) -> str:
    """A heading per section of the run config `cls` (its nested dataclasses), then its own top-level fields."""
    parts = [f"## {title}\n"]
    for f in dataclasses.fields(cls):
        factory = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if factory is not None and dataclasses.is_dataclass(factory):
            doc = (factory.__doc__ or "").strip()
            doc = "" if doc.startswith(factory.__name__ + "(") else inspect.cleandoc(doc).split("\n\n")[0]
            parts.append(f"### `{f.name}` ({factory.__name__})\n\n" + (f"{doc}\n\n" if doc else "")
                         + section_table(factory))
    top = [f for f in dataclasses.fields(cls) if not (f.default_factory is not dataclasses.MISSING
                                                       and dataclasses.is_dataclass(f.default_factory))]
    if top:
        parts.append("### top level\n\n" + section_table(cls))
    return "\n".join(parts)


def former_names() -> str:
    """The renamed fields and values still accepted (for one release, with a one-line note)."""
    from evoprune.config import RENAMED_FIELDS, RENAMED_PROFILES, RENAMED_VALUES

    rows = [f"- `{old}`: now `{new}` ({why})" for old, (new, why) in RENAMED_FIELDS.items()]
    values = {**RENAMED_VALUES, "search.profile": RENAMED_PROFILES}
    rows += [f"- `{name}: {old}`: now `{name}: {new}`" for name, renamed in values.items()
             for old, new in renamed.items()]
    return ("## Former names\n\nStill accepted for one release, with a one-line note, in YAML files, `key=value` "
            "words and `overrides`:\n\n" + "\n".join(rows) + "\n")


def render_reference() -> str:
    """The whole page."""
    from evoprune.config import RunConfig
    from evoprune.recovery.config import RecoveryRunConfig

    return "\n".join([HEADER, command_reference("darwin, database, search, prune, slice, eval, nas", RunConfig),
                      command_reference("train (recovery training)", RecoveryRunConfig), former_names()])


def main(argv: list[str] | None = None) -> int:
    return write_or_check(PAGE, render_reference, "scripts/config_reference.py", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
