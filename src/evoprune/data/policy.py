"""The Debian Policy Manual, a test genre (technical standard): from the Debian package `debian-policy`.

The package ships the manual as Sphinx's plain-text rendering, `policy.txt.gz`: paragraphs wrapped at
70 columns, headings underlined with `=`, `-` or `*`, lists as `* ` items, literal blocks and nested
material indented, footnotes as `[n] ` paragraphs. Documents are the manual's prose paragraphs, in
order: wrapped lines joined, footnote markers and emphasis asterisks removed; headings, lists,
indented blocks, paragraphs of fewer than `MIN_WORDS` words and the closing license chapter (the
GPL's notice) are left out. About 1,000 paragraphs, 58k SmolLM2 tokens (policy 4.6.2.0).
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

from ..assets import POLICY_TEXT
from ..errors import UserError

MIN_WORDS = 8  # "Released August, 1996." and similar stubs are not prose
UNDERLINE = re.compile(r"^([=\-*~^\"#])\1+$")
LIST_ITEM = re.compile(r"^(?:[*\-+] |\d+\. |[a-z]\. )")
FOOTNOTE = re.compile(r"^\[(\d+|\*|#)\] ")
FOOTNOTE_MARK = re.compile(r"\s*\[\d+\]")
EMPHASIS = re.compile(r"\*(\S(?:[^*]*\S)?)\*")  # *words*: Sphinx's plain-text emphasis
LICENSE_CHAPTER = re.compile(r"^\d+\. License$")


def policy_file() -> Path | None:
    """`policy.txt.gz` of an installed or fetched `debian-policy`, or None when it is not on this machine."""
    found = POLICY_TEXT.found()
    return None if found is None else found / POLICY_TEXT.marker


def policy_files() -> list[Path]:
    found = policy_file()
    return [] if found is None else [found]


def _blocks(text: str) -> list[list[str]]:
    """Runs of non-blank lines, their indentation kept."""
    blocks, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append(current)
            current = []
    return blocks


def prose_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a Sphinx plain-text document (see the module docstring)."""
    paragraphs = []
    for lines in _blocks(text):
        if len(lines) >= 2 and UNDERLINE.match(lines[-1].strip()):  # a heading
            if LICENSE_CHAPTER.match(lines[0].strip()):
                break
            continue
        first = lines[0]
        if FOOTNOTE.match(first):
            first = FOOTNOTE.sub("", first)
            rest = [line[4:] for line in lines[1:] if line.startswith("    ") and not line.startswith("     ")]
            if len(rest) != len(lines) - 1:  # a footnote holding a list or a literal block
                continue
            lines = [first, *rest]
        if first.startswith(" ") or LIST_ITEM.match(first) or any(line.startswith(" ") for line in lines[1:]):
            continue
        prose = EMPHASIS.sub(r"\1", FOOTNOTE_MARK.sub("", " ".join(line.strip() for line in lines)))
        if len(prose.split()) >= MIN_WORDS:
            paragraphs.append(prose)
    return paragraphs


def policy_paragraphs() -> list[str]:
    """The manual's prose paragraphs, in order; [] when the package is absent."""
    path = policy_file()
    if path is None:
        return []
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:  # a damaged file
        raise UserError(f"cannot read the Debian Policy Manual in {path}: {e}; delete {path.parent} and run "
                        "`evoprune fetch-assets` again") from None
    return prose_paragraphs(text)
